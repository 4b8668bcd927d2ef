//! Forwarding to upstream resolvers: the client's own query bytes go to the first upstream
//! that answers, over UDP (or TCP when the client used TCP or the UDP answer was truncated).

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hickory_server::proto::op::{Message, Query};
use hickory_server::proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How long one upstream gets to answer before the next is tried.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream resolvers")]
    NoUpstreams,
    #[error("upstream {0}: {1}")]
    Io(SocketAddr, #[source] std::io::Error),
    #[error("upstream {0} timed out")]
    Timeout(SocketAddr),
    #[error("upstream {0} sent an invalid message: {1}")]
    Invalid(SocketAddr, String),
    #[error("encoding a query: {0}")]
    Encode(String),
}

/// The upstream resolvers, remembering which one answered last.
#[derive(Clone, Debug)]
pub struct Forwarder {
    upstreams: Arc<Vec<SocketAddr>>,
    preferred: Arc<AtomicUsize>,
}

impl Forwarder {
    pub fn new(upstreams: Vec<SocketAddr>) -> Forwarder {
        Forwarder {
            upstreams: Arc::new(upstreams),
            preferred: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Sends `query` (a whole DNS message) upstream and returns the parsed reply.
    pub async fn exchange(&self, query: &[u8], tcp: bool) -> Result<Message, ForwardError> {
        let n = self.upstreams.len();
        if n == 0 {
            return Err(ForwardError::NoUpstreams);
        }
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let mut last = ForwardError::NoUpstreams;
        for i in 0..n {
            let idx = (first + i) % n;
            let up = self.upstreams[idx];
            let reply = if tcp {
                tcp_exchange(up, query).await
            } else {
                match udp_exchange(up, query).await {
                    Ok(m) if m.metadata.truncation => tcp_exchange(up, query).await,
                    r => r,
                }
            };
            match reply {
                Ok(m) => {
                    self.preferred.store(idx, Ordering::Relaxed);
                    return Ok(m);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "DNS upstream failed");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Resolves `name`/`qtype` upstream with recursion desired (to chase CNAME targets).
    pub async fn resolve(&self, name: &Name, qtype: RecordType) -> Result<Message, ForwardError> {
        let mut m = Message::query();
        m.metadata.id = random_id();
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(name.clone(), qtype));
        let bytes = m
            .to_vec()
            .map_err(|e| ForwardError::Encode(e.to_string()))?;
        self.exchange(&bytes, false).await
    }
}

fn random_id() -> u16 {
    // RandomState is seeded randomly per instance; good enough for a query id.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish() as u16
}

fn query_id(query: &[u8]) -> Option<[u8; 2]> {
    Some([*query.first()?, *query.get(1)?])
}

async fn udp_exchange(up: SocketAddr, query: &[u8]) -> Result<Message, ForwardError> {
    let io = |e| ForwardError::Io(up, e);
    let bind: SocketAddr = if up.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let sock = UdpSocket::bind(bind).await.map_err(io)?;
    sock.connect(up).await.map_err(io)?;
    sock.send(query).await.map_err(io)?;
    let id = query_id(query);
    let mut buf = vec![0u8; 65535];
    let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
    loop {
        let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
            .await
            .map_err(|_| ForwardError::Timeout(up))?
            .map_err(io)?;
        // A stray datagram with another id is not our answer; keep waiting.
        if n >= 2 && Some([buf[0], buf[1]]) == id {
            return Message::from_vec(&buf[..n])
                .map_err(|e| ForwardError::Invalid(up, e.to_string()));
        }
    }
}

async fn tcp_exchange(up: SocketAddr, query: &[u8]) -> Result<Message, ForwardError> {
    let io = |e| ForwardError::Io(up, e);
    let work = async {
        let mut s = TcpStream::connect(up).await.map_err(io)?;
        let len = u16::try_from(query.len())
            .map_err(|_| ForwardError::Encode("query longer than 65535 bytes".into()))?;
        let mut out = Vec::with_capacity(query.len() + 2);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(query);
        s.write_all(&out).await.map_err(io)?;
        let mut lb = [0u8; 2];
        s.read_exact(&mut lb).await.map_err(io)?;
        let mut buf = vec![0u8; u16::from_be_bytes(lb) as usize];
        s.read_exact(&mut buf).await.map_err(io)?;
        Message::from_vec(&buf).map_err(|e| ForwardError::Invalid(up, e.to_string()))
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, work)
        .await
        .map_err(|_| ForwardError::Timeout(up))?
}
