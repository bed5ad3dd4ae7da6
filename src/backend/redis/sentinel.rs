//! A primary found through Redis Sentinel (`redis+sentinel://`), followed
//! across failovers.
//!
//! Every connection the process opens with one Sentinel URL shares one
//! [`Primary`]: the address the sentinels last named, with a generation
//! that grows at each switch. A [`SentinelConn`] holds a reconnecting
//! connection to the primary of one generation. When a command fails the
//! way a lost or demoted primary fails — the connection refused, dropped or
//! timed out, or a `READONLY` answer from a primary turned replica — the
//! primary becomes stale: the next command on any connection first asks
//! the sentinels (at most every 200 ms; the answer is checked to say `ROLE
//! master`), so nothing reconnects to a restarted old primary the
//! sentinels have not demoted yet. If they name another server, the switch
//! is logged (WARN, old -> new address) and counted
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
    known: Mutex<Known>,
}

/// The primary last named, and whether a command failed on it since.
#[derive(Default)]
struct Known {
    current: Option<Current>,
    stale: bool,
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
            known: Mutex::new(Known::default()),
        });
        all.insert(endpoint.clone(), primary.clone());
        Ok(primary)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The generation of the primary known now (0: none yet).
    pub fn generation(&self) -> u64 {
        self.state().current.as_ref().map_or(0, |c| c.generation)
    }

    /// The primary now: the one last named while no command has failed on
    /// it since, else the sentinels' answer. No connection is ever made to
    /// a server the sentinels were not asked about after a failure: a
    /// restarted old primary is an empty primary until they demote it.
    pub async fn current(&self) -> RedisResult<Current> {
        let fresh = |k: &Known| k.current.clone().filter(|_| !k.stale);
        if let Some(c) = fresh(&self.state()) {
            return Ok(c);
        }
        let mut asking = self.sentinel.lock().await;
        if let Some(c) = fresh(&self.state()) {
            return Ok(c);
        }
        if asking.last.is_some_and(|t| t.elapsed() < ASK_AT_MOST_EVERY) {
            return Err(RedisError::from((
                redis::ErrorKind::Io,
                "Sentinel names no reachable primary yet",
            )));
        }
        let client = match self.ask(&mut asking).await {
            Ok(client) => client,
            Err(e) => {
                // Mid-failover the sentinels still name the lost server.
                tracing::debug!(master = %self.master, error = %e, "Sentinel names no reachable primary yet");
                return Err(e);
            }
        };
        let address = client.get_connection_info().addr().to_string();
        let mut known = self.state();
        let generation = match &known.current {
            None => {
                info!(master = %self.master, primary = %address, "Redis primary found through Sentinel");
                1
            }
            Some(old) if old.address == address => old.generation,
            Some(old) => {
                warn!(
                    master = %self.master,
                    old = %old.address,
                    new = %address,
                    "Redis primary switched (Sentinel failover): {} -> {}",
                    old.address,
                    address
                );
                crate::metrics::REDIS_FAILOVERS.inc();
                let _ = crate::metrics::REDIS_PRIMARY.remove_label_values(&[old.address.as_str()]);
                old.generation + 1
            }
        };
        crate::metrics::REDIS_PRIMARY
            .with_label_values(&[address.as_str()])
            .set(1);
        let current = Current {
            generation,
            address,
            client,
        };
        *known = Known {
            current: Some(current.clone()),
            stale: false,
        };
        Ok(current)
    }

    /// A command failed on the primary of `generation` the way a lost or
    /// demoted one fails: the next command asks the sentinels first.
    pub fn lost(&self, generation: u64) {
        let mut known = self.state();
        if known.current.as_ref().map(|c| c.generation) == Some(generation) {
            known.stale = true;
        }
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

    fn after<T>(&self, generation: u64, result: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &result {
            if primary_lost(e) {
                self.primary.lost(generation);
            }
        }
        result
    }

    pub async fn req_packed_command(&self, cmd: &Cmd) -> RedisResult<Value> {
        let (generation, mut m) = self.get().await?;
        let result = m.req_packed_command(cmd).await;
        self.after(generation, result)
    }

    pub async fn req_packed_commands(
        &self,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let (generation, mut m) = self.get().await?;
        let result = m.req_packed_commands(pipeline, offset, count).await;
        self.after(generation, result)
    }

    /// A client for the current primary, for a connection of another kind
    /// (pub/sub); [`SentinelConn::lost`] when it fails.
    pub async fn client(&self) -> RedisResult<Current> {
        self.primary.current().await
    }

    pub fn lost(&self, generation: u64) {
        self.primary.lost(generation)
    }

    /// The generation of the primary known now: a write made under one
    /// generation is not covered by a `WAIT` sent under another.
    pub fn generation(&self) -> u64 {
        self.primary.generation()
    }
}
