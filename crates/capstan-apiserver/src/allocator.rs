//! ClusterIP and NodePort allocation for Services, shared by every API server on one store.
//! Each allocated address or port is its own reservation key (upstream's IPAddress objects in
//! spirit), created with `Store::create`: the store decides who got it, so two servers never
//! hand out the same one. The keys live under `/capstan/allocations/`, outside the `/registry/`
//! prefix the watch cache serves, so they are never API resources. A repair pass (at start and
//! periodically) frees reservations no Service holds and re-reserves Services' missing ones.

use capstan_api::status::Cause;
use capstan_store::{Store, StoreError};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Prefix of every reservation key.
pub const ALLOCATIONS_PREFIX: &str = "/capstan/allocations/";
const IP_PREFIX: &str = "/capstan/allocations/serviceips/";
const PORT_PREFIX: &str = "/capstan/allocations/servicenodeports/";
/// Random probes before falling back to listing the taken set (dense ranges).
const RANDOM_PROBES: usize = 8;
/// Attempts of list-then-create before giving up on a range that keeps filling up.
const LISTED_ATTEMPTS: usize = 16;
/// How often the repair pass runs.
pub const REPAIR_INTERVAL: Duration = Duration::from_secs(60);
/// A reservation no Service holds is freed only once it is this old: the Service of an
/// in-flight create is written after its reservation.
pub const LEAK_GRACE: Duration = Duration::from_secs(60);

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

#[derive(Debug, thiserror::Error)]
pub enum AllocationError {
    /// The request itself cannot be satisfied (422 with this cause).
    #[error("{}", .0.message)]
    Invalid(Cause),
    #[error("reservation store")]
    Store(#[from] StoreError),
}

/// The value of a reservation key: who holds it and since when (unix seconds).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct Reservation {
    /// `namespace/name` of the Service.
    owner: String,
    reserved_at: i64,
}

impl Reservation {
    fn encode_new(owner: &str) -> Vec<u8> {
        let r = Reservation {
            owner: owner.to_string(),
            reserved_at: jiff::Timestamp::now().as_second(),
        };
        serde_json::to_vec(&r).unwrap_or_default()
    }
    fn parse(value: &[u8]) -> Option<Reservation> {
        serde_json::from_slice(value).ok()
    }
}

/// What a repair pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RepairReport {
    pub freed: usize,
    pub reserved: usize,
    /// Addresses or ports held by two Services at once (left as they are, logged).
    pub conflicts: usize,
}

pub struct ServiceAllocator {
    base: u32,
    size: u32,
    cidr: String,
    port_range: (u16, u16),
    store: Arc<dyn Store>,
}

/// `namespace/name` of a Service object, the owner recorded in its reservations.
pub fn owner_of(svc: &Value) -> String {
    let m = &svc["metadata"];
    format!(
        "{}/{}",
        m["namespace"].as_str().unwrap_or_default(),
        m["name"].as_str().unwrap_or_default()
    )
}

fn ip_key(ip: Ipv4Addr) -> String {
    format!("{IP_PREFIX}{ip}")
}

fn port_key(p: u16) -> String {
    format!("{PORT_PREFIX}{p:05}")
}

