//! Where a room's sequence numbers come from.

use crate::room_key::RoomKey;

/// Numbers the changes a room accepts, after their merge and before they are persisted.
///
/// On one node it is [`LocalCounter`]: the next number after the room's last, taken only by a
/// change that won its merge, so a room's numbers run 1, 2, 3, … without holes. A cluster takes
/// numbers from a sequencer the nodes share instead.
pub trait Numbering: Send + Sync + 'static {
    /// The number of the next accepted change of `room`, whose last change has number `last`.
    fn next(&self, room: &RoomKey, last: u64) -> u64;
}

/// A single node's numbering: one more than the room's last number.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalCounter;

impl Numbering for LocalCounter {
    fn next(&self, _: &RoomKey, last: u64) -> u64 {
        last + 1
    }
}
