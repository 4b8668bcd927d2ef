//! ClusterIP and NodePort allocation for Services. The allocation maps live in memory and
//! are rebuilt from the stored Services at start-up (the repair pass); every allocation and
//! release happens under one mutex, so concurrent creates never receive the same address.

use crate::cache::WatchCache;
use capstan_api::resources::RESOURCES;
use capstan_api::status::Cause;
use rand::Rng;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Mutex;

pub fn parse_cidr(cidr: &str) -> Result<(u32, u32), String> {
    let (ip, bits) = cidr
        .split_once('/')
        .ok_or_else(|| format!("invalid CIDR {cidr:?}"))?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| format!("invalid CIDR {cidr:?}"))?;
    let bits: u32 = bits.parse().map_err(|_| format!("invalid CIDR {cidr:?}"))?;
    if !(8..=30).contains(&bits) {
        return Err(format!(
            "service CIDR {cidr:?} must have a prefix between /8 and /30"
        ));
    }
    let mask = u32::MAX << (32 - bits);
    Ok((u32::from(ip) & mask, 1u32 << (32 - bits)))
}

/// The first usable address of the service CIDR: the `kubernetes` Service's ClusterIP.
pub fn first_service_ip(cidr: &str) -> Result<Ipv4Addr, String> {
    let (base, _) = parse_cidr(cidr)?;
    Ok(Ipv4Addr::from(base + 1))
}

struct State {
    ips: HashSet<u32>,
    ports: HashSet<u16>,
}

pub struct ServiceAllocator {
    base: u32,
    size: u32,
    cidr: String,
    port_range: (u16, u16),
    state: Mutex<State>,
}

