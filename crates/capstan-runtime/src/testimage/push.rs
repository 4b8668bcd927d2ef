//! Pushing an OCI layout to a registry (oci-client), for pull tests.

use std::fs;
use std::path::Path;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::{Client, Reference, RegistryOperation};
use serde_json::Value;

use super::TestImageError;
use crate::image::RegistryAuth;

fn blob(layout: &Path, digest: &str) -> Result<Vec<u8>, TestImageError> {
    let p = layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    fs::read(&p).map_err(super::io(&p))
}

fn json(bytes: &[u8]) -> Result<Value, TestImageError> {
    serde_json::from_slice(bytes).map_err(|e| TestImageError::Invalid(e.to_string()))
}

/// Pushes the first image (manifest or index with its manifests) of the OCI layout at `layout`
/// to `target` (`host:port/name:tag`; loopback registries over plain HTTP). Returns the digest
/// of what the tag points to.
pub async fn push_to_registry(
    layout: &Path,
    target: &str,
    auth: Option<RegistryAuth>,
) -> Result<String, TestImageError> {
    let fail = |reason: String| TestImageError::Push {
        target: target.to_string(),
        reason,
    };
    let reference: Reference = target.parse().map_err(|e| fail(format!("{e}")))?;
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    });
    let auth = auth
        .map(|a| a.to_oci())
        .unwrap_or(oci_client::secrets::RegistryAuth::Anonymous);
    client
        .auth(&reference, &auth, RegistryOperation::Push)
        .await
        .map_err(|e| fail(format!("auth: {e}")))?;
    let p = layout.join("index.json");
    let index = json(&fs::read(&p).map_err(super::io(&p))?)?;
    let top = index["manifests"]
        .get(0)
        .ok_or_else(|| fail("empty index.json".into()))?;
    let digest = top["digest"]
        .as_str()
        .ok_or_else(|| fail("no digest".into()))?
        .to_string();
    let media = top["mediaType"].as_str().unwrap_or_default().to_string();
    let top_bytes = blob(layout, &digest)?;
    let manifests: Vec<(String, String)> = if media.contains("index") {
        json(&top_bytes)?["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| {
                Some((
                    m["digest"].as_str()?.to_string(),
                    m["mediaType"].as_str()?.to_string(),
                ))
            })
            .collect()
    } else {
        vec![(digest.clone(), media.clone())]
    };
    for (md, mt) in &manifests {
        let mbytes = blob(layout, md)?;
        let m = json(&mbytes)?;
        let mut blobs = vec![
            m["config"]["digest"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ];
        for l in m["layers"].as_array().into_iter().flatten() {
            blobs.push(l["digest"].as_str().unwrap_or_default().to_string());
        }
        for d in blobs {
            if client.blob_exists(&reference, &d).await.unwrap_or(false) {
                continue;
            }
            client
                .push_blob(&reference, blob(layout, &d)?, &d)
                .await
                .map_err(|e| fail(format!("blob {d}: {e}")))?;
        }
        if media.contains("index") {
            let by_digest = reference.clone_with_digest(md.clone());
            push_manifest(&client, &by_digest, mbytes, mt)
                .await
                .map_err(fail)?;
        }
    }
    push_manifest(&client, &reference, top_bytes, &media)
        .await
        .map_err(fail)?;
    Ok(digest)
}

async fn push_manifest(
    client: &Client,
    r: &Reference,
    bytes: Vec<u8>,
    media: &str,
) -> Result<(), String> {
    let ct = media
        .parse()
        .map_err(|e| format!("media type {media}: {e}"))?;
    client
        .push_manifest_raw(r, bytes, ct)
        .await
        .map(|_| ())
        .map_err(|e| format!("manifest: {e}"))
}
