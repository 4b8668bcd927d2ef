//! Renders the ServicePorts as one nft script that replaces the proxy's table in a single
//! transaction (`add table; delete table; table { ... }`), in the shape of kube-proxy's
//! nftables mode: verdict maps from destination to per-service chains, `numgen random` over
//! per-endpoint DNAT chains, a mark for masquerade, and reject for services without endpoints.

use std::fmt::Write;

use super::model::{Endpoint, ServicePort};

/// The packet mark bit asking postrouting to masquerade (kube-proxy's).
pub const MASQUERADE_MARK: u32 = 0x4000;

/// What the rules depend on besides the Services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderOptions {
    /// The nft table (family inet).
    pub table: String,
    /// Pod CIDRs: traffic to ClusterIPs from elsewhere is masqueraded.
    pub pod_cidrs: Vec<String>,
}

/// Chain and set names follow kube-proxy's readable scheme: `ns/name/proto/port`.
fn port_id(sp: &ServicePort) -> String {
    let port = if sp.port_name.is_empty() {
        format!("p{}", sp.port)
    } else {
        sp.port_name.clone()
    };
    format!("{}/{}/{}/{port}", sp.namespace, sp.name, sp.protocol.nft())
}

fn endpoint_id(sp: &ServicePort, e: &Endpoint) -> String {
    format!("{}__{}/{}", port_id(sp), e.ip, e.port)
}

/// The whole script; deterministic, so equal text means equal rules.
pub fn render(ports: &[ServicePort], o: &RenderOptions) -> String {
    let mut s = String::with_capacity(4096 + ports.len() * 1024);
    let t = &o.table;
    let _ = writeln!(
        s,
        "add table inet {t}\ndelete table inet {t}\ntable inet {t} {{"
    );
    base_chains(&mut s);
    let mut service_ips = Vec::new();
    let mut node_ports = Vec::new();
    let mut no_ep_ips = Vec::new();
    let mut no_ep_node_ports = Vec::new();
    for sp in ports {
        let id = port_id(sp);
        let proto = sp.protocol.nft();
        let all = sp.usable(false);
        let local = sp.usable(true);
        let internal = if sp.internal_local { &local } else { &all };
        for ip in &sp.cluster_ips {
            let key = format!("{ip} . {proto} . {}", sp.port);
            if internal.is_empty() {
                no_ep_ips.push(format!("{key} : goto reject-chain"));
            } else {
                service_ips.push(format!("{key} : goto cip-{id}"));
            }
        }
        // External traffic falls back to all endpoints for local clients under eTP Local,
        // so only a service without any endpoint rejects it.
        let external_ok = !all.is_empty();
        for ip in &sp.external_ips {
            let key = format!("{ip} . {proto} . {}", sp.port);
            if external_ok {
                service_ips.push(format!("{key} : goto ext-{id}"));
            } else {
                no_ep_ips.push(format!("{key} : goto reject-chain"));
            }
        }
        if let Some(np) = sp.node_port {
            let key = format!("{proto} . {np}");
            if external_ok {
                node_ports.push(format!("{key} : goto ext-{id}"));
            } else {
                no_ep_node_ports.push(format!("{key} : goto reject-chain"));
            }
        }
        if !internal.is_empty() && !sp.cluster_ips.is_empty() {
            cluster_ip_chain(&mut s, sp, &id, o);
        }
        if external_ok && sp.has_external() {
            external_chain(&mut s, sp, &id, o);
        }
        let need_all = !all.is_empty();
        let need_local = sp.internal_local || (sp.external_local && sp.has_external());
        if need_all {
            endpoints_chain(&mut s, sp, &format!("svc-{id}"), &all);
        }
        if need_local {
            endpoints_chain(&mut s, sp, &format!("svl-{id}"), &local);
        }
        let mut seps: Vec<&Endpoint> = all.clone();
        if need_local {
            for e in &local {
                if !seps.contains(e) {
                    seps.push(e);
                }
            }
        }
        for e in seps {
            endpoint_chain(&mut s, sp, e);
        }
    }
    map(
        &mut s,
        "service-ips",
        "ipv4_addr . inet_proto . inet_service",
        &service_ips,
    );
    map(
        &mut s,
        "service-nodeports",
        "inet_proto . inet_service",
        &node_ports,
    );
    map(
        &mut s,
        "no-endpoint-services",
        "ipv4_addr . inet_proto . inet_service",
        &no_ep_ips,
    );
    map(
        &mut s,
        "no-endpoint-nodeports",
        "inet_proto . inet_service",
        &no_ep_node_ports,
    );
    s.push_str("}\n");
    s
}

