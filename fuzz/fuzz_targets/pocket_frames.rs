//! Any bytes as a Pocket frame: the codec answers without panicking, and whatever it asks a
//! room to merge is merged, stored and read back unchanged.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use synchub_actors::pocket::PocketModel;
use synchub_actors::pocket::wire::{self, PocketLimits};
use synchub_fuzz::{Caller, feed, merge_and_reload, pocket};

fuzz_target!(|data: &[u8]| {
    let _ = wire::parse(data, &PocketLimits::default(), 0);
    let _ = wire::request_id(data);
    let changes = feed(&mut pocket(), &Caller::new(1), data);
    merge_and_reload(
        synchub_actors::pocket::NAMESPACE,
        Arc::new(PocketModel::default()),
        changes,
    );
});
