//! Cluster DNS against the in-process API server: records appear from the watches and are
//! queried with the hickory client over UDP and TCP; other names go to a stub upstream on
//! loopback; the kube-dns Service, Endpoints and EndpointSlice are kept as agreed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use capstan_apiserver::testing::TestServer;
use capstan_net::dns::{self, DnsOptions, KubeDnsService, Listeners};
use capstan_store::{MemoryStore, Store};
use hickory_server::net::client::{Client, ClientHandle};
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::net::tcp::TcpClientStream;
use hickory_server::net::udp::UdpClientStream;
use hickory_server::proto::op::{Message, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::A;
use hickory_server::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(20);

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("object")
}

/// UDP and TCP bound on one loopback port.
async fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind tcp");
        let addr = tcp.local_addr().expect("addr");
        if let Ok(udp) = UdpSocket::bind(addr).await {
            return (udp, tcp);
        }
    }
    panic!("no loopback port free for UDP and TCP");
}

/// The stub upstream's answer: A 192.0.2.10 for www.example.test, 192.0.2.77 for
/// target.example.test, NXDOMAIN otherwise.
fn stub_answer(query: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let mut m = Message::response(q.metadata.id, OpCode::Query);
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    let question = q.queries.first()?.clone();
    let name = question.name().to_ascii().to_ascii_lowercase();
    let ip = match name.as_str() {
        "www.example.test." => Some([192, 0, 2, 10]),
        "target.example.test." => Some([192, 0, 2, 77]),
        _ => None,
    };
    match ip {
        Some(ip) if question.query_type() == RecordType::A => {
            m.add_answer(Record::from_rdata(
                question.name().clone(),
                60,
                RData::A(A::from(std::net::Ipv4Addr::from(ip))),
            ));
        }
        Some(_) => {}
        None => m.metadata.response_code = ResponseCode::NXDomain,
    }
    m.add_query(question);
    m.to_vec().ok()
}

