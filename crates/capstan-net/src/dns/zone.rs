//! The cluster zone as upstream's DNS specification defines it: Service names (ClusterIP,
//! headless endpoints, ExternalName CNAMEs), SRV for named ports, endpoint hostnames, pod A
//! records and PTRs, built from snapshots of Services, EndpointSlices and Pods.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use hickory_server::proto::ProtoError;
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One owner name's data.
#[derive(Clone, Debug, Default, PartialEq)]
struct Node {
    v4: Vec<Ipv4Addr>,
    v6: Vec<Ipv6Addr>,
    cname: Option<String>,
    srv: Vec<(u16, String)>,
}

/// What the zone says about a query.
#[derive(Debug)]
pub enum Lookup {
    /// NOERROR with these answers (and additional records for SRV targets).
    Answer {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    /// A CNAME (ExternalName) whose target the caller resolves for address queries.
    Cname { record: Box<Record>, target: Name },
    /// The name exists without records of that type: NOERROR, SOA in authority.
    NoData,
    /// The name is in the cluster domain and does not exist: NXDOMAIN, SOA in authority.
    NxDomain,
    /// Not ours: forward it.
    Forward,
}

/// An immutable snapshot of the cluster zone.
#[derive(Debug)]
pub struct Zone {
    domain: String,
    origin: Name,
    ttl: u32,
    serial: u32,
    names: HashMap<String, Node>,
    /// Names that only exist as parents of other names (empty non-terminals).
    interior: HashSet<String>,
    ptr: HashMap<IpAddr, String>,
}

/// `10-1-2-3` / `fd00--1`: an address as one DNS label.
pub fn dashed(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

fn key(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

fn fqdn(s: &str) -> Result<Name, ProtoError> {
    Name::from_ascii(format!("{}.", s.trim_end_matches('.')))
}

impl Zone {
    /// A zone with no records yet (before the first watch lists arrive).
    pub fn empty(domain: &str, ttl: u32) -> Result<Zone, ProtoError> {
        Ok(Zone {
            domain: domain.to_string(),
            origin: fqdn(domain)?,
            ttl,
            serial: 1,
            names: HashMap::new(),
            interior: HashSet::new(),
            ptr: HashMap::new(),
        })
    }

    /// Builds the zone for `domain` from the current objects.
    pub fn build(
        domain: &str,
        ttl: u32,
        serial: u32,
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
        pods: &[Arc<Pod>],
    ) -> Result<Zone, ProtoError> {
        let mut z = Zone::empty(domain, ttl)?;
        z.serial = serial;
        let mut by_service: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
        for s in slices {
            let (Some(ns), Some(svc)) = (
                s.metadata.namespace.clone(),
                s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL))
                    .cloned(),
            ) else {
                continue;
            };
            by_service.entry((ns, svc)).or_default().push(s);
        }
        for svc in services {
            let (Some(ns), Some(name)) = (&svc.metadata.namespace, &svc.metadata.name) else {
                continue;
            };
            let empty = Vec::new();
            let svc_slices = by_service
                .get(&(ns.clone(), name.clone()))
                .unwrap_or(&empty);
            z.add_service(svc, ns, name, svc_slices);
        }
        for p in pods {
            z.add_pod(p);
        }
        let all: Vec<String> = z.names.keys().cloned().collect();
        for n in all {
            let mut rest = n.as_str();
            while let Some((_, parent)) = rest.split_once('.') {
                if parent.len() < z.domain.len() {
                    break;
                }
                z.interior.insert(parent.to_string());
                rest = parent;
            }
        }
        z.interior.insert(z.domain.clone());
        Ok(z)
    }

    fn node(&mut self, name: String) -> &mut Node {
        self.names.entry(name).or_default()
    }

    fn add_ip(&mut self, name: &str, ip: IpAddr) {
        let n = self.node(name.to_string());
        match ip {
            IpAddr::V4(v4) if !n.v4.contains(&v4) => n.v4.push(v4),
            IpAddr::V6(v6) if !n.v6.contains(&v6) => n.v6.push(v6),
            _ => {}
        }
    }

    fn add_service(&mut self, svc: &Service, ns: &str, name: &str, slices: &[&EndpointSlice]) {
        let Some(spec) = &svc.spec else { return };
        let base = format!("{name}.{ns}.svc.{}", self.domain).to_ascii_lowercase();
        if spec.type_.as_deref() == Some("ExternalName") {
            if let Some(ext) = spec.external_name.as_deref().filter(|e| !e.is_empty()) {
                self.node(base).cname = Some(ext.trim_end_matches('.').to_ascii_lowercase());
            }
            return;
        }
        let mut ips: Vec<&str> = spec
            .cluster_ips
            .iter()
            .flatten()
            .map(String::as_str)
            .collect();
        if ips.is_empty() {
            ips.extend(spec.cluster_ip.as_deref());
        }
        let headless = ips.is_empty() || ips.contains(&"None");
        if !headless {
            for ip in ips.iter().filter_map(|s| s.parse::<IpAddr>().ok()) {
                self.add_ip(&base, ip);
                self.ptr.entry(ip).or_insert_with(|| base.clone());
            }
            for p in spec.ports.iter().flatten() {
                let Some(pname) = p.name.as_deref().filter(|n| !n.is_empty()) else {
                    continue;
                };
                let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                let Ok(port) = u16::try_from(p.port) else {
                    continue;
                };
                let srv = format!("_{pname}._{proto}.{base}").to_ascii_lowercase();
                self.node(srv).srv.push((port, base.clone()));
            }
            return;
        }
        let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
        // The service name exists even with no ready endpoints.
        self.node(base.clone());
        let mut seen = BTreeSet::new();
        for slice in slices {
            for ep in &slice.endpoints {
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !ready && !publish_not_ready {
                    continue;
                }
                for ip in ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                    if !seen.insert(ip) {
                        continue;
                    }
                    let label = ep
                        .hostname
                        .clone()
                        .filter(|h| !h.is_empty())
                        .unwrap_or_else(|| dashed(&ip))
                        .to_ascii_lowercase();
                    let host = format!("{label}.{base}");
                    self.add_ip(&base, ip);
                    self.add_ip(&host, ip);
                    self.ptr.entry(ip).or_insert_with(|| host.clone());
                    for p in slice.ports.iter().flatten() {
                        let (Some(pname), Some(port)) = (
                            p.name.as_deref().filter(|n| !n.is_empty()),
                            p.port.and_then(|x| u16::try_from(x).ok()),
                        ) else {
                            continue;
                        };
                        let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                        let srv = format!("_{pname}._{proto}.{base}").to_ascii_lowercase();
                        let n = self.node(srv);
                        if !n.srv.contains(&(port, host.clone())) {
                            n.srv.push((port, host.clone()));
                        }
                    }
                }
            }
        }
    }

