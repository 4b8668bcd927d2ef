//! What a pod sees as its name and resolver: hostname (and FQDN with a subdomain), the
//! kubelet-managed /etc/hosts, and resolv.conf per dnsPolicy and dnsConfig, as upstream.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;

/// Cluster DNS settings of the node.
#[derive(Clone, Debug, Default)]
pub struct ClusterDns {
    /// The cluster DNS service address; None: ClusterFirst falls back to the host's resolver.
    pub server: Option<IpAddr>,
    /// `cluster.local` unless configured.
    pub domain: String,
}

/// The pod's hostname (truncated to 63 bytes) and, with a subdomain, its FQDN.
pub fn hostname(pod: &Pod, cluster_domain: &str) -> (String, Option<String>) {
    let spec = pod.spec.clone().unwrap_or_default();
    let mut name = spec
        .hostname
        .filter(|h| !h.is_empty())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    if name.len() > 63 {
        name.truncate(63);
        while name.ends_with(['-', '.']) {
            name.pop();
        }
    }
    let fqdn = spec.subdomain.filter(|s| !s.is_empty()).map(|sub| {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        format!("{name}.{sub}.{ns}.svc.{cluster_domain}")
    });
    (name, fqdn)
}

/// The kubelet-managed /etc/hosts: localhost entries, the pod's own IPs, then hostAliases.
pub fn hosts_file(pod: &Pod, pod_ips: &[String], hostname: &str, fqdn: Option<&str>) -> String {
    let mut out = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    for ip in pod_ips {
        match fqdn {
            Some(f) => out.push_str(&format!("{ip}\t{f}\t{hostname}\n")),
            None => out.push_str(&format!("{ip}\t{hostname}\n")),
        }
    }
    let aliases = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_aliases.clone())
        .unwrap_or_default();
    if !aliases.is_empty() {
        out.push_str("\n# Entries added by HostAliases.\n");
        for a in aliases {
            let names = a.hostnames.unwrap_or_default().join("\t");
            out.push_str(&format!("{}\t{names}\n", a.ip));
        }
    }
    out
}

struct Resolv {
    nameservers: Vec<String>,
    searches: Vec<String>,
    options: Vec<String>,
}

fn parse_resolv(text: &str) -> Resolv {
    let mut r = Resolv {
        nameservers: vec![],
        searches: vec![],
        options: vec![],
    };
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => r.nameservers.extend(words.next().map(str::to_string)),
            Some("search") | Some("domain") => {
                r.searches = words.map(str::to_string).collect();
            }
            Some("options") => r.options.extend(words.map(str::to_string)),
            _ => {}
        }
    }
    r
}

/// resolv.conf content for the pod; `host` is the node's own resolv.conf text.
pub fn resolv_conf(pod: &Pod, dns: &ClusterDns, host: &str) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let host_network = spec.host_network.unwrap_or(false);
    let cluster_first = match policy {
        "ClusterFirst" => !host_network && dns.server.is_some(),
        "ClusterFirstWithHostNet" => dns.server.is_some(),
        _ => false,
    };
    let host = parse_resolv(host);
    let mut r = if policy == "None" {
        Resolv {
            nameservers: vec![],
            searches: vec![],
            options: vec![],
        }
    } else if cluster_first {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let d = &dns.domain;
        let mut searches = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()];
        searches.extend(host.searches.iter().cloned());
        Resolv {
            nameservers: dns.server.iter().map(|s| s.to_string()).collect(),
            searches,
            options: vec!["ndots:5".into()],
        }
    } else {
        host
    };
    if let Some(cfg) = spec.dns_config {
        for n in cfg.nameservers.unwrap_or_default() {
            if !r.nameservers.contains(&n) {
                r.nameservers.push(n);
            }
        }
        for s in cfg.searches.unwrap_or_default() {
            if !r.searches.contains(&s) {
                r.searches.push(s);
            }
        }
        for o in cfg.options.unwrap_or_default() {
            let value = match o.value {
                Some(v) => format!("{}:{v}", o.name.clone().unwrap_or_default()),
                None => o.name.clone().unwrap_or_default(),
            };
            let key = o.name.unwrap_or_default();
            r.options
                .retain(|x| x.split(':').next() != Some(key.as_str()));
            r.options.push(value);
        }
    }
    r.nameservers.truncate(3);
    r.searches.truncate(32);
    let mut out = String::new();
    if !r.searches.is_empty() {
        out.push_str(&format!("search {}\n", r.searches.join(" ")));
    }
    for n in &r.nameservers {
        out.push_str(&format!("nameserver {n}\n"));
    }
    if !r.options.is_empty() {
        out.push_str(&format!("options {}\n", r.options.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{HostAlias, PodSpec};

    fn pod(spec: PodSpec) -> Pod {
        let mut p = Pod {
            spec: Some(spec),
            ..Default::default()
        };
        p.metadata.name = Some("web-0".into());
        p.metadata.namespace = Some("shop".into());
        p
    }

    #[test]
    fn hostname_hosts_and_aliases() {
        let p = pod(PodSpec {
            subdomain: Some("web".into()),
            host_aliases: Some(vec![HostAlias {
                ip: "10.1.2.3".into(),
                hostnames: Some(vec!["foo".into(), "bar".into()]),
            }]),
            ..Default::default()
        });
        let (h, fqdn) = hostname(&p, "cluster.local");
        assert_eq!(h, "web-0");
        assert_eq!(fqdn.as_deref(), Some("web-0.web.shop.svc.cluster.local"));
        let hosts = hosts_file(&p, &["10.42.0.5".into()], &h, fqdn.as_deref());
        assert!(hosts.contains("127.0.0.1\tlocalhost\n"));
        assert!(hosts.contains("10.42.0.5\tweb-0.web.shop.svc.cluster.local\tweb-0\n"));
        assert!(hosts.contains("10.1.2.3\tfoo\tbar\n"));
    }

    #[test]
    fn resolv_conf_per_policy() {
        let host = "nameserver 192.168.1.1\nsearch corp.example\n";
        let dns = ClusterDns {
            server: Some("10.43.0.10".parse().expect("ip")),
            domain: "cluster.local".into(),
        };
        let cf = resolv_conf(&pod(PodSpec::default()), &dns, host);
        assert_eq!(
            cf,
            "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example\n\
             nameserver 10.43.0.10\noptions ndots:5\n"
        );
        let no_dns = ClusterDns {
            server: None,
            domain: "cluster.local".into(),
        };
        let fallback = resolv_conf(&pod(PodSpec::default()), &no_dns, host);
        assert_eq!(fallback, "search corp.example\nnameserver 192.168.1.1\n");
    }
}
