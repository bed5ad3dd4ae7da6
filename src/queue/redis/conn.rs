//! One connection type for a single Redis server and for a Redis Cluster,
//! so every command, pipeline and script runs unchanged on either.
//!
//! A cluster is named by `redis+cluster://[user:password@]host:port[,host:port…]`
//! (`rediss+cluster://` for TLS): the listed nodes are only the seeds the
//! slot map is first read from. Every key of one queue partition shares a
//! hash tag, so each script and transaction runs on one node.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio::sync::OnceCell;

use crate::queue::QueueError;

/// Where the queue lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// One server (`redis://`, `rediss://`, `unix://`).
    Server(String),
    /// A cluster: one URL per seed node.
    Cluster(Vec<String>),
}

impl Endpoint {
    /// Reads `redis+cluster://` URLs as a cluster, anything else as a server.
    pub fn parse(url: &str) -> Result<Endpoint, QueueError> {
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
            ("redis", rest)
        } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
            ("rediss", rest)
        } else {
            check(url)?;
            return Ok(Endpoint::Server(url.to_string()));
        };
        let (userinfo, hosts) = match rest.rsplit_once('@') {
            Some((user, hosts)) => (format!("{user}@"), hosts),
            None => (String::new(), rest),
        };
        let hosts = hosts.trim_end_matches('/');
        if hosts.contains('/') {
            return Err(QueueError::Unavailable(
                "bad redis url: a cluster has no database number".into(),
            ));
        }
        let nodes: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| format!("{scheme}://{userinfo}{h}"))
            .collect();
        if nodes.is_empty() {
            return Err(QueueError::Unavailable(
                "bad redis url: a cluster url names at least one node".into(),
            ));
        }
        for node in &nodes {
            check(node)?;
        }
        Ok(Endpoint::Cluster(nodes))
    }

    /// The URLs to open a plain connection to, in order of preference:
    /// the server, or each seed node of a cluster.
    pub fn nodes(&self) -> Vec<String> {
        match self {
            Endpoint::Server(url) => vec![url.clone()],
            Endpoint::Cluster(nodes) => nodes.clone(),
        }
    }
}

/// Refuses a URL the redis client cannot read (a port that is not a
/// number, an unknown scheme). The message never repeats the URL, which may
/// hold a password.
fn check(url: &str) -> Result<(), QueueError> {
    redis::IntoConnectionInfo::into_connection_info(url)
        .map(drop)
        .map_err(|_| QueueError::Unavailable("bad redis url: not a valid address".into()))
}

/// A multiplexed, reconnecting connection to a server or a cluster.
#[derive(Clone)]
pub enum Conn {
    Server(ConnectionManager),
    Cluster(Arc<LazyCluster>),
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
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(response_timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(1));
                ConnectionManager::new_lazy_with_config(client, config)
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
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Server(c) => c.get_db(),
            Conn::Cluster(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_their_seed_nodes() {
        assert_eq!(
            Endpoint::parse("redis://127.0.0.1:6379/2").unwrap(),
            Endpoint::Server("redis://127.0.0.1:6379/2".into())
        );
        assert_eq!(
            Endpoint::parse("redis+cluster://10.0.0.1:7000,10.0.0.2:7000").unwrap(),
            Endpoint::Cluster(vec![
                "redis://10.0.0.1:7000".into(),
                "redis://10.0.0.2:7000".into()
            ])
        );
        assert_eq!(
            Endpoint::parse("rediss+cluster://app:s3cret@a:7000,b:7001/").unwrap(),
            Endpoint::Cluster(vec![
                "rediss://app:s3cret@a:7000".into(),
                "rediss://app:s3cret@b:7001".into()
            ])
        );
        assert!(Endpoint::parse("redis+cluster://").is_err());
        assert!(Endpoint::parse("redis+cluster://a:7000/3").is_err());
        for bad in [
            "rediss://app:s3cret@127.0.0.1:notaport/",
            "redis+cluster://a:7000,b:port",
            "redis://[::1/",
        ] {
            let e = Endpoint::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("bad redis url") && !e.contains("s3cret"),
                "{bad}: {e}"
            );
        }
    }
}
