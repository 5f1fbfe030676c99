//! Any bytes as a relay frame: the codec answers without panicking, and whatever it asks a room
//! to merge is merged, stored and read back unchanged.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use synchub_actors::relay::RelayModel;
use synchub_fuzz::{Caller, feed, merge_and_reload, relay};

fuzz_target!(|data: &[u8]| {
    let changes = feed(&mut relay(), &Caller::new(1), data);
    merge_and_reload(
        synchub_actors::relay::NAMESPACE,
        Arc::new(RelayModel),
        changes,
    );
});
