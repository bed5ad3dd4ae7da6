//! One connection type for a single Redis server and for a Redis Cluster,
//! so every command, pipeline and script runs unchanged on either.
//!
//! A cluster is named by `redis+cluster://[user:password@]host:port[,host:port…]`
//! (`rediss+cluster://` for TLS): the listed nodes are only the seeds the
//! slot map is first read from. Every key of one queue partition shares a
//! hash tag, so each script and transaction runs on one node. A primary
//! found through Sentinel (`redis+sentinel://`) is followed across failovers
//! by [`SentinelConn`].

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio::sync::OnceCell;

use super::sentinel::{Primary, SentinelConn};
use crate::backend::QueueError;
use crate::config::RedisEndpoint as Endpoint;

/// A multiplexed, reconnecting connection to a server or a cluster.
#[derive(Clone)]
pub enum Conn {
    Server(ConnectionManager),
    Cluster(Arc<LazyCluster>),
    Sentinel(Arc<SentinelConn>),
}

/// A cluster connection made on first use, so the gateway starts (and
/// answers 503) while the cluster is unreachable. Once made, it follows slot
/// moves and reconnects to nodes by itself.
pub struct LazyCluster {
    client: ClusterClient,
    conn: OnceCell<ClusterConnection>,
}

impl LazyCluster {
    async fn get(&self) -> redis::RedisResult<ClusterConnection> {
        self.conn
            .get_or_try_init(|| self.client.get_async_connection())
            .await
            .cloned()
    }
}

impl Conn {
    /// Opens lazily, with this response timeout per command.
    pub fn open(
        endpoint: &Endpoint,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Result<Conn, QueueError> {
        match endpoint {
            Endpoint::Server(url) => {
                let client = redis::Client::open(url.as_str())
                    .map_err(|e| QueueError::Unavailable(format!("bad redis url: {e}")))?;
                ConnectionManager::new_lazy_with_config(
                    client,
                    manager_config(connect_timeout, response_timeout),
                )
                .map(Conn::Server)
                .map_err(|e| QueueError::Unavailable(e.to_string()))
            }
            Endpoint::Cluster(nodes) => {
                let client = ClusterClient::builder(nodes.iter().map(String::as_str))
                    .connection_timeout(connect_timeout)
                    .response_timeout(response_timeout)
                    .retries(2)
                    .build()
                    .map_err(|e| QueueError::Unavailable(format!("bad redis url: {e}")))?;
                Ok(Conn::Cluster(Arc::new(LazyCluster {
                    client,
                    conn: OnceCell::new(),
                })))
            }
            Endpoint::Sentinel(sentinel) => Ok(Conn::Sentinel(Arc::new(SentinelConn::new(
                Primary::of(sentinel)?,
                manager_config(connect_timeout, response_timeout),
            )))),
        }
    }
}

fn manager_config(
    connect_timeout: Duration,
    response_timeout: Duration,
) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1))
}

impl Conn {
    /// Which primary a Sentinel connection is on (it grows at each
    /// failover); 0 for a server or a cluster.
    pub fn generation(&self) -> u64 {
        match self {
            Conn::Sentinel(s) => s.generation(),
            _ => 0,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Server(c) => c.req_packed_command(cmd),
            Conn::Cluster(lazy) => Box::pin(async move {
                let mut c = lazy.get().await?;
                c.req_packed_command(cmd).await
            }),
            Conn::Sentinel(s) => Box::pin(async move { s.req_packed_command(cmd).await }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Server(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(lazy) => Box::pin(async move {
                let mut c = lazy.get().await?;
                c.req_packed_commands(pipeline, offset, count).await
            }),
            Conn::Sentinel(s) => {
                Box::pin(async move { s.req_packed_commands(pipeline, offset, count).await })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Server(c) => c.get_db(),
            Conn::Cluster(_) | Conn::Sentinel(_) => 0,
        }
    }
}
