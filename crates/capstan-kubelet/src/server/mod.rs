//! The kubelet HTTPS API.
