//! What `shared_state.redis_url` names: one Redis, a Redis Cluster, or a primary that
//! Redis Sentinel watches. The scheme says which; everything (credentials included)
//! stays in the one secret the URL is.
//!
//! | URL | topology |
//! |---|---|
//! | `redis://[USER:PASSWORD@]HOST:PORT[/DB]`, `rediss://…` (TLS) | one node |
//! | `redis+cluster://[USER:PASSWORD@]HOST:PORT,HOST:PORT,…`, `rediss+cluster://…` | a cluster, from any of these seed nodes |
//! | `redis+sentinel://[USER:PASSWORD@]HOST:PORT,…/MASTER_NAME[?sentinel_username=…&sentinel_password=…]`, `rediss+sentinel://…` | the primary the sentinels at these addresses name `MASTER_NAME` |
//!
//! Credentials in the user part are the data nodes'; a sentinel gets its own (query
//! parameters) or none, as Sentinel's own `requirepass` is set apart from the primary's.

use redis::{ConnectionInfo, IntoConnectionInfo};

/// A parsed `redis_url`.
#[derive(Debug, Clone)]
pub enum RedisTopology {
    Single(ConnectionInfo),
    Cluster {
        /// Seed nodes: the cluster names the rest.
        nodes: Vec<ConnectionInfo>,
    },
    Sentinel {
        /// How to reach each sentinel (its address, TLS, its own credentials).
        sentinels: Vec<ConnectionInfo>,
        master_name: String,
        /// TLS and credentials for the primary (and the rest of the data nodes).
        data: ConnectionInfo,
    },
}

impl RedisTopology {
    /// Parses `url`; an error never repeats the URL, which may hold a password.
    pub fn parse(url: &str) -> Result<Self, String> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(unsupported());
        };
        let (node_scheme, kind) = match scheme {
            "redis" | "rediss" => return single(url).map(Self::Single),
            "redis+cluster" => ("redis", Kind::Cluster),
            "rediss+cluster" => ("rediss", Kind::Cluster),
            "redis+sentinel" => ("redis", Kind::Sentinel),
            "rediss+sentinel" => ("rediss", Kind::Sentinel),
            _ => return Err(unsupported()),
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        // The user part ends at the last '@' (a password's own '@' must be %40, but a
        // host never holds one).
        let (user, rest) = match rest.rsplit_once('@') {
            Some((user, rest)) => (Some(user), rest),
            None => (None, rest),
        };
        let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
        let hosts: Vec<&str> = hosts.split(',').map(str::trim).collect();
        if hosts.iter().any(|host| host.is_empty()) {
            return Err(format!(
                "shared_state.redis_url: a {scheme}:// URL lists HOST:PORT addresses separated by commas, none empty"
            ));
        }
        let node = |host: &str, user: Option<&str>| {
            let user = user.map(|user| format!("{user}@")).unwrap_or_default();
            single(&format!("{node_scheme}://{user}{host}/"))
        };
        match kind {
            Kind::Cluster => {
                if !(path.is_empty() && query.is_empty()) {
                    return Err(format!(
                        "shared_state.redis_url: a {scheme}:// URL has no path or query (a cluster has database 0 only)"
                    ));
                }
                let nodes = hosts
                    .iter()
                    .map(|host| node(host, user))
                    .collect::<Result<_, _>>()?;
                Ok(Self::Cluster { nodes })
            }
            Kind::Sentinel => {
                let master_name = path.trim_end_matches('/');
                if master_name.is_empty() || master_name.contains('/') {
                    return Err(format!(
                        "shared_state.redis_url: a {scheme}:// URL ends with /MASTER_NAME, the name the sentinels monitor"
                    ));
                }
                let sentinel_user = sentinel_credentials(scheme, query)?;
                let sentinels = hosts
                    .iter()
                    .map(|host| node(host, sentinel_user.as_deref()))
                    .collect::<Result<_, _>>()?;
                Ok(Self::Sentinel {
                    sentinels,
                    master_name: master_name.to_owned(),
                    data: node(hosts[0], user)?,
                })
            }
        }
    }
}

enum Kind {
    Cluster,
    Sentinel,
}

fn unsupported() -> String {
    "shared_state.redis_url must be a redis:// or rediss:// (TLS) URL, redis+cluster:// or rediss+cluster:// for a Redis Cluster, or redis+sentinel:// or rediss+sentinel:// for Redis Sentinel".into()
}

/// One node's URL, as the redis crate reads it.
fn single(url: &str) -> Result<ConnectionInfo, String> {
    url.into_connection_info().map_err(|error| {
        format!(
            "shared_state.redis_url is not a usable redis URL ({:?})",
            error.kind()
        )
    })
}

