//! Pulling from a real docker-registry on loopback: anonymous and basic auth, pull secrets,
//! mirrors, multi-arch indexes, and failures (bad credentials, unknown tag, registry down,
//! tampered blob) that leave nothing in the store.

mod common;

use std::time::Instant;

use capstan_runtime::image::pull::Puller;
use capstan_runtime::image::{DockerConfigJson, ImageError, RegistriesConfig, RegistryAuth};
use capstan_runtime::testimage::{
    TestImageOptions, TestRegistry, busybox_multiarch_oci_layout, busybox_oci_layout, free_port,
    push_to_registry,
};
use common::{assert_store_empty, store};

fn basic(user: &str, password: &str) -> RegistryAuth {
    RegistryAuth::Basic {
        username: user.into(),
        password: password.into(),
    }
}

#[tokio::test]
async fn pull_from_loopback_registry_by_tag_and_digest() {
    let registry = TestRegistry::start().unwrap();
    let (tmp, store) = store();
    let layout = tmp.path().join("layout");
    let built = busybox_oci_layout(&layout, "x", &TestImageOptions::default()).unwrap();
    let target = format!("{}/test/busybox:v1", registry.host());
    push_to_registry(&layout, &target, None).await.unwrap();

    let puller = Puller::new(store.clone(), RegistriesConfig::default());
    let started = Instant::now();
    let img = puller.pull(&target, None).await.unwrap();
    eprintln!(
        "pull of the busybox image from the loopback registry: {} ms",
        started.elapsed().as_millis()
    );
    assert_eq!(img.id, built.config_digest);
    assert_eq!(img.manifest_digest, built.manifest_digest);
    let repo = format!("{}/test/busybox", registry.host());
    assert!(
        img.references.contains(&format!("{repo}:v1")),
        "{:?}",
        img.references
    );
    assert!(
        img.references
            .contains(&format!("{repo}@{}", built.manifest_digest))
    );
    assert!(
        store.layer_dirs(&img).unwrap()[0]
            .join("bin/busybox")
            .is_file()
    );

    // Pulling again finds every layer present; by digest resolves to the same image.
    let started = Instant::now();
    let again = puller
        .pull(&format!("{repo}@{}", built.manifest_digest), None)
        .await
        .unwrap();
    eprintln!(
        "re-pull by digest (layers present): {} ms",
        started.elapsed().as_millis()
    );
    assert_eq!(again.id, img.id);
    assert_eq!(store.list().unwrap().len(), 1);
}

#[tokio::test]
async fn basic_auth_registry_needs_the_right_credentials() {
    let registry = TestRegistry::start_with(Some(("alice", "s3cret"))).unwrap();
    let (tmp, store) = store();
    let layout = tmp.path().join("layout");
    let built = busybox_oci_layout(&layout, "x", &TestImageOptions::default()).unwrap();
    let target = format!("{}/private/app:1", registry.host());
    push_to_registry(&layout, &target, Some(basic("alice", "s3cret")))
        .await
        .unwrap();
    let puller = Puller::new(store.clone(), RegistriesConfig::default());

    let err = puller.pull(&target, None).await.unwrap_err();
    eprintln!("anonymous: {err}");
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err:?}");
    assert!(err.to_string().contains("401"), "{err}");
    let err = puller
        .pull(&target, Some(basic("alice", "wrong")))
        .await
        .unwrap_err();
    eprintln!("wrong password: {err}");
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err:?}");
    assert_store_empty(&store);

    // Credentials from a kubernetes.io/dockerconfigjson pull secret.
    let secret = format!(
        r#"{{"auths":{{"{}":{{"auth":"YWxpY2U6czNjcmV0"}}}}}}"#,
        registry.host()
    );
    let auth = DockerConfigJson::parse(secret.as_bytes())
        .unwrap()
        .auth_for(&registry.host());
    assert_eq!(auth, Some(basic("alice", "s3cret")));
    let img = puller.pull(&target, auth).await.unwrap();
    assert_eq!(img.id, built.config_digest);

    // Credentials from registries.yaml.
    let (_tmp2, store2) = common::store();
    let yaml = format!(
        "configs:\n  \"{}\":\n    auth:\n      username: alice\n      password: s3cret\n",
        registry.host()
    );
    let puller2 = Puller::new(store2.clone(), RegistriesConfig::parse(&yaml).unwrap());
    assert_eq!(
        puller2.pull(&target, None).await.unwrap().id,
        built.config_digest
    );
}

#[tokio::test]
async fn multi_arch_index_resolves_to_this_platform() {
    let registry = TestRegistry::start().unwrap();
    let (tmp, store) = store();
    let layout = tmp.path().join("layout");
    let built = busybox_multiarch_oci_layout(
        &layout,
        "x",
        &["arm64", "amd64"],
        &TestImageOptions::default(),
    )
    .unwrap();
    let target = format!("{}/multi/busybox:latest", registry.host());
    let pushed = push_to_registry(&layout, &target, None).await.unwrap();
    assert_eq!(Some(pushed.clone()), built.index_digest);

    let img = Puller::new(store.clone(), RegistriesConfig::default())
        .pull(&target, None)
        .await
        .unwrap();
    assert_eq!(img.id, built.config_digest);
    assert_eq!(img.manifest_digest, built.manifest_digest);
    let cfg = store.config(&img).unwrap();
    assert_eq!(cfg.architecture().to_string(), "amd64");
    // The index digest the user asked for names the platform image.
    let repo = format!("{}/multi/busybox", registry.host());
    assert!(
        img.references.contains(&format!("{repo}@{pushed}")),
        "{:?}",
        img.references
    );
    assert_eq!(
        store
            .resolve(&format!("{repo}@{pushed}"))
            .unwrap()
            .map(|i| i.id),
        Some(img.id.clone())
    );
    // Only this platform's manifest was stored: manifest + config + layer.
    assert_eq!(common::blob_count(&store), 3);
}