/// A stub resolver on loopback (UDP and TCP) until `stop`.
async fn stub_upstream(stop: CancellationToken) -> SocketAddr {
    let (udp, tcp) = bind_pair().await;
    let addr = udp.local_addr().expect("addr");
    let s = stop.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let got = tokio::select! {
                _ = s.cancelled() => return,
                r = udp.recv_from(&mut buf) => r,
            };
            let Ok((n, from)) = got else { continue };
            if let Some(reply) = stub_answer(&buf[..n]) {
                let _ = udp.send_to(&reply, from).await;
            }
        }
    });
    tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                _ = stop.cancelled() => return,
                c = tcp.accept() => c,
            };
            let Ok((mut c, _)) = conn else { continue };
            tokio::spawn(async move {
                let mut lb = [0u8; 2];
                while c.read_exact(&mut lb).await.is_ok() {
                    let mut q = vec![0u8; u16::from_be_bytes(lb) as usize];
                    if c.read_exact(&mut q).await.is_err() {
                        return;
                    }
                    let Some(reply) = stub_answer(&q) else { return };
                    let mut out = (reply.len() as u16).to_be_bytes().to_vec();
                    out.extend_from_slice(&reply);
                    if c.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// One query to `server` over UDP or TCP with the hickory client.
async fn query(server: SocketAddr, tcp: bool, name: &str, t: RecordType) -> Message {
    let name = Name::from_ascii(name).expect("name");
    let response = if tcp {
        let (stream, sender) =
            TcpClientStream::new(server, None, None, TokioRuntimeProvider::default());
        let stream = stream.await.expect("tcp connect");
        let (mut client, bg) = Client::<TokioRuntimeProvider>::new(stream, sender);
        let bg = tokio::spawn(bg);
        let r = client.query(name.clone(), DNSClass::IN, t).await;
        bg.abort();
        r
    } else {
        let conn = UdpClientStream::builder(server, TokioRuntimeProvider::default()).build();
        let (mut client, bg) = Client::<TokioRuntimeProvider>::from_sender(conn);
        let bg = tokio::spawn(bg);
        let r = client.query(name.clone(), DNSClass::IN, t).await;
        bg.abort();
        r
    };
    let response = response.unwrap_or_else(|e| panic!("query {name} {t}: {e}"));
    Message::clone(&response)
}

/// The answer section as sorted `TYPE DATA` strings.
fn answers(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m
        .answers
        .iter()
        .map(|r| format!("{} {}", r.record_type(), r.data))
        .collect();
    v.sort();
    v
}

/// Polls `name` on both transports until `check` accepts both answers.
async fn eventually(
    server: SocketAddr,
    name: &str,
    t: RecordType,
    what: &str,
    check: impl Fn(&Message) -> bool,
) -> Message {
    let start = Instant::now();
    loop {
        let udp = query(server, false, name, t).await;
        let tcp = query(server, true, name, t).await;
        if check(&udp) && check(&tcp) {
            assert_eq!(
                answers(&udp),
                answers(&tcp),
                "UDP and TCP differ for {name}"
            );
            return udp;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{name} {t}: not {what} within {DEADLINE:?}: udp {:?} {:?}, tcp {:?} {:?}",
            udp.metadata.response_code,
            answers(&udp),
            tcp.metadata.response_code,
            answers(&tcp)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Fixture {
    _api: TestServer,
    client: kube::Client,
    dns: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), dns::DnsError>>,
}

impl Fixture {
    async fn start() -> Fixture {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let api = TestServer::start(store).await;
        let client = api.client().await;
        let stop = CancellationToken::new();
        let upstream = stub_upstream(stop.clone()).await;
        let listen = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
        let listeners = Listeners::bind(&listen).await.expect("bind DNS");
        let dns = listeners.local_addrs()[0];
        let options = DnsOptions {
            listen,
            domain: "cluster.local".into(),
            upstreams: vec![upstream],
            ttl: dns::DEFAULT_TTL,
        };
        let task = tokio::spawn(dns::serve(client.clone(), options, listeners, stop.clone()));
        Fixture {
            _api: api,
            client,
            dns,
            stop,
            task,
        }
    }

    async fn namespace(&self, name: &str) {
        Api::<Namespace>::all(self.client.clone())
            .create(
                &PostParams::default(),
                &obj(serde_json::json!({"metadata": {"name": name}})),
            )
            .await
            .expect("create namespace");
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("DNS server stops")
            .expect("join")
            .expect("DNS server ran");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_serves_services_endpoints_pods_and_reverse_over_udp_and_tcp() {
    let f = Fixture::start().await;
    let ns = "dns-rec";
    f.namespace(ns).await;
    let pp = PostParams::default();
    let services = Api::<Service>::namespaced(f.client.clone(), ns);
    let web = services
        .create(
            &pp,
            &obj(serde_json::json!({"metadata": {"name": "web"}, "spec": {
                "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})),
        )
        .await
        .expect("create web");
    let web_ip = web
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("web got a ClusterIP");
    services
        .create(
            &pp,
            &obj(serde_json::json!({"metadata": {"name": "db"}, "spec": {
                "clusterIP": "None",
                "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}})),
        )
        .await
        .expect("create db");
    Api::<EndpointSlice>::namespaced(f.client.clone(), ns)
        .create(
            &pp,
            &obj(serde_json::json!({
            "metadata": {"name": "db-abc", "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.244.7.5"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.244.7.6"], "conditions": {"ready": true}},
                {"addresses": ["10.244.7.7"], "conditions": {"ready": false}}
            ]})),
        )
        .await
        .expect("create slice");
    let pods = Api::<Pod>::namespaced(f.client.clone(), ns);
    pods.create(
        &pp,
        &obj(serde_json::json!({"metadata": {"name": "p"}, "spec": {
            "containers": [{"name": "c", "image": "busybox"}]}})),
    )
    .await
    .expect("create pod");
    pods.patch_status(
        "p",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": {
            "phase": "Running", "podIP": "10.244.7.9", "podIPs": [{"ip": "10.244.7.9"}]}})),
    )
    .await
    .expect("set pod IP");

    let web_name = format!("web.{ns}.svc.cluster.local.");
    let m = eventually(f.dns, &web_name, RecordType::A, "the ClusterIP", |m| {
        answers(m) == vec![format!("A {web_ip}")]
    })
    .await;
    assert!(m.metadata.authoritative);
    assert!(
        m.answers.iter().all(|r| r.ttl == 5),
        "TTL 5: {:?}",
        m.answers
    );

    let db = format!("db.{ns}.svc.cluster.local.");
    eventually(f.dns, &db, RecordType::A, "the ready endpoints", |m| {
        answers(m) == vec!["A 10.244.7.5", "A 10.244.7.6"]
    })
    .await;
    let host = format!("db-0.db.{ns}.svc.cluster.local.");
    eventually(f.dns, &host, RecordType::A, "the endpoint hostname", |m| {
        answers(m) == vec!["A 10.244.7.5"]
    })
    .await;
    let srv = format!("_pg._tcp.db.{ns}.svc.cluster.local.");
    let m = eventually(f.dns, &srv, RecordType::SRV, "per-endpoint SRV", |m| {
        answers(m)
            == vec![
                format!("SRV 0 100 5432 10-244-7-6.db.{ns}.svc.cluster.local."),
                format!("SRV 0 100 5432 db-0.db.{ns}.svc.cluster.local."),
            ]
    })
    .await;
    assert_eq!(m.additionals.len(), 2, "SRV targets' A records: {m:?}");
    let srv = format!("_http._tcp.web.{ns}.svc.cluster.local.");
    eventually(f.dns, &srv, RecordType::SRV, "the service SRV", |m| {
        answers(m) == vec![format!("SRV 0 100 80 web.{ns}.svc.cluster.local.")]
    })
    .await;
    let pod = format!("10-244-7-9.{ns}.pod.cluster.local.");
    eventually(f.dns, &pod, RecordType::A, "the pod A", |m| {
        answers(m) == vec!["A 10.244.7.9"]
    })
    .await;

    // PTR for the ClusterIP and for a headless endpoint.
    let ip: IpAddr = web_ip.parse().expect("ClusterIP");
    let IpAddr::V4(v4) = ip else {
        panic!("IPv4 ClusterIP expected")
    };
    let o = v4.octets();
    let rev = format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0]);
    eventually(f.dns, &rev, RecordType::PTR, "the service PTR", |m| {
        answers(m) == vec![format!("PTR {web_name}")]
    })
    .await;
    eventually(
        f.dns,
        "5.7.244.10.in-addr.arpa.",
        RecordType::PTR,
        "the endpoint PTR",
        |m| answers(m) == vec![format!("PTR {host}")],
    )
    .await;

    // Missing names in the cluster domain: NXDOMAIN with the zone's SOA; names that exist
    // without that type: NOERROR and the SOA.
    for tcp in [false, true] {
        let m = query(
            f.dns,
            tcp,
            &format!("nope.{ns}.svc.cluster.local."),
            RecordType::A,
        )
        .await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(m.answers.is_empty());
        assert_eq!(
            m.authorities.first().map(|r| r.record_type()),
            Some(RecordType::SOA),
            "{m:?}"
        );
        let m = query(f.dns, tcp, &web_name, RecordType::MX).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        assert_eq!(
            m.authorities.first().map(|r| r.record_type()),
            Some(RecordType::SOA)
        );
    }

    // Deleting the Service removes its name.
    services
        .delete("web", &Default::default())
        .await
        .expect("delete web");
    eventually(f.dns, &web_name, RecordType::A, "NXDOMAIN", |m| {
        m.metadata.response_code == ResponseCode::NXDomain
    })
    .await;
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_external_name_cname_and_forwarding() {
    let f = Fixture::start().await;
    let ns = "dns-ext";
    f.namespace(ns).await;
    Api::<Service>::namespaced(f.client.clone(), ns)
        .create(
            &PostParams::default(),
            &obj(serde_json::json!({"metadata": {"name": "ext"}, "spec": {
                "type": "ExternalName", "externalName": "target.example.test"}})),
        )
        .await
        .expect("create ext");
    let ext = format!("ext.{ns}.svc.cluster.local.");
    // Asked for the CNAME: just the CNAME.
    eventually(f.dns, &ext, RecordType::CNAME, "the CNAME", |m| {
        answers(m) == vec!["CNAME target.example.test."]
    })
    .await;
    // Asked for A: the CNAME and its target chased upstream.
    eventually(f.dns, &ext, RecordType::A, "the chased CNAME", |m| {
        answers(m) == vec!["A 192.0.2.77", "CNAME target.example.test."]
    })
    .await;
    // Names outside the cluster domain go to the upstream, answers and NXDOMAIN alike.
    for tcp in [false, true] {
        let m = query(f.dns, tcp, "www.example.test.", RecordType::A).await;
        assert_eq!(answers(&m), vec!["A 192.0.2.10"], "tcp={tcp}");
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        let m = query(f.dns, tcp, "missing.example.test.", RecordType::A).await;
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NXDomain,
            "tcp={tcp}"
        );
        // Unknown reverse names are forwarded too (the stub says NXDOMAIN).
        let m = query(f.dns, tcp, "1.2.0.192.in-addr.arpa.", RecordType::PTR).await;
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NXDomain,
            "tcp={tcp}"
        );
    }
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_kube_dns_service_endpoints_and_slice_are_kept() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let api = TestServer::start(store).await;
    let client = api.client().await;
    let ns = Api::<Namespace>::all(client.clone());
    if ns.get_opt("kube-system").await.expect("get ns").is_none() {
        ns.create(
            &PostParams::default(),
            &obj(serde_json::json!({"metadata": {"name": "kube-system"}})),
        )
        .await
        .expect("create kube-system");
    }
    let mut spec = KubeDnsService {
        cluster_ip: "10.43.0.10".parse().expect("ip"),
        endpoint_ip: "192.0.2.5".parse().expect("ip"),
        port: 5353,
    };
    dns::kube_dns::ensure(&client, &spec).await.expect("ensure");
    let svc = Api::<Service>::namespaced(client.clone(), "kube-system")
        .get("kube-dns")
        .await
        .expect("service");
    let s = svc.spec.clone().expect("spec");
    assert_eq!(s.cluster_ip.as_deref(), Some("10.43.0.10"));
    assert!(s.selector.is_none());
    let ports: Vec<String> = s
        .ports
        .iter()
        .flatten()
        .map(|p| {
            format!(
                "{}/{}/{}/{:?}",
                p.name.clone().unwrap_or_default(),
                p.port,
                p.protocol.clone().unwrap_or_default(),
                p.target_port
            )
        })
        .collect();
    assert_eq!(ports.len(), 2, "{ports:?}");
    assert!(ports[0].starts_with("dns/53/UDP/") && ports[0].contains("5353"));
    assert!(ports[1].starts_with("dns-tcp/53/TCP/") && ports[1].contains("5353"));
    assert_eq!(
        svc.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("k8s-app"))
            .map(String::as_str),
        Some("kube-dns")
    );
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), "kube-system");
    let slice = slices.get("kube-dns").await.expect("slice");
    let labels = slice.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("kubernetes.io/service-name").map(String::as_str),
        Some("kube-dns")
    );
    assert_eq!(slice.endpoints[0].addresses, vec!["192.0.2.5".to_string()]);
    assert_eq!(slice.ports.as_ref().expect("ports")[0].port, Some(5353));
    let eps = Api::<Endpoints>::namespaced(client.clone(), "kube-system")
        .get("kube-dns")
        .await
        .expect("endpoints");
    let subset = &eps.subsets.expect("subsets")[0];
    assert_eq!(
        subset.addresses.as_ref().expect("addresses")[0].ip,
        "192.0.2.5"
    );

    // A new port and node address are carried over; running again is a no-op.
    spec.port = 5454;
    spec.endpoint_ip = "192.0.2.6".parse().expect("ip");
    dns::kube_dns::ensure(&client, &spec).await.expect("ensure");
    let before = slices.get("kube-dns").await.expect("slice");
    assert_eq!(before.endpoints[0].addresses, vec!["192.0.2.6".to_string()]);
    assert_eq!(before.ports.as_ref().expect("ports")[0].port, Some(5454));
    let rv = |o: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        o.resource_version.clone().expect("resourceVersion")
    };
    let svc_api = Api::<Service>::namespaced(client.clone(), "kube-system");
    let eps_api = Api::<Endpoints>::namespaced(client.clone(), "kube-system");
    let svc_rv = rv(&svc_api.get("kube-dns").await.expect("service").metadata);
    let eps_rv = rv(&eps_api.get("kube-dns").await.expect("endpoints").metadata);
    dns::kube_dns::ensure(&client, &spec).await.expect("ensure");
    assert_eq!(
        svc_rv,
        rv(&svc_api.get("kube-dns").await.expect("service").metadata)
    );
    assert_eq!(
        eps_rv,
        rv(&eps_api.get("kube-dns").await.expect("endpoints").metadata)
    );
    let after = slices.get("kube-dns").await.expect("slice");
    assert_eq!(
        before.metadata.resource_version,
        after.metadata.resource_version
    );
    let svc = Api::<Service>::namespaced(client.clone(), "kube-system")
        .get("kube-dns")
        .await
        .expect("service");
    let target = svc.spec.and_then(|s| s.ports).expect("ports")[0]
        .target_port
        .clone();
    assert_eq!(
        target,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(5454))
    );
}