impl ServiceAllocator {
    pub fn new(cidr: &str, port_range: (u16, u16), store: Arc<dyn Store>) -> Result<Self, String> {
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
            store,
        })
    }

    fn offset(&self, ip: Ipv4Addr) -> Option<u32> {
        let n = u32::from(ip);
        (n > self.base && n < self.base + self.size - 1).then(|| n - self.base)
    }

    /// Create `key`; false when someone else holds it.
    async fn reserve(&self, key: &str, owner: &str) -> Result<bool, StoreError> {
        match self.store.create(key, Reservation::encode_new(owner)).await {
            Ok(_) => Ok(true),
            Err(StoreError::AlreadyExists(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every key under `prefix`, read in pages.
    async fn reserved(&self, prefix: &str) -> Result<Vec<capstan_store::KeyValue>, StoreError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .list(prefix, after.as_deref(), 1000, None)
                .await?;
            after = page.items.last().map(|kv| kv.key.clone());
            out.extend(page.items);
            if !page.more || after.is_none() {
                return Ok(out);
            }
        }
    }

    /// Reserve `requested` or a random free address for the Service `owner` (`ns/name`).
    pub async fn allocate_ip(
        &self,
        requested: Option<&str>,
        owner: &str,
    ) -> Result<Ipv4Addr, AllocationError> {
        let field = "spec.clusterIPs";
        if let Some(r) = requested {
            let ip: Ipv4Addr = r.parse().map_err(|_| {
                AllocationError::Invalid(Cause::invalid(
                    field,
                    &json!([r]),
                    "must be a valid IP address",
                ))
            })?;
            if self.offset(ip).is_none() {
                return Err(AllocationError::Invalid(Cause::invalid(
                    field,
                    &json!([r]),
                    &format!(
                        "failed to allocate IP {r}: the provided IP ({r}) is not in the valid range. The range of valid IPs is {}",
                        self.cidr
                    ),
                )));
            }
            if !self.reserve(&ip_key(ip), owner).await? {
                return Err(AllocationError::Invalid(Cause::invalid(
                    field,
                    &json!([r]),
                    &format!("failed to allocate IP {r}: provided IP is already allocated"),
                )));
            }
            return Ok(ip);
        }
        let full = || {
            AllocationError::Invalid(Cause::invalid(
                field,
                &json!([]),
                "failed to allocate a serviceIP: range is full",
            ))
        };
        // Offsets 2..=size-2: offset 1 belongs to the kubernetes Service unless asked for.
        let usable = self.size.saturating_sub(3);
        if usable == 0 {
            return Err(full());
        }
        for _ in 0..RANDOM_PROBES {
            let ip = Ipv4Addr::from(self.base + 2 + rand::rng().random_range(0..usable));
            if self.reserve(&ip_key(ip), owner).await? {
                return Ok(ip);
            }
        }
        for _ in 0..LISTED_ATTEMPTS {
            let taken: HashSet<String> = self
                .reserved(IP_PREFIX)
                .await?
                .into_iter()
                .map(|kv| kv.key)
                .collect();
            let start = rand::rng().random_range(0..usable);
            let free = (0..usable)
                .map(|i| Ipv4Addr::from(self.base + 2 + (start + i) % usable))
                .find(|ip| !taken.contains(&ip_key(*ip)));
            let Some(ip) = free else {
                return Err(full());
            };
            if self.reserve(&ip_key(ip), owner).await? {
                return Ok(ip);
            }
        }
        Err(full())
    }

    /// Reserve `requested` or a random free NodePort; `field` names the port in errors.
    pub async fn allocate_port(
        &self,
        requested: Option<u16>,
        field: &str,
        owner: &str,
    ) -> Result<u16, AllocationError> {
        let (lo, hi) = self.port_range;
        if let Some(p) = requested {
            if p < lo || p > hi {
                return Err(AllocationError::Invalid(Cause::invalid(
                    field,
                    &json!(p),
                    &format!(
                        "provided port is not in the valid range. The range of valid ports is {lo}-{hi}"
                    ),
                )));
            }
            if !self.reserve(&port_key(p), owner).await? {
                return Err(AllocationError::Invalid(Cause::invalid(
                    field,
                    &json!(p),
                    "provided port is already allocated",
                )));
            }
            return Ok(p);
        }
        let n = u32::from(hi - lo) + 1;
        let at = |i: u32| lo + (i % n) as u16;
        for _ in 0..RANDOM_PROBES {
            let p = at(rand::rng().random_range(0..n));
            if self.reserve(&port_key(p), owner).await? {
                return Ok(p);
            }
        }
        let full = || AllocationError::Invalid(Cause::invalid(field, &json!(0), "range is full"));
        for _ in 0..LISTED_ATTEMPTS {
            let taken: HashSet<String> = self
                .reserved(PORT_PREFIX)
                .await?
                .into_iter()
                .map(|kv| kv.key)
                .collect();
            let start = rand::rng().random_range(0..n);
            let Some(p) = (0..n)
                .map(|i| at(start + i))
                .find(|p| !taken.contains(&port_key(*p)))
            else {
                return Err(full());
            };
            if self.reserve(&port_key(p), owner).await? {
                return Ok(p);
            }
        }
        Err(full())
    }

    /// Delete `key` if `owner` holds it; failures are left to the repair pass.
    async fn release_key(&self, key: &str, owner: &str) {
        let kv = match self.store.get(key).await {
            Ok(Some(kv)) => kv,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(key, error = %e, "reading reservation to release");
                return;
            }
        };
        if Reservation::parse(&kv.value).is_some_and(|r| r.owner != owner) {
            return;
        }
        match self.store.delete(key, Some(kv.mod_revision)).await {
            Ok(_) | Err(StoreError::NotFound(_)) | Err(StoreError::Conflict { .. }) => {}
            Err(e) => tracing::warn!(key, error = %e, "releasing reservation"),
        }
    }

    pub async fn release_ip(&self, ip: &str, owner: &str) {
        if let Ok(ip) = ip.parse::<Ipv4Addr>()
            && self.offset(ip).is_some()
        {
            self.release_key(&ip_key(ip), owner).await;
        }
    }

    pub async fn release_port(&self, p: u16, owner: &str) {
        self.release_key(&port_key(p), owner).await;
    }

    /// Release everything a Service holds.
    pub async fn release_service(&self, svc: &Value) {
        let owner = owner_of(svc);
        for ip in cluster_ips(svc) {
            self.release_ip(&ip.to_string(), &owner).await;
        }
        for p in node_ports(svc) {
            self.release_port(p, &owner).await;
        }
    }

    /// One repair pass: free reservations that no Service holds (once older than `grace`),
    /// and reserve Services' addresses and ports that have no reservation.
    pub async fn repair(&self, grace: Duration) -> Result<RepairReport, StoreError> {
        let ip_res = self.reserved(IP_PREFIX).await?;
        let port_res = self.reserved(PORT_PREFIX).await?;
        let mut held: HashMap<String, String> = HashMap::new();
        for kv in self.list_services().await? {
            let Ok(svc) = serde_json::from_slice::<Value>(&kv.value) else {
                continue;
            };
            let owner = owner_of(&svc);
            for ip in cluster_ips(&svc)
                .into_iter()
                .filter(|ip| self.offset(*ip).is_some())
            {
                held.insert(ip_key(ip), owner.clone());
            }
            for p in node_ports(&svc) {
                held.insert(port_key(p), owner.clone());
            }
        }
        let mut report = RepairReport::default();
        let now = jiff::Timestamp::now().as_second();
        let mut present = HashSet::new();
        for kv in ip_res.iter().chain(port_res.iter()) {
            present.insert(kv.key.clone());
            let res = Reservation::parse(&kv.value);
            if let (Some(h), Some(r)) = (held.get(&kv.key), &res)
                && *h == r.owner
            {
                continue;
            }
            let age = res.as_ref().map_or(i64::MAX, |r| now - r.reserved_at);
            if age < grace.as_secs() as i64 {
                continue;
            }
            if let Some(h) = held.get(&kv.key) {
                // Held by a Service other than the recorded owner: hand it over.
                let value = Reservation::encode_new(h);
                if self
                    .store
                    .update(&kv.key, value, kv.mod_revision)
                    .await
                    .is_ok()
                {
                    report.reserved += 1;
                }
                continue;
            }
            match self.store.delete(&kv.key, Some(kv.mod_revision)).await {
                Ok(_) => report.freed += 1,
                Err(StoreError::NotFound(_)) | Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        for (key, owner) in held.iter().filter(|(k, _)| !present.contains(*k)) {
            if self.reserve(key, owner).await? {
                report.reserved += 1;
            } else if let Ok(Some(kv)) = self.store.get(key).await
                && Reservation::parse(&kv.value).is_some_and(|r| r.owner != *owner)
            {
                report.conflicts += 1;
                tracing::warn!(key, owner, "address or port is held by two Services");
            }
        }
        if report != RepairReport::default() {
            tracing::info!(
                freed = report.freed,
                reserved = report.reserved,
                conflicts = report.conflicts,
                "service allocations repaired"
            );
        }
        Ok(report)
    }

    async fn list_services(&self) -> Result<Vec<capstan_store::KeyValue>, StoreError> {
        let info = capstan_api::resources::find("", "v1", "services").expect("services are served");
        self.reserved(&info.store_prefix()).await
    }
}

/// Repair every [`REPAIR_INTERVAL`] until shutdown.
pub async fn repair_loop(allocator: Arc<ServiceAllocator>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(REPAIR_INTERVAL);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tick.tick() => {
                if let Err(e) = allocator.repair(LEAK_GRACE).await {
                    tracing::warn!(error = %e, "service allocation repair failed");
                }
            }
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
    use capstan_store::MemoryStore;

    fn allocator(cidr: &str, ports: (u16, u16)) -> (Arc<dyn Store>, ServiceAllocator) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let a = ServiceAllocator::new(cidr, ports, store.clone()).unwrap();
        (store, a)
    }

    #[tokio::test]
    async fn two_allocators_on_one_store_never_collide() {
        let (store, a) = allocator("10.43.0.0/24", (30000, 30100));
        let b = ServiceAllocator::new("10.43.0.0/24", (30000, 30100), store).unwrap();
        let (a, b) = (Arc::new(a), Arc::new(b));
        let mut tasks = Vec::new();
        for i in 0..200 {
            let x = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                x.allocate_ip(None, &format!("default/s{i}")).await.unwrap()
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await.unwrap());
        }
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
        assert!(
            !all.contains(&Ipv4Addr::new(10, 43, 0, 1)),
            "the kubernetes service address is reserved"
        );
    }

    #[tokio::test]
    async fn full_range_is_reported() {
        let (_, a) = allocator("10.43.0.0/29", (30000, 30001));
        // Offsets 2..=6 are allocatable at random.
        for i in 0..5 {
            a.allocate_ip(None, &format!("default/s{i}")).await.unwrap();
        }
        let e = a.allocate_ip(None, "default/x").await.unwrap_err();
        assert!(e.to_string().contains("range is full"), "{e}");
        a.allocate_port(None, "p", "default/a").await.unwrap();
        a.allocate_port(None, "p", "default/b").await.unwrap();
        let e = a.allocate_port(None, "p", "default/c").await.unwrap_err();
        assert!(e.to_string().contains("range is full"), "{e}");
    }

    #[tokio::test]
    async fn requested_ip_twice_is_rejected_and_out_of_range_too() {
        let (_, a) = allocator("10.43.0.0/16", (30000, 32767));
        a.allocate_ip(Some("10.43.0.10"), "default/a")
            .await
            .unwrap();
        let e = a
            .allocate_ip(Some("10.43.0.10"), "default/b")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("already allocated"), "{e}");
        let e = a
            .allocate_ip(Some("10.44.0.1"), "default/b")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not in the valid range"), "{e}");
        // Only the owner releases.
        a.release_ip("10.43.0.10", "default/b").await;
        assert!(
            a.allocate_ip(Some("10.43.0.10"), "default/b")
                .await
                .is_err()
        );
        a.release_ip("10.43.0.10", "default/a").await;
        a.allocate_ip(Some("10.43.0.10"), "default/b")
            .await
            .unwrap();
        assert!(
            a.allocate_port(Some(29999), "spec.ports[0].nodePort", "default/a")
                .await
                .is_err()
        );
        a.allocate_port(Some(30080), "x", "default/a")
            .await
            .unwrap();
        let e = a
            .allocate_port(Some(30080), "x", "default/b")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("already allocated"), "{e}");
    }

    #[tokio::test]
    async fn repair_frees_leaks_after_grace_and_reserves_missing() {
        let (store, a) = allocator("10.43.0.0/16", (30000, 32767));
        let svc = json!({"metadata": {"namespace": "default", "name": "web"},
            "spec": {"clusterIP": "10.43.0.20", "ports": [{"port": 80, "nodePort": 30500}]}});
        store
            .create(
                "/registry/services/default/web",
                serde_json::to_vec(&svc).unwrap(),
            )
            .await
            .unwrap();
        a.allocate_ip(Some("10.43.0.30"), "default/gone")
            .await
            .unwrap();
        // A fresh leak survives a pass with a grace period.
        let r = a.repair(Duration::from_secs(60)).await.unwrap();
        assert_eq!(
            r,
            RepairReport {
                freed: 0,
                reserved: 2,
                conflicts: 0
            }
        );
        let r = a.repair(Duration::ZERO).await.unwrap();
        assert_eq!(
            r,
            RepairReport {
                freed: 1,
                reserved: 0,
                conflicts: 0
            }
        );
        assert!(
            store
                .get(&ip_key("10.43.0.30".parse().unwrap()))
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .get(&ip_key("10.43.0.20".parse().unwrap()))
                .await
                .unwrap()
                .is_some()
        );
        assert!(store.get(&port_key(30500)).await.unwrap().is_some());
    }
}
