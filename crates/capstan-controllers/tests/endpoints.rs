//! The Endpoints and EndpointSlice controllers against a real in-process API server (no kubelet:
//! tests set pod IPs and readiness through pods/status): addresses follow readiness, named
//! target ports resolve per pod, publishNotReadyAddresses, terminating pods in slices, and
//! deleting the Service removes what was derived from it.

mod support;

use k8s_openapi::api::core::v1::{EndpointSubset, Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use support::{start, wait_for};

fn service(name: &str, app: &str, target: serde_json::Value, publish: bool) -> Service {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"tier": "front"}},
        "spec": {
            "selector": {"app": app},
            "publishNotReadyAddresses": publish,
            "ports": [{"name": "http", "port": 80, "targetPort": target}]
        }
    }))
    .unwrap()
}

fn pod(name: &str, app: &str, port: i32, extra: serde_json::Value) -> Pod {
    let mut p = serde_json::json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {
            "nodeName": "node-1",
            "containers": [{"name": "c", "image": "busybox",
                "ports": [{"name": "http", "containerPort": port}]}]
        }
    });
    if let serde_json::Value::Object(m) = extra {
        for (k, v) in m {
            p["spec"][k] = v;
        }
    }
    serde_json::from_value(p).unwrap()
}

/// Sets a pod's IP and Ready condition, as a kubelet would.
async fn set_status(pods: &Api<Pod>, name: &str, ip: &str, ready: bool) {
    let now = jiff::Timestamp::now().to_string();
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                "lastTransitionTime": now}]
        }})),
    )
    .await
    .unwrap();
}

fn ips(list: &Option<Vec<k8s_openapi::api::core::v1::EndpointAddress>>) -> Vec<String> {
    list.iter().flatten().map(|a| a.ip.clone()).collect()
}

/// (ready IPs, not-ready IPs, ports) per subset, or None when the Endpoints does not exist.
async fn subsets(api: &Api<Endpoints>, name: &str) -> Option<Vec<EndpointSubset>> {
    api.get_opt(name)
        .await
        .unwrap()
        .map(|e| e.subsets.unwrap_or_default())
}

