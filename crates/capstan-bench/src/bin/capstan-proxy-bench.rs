//! Service proxy rule sync benchmark (issue 8): 1,000 Services × 10 endpoints generated in
//! memory, synced into a benchmark-owned nft table (build from Service/EndpointSlice objects +
//! render + one `nft -f` transaction), then a change of one endpoint among them. The peer is
//! kube-proxy's iptables mode: `iptables-restore --noflush` of an equivalent KUBE-SVC/KUBE-SEP
//! ruleset (unhooked chains, removed afterwards). Prints a markdown table. Needs root.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use capstan_net::proxy::{NftApply, NftBinary, RenderOptions, build, render};
use clap::Parser;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 1000)]
    services: usize,
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Runs per measurement (the median is printed).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Skip the iptables-restore peer.
    #[arg(long)]
    no_iptables: bool,
}

fn objects(
    services: usize,
    endpoints: usize,
    shift: usize,
) -> (Vec<Arc<Service>>, Vec<Arc<EndpointSlice>>) {
    let mut svcs = Vec::with_capacity(services);
    let mut slices = Vec::with_capacity(services);
    for i in 0..services {
        let name = format!("svc-{i}");
        let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
        svcs.push(Arc::new(
            serde_json::from_value::<Service>(json!({
                "metadata": {"name": name, "namespace": "bench"},
                "spec": {"type": "NodePort", "clusterIP": ip,
                         "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30000 + i}]}
            }))
            .expect("service"),
        ));
        let eps: Vec<_> = (0..endpoints)
            .map(|j| {
                // `shift` moves the first endpoint of service 0: the one-endpoint change.
                let last = if i == 0 && j == 0 { 200 + shift } else { j + 2 };
                json!({"addresses": [format!("10.244.{}.{}", i % 250, last)],
                       "nodeName": if j % 2 == 0 { "bench-node" } else { "other" },
                       "conditions": {"ready": true, "serving": true, "terminating": false}})
            })
            .collect();
        slices.push(Arc::new(
            serde_json::from_value::<EndpointSlice>(json!({
                "metadata": {"name": format!("{name}-x"), "namespace": "bench",
                             "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
                "endpoints": eps
            }))
            .expect("slice"),
        ));
    }
    (svcs, slices)
}

/// kube-proxy iptables mode's rules for the same services (nat table, unhooked chains).
fn iptables_script(services: usize, endpoints: usize, shift: usize, prefix: &str) -> String {
    let mut s = String::new();
    let mut rules = String::new();
    for i in 0..services {
        let svc = format!("{prefix}S{i}");
        s.push_str(&format!(":{svc} - [0:0]\n"));
        rules.push_str(&format!(
            "-A {prefix}SERVICES -d 10.96.{}.{}/32 -p tcp -m tcp --dport 80 -j {svc}\n",
            i / 250,
            i % 250 + 1
        ));
        rules.push_str(&format!(
            "-A {prefix}NODEPORTS -p tcp -m tcp --dport {} -j {svc}\n",
            30000 + i
        ));
        for j in 0..endpoints {
            let sep = format!("{prefix}E{i}-{j}");
            let last = if i == 0 && j == 0 { 200 + shift } else { j + 2 };
            let ip = format!("10.244.{}.{}", i % 250, last);
            s.push_str(&format!(":{sep} - [0:0]\n"));
            let remaining = endpoints - j;
            if remaining > 1 {
                rules.push_str(&format!(
                    "-A {svc} -m statistic --mode random --probability {:.11} -j {sep}\n",
                    1.0 / remaining as f64
                ));
            } else {
                rules.push_str(&format!("-A {svc} -j {sep}\n"));
            }
            rules.push_str(&format!(
                "-A {sep} -s {ip}/32 -j MARK --set-xmark 0x4000/0x4000\n"
            ));
            rules.push_str(&format!(
                "-A {sep} -p tcp -m tcp -j DNAT --to-destination {ip}:8080\n"
            ));
        }
    }
    format!("*nat\n:{prefix}SERVICES - [0:0]\n:{prefix}NODEPORTS - [0:0]\n{s}{rules}COMMIT\n")
}

fn iptables_restore(script: &str) -> anyhow::Result<()> {
    let mut child = Command::new("iptables-restore")
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running iptables-restore")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("iptables-restore: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Flushes then deletes every chain of the peer ruleset (`report`: say so when that fails).
fn iptables_cleanup(services: usize, endpoints: usize, prefix: &str, report: bool) {
    let mut chains = vec![format!("{prefix}SERVICES"), format!("{prefix}NODEPORTS")];
    for i in 0..services {
        chains.push(format!("{prefix}S{i}"));
        for j in 0..endpoints {
            chains.push(format!("{prefix}E{i}-{j}"));
        }
    }
    let mut script = String::from("*nat\n");
    for c in &chains {
        script.push_str(&format!("-F {c}\n"));
    }
    for c in &chains {
        script.push_str(&format!("-X {c}\n"));
    }
    script.push_str("COMMIT\n");
    if let Err(e) = iptables_restore(&script)
        && report
    {
        eprintln!("cleaning up the iptables peer chains: {e}");
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

struct TableGuard(String);

impl Drop for TableGuard {
    fn drop(&mut self) {
        let _ = capstan_net::proxy::delete_table_blocking(&self.0);
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (n, e) = (args.services, args.endpoints);
    let table = format!("capbench{}", std::process::id());
    let _guard = TableGuard(table.clone());
    let options = RenderOptions {
        table: table.clone(),
        pod_cidrs: vec!["10.244.0.0/16".into()],
    };
    let nft = NftBinary::default();
    let base = objects(n, e, 0);
    let mut full = Vec::new();
    let mut render_only = Vec::new();
    let mut change = Vec::new();
    let mut script_len = 0;
    for run in 0..args.runs {
        // Full sync onto an absent table.
        let _ = capstan_net::proxy::delete_table_blocking(&table);
        let t = Instant::now();
        let script = render(&build(&base.0, &base.1, "bench-node"), &options);
        let rendered = t.elapsed();
        nft.apply(&script).await.context("full sync")?;
        full.push(t.elapsed());
        render_only.push(rendered);
        script_len = script.len();
        // One endpoint of one service changes.
        let changed = objects(n, e, run + 1);
        let t = Instant::now();
        let script = render(&build(&changed.0, &changed.1, "bench-node"), &options);
        nft.apply(&script).await.context("one-endpoint sync")?;
        change.push(t.elapsed());
    }
    let (peer_full, peer_change) = if args.no_iptables {
        (None, None)
    } else {
        let prefix = format!("CB{}", std::process::id() % 10_000);
        let mut pf = Vec::new();
        let mut pc = Vec::new();
        for run in 0..args.runs {
            iptables_cleanup(n, e, &prefix, false);
            let script = iptables_script(n, e, 0, &prefix);
            let t = Instant::now();
            iptables_restore(&script)?;
            pf.push(t.elapsed());
            // Declaring an existing chain flushes it under --noflush: the script replaces the
            // rules, as kube-proxy's iptables mode does on every sync.
            let script = iptables_script(n, e, run + 1, &prefix);
            let t = Instant::now();
            iptables_restore(&script)?;
            pc.push(t.elapsed());
        }
        iptables_cleanup(n, e, &prefix, true);
        (Some(median(pf)), Some(median(pc)))
    };
    let (full, change, render_only) = (median(full), median(change), median(render_only));
    println!(
        "Service proxy rule sync: {n} Services × {e} endpoints (NodePort each), median of {} runs; script {} KiB",
        args.runs,
        script_len / 1024
    );
    println!();
    println!(
        "| sync | capstan (build + render + nft -f) | of which build + render | kube-proxy iptables peer (iptables-restore) | capstan / peer |"
    );
    println!("| --- | --- | --- | --- | --- |");
    let ratio = |a: Duration, b: Option<Duration>| {
        b.map(|b| format!("{:.2}×", a.as_secs_f64() / b.as_secs_f64()))
            .unwrap_or_else(|| "–".into())
    };
    let peer = |d: Option<Duration>| d.map(ms).unwrap_or_else(|| "–".into());
    println!(
        "| full ruleset | {} | {} | {} | {} |",
        ms(full),
        ms(render_only),
        peer(peer_full),
        ratio(full, peer_full)
    );
    println!(
        "| one endpoint changed | {} | – | {} | {} |",
        ms(change),
        peer(peer_change),
        ratio(change, peer_change)
    );
    Ok(())
}
