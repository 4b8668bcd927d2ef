//! Authentication end to end: 401 without credentials, whoami, static tokens, service account tokens, impersonation, audit log.
