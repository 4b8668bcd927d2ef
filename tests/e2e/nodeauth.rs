//! Node credentials end to end: join token, node identity, Node authorizer, kubelet API authentication.
