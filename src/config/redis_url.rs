//! Where the queue lives: a Redis server, or a Redis Cluster named by
//! `redis+cluster://[user:password@]host:port[,host:port…]`
//! (`rediss+cluster://` for TLS), whose listed nodes are only the seeds the
//! slot map is first read from; or a primary found through Redis Sentinel,
//! named by `redis+sentinel://[user:password@]host:port[,host:port…]/<master>[/<db>]`
//! (`rediss+sentinel://` for TLS to the sentinels and the servers), with the
//! sentinels' own credentials, if they have any, in the query:
//! `?sentinel_username=U&sentinel_password=P`. The `user:password` is the
//! servers' (primary and replicas). Read here so that a URL the redis client
//! cannot use is refused with the rest of the configuration.

/// Where the queue lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisEndpoint {
    /// One server (`redis://`, `rediss://`, `unix://`).
    Server(String),
    /// A cluster: one URL per seed node.
    Cluster(Vec<String>),
    /// A primary found through Redis Sentinel.
    Sentinel(SentinelEndpoint),
}

/// What a `redis+sentinel://` URL names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SentinelEndpoint {
    /// One URL per sentinel, with the sentinels' credentials.
    pub sentinels: Vec<String>,
    /// The name the sentinels monitor the primary under.
    pub master: String,
    /// A URL with the servers' scheme, credentials and database, whose
    /// host is a placeholder: what every primary is connected with.
    pub node: String,
    /// TLS to the sentinels and the servers (`rediss+sentinel://`).
    pub tls: bool,
}

impl RedisEndpoint {
    /// Reads `redis+cluster://` URLs as a cluster, anything else as a server.
    pub fn parse(url: &str) -> Result<RedisEndpoint, String> {
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
            ("redis", rest)
        } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
            ("rediss", rest)
        } else if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            return sentinel("redis", rest).map(RedisEndpoint::Sentinel);
        } else if let Some(rest) = url.strip_prefix("rediss+sentinel://") {
            return sentinel("rediss", rest).map(RedisEndpoint::Sentinel);
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
    /// the server, or each seed node of a cluster; none for Sentinel, whose
    /// primary is asked for when connecting.
    pub fn nodes(&self) -> Vec<String> {
        match self {
            RedisEndpoint::Server(url) => vec![url.clone()],
            RedisEndpoint::Cluster(nodes) => nodes.clone(),
            RedisEndpoint::Sentinel(_) => Vec::new(),
        }
    }
}

/// Reads what follows `redis[s]+sentinel://`.
fn sentinel(scheme: &str, rest: &str) -> Result<SentinelEndpoint, String> {
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (userinfo, rest) = match rest.rsplit_once('@') {
        Some((user, rest)) => (format!("{user}@"), rest),
        None => (String::new(), rest),
    };
    let (hosts, path) = rest.split_once('/').ok_or(
        "bad redis url: a sentinel url names its master: redis+sentinel://host:port/<master>",
    )?;
    let (master, db) = match path.trim_end_matches('/').split_once('/') {
        Some((master, db)) => (master, db),
        None => (path.trim_end_matches('/'), "0"),
    };
    if master.is_empty() {
        return Err(
            "bad redis url: a sentinel url names its master: redis+sentinel://host:port/<master>"
                .to_string(),
        );
    }
    if db.parse::<u16>().is_err() {
        return Err("bad redis url: the database after the master name is a number".to_string());
    }
    let (mut sentinel_user, mut sentinel_password) = (String::new(), String::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sentinel_username", v)) => sentinel_user = v.to_string(),
            Some(("sentinel_password", v)) => sentinel_password = v.to_string(),
            _ => {
                return Err(
                    "bad redis url: a sentinel url's query takes sentinel_username and sentinel_password only"
                        .to_string(),
                )
            }
        }
    }
    let sentinel_auth = match (sentinel_user.is_empty(), sentinel_password.is_empty()) {
        (true, true) => String::new(),
        (_, true) => format!("{sentinel_user}@"),
        _ => format!("{sentinel_user}:{sentinel_password}@"),
    };
    let sentinels: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("{scheme}://{sentinel_auth}{h}"))
        .collect();
    if sentinels.is_empty() {
        return Err("bad redis url: a sentinel url names at least one sentinel".to_string());
    }
    for s in &sentinels {
        check(s)?;
    }
    let node = format!("{scheme}://{userinfo}sentinel-primary:6379/{db}");
    check(&node)?;
    Ok(SentinelEndpoint {
        sentinels,
        master: master.to_string(),
        node,
        tls: scheme == "rediss",
    })
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
        assert_eq!(
            RedisEndpoint::parse("redis+sentinel://app:s3cret@a:26379,b:26380/shop/2").unwrap(),
            RedisEndpoint::Sentinel(SentinelEndpoint {
                sentinels: vec!["redis://a:26379".into(), "redis://b:26380".into()],
                master: "shop".into(),
                node: "redis://app:s3cret@sentinel-primary:6379/2".into(),
                tls: false,
            })
        );
        assert_eq!(
            RedisEndpoint::parse("rediss+sentinel://a:26379/shop?sentinel_password=pw").unwrap(),
            RedisEndpoint::Sentinel(SentinelEndpoint {
                sentinels: vec!["rediss://:pw@a:26379".into()],
                master: "shop".into(),
                node: "rediss://sentinel-primary:6379/0".into(),
                tls: true,
            })
        );
        for bad in [
            "redis+sentinel://a:26379",
            "redis+sentinel://a:26379/",
            "redis+sentinel:///shop",
            "redis+sentinel://a:26379/shop/x",
            "redis+sentinel://a:26379/shop?password=x",
        ] {
            assert!(RedisEndpoint::parse(bad).is_err(), "{bad}");
        }
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