impl ServiceAllocator {
    pub fn new(cidr: &str, port_range: (u16, u16)) -> Result<Self, String> {
        let (base, size) = parse_cidr(cidr)?;
        if port_range.0 > port_range.1 {
            return Err(format!(
                "invalid node port range {}-{}",
                port_range.0, port_range.1
            ));
        }
        Ok(ServiceAllocator {
            base,
            size,
            cidr: cidr.to_string(),
            port_range,
            state: Mutex::new(State {
                ips: HashSet::new(),
                ports: HashSet::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mark every address and port used by stored Services (run at start-up).
    pub fn repair(&self, cache: &WatchCache) {
        let Some(idx) = RESOURCES
            .iter()
            .position(|r| r.group.is_empty() && r.plural == "services")
        else {
            return;
        };
        let (svcs, _) = cache.list(idx, None, None);
        let mut st = self.lock();
        for s in svcs {
            let Ok(v) = serde_json::from_slice::<Value>(&s.json) else {
                continue;
            };
            for ip in cluster_ips(&v) {
                if let Some(off) = self.offset(ip) {
                    st.ips.insert(off);
                }
            }
            for p in node_ports(&v) {
                st.ports.insert(p);
            }
        }
        tracing::info!(
            ips = st.ips.len(),
            node_ports = st.ports.len(),
            "service allocations repaired"
        );
    }

    fn offset(&self, ip: Ipv4Addr) -> Option<u32> {
        let n = u32::from(ip);
        (n > self.base && n < self.base + self.size - 1).then(|| n - self.base)
    }

    /// Reserve `requested` or a random free address.
    pub fn allocate_ip(&self, requested: Option<&str>) -> Result<Ipv4Addr, Cause> {
        let mut st = self.lock();
        if let Some(r) = requested {
            let field = "spec.clusterIPs";
            let ip: Ipv4Addr = r
                .parse()
                .map_err(|_| Cause::invalid(field, &json!([r]), "must be a valid IP address"))?;
            let off = self.offset(ip).ok_or_else(|| {
                Cause::invalid(field, &json!([r]), &format!("failed to allocate IP {r}: the provided IP ({r}) is not in the valid range. The range of valid IPs is {}", self.cidr))
            })?;
            if !st.ips.insert(off) {
                return Err(Cause::invalid(
                    field,
                    &json!([r]),
                    &format!("failed to allocate IP {r}: provided IP is already allocated"),
                ));
            }
            return Ok(ip);
        }
        let usable = self.size.saturating_sub(2);
        if st.ips.len() as u32 >= usable {
            return Err(Cause::invalid(
                "spec.clusterIPs",
                &json!([]),
                "failed to allocate a serviceIP: range is full",
            ));
        }
        let mut rng = rand::rng();
        let start = rng.random_range(0..usable);
        // Offsets 1..=usable; offset 1 is reserved for the kubernetes Service unless asked for.
        for i in 0..usable {
            let off = 1 + (start + i) % usable;
            if off == 1 {
                continue;
            }
            if st.ips.insert(off) {
                return Ok(Ipv4Addr::from(self.base + off));
            }
        }
        Err(Cause::invalid(
            "spec.clusterIPs",
            &json!([]),
            "failed to allocate a serviceIP: range is full",
        ))
    }

    pub fn release_ip(&self, ip: &str) {
        if let Ok(ip) = ip.parse::<Ipv4Addr>()
            && let Some(off) = self.offset(ip)
        {
            self.lock().ips.remove(&off);
        }
    }

    /// Reserve `requested` or a random free NodePort; `field` names the port in errors.
    pub fn allocate_port(&self, requested: Option<u16>, field: &str) -> Result<u16, Cause> {
        let mut st = self.lock();
        let (lo, hi) = self.port_range;
        if let Some(p) = requested {
            if p < lo || p > hi {
                return Err(Cause::invalid(
                    field,
                    &json!(p),
                    &format!(
                        "provided port is not in the valid range. The range of valid ports is {lo}-{hi}"
                    ),
                ));
            }
            if !st.ports.insert(p) {
                return Err(Cause::invalid(
                    field,
                    &json!(p),
                    "provided port is already allocated",
                ));
            }
            return Ok(p);
        }
        let n = u32::from(hi - lo) + 1;
        let start = rand::rng().random_range(0..n);
        for i in 0..n {
            let p = lo + ((start + i) % n) as u16;
            if st.ports.insert(p) {
                return Ok(p);
            }
        }
        Err(Cause::invalid(field, &json!(0), "range is full"))
    }

    pub fn release_port(&self, p: u16) {
        self.lock().ports.remove(&p);
    }

    /// Release everything a Service holds.
    pub fn release_service(&self, svc: &Value) {
        for ip in cluster_ips(svc) {
            self.release_ip(&ip.to_string());
        }
        for p in node_ports(svc) {
            self.release_port(p);
        }
    }
}

/// The IPv4 ClusterIPs of a Service (excluding `None`).
pub fn cluster_ips(svc: &Value) -> Vec<Ipv4Addr> {
    let spec = &svc["spec"];
    let mut out: Vec<Ipv4Addr> = spec["clusterIPs"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()?.parse().ok()).collect())
        .unwrap_or_default();
    if let Some(ip) = spec["clusterIP"].as_str().and_then(|s| s.parse().ok())
        && !out.contains(&ip)
    {
        out.push(ip);
    }
    out
}

pub fn node_ports(svc: &Value) -> Vec<u16> {
    svc["spec"]["ports"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["nodePort"].as_u64().and_then(|n| u16::try_from(n).ok()))
                .filter(|n| *n > 0)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_allocations_never_collide() {
        let a = std::sync::Arc::new(ServiceAllocator::new("10.43.0.0/24", (30000, 30100)).unwrap());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let a = a.clone();
                std::thread::spawn(move || {
                    (0..50)
                        .map(|_| a.allocate_ip(None).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<Ipv4Addr> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
        assert!(
            !all.contains(&Ipv4Addr::new(10, 43, 0, 1)),
            "the kubernetes service address is reserved"
        );
    }

    #[test]
    fn requested_ip_twice_is_rejected_and_out_of_range_too() {
        let a = ServiceAllocator::new("10.43.0.0/16", (30000, 32767)).unwrap();
        a.allocate_ip(Some("10.43.0.10")).unwrap();
        let e = a.allocate_ip(Some("10.43.0.10")).unwrap_err();
        assert!(e.message.contains("already allocated"), "{}", e.message);
        assert!(a.allocate_ip(Some("10.44.0.1")).is_err());
        a.release_ip("10.43.0.10");
        a.allocate_ip(Some("10.43.0.10")).unwrap();
        assert!(
            a.allocate_port(Some(29999), "spec.ports[0].nodePort")
                .is_err()
        );
        a.allocate_port(Some(30080), "x").unwrap();
        assert!(a.allocate_port(Some(30080), "x").is_err());
    }
}
