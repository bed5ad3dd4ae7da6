//! A primary found through Redis Sentinel (`redis+sentinel://`), followed
//! across failovers.
//!
//! Every connection the process opens with one Sentinel URL shares one
//! [`Primary`]: the address the sentinels last named, with a generation
//! that grows at each switch. A [`SentinelConn`] holds a reconnecting
//! connection to the primary of one generation. When a command fails the
//! way a lost or demoted primary fails — the connection refused, dropped or
//! timed out, or a `READONLY` answer from a primary turned replica — the
//! sentinels are asked again; if they name another server, the switch is
//! logged (WARN, old → new address) and counted
//! (`flashgate_redis_failovers_total`), and every connection moves to the
//! new primary on its next command. The failed command itself is not
//! repeated: its caller's error path runs as it does for any Redis error
//! (503 for an admission, a retry for the drain).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{Client, Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisResult, TlsMode, Value};
use tracing::{info, warn};

use crate::backend::QueueError;
use crate::config::SentinelEndpoint;

/// The sentinels are asked at most this often while commands keep failing
/// on the same primary (its own reconnection covers a short outage).
const ASK_AT_MOST_EVERY: Duration = Duration::from_millis(200);
/// One round of asking the sentinels, each checking the primary it names.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);

/// The primary one Sentinel URL names, shared by the whole process.
pub struct Primary {
    master: String,
    node: SentinelNodeConnectionInfo,
    sentinel: tokio::sync::Mutex<Asking>,
    current: Mutex<Option<Current>>,
}

struct Asking {
    sentinel: Sentinel,
    last: Option<Instant>,
}

/// The primary of one generation.
#[derive(Clone)]
pub struct Current {
    pub generation: u64,
    pub address: String,
    pub client: Client,
}

static PRIMARIES: LazyLock<Mutex<HashMap<SentinelEndpoint, Arc<Primary>>>> =
    LazyLock::new(Default::default);

impl Primary {
    /// The process's tracker of `endpoint`'s primary (made on first use;
    /// nothing connects yet).
    pub fn of(endpoint: &SentinelEndpoint) -> Result<Arc<Primary>, QueueError> {
        let mut all = PRIMARIES.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = all.get(endpoint) {
            return Ok(p.clone());
        }
        let bad = |e: RedisError| QueueError::Unavailable(format!("bad redis url: {e}"));
        let sentinel = Sentinel::build(endpoint.sentinels.clone()).map_err(bad)?;
        let node_info = endpoint.node.as_str().into_connection_info().map_err(bad)?;
        let mut node = SentinelNodeConnectionInfo::default()
            .set_redis_connection_info(node_info.redis_settings().clone());
        if endpoint.tls {
            node = node.set_tls_mode(TlsMode::Secure);
        }
        let primary = Arc::new(Primary {
            master: endpoint.master.clone(),
            node,
            sentinel: tokio::sync::Mutex::new(Asking {
                sentinel,
                last: None,
            }),
            current: Mutex::new(None),
        });
        all.insert(endpoint.clone(), primary.clone());
        Ok(primary)
    }

    fn known(&self) -> Option<Current> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The primary now: the one last named, or the sentinels' answer if
    /// none was named yet.
    pub async fn current(&self) -> RedisResult<Current> {
        if let Some(c) = self.known() {
            return Ok(c);
        }
        let mut asking = self.sentinel.lock().await;
        if let Some(c) = self.known() {
            return Ok(c);
        }
        let client = self.ask(&mut asking).await?;
        let address = client.get_connection_info().addr().to_string();
        info!(master = %self.master, primary = %address, "Redis primary found through Sentinel");
        crate::metrics::REDIS_PRIMARY
            .with_label_values(&[address.as_str()])
            .set(1);
        let current = Current {
            generation: 1,
            address,
            client,
        };
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(current.clone());
        Ok(current)
    }

