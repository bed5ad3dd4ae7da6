//! Where the queue lives: a Redis server, or a Redis Cluster named by
//! `redis+cluster://[user:password@]host:port[,host:port…]`
//! (`rediss+cluster://` for TLS), whose listed nodes are only the seeds the
//! slot map is first read from. Read here so that a URL the redis client
//! cannot use is refused with the rest of the configuration.

/// Where the queue lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisEndpoint {
    /// One server (`redis://`, `rediss://`, `unix://`).
    Server(String),
    /// A cluster: one URL per seed node.
    Cluster(Vec<String>),
}

impl RedisEndpoint {
    /// Reads `redis+cluster://` URLs as a cluster, anything else as a server.
    pub fn parse(url: &str) -> Result<RedisEndpoint, String> {
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
            ("redis", rest)
        } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
            ("rediss", rest)
        } else {
            check(url)?;
            return Ok(RedisEndpoint::Server(url.to_string()));
        };
        let (userinfo, hosts) = match rest.rsplit_once('@') {
            Some((user, hosts)) => (format!("{user}@"), hosts),
            None => (String::new(), rest),
        };
        let hosts = hosts.trim_end_matches('/');
        if hosts.contains('/') {
            return Err("bad redis url: a cluster has no database number".to_string());
        }
        let nodes: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| format!("{scheme}://{userinfo}{h}"))
            .collect();
        if nodes.is_empty() {
            return Err("bad redis url: a cluster url names at least one node".to_string());
        }
        for node in &nodes {
            check(node)?;
        }
        Ok(RedisEndpoint::Cluster(nodes))
    }

    /// The URLs to open a plain connection to, in order of preference:
    /// the server, or each seed node of a cluster.
    pub fn nodes(&self) -> Vec<String> {
        match self {
            RedisEndpoint::Server(url) => vec![url.clone()],
            RedisEndpoint::Cluster(nodes) => nodes.clone(),
        }
    }
}

/// Refuses a URL the redis client cannot read (a port that is not a
/// number, an unknown scheme). The message never repeats the URL, which may
/// hold a password.
fn check(url: &str) -> Result<(), String> {
    redis::IntoConnectionInfo::into_connection_info(url)
        .map(drop)
        .map_err(|_| "bad redis url: not a valid address".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_their_seed_nodes() {
        assert_eq!(
            RedisEndpoint::parse("redis://127.0.0.1:6379/2").unwrap(),
            RedisEndpoint::Server("redis://127.0.0.1:6379/2".into())
        );
        assert_eq!(
            RedisEndpoint::parse("redis+cluster://10.0.0.1:7000,10.0.0.2:7000").unwrap(),
            RedisEndpoint::Cluster(vec![
                "redis://10.0.0.1:7000".into(),
                "redis://10.0.0.2:7000".into()
            ])
        );
        assert_eq!(
            RedisEndpoint::parse("rediss+cluster://app:s3cret@a:7000,b:7001/").unwrap(),
            RedisEndpoint::Cluster(vec![
                "rediss://app:s3cret@a:7000".into(),
                "rediss://app:s3cret@b:7001".into()
            ])
        );
        assert!(RedisEndpoint::parse("redis+cluster://").is_err());
        assert!(RedisEndpoint::parse("redis+cluster://a:7000/3").is_err());
        for bad in [
            "rediss://app:s3cret@127.0.0.1:notaport/",
            "redis+cluster://a:7000,b:port",
            "redis://[::1/",
        ] {
            let e = RedisEndpoint::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("bad redis url") && !e.contains("s3cret"),
                "{bad}: {e}"
            );
        }
    }
}
