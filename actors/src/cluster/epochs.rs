//! The epoch a node orders under, and on a Redis Cluster the per-bucket epochs behind it.
//!
//! With one Redis (alone or behind Sentinel) the epoch is one key. On a Redis Cluster each
//! bucket of rooms has its own epoch key, in the bucket's slot, bound to the replication id of
//! the primary serving that slot ([`super::keys`]): when a primary fails over to a replica that
//! may lack its last writes, the buckets it served no longer match, exactly as behind Sentinel.
//! The node then restores as after any epoch change, for all its rooms at once: every node
//! stops ordering until the counters are raised past what the nodes hold. The node's epoch is
//! a digest of all bucket epochs, so that every node that sees the same buckets restores into
//! the same epoch, and waits for the same others.

use futures_util::future::join_all;

use super::keys::{BUCKETS, Keys};
use super::{ClusterError, Conn, replid_of, scripts};

/// The epoch a node orders under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epoch {
    /// What `/stats` shows and the node remembers: the epoch itself, or on a Redis Cluster a
    /// digest of every bucket's.
    pub name: String,
    /// On a Redis Cluster, each bucket's epoch, `<id>/<replication id>`; empty otherwise.
    buckets: Vec<String>,
}

impl Epoch {
    pub fn single(name: String) -> Epoch {
        Epoch {
            name,
            buckets: Vec::new(),
        }
    }

    fn of_buckets(buckets: Vec<String>) -> Epoch {
        Epoch {
            name: digest(&buckets),
            buckets,
        }
    }

    /// The epoch that guards the numbers of a room in `bucket` (`None`: one Redis).
    pub fn guarding(&self, bucket: Option<usize>) -> Option<&str> {
        match bucket {
            None => Some(&self.name),
            Some(b) => self.buckets.get(b).map(String::as_str),
        }
    }
}

/// The epoch Redis holds, as a beat reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Its name; `None` when Redis (on a Redis Cluster: any bucket) has none, having lost it.
    pub epoch: Option<String>,
    /// Whether it was made on the primary (each bucket's) serving it now: one promoted since
    /// may lack the last numbers given out.
    pub current: bool,
}

/// Every bucket's epoch and the replication id of the primary serving it, read at once (one
/// call per bucket: each touches one slot).
pub async fn read_buckets(conn: &Conn, keys: &Keys) -> Result<Seen, ClusterError> {
    let script = scripts::bucket_epoch();
    let reads = (0..BUCKETS).map(|b| {
        let (mut conn, script) = (conn.clone(), &script);
        let key = keys.bucket_epoch(b);
        async move {
            let (epoch, replid): (String, String) = script.key(key).invoke_async(&mut conn).await?;
            Ok::<_, ClusterError>((epoch, replid))
        }
    });
    let mut buckets = Vec::with_capacity(BUCKETS);
    let mut current = true;
    let mut complete = true;
    for read in join_all(reads).await {
        let (epoch, replid) = read?;
        complete &= !epoch.is_empty();
        current &= !replid.is_empty() && replid_of(&epoch) == Some(replid.as_str());
        buckets.push(epoch);
    }
    Ok(Seen {
        epoch: complete.then(|| digest(&buckets)),
        current,
    })
}

/// Settles every bucket's epoch (see [`scripts::settle_epoch`]): the one there when it was made
/// on the primary serving it now, else `candidate` bound to that primary. Nodes settling at the
/// same time end up with the same epochs: the first to reach a bucket sets it.
pub async fn settle_buckets(
    conn: &Conn,
    keys: &Keys,
    candidate: &str,
) -> Result<Epoch, ClusterError> {
    let script = scripts::settle_epoch();
    let settles = (0..BUCKETS).map(|b| {
        let (mut conn, script) = (conn.clone(), &script);
        let key = keys.bucket_epoch(b);
        async move {
            let epoch: String = script
                .key(key)
                .arg(candidate)
                .arg("1")
                .invoke_async(&mut conn)
                .await?;
            Ok::<_, ClusterError>(epoch)
        }
    });
    let buckets = join_all(settles)
        .await
        .into_iter()
        .collect::<Result<Vec<String>, ClusterError>>()?;
    Ok(Epoch::of_buckets(buckets))
}

fn digest(buckets: &[String]) -> String {
    let mut h = blake3::Hasher::new();
    for epoch in buckets {
        h.update(epoch.as_bytes());
        h.update(b"\n");
    }
    h.finalize().to_hex()[..16].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucketed_epoch_guards_each_bucket_with_its_own() {
        let e = Epoch::of_buckets(vec!["a/r1".into(), "b/r2".into()]);
        assert_eq!(e.guarding(Some(1)), Some("b/r2"));
        assert_eq!(e.guarding(Some(2)), None);
        assert_eq!(e.guarding(None), Some(e.name.as_str()));
        // The name changes with any bucket.
        let other = Epoch::of_buckets(vec!["a/r1".into(), "c/r3".into()]);
        assert_ne!(e.name, other.name);
        assert_eq!(Epoch::single("x".into()).guarding(None), Some("x"));
    }
}
