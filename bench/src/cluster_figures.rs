//! Redis round trips per change when the targets are nodes of a cluster, from the nodes' own
//! counters in `/stats`, read before and after the run.

use serde_json::{Value, json};

use super::target::Endpoint;

/// The cluster counters of every target, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ClusterCounters {
    pub ordered_changes: u64,
    pub round_trips: u64,
}

impl ClusterCounters {
    /// What changed between `before` and `self`, as the report's `cluster` object.
    pub fn since(&self, before: &ClusterCounters, nodes: usize) -> Value {
        let changes = self.ordered_changes.saturating_sub(before.ordered_changes);
        let trips = self.round_trips.saturating_sub(before.round_trips);
        json!({
            "nodes": nodes,
            "ordered_changes": changes,
            "redis_round_trips": trips,
            "redis_round_trips_per_change": if changes == 0 { 0.0 } else { trips as f64 / changes as f64 },
        })
    }
}

/// Reads every target's `/stats`; `None` unless all of them are nodes of a cluster.
pub async fn read(endpoints: &[Endpoint]) -> Option<ClusterCounters> {
    let urls: Vec<String> = endpoints
        .iter()
        .map(|e| match e.tls {
            Some(_) => format!("https://{}/stats", e.authority),
            None => format!("http://{}/stats", e.authority),
        })
        .collect();
    let trust = endpoints.iter().find_map(|e| e.tls.clone());
    // The HTTP client runs on an actix runtime of its own, beside the bench's tokio one.
    let read = tokio::task::spawn_blocking(move || {
        actix_rt::System::new().block_on(async move {
            let mut connector = awc::Connector::new();
            if let Some(trust) = trust {
                connector = connector.rustls_0_23(trust);
            }
            let client = awc::Client::builder()
                .connector(connector)
                .timeout(std::time::Duration::from_secs(10))
                .finish();
            let mut sum = ClusterCounters::default();
            for url in urls {
                let mut resp = client.get(&url).send().await.ok()?;
                let stats: Value = resp.json().limit(64 << 20).await.ok()?;
                let cluster = stats.get("cluster").filter(|c| c.is_object())?;
                sum.ordered_changes += cluster["ordered_changes"].as_u64()?;
                sum.round_trips += cluster["redis_round_trips"].as_u64()?;
            }
            Some(sum)
        })
    });
    read.await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_per_change_count_only_the_run() {
        let before = ClusterCounters {
            ordered_changes: 100,
            round_trips: 50,
        };
        let after = ClusterCounters {
            ordered_changes: 1100,
            round_trips: 300,
        };
        let v = after.since(&before, 2);
        assert_eq!(v["ordered_changes"], 1000);
        assert_eq!(v["redis_round_trips_per_change"], 0.25);
    }
}
