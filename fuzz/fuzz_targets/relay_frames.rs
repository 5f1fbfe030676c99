//! Any bytes as a relay frame: the codec answers without panicking, and whatever it asks a room
//! to merge is merged, stored and read back unchanged.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use synchub_actors::relay::RelayModel;
use synchub_actors::room_key::Namespace;
use synchub_fuzz::{Caller, Engine, feed, relay};

fuzz_target!(|data: &[u8]| {
    let changes = feed(&mut relay(), &Caller::new(1), data);
    if !changes.is_empty() {
        let mut room = Engine::new(Namespace::Relay, Arc::new(RelayModel));
        room.submit(changes);
        room.check_reload();
    }
});
