//! Plugin results and errors: IPs out of any result version, the spec's error JSON.

use std::net::IpAddr;

use serde_json::Value;

/// The IP addresses of a result: `ips[].address` (0.3+) or `ip4.ip` / `ip6.ip` (0.1, 0.2),
/// without prefix length.
pub fn result_ips(result: &Value) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut push = |cidr: Option<&str>| {
        if let Some(ip) = cidr
            .and_then(|c| c.split('/').next())
            .and_then(|a| a.parse::<IpAddr>().ok())
        {
            out.push(ip);
        }
    };
    if let Some(ips) = result.get("ips").and_then(Value::as_array) {
        for ip in ips {
            push(ip.get("address").and_then(Value::as_str));
        }
    } else {
        for key in ["ip4", "ip6"] {
            push(
                result
                    .get(key)
                    .and_then(|v| v.get("ip"))
                    .and_then(Value::as_str),
            );
        }
    }
    out
}

/// The spec's error object: `{"code": N, "msg": "...", "details": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginError {
    pub code: u64,
    pub msg: String,
    pub details: String,
}

/// Parses a plugin's error output, if it is the spec's error JSON.
pub fn parse_error(stdout: &[u8]) -> Option<PluginError> {
    let v: Value = serde_json::from_slice(stdout).ok()?;
    let code = v.get("code").and_then(Value::as_u64)?;
    Some(PluginError {
        code,
        msg: v.get("msg").and_then(Value::as_str).unwrap_or("").into(),
        details: v
            .get("details")
            .and_then(Value::as_str)
            .unwrap_or("")
            .into(),
    })
}
