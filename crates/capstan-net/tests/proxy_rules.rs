//! The proxy's model and rendering: which endpoints are used under each policy, which
//! destinations reject, and that the kernel accepts the script and a re-apply replaces it.

mod proxy_common;

use capstan_net::proxy::{NftApply, NftBinary, RenderOptions, build, render};
use proxy_common::*;
use serde_json::json;

fn options(table: &str) -> RenderOptions {
    RenderOptions {
        table: table.into(),
        pod_cidrs: vec!["10.42.0.0/24".into()],
    }
}

#[test]
fn ready_endpoints_win_and_terminating_ones_serve_only_when_none_is_ready() {
    let svc = vec![service(
        "d",
        "s",
        json!({"clusterIP": "10.43.0.5", "ports": [{"port": 80}]}),
    )];
    let slices = vec![slice(
        "d",
        "s",
        "s-1",
        8080,
        &[
            ("10.42.0.2", "n1", true, true, false),
            ("10.42.0.3", "n1", false, true, true),
            ("10.42.0.4", "n2", false, false, false),
        ],
    )];
    let ports = build(&svc, &slices, "n1");
    assert_eq!(ports.len(), 1);
    let used: Vec<String> = ports[0]
        .usable(false)
        .iter()
        .map(|e| e.ip.to_string())
        .collect();
    assert_eq!(used, ["10.42.0.2"]);
    let slices = vec![slice(
        "d",
        "s",
        "s-1",
        8080,
        &[
            ("10.42.0.3", "n1", false, true, true),
            ("10.42.0.4", "n2", false, false, false),
        ],
    )];
    let ports = build(&svc, &slices, "n1");
    let used: Vec<String> = ports[0]
        .usable(false)
        .iter()
        .map(|e| e.ip.to_string())
        .collect();
    assert_eq!(used, ["10.42.0.3"]);
}

