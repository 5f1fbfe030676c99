//! A node that starts brings the rooms it holds up to date by itself: every stored room whose
//! counter in Redis is past what the node holds is loaded, which catches it up (the room then
//! unloads again when it stays idle). Without this, a node restarted after a crash would report
//! stale positions for its rooms until a client asked for each of them.

use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::cluster::ClusterHandle;
use crate::directory::{Checkout, Directory};
use crate::mailbox::CountedAddr;
use crate::room::{RoomRequest, ask};
use crate::room_key::RoomKey;
use crate::store::Store;

/// How long the sweep waits for the node to settle the epoch before it gives up.
const SETTLE_WAIT: Duration = Duration::from_secs(60);
/// Rooms catching up at once.
const IN_FLIGHT: usize = 4;
/// Counters read per Redis call.
const CHUNK: usize = 1_000;

/// Catches up every stored room that is behind; returns how many were.
pub async fn catch_up_stored_rooms(
    handle: ClusterHandle,
    store: Store,
    directory: CountedAddr<Directory>,
) -> usize {
    let deadline = Instant::now() + SETTLE_WAIT;
    while handle.epoch().is_none() {
        if Instant::now() >= deadline {
            log::warn!("cluster: no epoch yet; stored rooms catch up when they are asked for");
            return 0;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stored = match tokio::task::spawn_blocking(move || store.rooms()).await {
        Ok(Ok(rooms)) => rooms,
        Ok(Err(e)) => {
            log::warn!("cluster: cannot list stored rooms: {e}");
            return 0;
        }
        Err(e) => {
            log::warn!("cluster: listing stored rooms failed: {e}");
            return 0;
        }
    };
    let mut behind: Vec<RoomKey> = Vec::new();
    for chunk in stored.chunks(CHUNK) {
        let keys: Vec<RoomKey> = chunk.iter().map(|(k, _)| k.clone()).collect();
        match handle.counters_of(&keys).await {
            Ok(counters) => behind.extend(
                chunk
                    .iter()
                    .zip(counters)
                    .filter(|((_, held), counter)| counter > held)
                    .map(|((key, _), _)| key.clone()),
            ),
            Err(e) => {
                log::warn!("cluster: cannot read room counters: {e}");
                return 0;
            }
        }
    }
    let n = behind.len();
    if n > 0 {
        log::info!("cluster: {n} stored room(s) behind the cluster; catching up");
    }
    futures_util::stream::iter(behind)
        .for_each_concurrent(IN_FLIGHT, |key| {
            let directory = directory.clone();
            async move {
                // Loading the room catches it up before it answers.
                let Ok(Ok(room)) = directory.send(Checkout { key: key.clone() }).await else {
                    return;
                };
                if ask(&room, RoomRequest::Status).await.is_err() {
                    log::warn!("cluster: {key} did not catch up at start");
                }
            }
        })
        .await;
    n
}