    fn add_pod(&mut self, pod: &Pod) {
        let Some(ns) = &pod.metadata.namespace else {
            return;
        };
        let Some(status) = &pod.status else { return };
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            return;
        }
        let mut ips: Vec<&str> = status
            .pod_ips
            .iter()
            .flatten()
            .map(|p| p.ip.as_str())
            .collect();
        if ips.is_empty() {
            ips.extend(status.pod_ip.as_deref());
        }
        for ip in ips.iter().filter_map(|s| s.parse::<IpAddr>().ok()) {
            let name = format!("{}.{ns}.pod.{}", dashed(&ip), self.domain).to_ascii_lowercase();
            self.add_ip(&name, ip);
        }
    }

    /// The zone's SOA record, for the authority section of negative answers.
    pub fn soa(&self) -> Record {
        let mname =
            fqdn(&format!("ns.dns.{}", self.domain)).unwrap_or_else(|_| self.origin.clone());
        let rname =
            fqdn(&format!("hostmaster.{}", self.domain)).unwrap_or_else(|_| self.origin.clone());
        Record::from_rdata(
            self.origin.clone(),
            self.ttl,
            RData::SOA(SOA::new(
                mname,
                rname,
                self.serial,
                7200,
                1800,
                86400,
                self.ttl,
            )),
        )
    }

    /// Whether `name` is inside the cluster domain.
    pub fn is_ours(&self, name: &Name) -> bool {
        let k = key(name);
        k == self.domain || k.ends_with(&format!(".{}", self.domain))
    }

    /// Answers `qtype` for `name` from the zone.
    pub fn lookup(&self, name: &Name, qtype: RecordType) -> Lookup {
        let k = key(name);
        if k.ends_with(".in-addr.arpa") || k.ends_with(".ip6.arpa") {
            return self.reverse(name, qtype);
        }
        if !self.is_ours(name) {
            return Lookup::Forward;
        }
        let owner = name.clone();
        let Some(node) = self.names.get(&k) else {
            if k == self.domain && matches!(qtype, RecordType::SOA | RecordType::ANY) {
                return Lookup::Answer {
                    answers: vec![self.soa()],
                    additionals: Vec::new(),
                };
            }
            return if self.interior.contains(&k) {
                Lookup::NoData
            } else {
                Lookup::NxDomain
            };
        };
        if let Some(target) = &node.cname {
            let Ok(target) = fqdn(target) else {
                return Lookup::NoData;
            };
            let record = Record::from_rdata(owner, self.ttl, RData::CNAME(CNAME(target.clone())));
            return Lookup::Cname {
                record: Box::new(record),
                target,
            };
        }
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        let any = qtype == RecordType::ANY;
        if qtype == RecordType::A || any {
            answers.extend(self.addresses(&owner, node, RecordType::A));
        }
        if qtype == RecordType::AAAA || any {
            answers.extend(self.addresses(&owner, node, RecordType::AAAA));
        }
        if qtype == RecordType::SRV || any {
            for (port, target) in &node.srv {
                let Ok(t) = fqdn(target) else { continue };
                answers.push(Record::from_rdata(
                    owner.clone(),
                    self.ttl,
                    RData::SRV(SRV::new(0, 100, *port, t.clone())),
                ));
                if let Some(tn) = self.names.get(target) {
                    additionals.extend(self.addresses(&t, tn, RecordType::A));
                    additionals.extend(self.addresses(&t, tn, RecordType::AAAA));
                }
            }
        }
        if answers.is_empty() {
            Lookup::NoData
        } else {
            Lookup::Answer {
                answers,
                additionals,
            }
        }
    }

    fn addresses(&self, owner: &Name, node: &Node, t: RecordType) -> Vec<Record> {
        let data: Vec<RData> = match t {
            RecordType::A => node.v4.iter().map(|ip| RData::A(A(*ip))).collect(),
            _ => node.v6.iter().map(|ip| RData::AAAA(AAAA(*ip))).collect(),
        };
        data.into_iter()
            .map(|d| Record::from_rdata(owner.clone(), self.ttl, d))
            .collect()
    }

    fn reverse(&self, name: &Name, qtype: RecordType) -> Lookup {
        let ip = match name.parse_arpa_name() {
            Ok(net) if net.prefix_len() == net.max_prefix_len() => net.addr(),
            _ => return Lookup::Forward,
        };
        let Some(target) = self.ptr.get(&ip) else {
            return Lookup::Forward;
        };
        if !matches!(qtype, RecordType::PTR | RecordType::ANY) {
            return Lookup::NoData;
        }
        match fqdn(target) {
            Ok(t) => Lookup::Answer {
                answers: vec![Record::from_rdata(
                    name.clone(),
                    self.ttl,
                    RData::PTR(PTR(t)),
                )],
                additionals: Vec::new(),
            },
            Err(_) => Lookup::NoData,
        }
    }

    /// Number of owner names (for logs).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The cluster domain without a trailing dot.
    pub fn domain(&self) -> &str {
        &self.domain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn name(s: &str) -> Name {
        fqdn(s).unwrap()
    }

    fn ips(l: &Lookup) -> Vec<String> {
        let Lookup::Answer { answers, .. } = l else {
            panic!("not an answer: {l:?}")
        };
        let mut v: Vec<String> = answers.iter().map(|r| r.data.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn services_endpoints_pods_and_reverse() {
        let services = vec![
            obj(
                serde_json::json!({"metadata": {"name": "web", "namespace": "shop"},
                "spec": {"clusterIP": "10.43.0.20", "clusterIPs": ["10.43.0.20"],
                         "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}),
            ),
            obj(
                serde_json::json!({"metadata": {"name": "db", "namespace": "shop"},
                "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}}),
            ),
            obj(
                serde_json::json!({"metadata": {"name": "ext", "namespace": "shop"},
                "spec": {"type": "ExternalName", "externalName": "example.org."}}),
            ),
        ];
        let slices = vec![obj(serde_json::json!({
        "metadata": {"name": "db-1", "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "db"}},
        "addressType": "IPv4",
        "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.42.0.5"], "hostname": "db-0", "conditions": {"ready": true}},
            {"addresses": ["10.42.0.6"], "conditions": {"ready": true}},
            {"addresses": ["10.42.0.7"], "conditions": {"ready": false}}
        ]}))];
        let pods = vec![obj(serde_json::json!({
            "metadata": {"name": "p", "namespace": "shop"},
            "status": {"phase": "Running", "podIP": "10.42.0.9", "podIPs": [{"ip": "10.42.0.9"}]}}))];
        let z = Zone::build("cluster.local", 5, 1, &services, &slices, &pods).unwrap();
        let web = z.lookup(&name("web.shop.svc.cluster.local"), RecordType::A);
        assert_eq!(ips(&web), vec!["10.43.0.20"]);
        let db = z.lookup(&name("DB.shop.svc.cluster.local"), RecordType::A);
        assert_eq!(ips(&db), vec!["10.42.0.5", "10.42.0.6"]);
        let host = z.lookup(&name("db-0.db.shop.svc.cluster.local"), RecordType::A);
        assert_eq!(ips(&host), vec!["10.42.0.5"]);
        let srv = z.lookup(&name("_pg._tcp.db.shop.svc.cluster.local"), RecordType::SRV);
        assert_eq!(
            ips(&srv),
            vec![
                "0 100 5432 10-42-0-6.db.shop.svc.cluster.local.",
                "0 100 5432 db-0.db.shop.svc.cluster.local."
            ]
        );
        let srv = z.lookup(
            &name("_http._tcp.web.shop.svc.cluster.local"),
            RecordType::SRV,
        );
        assert_eq!(ips(&srv), vec!["0 100 80 web.shop.svc.cluster.local."]);
        assert!(matches!(
            z.lookup(&name("ext.shop.svc.cluster.local"), RecordType::A),
            Lookup::Cname { .. }
        ));
        let pod = z.lookup(&name("10-42-0-9.shop.pod.cluster.local"), RecordType::A);
        assert_eq!(ips(&pod), vec!["10.42.0.9"]);
        assert!(matches!(
            z.lookup(&name("10-42-0-8.shop.pod.cluster.local"), RecordType::A),
            Lookup::NxDomain
        ));
        assert!(matches!(
            z.lookup(&name("shop.svc.cluster.local"), RecordType::A),
            Lookup::NoData
        ));
        assert!(matches!(
            z.lookup(&name("web.shop.svc.cluster.local"), RecordType::MX),
            Lookup::NoData
        ));
        assert!(matches!(
            z.lookup(&name("nope.shop.svc.cluster.local"), RecordType::A),
            Lookup::NxDomain
        ));
        assert!(matches!(
            z.lookup(&name("example.org"), RecordType::A),
            Lookup::Forward
        ));
        let ptr = z.lookup(&name("20.0.43.10.in-addr.arpa"), RecordType::PTR);
        assert_eq!(ips(&ptr), vec!["web.shop.svc.cluster.local."]);
        let ptr = z.lookup(&name("5.0.42.10.in-addr.arpa"), RecordType::PTR);
        assert_eq!(ips(&ptr), vec!["db-0.db.shop.svc.cluster.local."]);
        assert!(matches!(
            z.lookup(&name("7.0.42.10.in-addr.arpa"), RecordType::PTR),
            Lookup::Forward
        ));
    }
}
