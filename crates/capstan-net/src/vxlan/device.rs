//! The VXLAN device and its neighbour, FDB and route entries, read and changed through the
//! `ip` and `bridge` commands (their `-j` JSON output).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::{Change, Current, VxlanError, VxlanOptions};
use crate::hostgw::{command, ip, parse_routes, s};

/// The VXLAN header and outer IPv4/UDP/Ethernet headers take 50 bytes of the underlay's MTU.
pub const OVERHEAD: u32 = 50;

/// This node's tunnel endpoint once the device is up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vtep {
    pub mac: String,
    pub public_ip: Ipv4Addr,
}

/// The interface holding `addr` (not `exclude`) and its MTU, from `ip -j -4 addr show`.
pub fn parse_underlay(json: &str, addr: Ipv4Addr, exclude: &str) -> Option<(String, u32)> {
    let value: serde_json::Value = serde_json::from_str(json.trim()).ok()?;
    value.as_array()?.iter().find_map(|link| {
        let name = link.get("ifname")?.as_str()?;
        let holds = link
            .get("addr_info")?
            .as_array()?
            .iter()
            .any(|a| a.get("local").and_then(|l| l.as_str()) == Some(&addr.to_string()));
        let mtu = link.get("mtu")?.as_u64()?;
        if !holds || name == exclude {
            return None;
        }
        Some((name.to_string(), u32::try_from(mtu).ok()?))
    })
}

/// What `ip -d -j link show dev X` says of an existing device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    pub kind: Option<String>,
    pub vni: Option<u64>,
    pub local: Option<String>,
    pub port: Option<u64>,
    pub link: Option<String>,
    pub learning: Option<bool>,
    pub mac: Option<String>,
    pub mtu: Option<u64>,
    pub up: bool,
}

/// Parses `ip -d -j link show dev X`.
pub fn parse_device(json: &str) -> Option<DeviceInfo> {
    let value: serde_json::Value = serde_json::from_str(json.trim()).ok()?;
    let link = value.as_array()?.first()?;
    let info = link.get("linkinfo");
    let data = info.and_then(|i| i.get("info_data"));
    let text = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_string);
    Some(DeviceInfo {
        kind: text(info.and_then(|i| i.get("info_kind"))),
        vni: data.and_then(|d| d.get("id")).and_then(|v| v.as_u64()),
        local: text(data.and_then(|d| d.get("local"))),
        port: data.and_then(|d| d.get("port")).and_then(|v| v.as_u64()),
        link: text(data.and_then(|d| d.get("link"))),
        learning: data
            .and_then(|d| d.get("learning"))
            .and_then(|v| v.as_bool()),
        mac: text(link.get("address")).map(|m| m.to_ascii_lowercase()),
        mtu: link.get("mtu").and_then(|v| v.as_u64()),
        up: link
            .get("flags")
            .and_then(|f| f.as_array())
            .is_some_and(|f| f.iter().any(|f| f == "UP")),
    })
}

/// Whether an existing device already is the wanted tunnel (else it is made again).
fn matches(d: &DeviceInfo, o: &VxlanOptions, local: Ipv4Addr, underlay: &str) -> bool {
    d.kind.as_deref() == Some("vxlan")
        && d.vni == Some(u64::from(o.vni))
        && d.local.as_deref() == Some(local.to_string().as_str())
        && d.port == Some(u64::from(o.port))
        && d.link.as_deref() == Some(underlay)
        && d.learning == Some(false)
}

/// The permanent neighbour entries (VTEP IP → MAC) from
/// `ip -j -4 neigh show dev X nud permanent`.
pub fn parse_neigh(json: &str) -> Result<BTreeMap<Ipv4Addr, String>, VxlanError> {
    let mut out = BTreeMap::new();
    for e in json_list(json)? {
        let dst = e
            .get("dst")
            .and_then(|d| d.as_str())
            .and_then(|d| d.parse().ok());
        let mac = e.get("lladdr").and_then(|m| m.as_str());
        if let (Some(dst), Some(mac)) = (dst, mac) {
            out.insert(dst, mac.to_ascii_lowercase());
        }
    }
    Ok(out)
}

/// The FDB entries with a remote: (MAC, its node's address), from `bridge -j fdb show dev X`.
pub fn parse_fdb(json: &str) -> Result<BTreeSet<(String, Ipv4Addr)>, VxlanError> {
    let mut out = BTreeSet::new();
    for e in json_list(json)? {
        let dst = e
            .get("dst")
            .and_then(|d| d.as_str())
            .and_then(|d| d.parse().ok());
        let mac = e.get("mac").and_then(|m| m.as_str());
        if let (Some(dst), Some(mac)) = (dst, mac) {
            out.insert((mac.to_ascii_lowercase(), dst));
        }
    }
    Ok(out)
}

