//! Any bytes as a SyncKit frame, binary or JSON: the codec answers without panicking, and
//! whatever it asks a room to merge is merged, stored and read back unchanged.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use synchub_actors::synckit::{SynckitModel, frame};
use synchub_fuzz::{Caller, feed, merge_and_reload, synckit};

fuzz_target!(|data: &[u8]| {
    let _ = frame::decode_binary(data, || "id".into());
    let _ = frame::decode_json(data);
    let changes = feed(&mut synckit(), &Caller::new(1), data);
    merge_and_reload(
        synchub_actors::synckit::NAMESPACE,
        Arc::new(SynckitModel::default()),
        changes,
    );
});
