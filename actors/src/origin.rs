//! Who made a change: the session that sent it, on the node that accepted it.

use std::fmt;
use std::sync::Arc;

/// Identifies one session on its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// A node's id: configured, or generated once and kept in its data directory.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct NodeId(Arc<str>);

impl NodeId {
    pub fn new(id: &str) -> NodeId {
        NodeId(Arc::from(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The origin of a change. Session ids are only unique per node, so a change that travels
/// between nodes keeps both: a session is never sent its own change back, whatever node the
/// change went through.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    pub node: NodeId,
    pub session: SessionId,
}
