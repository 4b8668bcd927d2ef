//! Pod volumes on the node.