async fn slices(api: &Api<EndpointSlice>, svc: &str) -> Vec<EndpointSlice> {
    api.list(&ListParams::default().labels(&format!("kubernetes.io/service-name={svc}")))
        .await
        .unwrap()
        .items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_follow_readiness_and_go_with_the_service() {
    let ns = "ep-ready";
    let c = start(ns).await;
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns);
    let svcs = Api::<Service>::namespaced(c.client.clone(), ns);
    let eps = Api::<Endpoints>::namespaced(c.client.clone(), ns);
    let sl = Api::<EndpointSlice>::namespaced(c.client.clone(), ns);
    let pp = PostParams::default();
    for (name, app) in [("a", "web"), ("b", "web"), ("other", "db")] {
        pods.create(&pp, &pod(name, app, 8080, serde_json::json!({})))
            .await
            .unwrap();
    }
    // A pod without an IP is left out entirely.
    pods.create(&pp, &pod("no-ip", "web", 8080, serde_json::json!({})))
        .await
        .unwrap();
    set_status(&pods, "a", "10.9.0.1", true).await;
    set_status(&pods, "b", "10.9.0.2", false).await;
    set_status(&pods, "other", "10.9.0.3", true).await;
    svcs.create(&pp, &service("web", "web", serde_json::json!(8080), false))
        .await
        .unwrap();
    // A Service without a selector is left alone.
    let manual: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "manual"}, "spec": {"ports": [{"port": 80}]}
    }))
    .unwrap();
    svcs.create(&pp, &manual).await.unwrap();

    wait_for("a ready, b not ready", || async {
        subsets(&eps, "web").await.is_some_and(|s| {
            s.len() == 1
                && ips(&s[0].addresses) == ["10.9.0.1"]
                && ips(&s[0].not_ready_addresses) == ["10.9.0.2"]
        })
    })
    .await;
    let ep = eps.get("web").await.unwrap();
    assert_eq!(ep.labels().get("tier").map(String::as_str), Some("front"));
    let subset = &ep.subsets.unwrap()[0];
    let port = &subset.ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.port, port.protocol.as_deref()),
        (Some("http"), 8080, Some("TCP"))
    );
    let addr = &subset.addresses.as_ref().unwrap()[0];
    assert_eq!(addr.node_name.as_deref(), Some("node-1"));
    let target = addr.target_ref.as_ref().unwrap();
    let a_uid = pods.get("a").await.unwrap().uid();
    assert_eq!(target.kind.as_deref(), Some("Pod"));
    assert_eq!(target.name.as_deref(), Some("a"));
    assert_eq!(target.namespace.as_deref(), Some(ns));
    assert_eq!(target.uid, a_uid);

    // The slice mirrors it, owned by the Service.
    wait_for("slice with a ready and b not", || async {
        let s = slices(&sl, "web").await;
        s.len() == 1 && s[0].endpoints.len() == 2 && {
            let conds: Vec<_> = s[0]
                .endpoints
                .iter()
                .map(|e| {
                    let c = e.conditions.clone().unwrap_or_default();
                    (e.addresses[0].clone(), c.ready, c.serving, c.terminating)
                })
                .collect();
            conds
                == [
                    ("10.9.0.1".into(), Some(true), Some(true), Some(false)),
                    ("10.9.0.2".into(), Some(false), Some(false), Some(false)),
                ]
        }
    })
    .await;
    let slice = &slices(&sl, "web").await[0];
    let slice_name = slice.name_any();
    assert!(slice.name_any().starts_with("web-"), "{}", slice.name_any());
    assert_eq!(slice.address_type, "IPv4");
    assert_eq!(
        slice.labels().get("endpointslice.kubernetes.io/managed-by"),
        Some(&"endpointslice-controller.k8s.io".to_string())
    );
    let owner = &slice.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("Service", "web", Some(true))
    );
    assert_eq!(owner.uid, svcs.get("web").await.unwrap().uid().unwrap());
    let sport = &slice.ports.as_ref().unwrap()[0];
    assert_eq!(
        (sport.name.as_deref(), sport.port, sport.protocol.as_deref()),
        (Some("http"), Some(8080), Some("TCP"))
    );

    // Readiness flips move addresses both ways.
    set_status(&pods, "b", "10.9.0.2", true).await;
    wait_for("both ready", || async {
        subsets(&eps, "web").await.is_some_and(|s| {
            s.len() == 1
                && ips(&s[0].addresses) == ["10.9.0.1", "10.9.0.2"]
                && s[0].not_ready_addresses.is_none()
        })
    })
    .await;
    set_status(&pods, "a", "10.9.0.1", false).await;
    wait_for("a not ready", || async {
        subsets(&eps, "web").await.is_some_and(|s| {
            s.len() == 1
                && ips(&s[0].addresses) == ["10.9.0.2"]
                && ips(&s[0].not_ready_addresses) == ["10.9.0.1"]
        })
    })
    .await;
    // Syncs with nothing changed leave the objects as they are (no churn from fields the
    // server normalises). Each pod event queues every Service of the namespace (FIFO); once
    // `probe` shows the second of two label flips, `web` has been synced after the first.
    let ep_rv = eps.get("web").await.unwrap().resource_version();
    let slice_rv = slices(&sl, "web").await[0].resource_version();
    let mut probe = service("probe", "web", serde_json::json!(8080), false);
    probe.spec.as_mut().unwrap().selector = Some([("poke".to_string(), "1".to_string())].into());
    svcs.create(&pp, &probe).await.unwrap();
    for (label, want) in [(serde_json::json!("1"), 1), (serde_json::Value::Null, 0)] {
        pods.patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"poke": label}}})),
        )
        .await
        .unwrap();
        wait_for("probe follows the label", || async {
            let in_eps = subsets(&eps, "probe").await.is_some_and(|s| {
                s.iter()
                    .map(|s| ips(&s.addresses).len() + ips(&s.not_ready_addresses).len())
                    .sum::<usize>()
                    == want
            });
            let in_slices = slices(&sl, "probe")
                .await
                .iter()
                .map(|s| s.endpoints.len())
                .sum::<usize>()
                == want;
            in_eps && in_slices
        })
        .await;
    }
    assert_eq!(eps.get("web").await.unwrap().resource_version(), ep_rv);
    assert_eq!(slices(&sl, "web").await[0].resource_version(), slice_rv);

    // A stray slice claiming to be the controller's is removed; the real one was updated in
    // place through the readiness flips (same name).
    let mut stray: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-stray", "labels": {
            "kubernetes.io/service-name": "web",
            "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.9.9.9"]}]
    }))
    .unwrap();
    stray = sl.create(&pp, &stray).await.unwrap();
    pods.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"annotations": {"poke": "2"}}})),
    )
    .await
    .unwrap();
    wait_for("stray slice deleted", || async {
        let s = slices(&sl, "web").await;
        s.len() == 1 && s[0].name_any() != stray.name_any()
    })
    .await;
    assert_eq!(slices(&sl, "web").await[0].name_any(), slice_name);

    // A pod whose labels stop matching leaves.
    pods.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"labels": {"app": "gone"}}})),
    )
    .await
    .unwrap();
    wait_for("b gone", || async {
        subsets(&eps, "web")
            .await
            .is_some_and(|s| s.len() == 1 && s[0].addresses.is_none())
    })
    .await;
    assert!(eps.get_opt("manual").await.unwrap().is_none());
    assert!(slices(&sl, "manual").await.is_empty());

    // The API servers' own Endpoints are never touched.
    let default_eps = Api::<Endpoints>::namespaced(c.client.clone(), "default");
    let apiserver_eps = default_eps.get("kubernetes").await.unwrap();

    // Deleting the Service removes its Endpoints and slices.
    svcs.delete("web", &DeleteParams::default()).await.unwrap();
    wait_for("endpoints and slices deleted", || async {
        subsets(&eps, "web").await.is_none() && slices(&sl, "web").await.is_empty()
    })
    .await;
    assert_eq!(
        default_eps.get("kubernetes").await.unwrap().uid(),
        apiserver_eps.uid()
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_target_ports_publish_not_ready_and_hostnames() {
    let ns = "ep-named";
    let c = start(ns).await;
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns);
    let svcs = Api::<Service>::namespaced(c.client.clone(), ns);
    let eps = Api::<Endpoints>::namespaced(c.client.clone(), ns);
    let sl = Api::<EndpointSlice>::namespaced(c.client.clone(), ns);
    let pp = PostParams::default();
    let host = serde_json::json!({"hostname": "h0", "subdomain": "named"});
    pods.create(&pp, &pod("p8080", "app", 8080, host))
        .await
        .unwrap();
    pods.create(&pp, &pod("p9090", "app", 9090, serde_json::json!({})))
        .await
        .unwrap();
    set_status(&pods, "p8080", "10.9.1.1", true).await;
    set_status(&pods, "p9090", "10.9.1.2", false).await;
    svcs.create(
        &pp,
        &service("named", "app", serde_json::json!("http"), false),
    )
    .await
    .unwrap();
    svcs.create(&pp, &service("pub", "app", serde_json::json!("http"), true))
        .await
        .unwrap();

    // Different resolved ports: different subsets (sorted by port).
    wait_for("two subsets", || async {
        subsets(&eps, "named").await.is_some_and(|s| {
            let mut got: Vec<(i32, Vec<String>, Vec<String>)> = s
                .iter()
                .map(|s| {
                    (
                        s.ports.as_ref().map_or(0, |p| p[0].port),
                        ips(&s.addresses),
                        ips(&s.not_ready_addresses),
                    )
                })
                .collect();
            got.sort();
            got == [
                (8080, vec!["10.9.1.1".into()], vec![]),
                (9090, vec![], vec!["10.9.1.2".into()]),
            ]
        })
    })
    .await;
    let named = eps.get("named").await.unwrap().subsets.unwrap();
    let with_host = named
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .find(|a| a.ip == "10.9.1.1")
        .unwrap();
    assert_eq!(with_host.hostname.as_deref(), Some("h0"));
    // Two slices, one per port set.
    wait_for("two slices", || async {
        let mut ports: Vec<i32> = slices(&sl, "named")
            .await
            .iter()
            .filter_map(|s| s.ports.as_ref()?.first()?.port)
            .collect();
        ports.sort();
        ports == [8080, 9090]
    })
    .await;

    // publishNotReadyAddresses: every pod is an address, and serving in its slice.
    wait_for("all published", || async {
        subsets(&eps, "pub").await.is_some_and(|s| {
            s.len() == 2
                && s.iter().all(|s| {
                    s.not_ready_addresses.is_none()
                        && s.addresses.as_ref().is_some_and(|a| a.len() == 1)
                })
        })
    })
    .await;
    let pub_host = eps
        .get("pub")
        .await
        .unwrap()
        .subsets
        .unwrap()
        .iter()
        .flat_map(|s| s.addresses.clone().unwrap_or_default())
        .find(|a| a.ip == "10.9.1.1")
        .unwrap();
    // The hostname only applies under the Service named by the pod's subdomain.
    assert_eq!(pub_host.hostname, None);
    // In its slices every endpoint is ready; serving still tells the pod's readiness.
    wait_for("pub slices ready", || async {
        let mut got: Vec<_> = slices(&sl, "pub")
            .await
            .iter()
            .flat_map(|s| s.endpoints.clone())
            .map(|e| {
                let c = e.conditions.unwrap_or_default();
                (e.addresses[0].clone(), c.ready, c.serving)
            })
            .collect();
        got.sort();
        got == [
            ("10.9.1.1".into(), Some(true), Some(true)),
            ("10.9.1.2".into(), Some(true), Some(false)),
        ]
    })
    .await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_pod_stays_in_slice_but_leaves_endpoints() {
    let ns = "ep-term";
    let c = start(ns).await;
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns);
    let svcs = Api::<Service>::namespaced(c.client.clone(), ns);
    let eps = Api::<Endpoints>::namespaced(c.client.clone(), ns);
    let sl = Api::<EndpointSlice>::namespaced(c.client.clone(), ns);
    let pp = PostParams::default();
    let mut held = pod("held", "t", 8080, serde_json::json!({}));
    held.metadata.finalizers = Some(vec!["capstan.test/hold".into()]);
    pods.create(&pp, &held).await.unwrap();
    pods.create(&pp, &pod("live", "t", 8080, serde_json::json!({})))
        .await
        .unwrap();
    set_status(&pods, "held", "10.9.2.1", true).await;
    set_status(&pods, "live", "10.9.2.2", true).await;
    svcs.create(&pp, &service("t", "t", serde_json::json!(8080), false))
        .await
        .unwrap();
    wait_for("both ready", || async {
        subsets(&eps, "t")
            .await
            .is_some_and(|s| s.len() == 1 && ips(&s[0].addresses).len() == 2)
    })
    .await;

    pods.delete("held", &DeleteParams::default()).await.unwrap();
    assert!(
        pods.get("held")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    wait_for("held terminating in the slice", || async {
        let s = slices(&sl, "t").await;
        let conds: Vec<_> = s
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .map(|e| {
                let c = e.conditions.clone().unwrap_or_default();
                (e.addresses[0].clone(), c.ready, c.serving, c.terminating)
            })
            .collect();
        conds
            == [
                ("10.9.2.1".into(), Some(false), Some(true), Some(true)),
                ("10.9.2.2".into(), Some(true), Some(true), Some(false)),
            ]
    })
    .await;
    wait_for("held out of Endpoints", || async {
        subsets(&eps, "t").await.is_some_and(|s| {
            s.len() == 1
                && ips(&s[0].addresses) == ["10.9.2.2"]
                && s[0].not_ready_addresses.is_none()
        })
    })
    .await;

    // Releasing the finalizer and the kubelet's final grace-0 delete let the pod go (while its
    // grace period runs, upstream keeps a terminating pod), and it leaves the slice.
    pods.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    pods.delete(
        "held",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        },
    )
    .await
    .unwrap();
    wait_for("held gone from the slice", || async {
        let s = slices(&sl, "t").await;
        s.len() == 1 && s[0].endpoints.len() == 1
    })
    .await;
    c.stop().await;
}