/// Hooks, dispatch, masquerade and reject chains every table has.
fn base_chains(s: &mut String) {
    s.push_str(
        "\tchain nat-prerouting { type nat hook prerouting priority dstnat; policy accept; jump services; }\n\
         \tchain nat-output { type nat hook output priority -100; policy accept; jump services; }\n\
         \tchain nat-postrouting { type nat hook postrouting priority srcnat; policy accept; jump masquerading; }\n\
         \tchain filter-input { type filter hook input priority -110; policy accept; ct state new jump endpoints-check; }\n\
         \tchain filter-forward { type filter hook forward priority -110; policy accept; ct state new jump endpoints-check; }\n\
         \tchain filter-output { type filter hook output priority -110; policy accept; ct state new jump endpoints-check; }\n\
         \tchain services {\n\
         \t\tip daddr . meta l4proto . th dport vmap @service-ips\n\
         \t\tfib daddr type local meta l4proto . th dport vmap @service-nodeports\n\
         \t}\n\
         \tchain endpoints-check {\n\
         \t\tip daddr . meta l4proto . th dport vmap @no-endpoint-services\n\
         \t\tfib daddr type local meta l4proto . th dport vmap @no-endpoint-nodeports\n\
         \t}\n\
         \tchain reject-chain { reject; }\n",
    );
    let _ = writeln!(
        s,
        "\tchain mark-for-masquerade {{ meta mark set meta mark | {MASQUERADE_MARK:#x}; }}\n\
         \tchain masquerading {{ meta mark & {MASQUERADE_MARK:#x} == 0 return; \
         meta mark set meta mark ^ {MASQUERADE_MARK:#x}; masquerade fully-random; }}"
    );
}

fn map(s: &mut String, name: &str, key: &str, elements: &[String]) {
    let _ = write!(s, "\tmap {name} {{ type {key} : verdict; ");
    if !elements.is_empty() {
        let _ = write!(s, "elements = {{ {} }}; ", elements.join(", "));
    }
    s.push_str("}\n");
}

/// ClusterIP entry: masquerade clients outside the pod network (their replies must return
/// through this node), then the internal policy's endpoints.
fn cluster_ip_chain(s: &mut String, sp: &ServicePort, id: &str, o: &RenderOptions) {
    let _ = writeln!(s, "\tchain cip-{id} {{");
    if o.pod_cidrs.is_empty() {
        s.push_str("\t\tjump mark-for-masquerade\n");
    } else {
        let _ = writeln!(
            s,
            "\t\tip saddr != {{ {} }} jump mark-for-masquerade",
            o.pod_cidrs.join(", ")
        );
    }
    let target = if sp.internal_local { "svl" } else { "svc" };
    let _ = writeln!(s, "\t\tgoto {target}-{id}\n\t}}");
}

/// NodePort / LoadBalancer / externalIP entry. Cluster policy masquerades everything; Local
/// keeps the client address and this node's endpoints, except for pods and the node itself
/// (upstream's short-circuit of local traffic to the cluster chain).
fn external_chain(s: &mut String, sp: &ServicePort, id: &str, o: &RenderOptions) {
    let _ = writeln!(s, "\tchain ext-{id} {{");
    if sp.external_local {
        if !o.pod_cidrs.is_empty() {
            let _ = writeln!(
                s,
                "\t\tip saddr {{ {} }} goto svc-{id}",
                o.pod_cidrs.join(", ")
            );
        }
        let _ = writeln!(
            s,
            "\t\tfib saddr type local jump mark-for-masquerade\n\
             \t\tfib saddr type local goto svc-{id}\n\
             \t\tgoto svl-{id}\n\t}}"
        );
    } else {
        let _ = writeln!(s, "\t\tjump mark-for-masquerade\n\t\tgoto svc-{id}\n\t}}");
    }
}

/// Picks one endpoint: a live affinity entry first, else uniformly at random.
fn endpoints_chain(s: &mut String, sp: &ServicePort, name: &str, eps: &[&Endpoint]) {
    let _ = writeln!(s, "\tchain {name} {{");
    if eps.is_empty() {
        // Local policy without a local endpoint: upstream drops.
        s.push_str("\t\tdrop\n\t}\n");
        return;
    }
    if sp.affinity_timeout.is_some() {
        for e in eps {
            let eid = endpoint_id(sp, e);
            let _ = writeln!(s, "\t\tip saddr @aff-{eid} goto sep-{eid}");
        }
    }
    let arms: Vec<String> = eps
        .iter()
        .enumerate()
        .map(|(i, e)| format!("{i} : goto sep-{}", endpoint_id(sp, e)))
        .collect();
    let _ = writeln!(
        s,
        "\t\tnumgen random mod {} vmap {{ {} }}\n\t}}",
        eps.len(),
        arms.join(", ")
    );
}

/// DNAT to one endpoint; hairpin (a pod reaching itself) is masqueraded so the reply comes back
/// through the node.
fn endpoint_chain(s: &mut String, sp: &ServicePort, e: &Endpoint) {
    let eid = endpoint_id(sp, e);
    if let Some(timeout) = sp.affinity_timeout {
        let _ = writeln!(
            s,
            "\tset aff-{eid} {{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}"
        );
    }
    let _ = writeln!(
        s,
        "\tchain sep-{eid} {{\n\t\tip saddr {} jump mark-for-masquerade",
        e.ip
    );
    if sp.affinity_timeout.is_some() {
        let _ = writeln!(s, "\t\tupdate @aff-{eid} {{ ip saddr }}");
    }
    let _ = writeln!(
        s,
        "\t\tmeta l4proto {} dnat ip to {}:{}\n\t}}",
        sp.protocol.nft(),
        e.ip,
        e.port
    );
}

/// The script that removes the table (clean-up only; a running proxy never deletes it).
pub fn delete_script(table: &str) -> String {
    format!("add table inet {table}\ndelete table inet {table}\n")
}
