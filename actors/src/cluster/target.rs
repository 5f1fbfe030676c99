//! Where the cluster's Redis is, as `cluster.redis_url` names it: one Redis at a fixed address,
//! a primary that Sentinel knows by name and may move at any failover, or a Redis Cluster whose
//! primaries each serve part of the rooms and may each fail over to a replica.

/// The forms of `cluster.redis_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `redis://…`: one Redis; whatever answers at that address is the cluster's Redis.
    Single(String),
    /// `redis+sentinel://host:port[,host:port…]/<master-name>`: the primary is wherever the
    /// sentinels say it is right now.
    Sentinel {
        /// `host:port` of each sentinel, asked in this order.
        sentinels: Vec<String>,
        master: String,
    },
    /// `redis+cluster://host:port[,host:port…]`: a Redis Cluster, found through these seed
    /// nodes; the client learns the rest of the topology from them and follows it.
    Cluster {
        /// `host:port` of each seed node, tried in this order.
        seeds: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error(
        "{0:?} is not a supported Redis URL: use redis://host:port[/db], \
         redis+sentinel://host:port[,host:port…]/<master-name> or \
         redis+cluster://host:port[,host:port…] (TLS is not supported)"
    )]
    Scheme(String),
    #[error("{0:?}: a Sentinel URL names at least one sentinel as host:port")]
    Sentinels(String),
    #[error("{0:?}: a Sentinel URL ends with /<master-name>")]
    MasterName(String),
    #[error("{0:?}: credentials in a Sentinel or Redis Cluster URL are not supported")]
    Credentials(String),
    #[error("{0:?}: a Redis Cluster URL names at least one seed node as host:port")]
    Seeds(String),
    #[error(
        "{0:?}: a Redis Cluster URL takes no database or options (a cluster has database 0 only)"
    )]
    ClusterPath(String),
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, TargetError> {
        if url.starts_with("redis://") {
            return Ok(Target::Single(url.to_owned()));
        }
        if let Some(rest) = url.strip_prefix("redis+cluster://") {
            return parse_cluster(url, rest);
        }
        let Some(rest) = url.strip_prefix("redis+sentinel://") else {
            return Err(TargetError::Scheme(url.to_owned()));
        };
        let (hosts, master) = rest
            .split_once('/')
            .ok_or_else(|| TargetError::MasterName(url.to_owned()))?;
        let master = master.trim_end_matches('/');
        if master.is_empty() || master.contains(['/', '?', '@']) {
            return Err(TargetError::MasterName(url.to_owned()));
        }
        if hosts.contains('@') {
            // The primary would be reached without them: refuse rather than half-apply.
            return Err(TargetError::Credentials(url.to_owned()));
        }
        let sentinels = host_ports(hosts).ok_or_else(|| TargetError::Sentinels(url.to_owned()))?;
        Ok(Target::Sentinel {
            sentinels,
            master: master.to_owned(),
        })
    }

    /// Whether the primary of a key can change under the nodes without the address changing
    /// meaning (Sentinel, Redis Cluster): then an epoch is bound to the replication id of the
    /// primary it was made on (see `scripts::settle_epoch`).
    pub fn moves(&self) -> bool {
        !matches!(self, Target::Single(_))
    }

    /// Whether the keys are spread over the slots of a Redis Cluster, each room's keys and the
    /// epoch that guards them sharing one slot (see [`super::keys`]).
    pub fn bucketed(&self) -> bool {
        matches!(self, Target::Cluster { .. })
    }
}

fn parse_cluster(url: &str, rest: &str) -> Result<Target, TargetError> {
    if rest.contains('@') {
        // Every node would be reached without them: refuse rather than half-apply.
        return Err(TargetError::Credentials(url.to_owned()));
    }
    let hosts = match rest.split_once(['/', '?']) {
        None => rest,
        // A trailing slash says nothing; a database or an option would be ignored.
        Some((hosts, "")) if rest.ends_with('/') => hosts,
        Some(_) => return Err(TargetError::ClusterPath(url.to_owned())),
    };
    let seeds = host_ports(hosts).ok_or_else(|| TargetError::Seeds(url.to_owned()))?;
    Ok(Target::Cluster { seeds })
}

/// `host:port[,host:port…]`, each with a host and a port number.
fn host_ports(hosts: &str) -> Option<Vec<String>> {
    let all: Vec<String> = hosts.split(',').map(str::to_owned).collect();
    let well_formed = |s: &String| {
        s.rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
    };
    all.iter().all(well_formed).then_some(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_redis_urls_pass_through() {
        assert_eq!(
            Target::parse("redis://h:1/2"),
            Ok(Target::Single("redis://h:1/2".into()))
        );
    }

    #[test]
    fn sentinel_urls_name_sentinels_and_a_master() {
        assert_eq!(
            Target::parse("redis+sentinel://a:26379,b:26380/main"),
            Ok(Target::Sentinel {
                sentinels: vec!["a:26379".into(), "b:26380".into()],
                master: "main".into(),
            })
        );
        assert!(Target::parse("redis+sentinel://a:26379").is_err());
        assert!(Target::parse("redis+sentinel://a:26379/").is_err());
        assert!(Target::parse("redis+sentinel://a/main").is_err());
        assert!(Target::parse("redis+sentinel://a:1,/main").is_err());
        assert!(Target::parse("rediss://a:1").is_err());
        assert!(Target::parse("redis+sentinel://u:p@a:1/main").is_err());
    }

    #[test]
    fn cluster_urls_name_seed_nodes() {
        let seeds = |s: &[&str]| {
            Ok(Target::Cluster {
                seeds: s.iter().map(|h| h.to_string()).collect(),
            })
        };
        assert_eq!(Target::parse("redis+cluster://a:7000"), seeds(&["a:7000"]));
        assert_eq!(
            Target::parse("redis+cluster://a:7000,10.0.0.2:7001/"),
            seeds(&["a:7000", "10.0.0.2:7001"])
        );
        for bad in [
            "redis+cluster://",
            "redis+cluster://a",
            "redis+cluster://a:1,",
            "redis+cluster://a:x",
            "redis+cluster://a:1/0",
            "redis+cluster://a:1?protocol=resp3",
            "redis+cluster://u:p@a:1",
            "rediss+cluster://a:1",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad} passes");
        }
        assert!(matches!(
            Target::parse("redis+cluster://u:p@a:1"),
            Err(TargetError::Credentials(_))
        ));
    }
}