#[test]
fn policies_affinity_and_rejects_are_rendered() {
    let svc = vec![
        service(
            "d",
            "local",
            json!({"type": "NodePort", "clusterIP": "10.43.0.6", "internalTrafficPolicy": "Local",
                   "externalTrafficPolicy": "Local", "ports": [{"port": 80, "nodePort": 30080}],
                   "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 30}}}),
        ),
        service(
            "d",
            "none",
            json!({"type": "NodePort", "clusterIP": "10.43.0.7", "ports": [{"port": 81, "nodePort": 30081}]}),
        ),
        service(
            "d",
            "name",
            json!({"type": "ExternalName", "externalName": "example.com"}),
        ),
        service(
            "d",
            "headless",
            json!({"clusterIP": "None", "ports": [{"port": 80}]}),
        ),
    ];
    let slices = vec![slice(
        "d",
        "local",
        "l-1",
        8080,
        &[
            ("10.42.0.2", "n1", true, true, false),
            ("10.42.1.2", "n2", true, true, false),
        ],
    )];
    let ports = build(&svc, &slices, "n1");
    assert_eq!(ports.len(), 3, "ExternalName is not proxied");
    let text = render(&ports, &options("t"));
    // Cluster IP traffic under internalTrafficPolicy Local goes to this node's endpoint only.
    assert!(text.contains("chain cip-d/local/tcp/p80 {\n\t\tip saddr != { 10.42.0.0/24 } jump mark-for-masquerade\n\t\tgoto svl-d/local/tcp/p80"), "{text}");
    assert!(text.contains("chain svl-d/local/tcp/p80 {\n\t\tip saddr @aff-d/local/tcp/p80__10.42.0.2/8080 goto sep-d/local/tcp/p80__10.42.0.2/8080\n\t\tnumgen random mod 1"), "{text}");
    assert!(
        text.contains("numgen random mod 2"),
        "cluster chain over both: {text}"
    );
    assert!(text.contains("timeout 30s"));
    assert!(text.contains("update @aff-d/local/tcp/p80__10.42.1.2/8080 { ip saddr }"));
    // External Local: pods and the node itself short-circuit, others stay unmasqueraded.
    assert!(text.contains("chain ext-d/local/tcp/p80 {\n\t\tip saddr { 10.42.0.0/24 } goto svc-d/local/tcp/p80\n\t\tfib saddr type local jump mark-for-masquerade"));
    // No endpoints: reject both the ClusterIP and the NodePort.
    assert!(text.contains("10.43.0.7 . tcp . 81 : goto reject-chain"));
    assert!(text.contains("tcp . 30081 : goto reject-chain"));
    assert!(!text.contains("cip-d/none"));
    // Hairpin: an endpoint reaching itself is masqueraded.
    assert!(text.contains("chain sep-d/local/tcp/p80__10.42.0.2/8080 {\n\t\tip saddr 10.42.0.2 jump mark-for-masquerade"));
}

#[test]
fn rendering_is_deterministic_whatever_the_cache_order() {
    let a = service(
        "d",
        "a",
        json!({"clusterIP": "10.43.0.8", "ports": [{"port": 80}]}),
    );
    let b = service(
        "d",
        "b",
        json!({"clusterIP": "10.43.0.9", "ports": [{"port": 80}]}),
    );
    let s1 = slice(
        "d",
        "a",
        "a-1",
        80,
        &[ready("10.42.0.9"), ready("10.42.0.3")],
    );
    let s2 = slice("d", "b", "b-1", 80, &[ready("10.42.0.4")]);
    let one = render(
        &build(&[a.clone(), b.clone()], &[s1.clone(), s2.clone()], "n"),
        &options("t"),
    );
    let two = render(&build(&[b, a], &[s2, s1], "n"), &options("t"));
    assert_eq!(one, two);
}

#[tokio::test]
async fn the_kernel_accepts_the_script_and_a_reapply_replaces_the_table() {
    let (_, tag) = unique();
    let table = format!("cpxr{tag}");
    let _guard = TableGuard(table.clone());
    let svc = vec![
        lb_service(
            "d",
            "web",
            json!({"type": "LoadBalancer", "clusterIP": "10.43.0.10", "externalTrafficPolicy": "Local",
                   "ports": [{"port": 80, "nodePort": 30090, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30091}]}),
            &["192.0.2.77"],
        ),
        service(
            "d",
            "none",
            json!({"clusterIP": "10.43.0.11", "ports": [{"port": 80}]}),
        ),
    ];
    let slices = vec![slice(
        "d",
        "web",
        "w",
        8080,
        &[
            ready("10.42.0.2"),
            ("10.42.0.3", "other", true, true, false),
        ],
    )];
    let nft = NftBinary::default();
    nft.apply(&render(&build(&svc, &slices, "node-a"), &options(&table)))
        .await
        .expect("first apply");
    let listed = nft_list(&table);
    assert!(listed.contains("dnat ip to 10.42.0.2:8080"), "{listed}");
    assert!(
        listed.contains("192.0.2.77 . tcp . 80 : goto ext-d/web/tcp/p80"),
        "{listed}"
    );
    let slices = vec![slice("d", "web", "w", 8080, &[ready("10.42.0.5")])];
    nft.apply(&render(&build(&svc, &slices, "node-a"), &options(&table)))
        .await
        .expect("second apply");
    let listed = nft_list(&table);
    assert!(listed.contains("dnat ip to 10.42.0.5:8080"), "{listed}");
    assert!(!listed.contains("10.42.0.2"), "old endpoint gone: {listed}");
    // A broken script changes nothing.
    let err = nft
        .apply(&format!("add table inet {table}\ndelete table inet {table}\ntable inet {table} {{ chain x {{ nonsense; }} }}\n"))
        .await
        .expect_err("invalid script");
    assert!(err.to_string().contains("nft refused"), "{err}");
    assert!(nft_list(&table).contains("dnat ip to 10.42.0.5:8080"));
}
