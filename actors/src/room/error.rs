//! Why a room could not answer a request.

use std::sync::Arc;

use crate::store::StorageError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum RoomError {
    /// Shared so that the answer, which may go to several waiters, keeps its cause.
    #[error("storage failure: {0}")]
    Storage(#[source] Arc<StorageError>),
    /// A storage task on the blocking pool panicked or was cancelled.
    #[error("a storage task did not finish: {0}")]
    StorageTask(#[source] Arc<tokio::task::JoinError>),
    /// The write of a change held for this answer failed; the room reloads what is durable.
    #[error("the write failed")]
    WriteFailed,
    #[error("the room is not running")]
    Gone,
    /// Retryable: the cluster is not ordering changes, or storage refuses writes, right now.
    #[error("the room cannot take this right now; retry")]
    Unavailable,
    /// The write would make a room that is one document larger than it may be.
    #[error("the document would hold {size} bytes, max {max}")]
    TooLarge { size: u64, max: u64 },
}

impl From<StorageError> for RoomError {
    fn from(e: StorageError) -> RoomError {
        RoomError::Storage(Arc::new(e))
    }
}