/// The IPv4 addresses (without prefix) of the device, from `ip -j -4 addr show dev X`.
pub fn parse_addrs(json: &str) -> Result<Vec<(String, u64)>, VxlanError> {
    let mut out = Vec::new();
    for link in json_list(json)? {
        for a in link
            .get("addr_info")
            .and_then(|a| a.as_array())
            .into_iter()
            .flatten()
        {
            if let (Some(l), Some(p)) = (
                a.get("local").and_then(|l| l.as_str()),
                a.get("prefixlen").and_then(|p| p.as_u64()),
            ) {
                out.push((l.to_string(), p));
            }
        }
    }
    Ok(out)
}

fn json_list(json: &str) -> Result<Vec<serde_json::Value>, VxlanError> {
    // `bridge -j` prints nothing at all for an empty table.
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let value: serde_json::Value =
        serde_json::from_str(json.trim()).map_err(|e| VxlanError::Parse(e.to_string()))?;
    match value {
        serde_json::Value::Array(list) => Ok(list),
        _ => Err(VxlanError::Parse("not a list".into())),
    }
}

/// The interface holding the node address and its MTU.
pub async fn underlay(o: &VxlanOptions, local: Ipv4Addr) -> Result<(String, u32), VxlanError> {
    let json = ip(&s(&["-j", "-4", "addr", "show"])).await?;
    parse_underlay(&json, local, &o.device).ok_or(VxlanError::NoInterface(local))
}

/// Creates (or makes again, if it differs) the VXLAN device, gives it the VTEP address and
/// brings it up; returns its MAC.
pub async fn ensure(
    o: &VxlanOptions,
    local: Ipv4Addr,
    vtep_ip: Ipv4Addr,
) -> Result<Vtep, VxlanError> {
    let (under, under_mtu) = underlay(o, local).await?;
    let mtu = under_mtu.saturating_sub(OVERHEAD);
    let dev = o.device.as_str();
    let existing = ip(&s(&["-d", "-j", "link", "show", "dev", dev]))
        .await
        .ok()
        .and_then(|j| parse_device(&j));
    let keep = existing
        .as_ref()
        .is_some_and(|d| matches(d, o, local, &under));
    if existing.is_some() && !keep {
        tracing::info!(device = dev, "vxlan device differs; making it again");
        ip(&s(&["link", "del", dev])).await?;
    }
    if !keep {
        let (vni, port, local) = (o.vni.to_string(), o.port.to_string(), local.to_string());
        ip(&s(&[
            "link",
            "add",
            dev,
            "type",
            "vxlan",
            "id",
            &vni,
            "local",
            &local,
            "dev",
            &under,
            "dstport",
            &port,
            "nolearning",
        ]))
        .await?;
        tracing::info!(device = dev, vni = o.vni, underlay = %under, "vxlan device created");
    }
    let needs_set = existing
        .as_ref()
        .filter(|_| keep)
        .is_none_or(|d| !d.up || d.mtu != Some(u64::from(mtu)));
    if needs_set {
        ip(&s(&["link", "set", dev, "mtu", &mtu.to_string(), "up"])).await?;
    }
    let addrs = parse_addrs(&ip(&s(&["-j", "-4", "addr", "show", "dev", dev])).await?)?;
    let vtep = vtep_ip.to_string();
    for (a, p) in &addrs {
        if *a != vtep || *p != 32 {
            ip(&s(&["addr", "del", &format!("{a}/{p}"), "dev", dev])).await?;
        }
    }
    if !addrs.iter().any(|(a, p)| *a == vtep && *p == 32) {
        ip(&s(&["addr", "replace", &format!("{vtep}/32"), "dev", dev])).await?;
    }
    let info = parse_device(&ip(&s(&["-d", "-j", "link", "show", "dev", dev])).await?)
        .ok_or_else(|| VxlanError::Parse(format!("`ip link show dev {dev}`")))?;
    let mac = info
        .mac
        .ok_or_else(|| VxlanError::Parse(format!("{dev} has no MAC address")))?;
    Ok(Vtep {
        mac,
        public_ip: local,
    })
}

/// The entries now on the device and the owned routes.
pub async fn current(o: &VxlanOptions) -> Result<Current, VxlanError> {
    let dev = o.device.as_str();
    let neigh = ip(&s(&[
        "-j",
        "-4",
        "neigh",
        "show",
        "dev",
        dev,
        "nud",
        "permanent",
    ]))
    .await?;
    let fdb = command("bridge", &s(&["-j", "fdb", "show", "dev", dev])).await?;
    let proto = o.proto.to_string();
    let routes = ip(&s(&["-j", "-4", "route", "show", "proto", &proto])).await?;
    Ok(Current {
        neigh: parse_neigh(&neigh)?,
        fdb: parse_fdb(&fdb)?,
        routes: parse_routes(&routes)?,
    })
}