/// `sentinel_username` / `sentinel_password` from the query, as a URL user part.
fn sentinel_credentials(scheme: &str, query: &str) -> Result<Option<String>, String> {
    let (mut username, mut password) = ("", None);
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        match pair.split_once('=') {
            Some(("sentinel_username", value)) => username = value,
            Some(("sentinel_password", value)) => password = Some(value),
            _ => {
                return Err(format!(
                    "shared_state.redis_url: a {scheme}:// URL takes only the query parameters sentinel_username and sentinel_password"
                ));
            }
        }
    }
    Ok(match (username, password) {
        ("", None) => None,
        (username, None) => Some(username.to_owned()),
        (username, Some(password)) => Some(format!("{username}:{password}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::ConnectionAddr;

    fn address(info: &ConnectionInfo) -> (String, u16, bool) {
        match info.addr() {
            ConnectionAddr::Tcp(host, port) => (host.clone(), *port, false),
            ConnectionAddr::TcpTls { host, port, .. } => (host.clone(), *port, true),
            other => panic!("a TCP address, not {other:?}"),
        }
    }

    #[test]
    fn one_node_urls_are_read_as_before() {
        let RedisTopology::Single(info) =
            RedisTopology::parse("rediss://:pw@cache:6380/2").unwrap()
        else {
            panic!("one node");
        };
        assert_eq!(address(&info), ("cache".into(), 6380, true));
        assert_eq!(info.redis_settings().password(), Some("pw"));
        assert_eq!(info.redis_settings().db(), 2);
    }

    #[test]
    fn a_cluster_url_lists_seed_nodes_sharing_credentials_and_tls() {
        let RedisTopology::Cluster { nodes } =
            RedisTopology::parse("rediss+cluster://app:p%40ss@h1:7000, h2:7001,10.0.0.3:7002")
                .unwrap()
        else {
            panic!("a cluster");
        };
        let addresses: Vec<_> = nodes.iter().map(address).collect();
        assert_eq!(
            addresses,
            [
                ("h1".into(), 7000, true),
                ("h2".into(), 7001, true),
                ("10.0.0.3".into(), 7002, true)
            ]
        );
        for node in &nodes {
            assert_eq!(node.redis_settings().username(), Some("app"));
            assert_eq!(node.redis_settings().password(), Some("p@ss"));
        }
        let RedisTopology::Cluster { nodes } =
            RedisTopology::parse("redis+cluster://127.0.0.1:7000/").unwrap()
        else {
            panic!("a cluster");
        };
        assert_eq!(address(&nodes[0]), ("127.0.0.1".into(), 7000, false));
    }

    #[test]
    fn a_sentinel_url_names_the_master_and_keeps_sentinel_credentials_apart() {
        let RedisTopology::Sentinel {
            sentinels,
            master_name,
            data,
        } = RedisTopology::parse(
            "redis+sentinel://:data-pw@s1:26379,s2:26380/mymaster?sentinel_password=s-pw",
        )
        .unwrap()
        else {
            panic!("sentinel");
        };
        assert_eq!(master_name, "mymaster");
        assert_eq!(address(&sentinels[1]), ("s2".into(), 26380, false));
        assert_eq!(sentinels[0].redis_settings().password(), Some("s-pw"));
        assert_eq!(data.redis_settings().password(), Some("data-pw"));

        let RedisTopology::Sentinel { sentinels, .. } =
            RedisTopology::parse("rediss+sentinel://s1:26379/mymaster").unwrap()
        else {
            panic!("sentinel");
        };
        assert_eq!(sentinels[0].redis_settings().password(), None);
        assert!(address(&sentinels[0]).2, "TLS to the sentinels too");
    }

    #[test]
    fn bad_urls_say_what_is_wrong_without_repeating_the_password() {
        for (url, says) in [
            ("http://h:1", "must be a redis://"),
            ("redis+cluster://:secret@h1:7000,,h2:7001", "none empty"),
            ("redis+cluster://:secret@h1:7000/3", "no path or query"),
            ("redis+sentinel://:secret@s1:26379", "/MASTER_NAME"),
            (
                "redis+sentinel://:secret@s1:26379/m?password=x",
                "only the query",
            ),
            (
                "redis+cluster://:secret@h1:notaport",
                "not a usable redis URL",
            ),
        ] {
            let error = RedisTopology::parse(url).unwrap_err();
            assert!(error.contains(says), "{url}: {error}");
            assert!(!error.contains("secret"), "{error}");
        }
    }
}
