//! The hickory-server request handler: answer from the zone, chase ExternalName CNAMEs, forward
//! the rest.

use std::sync::{Arc, RwLock};

use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::{Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use super::forward::Forwarder;
use super::zone::{Lookup, Zone};

/// CNAME chains inside the zone are followed at most this far.
const MAX_CHASE: usize = 8;
/// The UDP payload size advertised in answers (the DNS flag day 2020 value).
const MAX_UDP_PAYLOAD: u16 = 1232;

pub struct Handler {
    zone: Arc<RwLock<Arc<Zone>>>,
    forwarder: Forwarder,
}

/// A complete answer to send.
struct Reply {
    metadata: Metadata,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
}

impl Handler {
    pub fn new(zone: Arc<RwLock<Arc<Zone>>>, forwarder: Forwarder) -> Handler {
        Handler { zone, forwarder }
    }

    fn zone(&self) -> Arc<Zone> {
        match self.zone.read() {
            Ok(z) => z.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    async fn reply(&self, request: &Request) -> Reply {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = true;
        let mut reply = Reply {
            metadata,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
        };
        let Some(query) = request.queries.queries().first() else {
            reply.metadata.response_code = ResponseCode::FormErr;
            return reply;
        };
        let name = query.original().name().clone();
        let qtype = query.query_type();
        let zone = self.zone();
        match zone.lookup(&name, qtype) {
            Lookup::Forward => {
                let tcp = request.protocol() == Protocol::Tcp;
                match self.forwarder.exchange(request.as_slice(), tcp).await {
                    Ok(m) => {
                        reply.metadata = m.metadata;
                        reply.metadata.id = request.metadata.id;
                        reply.answers = m.answers;
                        reply.authorities = m.authorities;
                        reply.additionals = m.additionals;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, %name, "forwarding failed");
                        reply.metadata.response_code = ResponseCode::ServFail;
                    }
                }
            }
            lookup => {
                reply.metadata.authoritative = true;
                self.local(&zone, lookup, qtype, &mut reply).await;
            }
        }
        reply
    }

    /// Fills `reply` from a zone lookup, following CNAMEs locally or upstream.
    async fn local(&self, zone: &Zone, mut lookup: Lookup, qtype: RecordType, reply: &mut Reply) {
        for _ in 0..MAX_CHASE {
            match lookup {
                Lookup::Answer {
                    answers,
                    additionals,
                } => {
                    reply.answers.extend(answers);
                    reply.additionals.extend(additionals);
                    return;
                }
                Lookup::NoData => {
                    if reply.answers.is_empty() {
                        reply.authorities.push(zone.soa());
                    }
                    return;
                }
                Lookup::NxDomain => {
                    reply.metadata.response_code = ResponseCode::NXDomain;
                    reply.authorities.push(zone.soa());
                    return;
                }
                Lookup::Cname { record, target } => {
                    reply.answers.push(*record);
                    if matches!(qtype, RecordType::CNAME | RecordType::ANY) {
                        return;
                    }
                    if zone.is_ours(&target) {
                        lookup = zone.lookup(&target, qtype);
                        continue;
                    }
                    match self.forwarder.resolve(&target, qtype).await {
                        Ok(m) => {
                            reply.metadata.response_code = m.metadata.response_code;
                            reply.answers.extend(m.answers);
                        }
                        // The CNAME alone still lets the client chase it.
                        Err(e) => tracing::debug!(error = %e, %target, "chasing a CNAME"),
                    }
                    return;
                }
                Lookup::Forward => return,
            }
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let reply = self.reply(request).await;
        let edns = request.edns.as_ref().map(|e| {
            let mut out = Edns::new();
            out.set_max_payload(e.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            out
        });
        let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let metadata = reply.metadata;
        let response = builder.build(
            metadata,
            reply.answers.iter(),
            reply.authorities.iter(),
            std::iter::empty(),
            reply.additionals.iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "sending a DNS response");
                let mut failed = Metadata::response_from_request(&request.metadata);
                failed.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata: failed,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}