/// Makes each change; returns the first error after trying them all.
pub async fn apply(o: &VxlanOptions, changes: &[Change]) -> Result<(), VxlanError> {
    let dev = o.device.as_str();
    let proto = o.proto.to_string();
    let mut first_error = None;
    for change in changes {
        let r = match change {
            Change::RouteDel { cidr } => ip(&s(&["route", "del", cidr, "proto", &proto])).await,
            Change::NeighDel { ip: at } => {
                ip(&s(&["neigh", "del", &at.to_string(), "dev", dev])).await
            }
            Change::FdbDel { mac, dst } => {
                let dst = dst.to_string();
                command("bridge", &s(&["fdb", "del", mac, "dev", dev, "dst", &dst])).await
            }
            Change::NeighSet { ip: at, mac } => {
                let at = at.to_string();
                let args = [
                    "neigh",
                    "replace",
                    &at,
                    "lladdr",
                    mac,
                    "dev",
                    dev,
                    "nud",
                    "permanent",
                ];
                ip(&s(&args)).await
            }
            Change::FdbSet { mac, dst } => {
                let dst = dst.to_string();
                command(
                    "bridge",
                    &s(&["fdb", "replace", mac, "dev", dev, "dst", &dst]),
                )
                .await
            }
            Change::RouteSet { cidr, via } => {
                let via = via.to_string();
                let args = [
                    "route", "replace", cidr, "via", &via, "dev", dev, "onlink", "proto", &proto,
                ];
                ip(&s(&args)).await
            }
        };
        match r {
            Ok(_) => tracing::info!(?change, "vxlan entry changed"),
            Err(e) => {
                tracing::warn!(error = %e, "vxlan entry");
                first_error.get_or_insert(VxlanError::from(e));
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_underlay_by_address() {
        let json = r#"[{"ifname":"lo","mtu":65536,"addr_info":[{"local":"127.0.0.1","prefixlen":8}]},
            {"ifname":"eth0","mtu":1500,"addr_info":[{"local":"10.0.0.1","prefixlen":24}]},
            {"ifname":"capstan.1","mtu":1450,"addr_info":[{"local":"10.0.0.1","prefixlen":32}]}]"#;
        let ip: Ipv4Addr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            parse_underlay(json, ip, "capstan.1"),
            Some(("eth0".to_string(), 1500))
        );
        assert_eq!(parse_underlay(json, "10.0.0.9".parse().unwrap(), "x"), None);
        assert_eq!(parse_underlay("garbage", ip, "x"), None);
    }

    #[test]
    fn parses_the_device_and_its_tables() {
        let json = r#"[{"ifname":"capstan.1","flags":["BROADCAST","UP"],"mtu":1450,"address":"16:CF:cc:f1:45:f2",
            "linkinfo":{"info_kind":"vxlan","info_data":{"id":1,"local":"10.99.0.1","link":"veth0","port":8472,"learning":false}}}]"#;
        let d = parse_device(json).unwrap();
        assert_eq!(d.mac.as_deref(), Some("16:cf:cc:f1:45:f2"));
        assert_eq!(
            (d.vni, d.port, d.mtu, d.up),
            (Some(1), Some(8472), Some(1450), true)
        );
        let o = VxlanOptions::new("a", "10.99.0.1".parse().unwrap(), "10.42.0.0/24");
        let local = "10.99.0.1".parse().unwrap();
        assert!(matches(&d, &o, local, "veth0"));
        assert!(!matches(&d, &o, local, "eth1"));
        assert!(!matches(&d, &o, "10.99.0.2".parse().unwrap(), "veth0"));

        let neigh = parse_neigh(
            r#"[{"dst":"10.42.1.0","lladdr":"AA:bb:cc:dd:ee:01","state":["PERMANENT"]}]"#,
        )
        .unwrap();
        assert_eq!(
            neigh.get(&"10.42.1.0".parse().unwrap()).map(String::as_str),
            Some("aa:bb:cc:dd:ee:01")
        );
        let fdb = parse_fdb(
            r#"[{"mac":"aa:bb:cc:dd:ee:01","dst":"10.99.0.2","flags":["self"],"state":"permanent"},
            {"mac":"ee:25:ed:93:25:06","flags":["self"],"state":"permanent"}]"#,
        )
        .unwrap();
        assert_eq!(fdb.len(), 1);
        assert!(fdb.contains(&(
            "aa:bb:cc:dd:ee:01".to_string(),
            "10.99.0.2".parse().unwrap()
        )));
        assert!(parse_fdb("").unwrap().is_empty());
        assert!(parse_neigh("{").is_err());
        let addrs = parse_addrs(
            r#"[{"ifname":"capstan.1","addr_info":[{"local":"10.42.0.0","prefixlen":32}]}]"#,
        )
        .unwrap();
        assert_eq!(addrs, vec![("10.42.0.0".to_string(), 32)]);
    }
}
