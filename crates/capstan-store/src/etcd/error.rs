//! Errors of the etcd backend and how etcd's answers map onto [`StoreError`].

use crate::StoreError;
use std::path::PathBuf;
use std::time::Duration;
use tonic::Code;

/// Failures specific to talking to etcd (carried in `StoreError::Backend`).
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("invalid etcd configuration: {0}")]
    Config(String),
    #[error("cannot read {path}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd {op} failed")]
    Request {
        op: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd {op} got no answer within {timeout:?}")]
    Timeout { op: &'static str, timeout: Duration },
    #[error("etcd {op} answered without {what}")]
    Malformed {
        op: &'static str,
        what: &'static str,
    },
    #[error("etcd key is not UTF-8")]
    KeyNotUtf8(#[source] std::str::Utf8Error),
    #[error("etcd canceled the watch: {0}")]
    WatchCanceled(String),
    #[error("cannot write snapshot {path}")]
    SnapshotWrite {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<EtcdError> for StoreError {
    fn from(err: EtcdError) -> Self {
        StoreError::Backend(Box::new(err))
    }
}

/// What kind of answer an etcd error is, for the few that have a meaning to the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `mvcc: required revision has been compacted`.
    Compacted,
    /// `mvcc: required revision is a future revision`.
    FutureRevision,
    /// The request may succeed on another try or member (no leader, member down, timeout).
    Transient,
    /// Anything else: a real failure.
    Fatal,
}

pub(crate) fn kind(err: &etcd_client::Error) -> Kind {
    match err {
        etcd_client::Error::GRpcStatus(status) => status_kind(status),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => Kind::Transient,
        etcd_client::Error::WatchError(_) => Kind::Transient,
        _ => Kind::Fatal,
    }
}

pub(crate) fn status_kind(status: &tonic::Status) -> Kind {
    let message = status.message();
    if tls_refused(status) {
        // A certificate problem does not go away by retrying: report it at once.
        return Kind::Fatal;
    }
    match status.code() {
        Code::OutOfRange if message.contains("compacted") => Kind::Compacted,
        Code::OutOfRange if message.contains("future revision") => Kind::FutureRevision,
        // etcd's "no leader", "leader changed", "request timed out", and every transport
        // failure (refused or reset connection) come as Unavailable.
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => {
            Kind::Transient
        }
        // A connection dropped mid-request surfaces as Unknown with a transport message.
        Code::Unknown
            if message.contains("transport")
                || message.contains("connection")
                || message.contains("h2 protocol error")
                || message.contains("broken pipe") =>
        {
            Kind::Transient
        }
        _ => Kind::Fatal,
    }
}

/// Whether the failure is a TLS handshake refusal (bad, missing or untrusted certificate).
fn tls_refused(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        let text = err.to_string();
        if text.contains("certificate") || text.contains("fatal alert") {
            return true;
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Status;

    #[test]
    fn etcd_answers_are_classified() {
        let cases = [
            (
                Status::out_of_range("etcdserver: mvcc: required revision has been compacted"),
                Kind::Compacted,
            ),
            (
                Status::out_of_range("etcdserver: mvcc: required revision is a future revision"),
                Kind::FutureRevision,
            ),
            (
                Status::unavailable("etcdserver: no leader"),
                Kind::Transient,
            ),
            (
                Status::unavailable("etcdserver: request timed out"),
                Kind::Transient,
            ),
            (
                Status::unknown("h2 protocol error: error reading a body from connection"),
                Kind::Transient,
            ),
            (
                Status::invalid_argument("etcdserver: key is not provided"),
                Kind::Fatal,
            ),
            (
                Status::permission_denied("etcdserver: permission denied"),
                Kind::Fatal,
            ),
        ];
        for (status, want) in cases {
            assert_eq!(status_kind(&status), want, "{status:?}");
        }
    }
}