    /// After a command failed on the primary of `generation`: asks the
    /// sentinels again (unless another connection just did) and switches if
    /// they name another server.
    pub async fn recheck(&self, generation: u64) {
        let mut asking = self.sentinel.lock().await;
        let Some(known) = self.known() else {
            return;
        };
        if known.generation != generation
            || asking.last.is_some_and(|t| t.elapsed() < ASK_AT_MOST_EVERY)
        {
            return;
        }
        let client = match self.ask(&mut asking).await {
            Ok(client) => client,
            Err(e) => {
                // Mid-failover the sentinels may still name the lost server;
                // the next failed command asks again.
                tracing::debug!(master = %self.master, error = %e, "Sentinel names no reachable primary yet");
                return;
            }
        };
        let address = client.get_connection_info().addr().to_string();
        if address == known.address {
            return;
        }
        warn!(
            master = %self.master,
            old = %known.address,
            new = %address,
            "Redis primary switched (Sentinel failover): {} -> {}",
            known.address,
            address
        );
        crate::metrics::REDIS_FAILOVERS.inc();
        let _ = crate::metrics::REDIS_PRIMARY.remove_label_values(&[known.address.as_str()]);
        crate::metrics::REDIS_PRIMARY
            .with_label_values(&[address.as_str()])
            .set(1);
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(Current {
            generation: known.generation + 1,
            address,
            client,
        });
    }

    /// Asks the sentinels for the primary; the answer has been checked to
    /// say `ROLE master` itself.
    async fn ask(&self, asking: &mut Asking) -> RedisResult<Client> {
        asking.last = Some(Instant::now());
        match tokio::time::timeout(
            ASK_TIMEOUT,
            asking
                .sentinel
                .async_master_for(&self.master, Some(&self.node)),
        )
        .await
        {
            Ok(answer) => answer,
            Err(_) => Err(RedisError::from((
                redis::ErrorKind::Io,
                "no sentinel answered in time",
            ))),
        }
    }
}

/// Whether an error is how a lost, unreachable or demoted primary answers.
fn primary_lost(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.code() == Some("READONLY")
        || e.to_string().contains("READONLY")
}

/// A reconnecting connection to the primary, moved to the new primary
/// after a failover.
pub struct SentinelConn {
    primary: Arc<Primary>,
    config: ConnectionManagerConfig,
    manager: Mutex<Option<(u64, ConnectionManager)>>,
}

impl SentinelConn {
    pub fn new(primary: Arc<Primary>, config: ConnectionManagerConfig) -> SentinelConn {
        SentinelConn {
            primary,
            config,
            manager: Mutex::new(None),
        }
    }

    /// The connection to the current primary, made if it is new.
    async fn get(&self) -> RedisResult<(u64, ConnectionManager)> {
        let current = self.primary.current().await?;
        let mut manager = self.manager.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((generation, m)) = &*manager {
            if *generation == current.generation {
                return Ok((*generation, m.clone()));
            }
        }
        let m = ConnectionManager::new_lazy_with_config(current.client, self.config.clone())?;
        *manager = Some((current.generation, m.clone()));
        Ok((current.generation, m))
    }

    async fn after<T>(&self, generation: u64, result: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &result {
            if primary_lost(e) {
                self.primary.recheck(generation).await;
            }
        }
        result
    }

    pub async fn req_packed_command(&self, cmd: &Cmd) -> RedisResult<Value> {
        let (generation, mut m) = self.get().await?;
        let result = m.req_packed_command(cmd).await;
        self.after(generation, result).await
    }

    pub async fn req_packed_commands(
        &self,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let (generation, mut m) = self.get().await?;
        let result = m.req_packed_commands(pipeline, offset, count).await;
        self.after(generation, result).await
    }

    /// A client for the current primary, for a connection of another kind
    /// (pub/sub); `recheck` after it fails.
    pub async fn client(&self) -> RedisResult<Current> {
        self.primary.current().await
    }

    pub async fn recheck(&self, generation: u64) {
        self.primary.recheck(generation).await
    }
}