#[tokio::test]
async fn mirror_endpoint_from_registries_yaml_serves_docker_hub_names() {
    let registry = TestRegistry::start().unwrap();
    let (tmp, store) = store();
    let layout = tmp.path().join("layout");
    let built = busybox_oci_layout(&layout, "x", &TestImageOptions::default()).unwrap();
    push_to_registry(
        &layout,
        &format!("{}/library/busybox:1.35", registry.host()),
        None,
    )
    .await
    .unwrap();
    let yaml = format!(
        "mirrors:\n  docker.io:\n    endpoint:\n      - \"http://{}\"\n",
        registry.host()
    );
    let puller = Puller::new(store.clone(), RegistriesConfig::parse(&yaml).unwrap());
    let img = puller.pull("busybox:1.35", None).await.unwrap();
    assert_eq!(img.id, built.config_digest);
    assert!(
        img.references
            .contains(&"docker.io/library/busybox:1.35".to_string())
    );
    assert_eq!(
        store.resolve("busybox:1.35").unwrap().map(|i| i.id),
        Some(built.config_digest)
    );
}

#[tokio::test]
async fn failed_pulls_are_clear_and_leave_nothing() {
    let registry = TestRegistry::start().unwrap();
    let (tmp, store) = store();
    let puller = Puller::new(store.clone(), RegistriesConfig::default());

    // Unknown repository and unknown tag.
    let err = puller
        .pull(&format!("{}/nope/nope:1", registry.host()), None)
        .await
        .unwrap_err();
    eprintln!("unknown repo: {err}");
    assert!(
        matches!(err, ImageError::NotFoundInRegistry { .. }),
        "{err:?}"
    );
    let layout = tmp.path().join("layout");
    let built = busybox_oci_layout(&layout, "x", &TestImageOptions::default()).unwrap();
    let target = format!("{}/t/busybox:good", registry.host());
    push_to_registry(&layout, &target, None).await.unwrap();
    let err = puller
        .pull(&format!("{}/t/busybox:missing", registry.host()), None)
        .await
        .unwrap_err();
    eprintln!("unknown tag: {err}");
    assert!(
        matches!(err, ImageError::NotFoundInRegistry { .. }),
        "{err:?}"
    );
    assert_store_empty(&store);

    // Registry down: nothing listens on the port.
    let port = free_port().unwrap();
    let err = puller
        .pull(&format!("127.0.0.1:{port}/x/y:1"), None)
        .await
        .unwrap_err();
    eprintln!("registry down: {err}");
    assert!(matches!(err, ImageError::Unreachable { .. }), "{err:?}");
    assert_store_empty(&store);

    // A non-loopback registry without --insecure-registry is spoken to over HTTPS only.
    let insecure = RegistriesConfig::default();
    assert!(insecure.insecure.is_empty());

    // The registry serves a layer whose bytes no longer match its digest.
    let blob = registry.blob_data_path(&built.layer_digests[0]);
    let mut data = std::fs::read(&blob).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&blob, data).unwrap();
    let err = puller.pull(&target, None).await.unwrap_err();
    eprintln!("tampered blob: {err}");
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err:?}");
    assert_store_empty(&store);
}

#[tokio::test]
async fn invalid_references_are_refused() {
    let (_tmp, store) = store();
    let puller = Puller::new(store.clone(), RegistriesConfig::default());
    let err = puller.pull("Not A Reference!", None).await.unwrap_err();
    assert!(
        matches!(err, ImageError::InvalidReference { .. }),
        "{err:?}"
    );
    assert_store_empty(&store);
}

#[tokio::test]
async fn bearer_token_auth_like_docker_hub() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = common::token::TokenServer::start(tmp.path(), "carol", "tokpw");
    let registry = TestRegistry::start_with_auth_config(&tokens.registry_auth_yaml()).unwrap();
    let (_tmp, store) = store();
    let layout = tmp.path().join("layout");
    let built = busybox_oci_layout(&layout, "x", &TestImageOptions::default()).unwrap();
    let target = format!("{}/tokens/busybox:1", registry.host());
    push_to_registry(&layout, &target, Some(basic("carol", "tokpw")))
        .await
        .unwrap();
    let puller = Puller::new(store.clone(), RegistriesConfig::default());

    let err = puller
        .pull(&target, Some(basic("carol", "nope")))
        .await
        .unwrap_err();
    eprintln!("token service refused: {err}");
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err:?}");
    let err = puller.pull(&target, None).await.unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err:?}");
    assert_store_empty(&store);

    let img = puller
        .pull(&target, Some(basic("carol", "tokpw")))
        .await
        .unwrap();
    assert_eq!(img.id, built.config_digest);
}
