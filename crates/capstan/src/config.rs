//! `--config FILE.yaml`: every flag can also be given in a YAML file (k3s style), as
//! `flag-name: value` (lists for repeatable flags, `true` for switches). Flags given on the
//! command line win over the file.

use anyhow::{Context, bail};
use std::ffi::OsString;

/// Expand `--config FILE` into flags placed before the command-line ones, so that the
/// command line overrides the file (clap keeps the last value of a flag).
pub fn args_with_config_file(args: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    let mut path: Option<String> = None;
    let mut rest: Vec<OsString> = Vec::with_capacity(args.len());
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy().to_string();
        if s == "--" {
            // Everything after `--` is a command line of its own (e.g. `sh -c ...`).
            rest.push(a);
            rest.extend(it.by_ref());
            break;
        }
        if s == "--config" || s == "-c" {
            path = Some(
                it.next()
                    .context("--config needs a file")?
                    .to_string_lossy()
                    .to_string(),
            );
        } else if let Some(p) = s.strip_prefix("--config=") {
            path = Some(p.to_string());
        } else {
            rest.push(a);
        }
    }
    let Some(path) = path else { return Ok(rest) };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading config file {path}"))?;
    let from_file = flags_from_yaml(&text).with_context(|| format!("config file {path}"))?;
    // Insert after the program name and subcommand.
    let split = rest.len().min(2);
    let mut out: Vec<OsString> = rest[..split].to_vec();
    out.extend(from_file.into_iter().map(OsString::from));
    out.extend(rest[split..].iter().cloned());
    Ok(out)
}

fn flags_from_yaml(text: &str) -> anyhow::Result<Vec<String>> {
    let v: serde_json::Value = serde_saphyr::from_str(text).context("parsing YAML")?;
    let mut out = Vec::new();
    let serde_json::Value::Object(map) = v else {
        if v.is_null() {
            return Ok(out);
        }
        bail!("must be a mapping of flag names to values");
    };
    for (k, val) in map {
        match val {
            serde_json::Value::Bool(true) => out.push(format!("--{k}")),
            serde_json::Value::Bool(false) | serde_json::Value::Null => {}
            serde_json::Value::Array(items) => {
                for i in items {
                    out.push(format!("--{k}={}", scalar(&i)?));
                }
            }
            other => out.push(format!("--{k}={}", scalar(&other)?)),
        }
    }
    Ok(out)
}

fn scalar(v: &serde_json::Value) -> anyhow::Result<String> {
    Ok(match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Bool(b) => b.to_string(),
        _ => bail!("unsupported value {v}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_becomes_flags_and_command_line_comes_last() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.yaml");
        std::fs::write(
            &f,
            "https-port: 7443\ndisable-agent: true\ntls-san: [a.example, 10.0.0.1]\n",
        )
        .unwrap();
        let args: Vec<OsString> = [
            "capstan",
            "server",
            "--config",
            f.to_str().unwrap(),
            "--https-port",
            "8443",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let out: Vec<String> = args_with_config_file(args)
            .unwrap()
            .into_iter()
            .map(|s| s.to_string_lossy().into())
            .collect();
        assert_eq!(out[..2], ["capstan", "server"]);
        assert!(out.contains(&"--https-port=7443".to_string()));
        assert!(out.contains(&"--disable-agent".to_string()));
        assert!(out.contains(&"--tls-san=10.0.0.1".to_string()));
        assert_eq!(out[out.len() - 2..], ["--https-port", "8443"]);
    }

    #[test]
    fn arguments_after_double_dash_are_left_alone() {
        let args: Vec<OsString> = ["capstan", "run-pod", "--", "sh", "-c", "echo hi"]
            .iter()
            .map(OsString::from)
            .collect();
        let out = args_with_config_file(args.clone()).unwrap();
        assert_eq!(out, args);
    }
}
