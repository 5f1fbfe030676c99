//! Where the cluster's Redis is, as `cluster.redis_url` names it: one Redis at a fixed address,
//! or a primary that Sentinel knows by name and may move at any failover.

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
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error(
        "{0:?} is not a supported Redis URL: use redis://host:port[/db] or \
         redis+sentinel://host:port[,host:port…]/<master-name> (TLS is not supported)"
    )]
    Scheme(String),
    #[error("{0:?}: a Sentinel URL names at least one sentinel as host:port")]
    Sentinels(String),
    #[error("{0:?}: a Sentinel URL ends with /<master-name>")]
    MasterName(String),
    #[error("{0:?}: credentials in a Sentinel URL are not supported")]
    Credentials(String),
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, TargetError> {
        if url.starts_with("redis://") {
            return Ok(Target::Single(url.to_owned()));
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
        let sentinels: Vec<String> = hosts.split(',').map(str::to_owned).collect();
        let well_formed = |s: &String| {
            s.rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        };
        if !sentinels.iter().all(well_formed) {
            return Err(TargetError::Sentinels(url.to_owned()));
        }
        Ok(Target::Sentinel {
            sentinels,
            master: master.to_owned(),
        })
    }

    /// Whether the primary can change under the nodes without the address changing meaning:
    /// then the epoch is bound to the primary's replication id (see `scripts::settle_epoch`).
    pub fn moves(&self) -> bool {
        matches!(self, Target::Sentinel { .. })
    }
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
        assert!(Target::parse("redis+cluster://a:1").is_err());
        assert!(Target::parse("redis+sentinel://u:p@a:1/main").is_err());
    }
}
