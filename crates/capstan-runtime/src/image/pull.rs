//! Pulling images over the OCI distribution API (oci-client): mirrors and per-host settings
//! from [`RegistriesConfig`], basic and bearer-token auth, multi-arch indexes resolved to this
//! machine's platform, every blob verified against its digest before it enters the store.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use oci_client::errors::OciDistributionError;
use oci_client::{Client, Reference, client::ClientConfig, client::ClientProtocol};
use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, Platform};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::digest::sha256_digest;
use super::reference::{canonical, parse_reference, repository_of};
use super::registries::Endpoint;
use super::store::{
    ImageRecord, ImageStore, MEDIA_DOCKER_LIST, MEDIA_DOCKER_MANIFEST, MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST, NewRef, Staging,
};
use super::{ImageError, RegistriesConfig, RegistryAuth};

const ACCEPTED_MANIFESTS: [&str; 4] = [
    MEDIA_OCI_MANIFEST,
    MEDIA_OCI_INDEX,
    MEDIA_DOCKER_MANIFEST,
    MEDIA_DOCKER_LIST,
];

/// Progress of a pull, for CLIs and logs.
#[derive(Debug, Clone)]
pub enum PullProgress {
    /// The manifest was resolved (after choosing a platform from an index).
    Resolved {
        manifest_digest: String,
        layers: usize,
    },
    /// The layer is already in the store.
    LayerExists {
        digest: String,
        size: u64,
    },
    LayerBytes {
        digest: String,
        done: u64,
        total: u64,
    },
    LayerDone {
        digest: String,
        size: u64,
    },
}

pub type ProgressFn = Arc<dyn Fn(PullProgress) + Send + Sync>;

/// Pulls into an [`ImageStore`] following a [`RegistriesConfig`].
#[derive(Clone)]
pub struct Puller {
    store: ImageStore,
    registries: Arc<RegistriesConfig>,
    connect_timeout: Duration,
}

impl Puller {
    pub fn new(store: ImageStore, registries: RegistriesConfig) -> Puller {
        Puller {
            store,
            registries: Arc::new(registries),
            connect_timeout: Duration::from_secs(10),
        }
    }

    pub fn store(&self) -> &ImageStore {
        &self.store
    }

    /// Pulls `reference` (docker-style short names allowed). `auth` (from a pull secret)
    /// overrides credentials configured for the registry.
    pub async fn pull(
        &self,
        reference: &str,
        auth: Option<RegistryAuth>,
    ) -> Result<ImageRecord, ImageError> {
        self.pull_with_progress(reference, auth, None).await
    }

    pub async fn pull_with_progress(
        &self,
        reference: &str,
        auth: Option<RegistryAuth>,
        progress: Option<ProgressFn>,
    ) -> Result<ImageRecord, ImageError> {
        let parsed = parse_reference(reference)?;
        let endpoints = self.registries.endpoints(parsed.registry());
        let mut last = None;
        for ep in &endpoints {
            let started = std::time::Instant::now();
            match self
                .pull_from(ep, &parsed, auth.as_ref(), progress.as_ref())
                .await
            {
                Ok(img) => {
                    tracing::info!(image = %canonical(&parsed), endpoint = %ep.host, id = %img.id, elapsed_ms = started.elapsed().as_millis() as u64, "pulled image");
                    return Ok(img);
                }
                Err(e) => {
                    tracing::warn!(image = %canonical(&parsed), endpoint = %ep.host, error = %e, "pull failed");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| ImageError::NotFound(reference.to_string())))
    }

    async fn pull_from(
        &self,
        ep: &Endpoint,
        wanted: &Reference,
        auth: Option<&RegistryAuth>,
        progress: Option<&ProgressFn>,
    ) -> Result<ImageRecord, ImageError> {
        let remote = remote_reference(wanted, ep);
        let client = self.client(ep);
        let oci_auth = auth
            .cloned()
            .or_else(|| self.registries.auth_for(&ep.host))
            .map(|a| a.to_oci())
            .unwrap_or(oci_client::secrets::RegistryAuth::Anonymous);
        let ctx = Ctx {
            client: &client,
            remote: &remote,
            ep,
            name: canonical(wanted),
        };
        let (top_bytes, _) = client
            .pull_manifest_raw(&remote, &oci_auth, &ACCEPTED_MANIFESTS)
            .await
            .map_err(|e| ctx.map_err(e))?;
        let top_digest = sha256_digest(&top_bytes);
        if let Some(d) = wanted.digest() {
            verify(&format!("manifest {}", ctx.name), d, &top_digest)?;
        }
        let mut staging = self.store.staging()?;
        let (manifest_bytes, manifest_digest) = if is_index(&top_bytes)? {
            let index: ImageIndex = parse("image index", &top_bytes)?;
            let chosen = choose_platform(index.manifests()).ok_or_else(|| {
                ImageError::NoMatchingPlatform {
                    reference: ctx.name.clone(),
                    platform: platform_string(),
                }
            })?;
            let d = chosen.digest().to_string();
            let by_digest = remote.clone_with_digest(d.clone());
            let (bytes, _) = client
                .pull_manifest_raw(&by_digest, &oci_auth, &ACCEPTED_MANIFESTS)
                .await
                .map_err(|e| ctx.map_err(e))?;
            verify(&format!("manifest {d}"), &d, &sha256_digest(&bytes))?;
            (bytes.to_vec(), d)
        } else {
            (top_bytes.to_vec(), top_digest.clone())
        };
        let manifest: ImageManifest = parse("image manifest", &manifest_bytes)?;
        staging.put_bytes("manifest", Some(&manifest_digest), &manifest_bytes)?;
        if let Some(p) = progress {
            p(PullProgress::Resolved {
                manifest_digest: manifest_digest.clone(),
                layers: manifest.layers().len(),
            });
        }
        let config_digest = manifest.config().digest().to_string();
        let config_bytes = ctx.fetch_small(&config_digest).await?;
        staging.put_bytes("image config", Some(&config_digest), &config_bytes)?;
        let config: ImageConfiguration = parse("image config", &config_bytes)?;
        if config.rootfs().diff_ids().len() != manifest.layers().len() {
            return Err(ImageError::InvalidImage(format!(
                "{}: config lists {} diff IDs for {} layers",
                ctx.name,
                config.rootfs().diff_ids().len(),
                manifest.layers().len()
            )));
        }
        for layer in manifest.layers() {
            let digest = layer.digest().to_string();
            if self.store.has_blob(&digest) {
                if let Some(p) = progress {
                    p(PullProgress::LayerExists {
                        digest,
                        size: layer.size(),
                    });
                }
                continue;
            }
            ctx.fetch_layer(&mut staging, &digest, layer.size(), progress)
                .await?;
        }
        let media_type = manifest
            .media_type()
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_else(|| MEDIA_OCI_MANIFEST.to_string());
        let mut refs = Vec::new();
        if wanted.digest().is_none() {
            refs.push(NewRef {
                reference: Some(canonical(wanted)),
                manifest_digest: manifest_digest.clone(),
                media_type: media_type.clone(),
                size: manifest_bytes.len() as u64,
            });
        }
        refs.push(NewRef {
            reference: Some(format!("{}@{top_digest}", repository_of(wanted))),
            manifest_digest: manifest_digest.clone(),
            media_type,
            size: manifest_bytes.len() as u64,
        });
        let store = self.store.clone();
        let md = manifest_digest.clone();
        tokio::task::spawn_blocking(move || {
            store.commit(&staging, &refs)?;
            store
                .list()?
                .into_iter()
                .find(|r| r.manifest_digest == md)
                .ok_or_else(|| ImageError::NotFound(md.clone()))
        })
        .await
        .map_err(|e| ImageError::Task(e.to_string()))?
    }

    fn client(&self, ep: &Endpoint) -> Client {
        let protocol = if ep.plain_http {
            ClientProtocol::HttpsExcept(vec![ep.host.clone()])
        } else {
            ClientProtocol::Https
        };
        Client::new(ClientConfig {
            protocol,
            accept_invalid_certificates: ep.skip_verify,
            platform_resolver: None,
            connect_timeout: Some(self.connect_timeout),
            read_timeout: Some(Duration::from_secs(120)),
            ..ClientConfig::default()
        })
    }
}

struct Ctx<'a> {
    client: &'a Client,
    remote: &'a Reference,
    ep: &'a Endpoint,
    name: String,
}

impl Ctx<'_> {
    async fn fetch_small(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let mut out = Vec::new();
        self.client
            .pull_blob(self.remote, digest, &mut out)
            .await
            .map_err(|e| self.map_err(e))?;
        verify(&format!("blob {digest}"), digest, &sha256_digest(&out))?;
        Ok(out)
    }

    async fn fetch_layer(
        &self,
        staging: &mut Staging,
        digest: &str,
        size: u64,
        progress: Option<&ProgressFn>,
    ) -> Result<(), ImageError> {
        let mut stream = self
            .client
            .pull_blob_stream(self.remote, digest)
            .await
            .map_err(|e| self.map_err(e))?;
        let path = staging.dir.join(format!("download.{}", &digest[7..19]));
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(ImageError::io(&path))?;
        let mut hasher = Sha256::new();
        let mut done = 0u64;
        let mut last_report = std::time::Instant::now();
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                // The stream's own digest check fails as an I/O error; ours below says more.
                Err(e) if e.to_string().contains("digest") => break,
                Err(e) => {
                    return Err(ImageError::Unreachable {
                        registry: self.ep.host.clone(),
                        source: OciDistributionError::IoError(e),
                    });
                }
            };
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(ImageError::io(&path))?;
            done += chunk.len() as u64;
            if let Some(p) = progress
                && last_report.elapsed() > Duration::from_millis(200)
            {
                last_report = std::time::Instant::now();
                p(PullProgress::LayerBytes {
                    digest: digest.to_string(),
                    done,
                    total: size,
                });
            }
        }
        file.flush().await.map_err(ImageError::io(&path))?;
        drop(file);
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        staging.adopt(
            &format!("layer of {}", self.name),
            Some(digest),
            &path,
            actual,
        )?;
        if let Some(p) = progress {
            p(PullProgress::LayerDone {
                digest: digest.to_string(),
                size: done,
            });
        }
        Ok(())
    }

    fn map_err(&self, e: OciDistributionError) -> ImageError {
        let registry = self.ep.host.clone();
        let reference = self.name.clone();
        let code_says = |codes: &[&str], envelope: &oci_client::errors::OciEnvelope| {
            envelope.errors.iter().any(|x| {
                codes.contains(
                    &format!("{:?}", x.code)
                        .to_uppercase()
                        .replace('_', "")
                        .as_str(),
                )
            })
        };
        match e {
            OciDistributionError::AuthenticationFailure(_)
            | OciDistributionError::UnauthorizedError { .. } => ImageError::Unauthorized {
                registry,
                reference,
            },
            OciDistributionError::ServerError {
                code: 401 | 403, ..
            } => ImageError::Unauthorized {
                registry,
                reference,
            },
            OciDistributionError::ImageManifestNotFoundError(_)
            | OciDistributionError::ServerError { code: 404, .. } => {
                ImageError::NotFoundInRegistry {
                    registry,
                    reference,
                }
            }
            OciDistributionError::RegistryError { ref envelope, .. }
                if code_says(&["UNAUTHORIZED", "DENIED"], envelope) =>
            {
                ImageError::Unauthorized {
                    registry,
                    reference,
                }
            }
            OciDistributionError::RegistryError { ref envelope, .. }
                if code_says(&["MANIFESTUNKNOWN", "NAMEUNKNOWN", "BLOBUNKNOWN"], envelope) =>
            {
                ImageError::NotFoundInRegistry {
                    registry,
                    reference,
                }
            }
            OciDistributionError::RequestError(ref r) if r.is_connect() || r.is_timeout() => {
                ImageError::Unreachable {
                    registry,
                    source: e,
                }
            }
            e => ImageError::Registry {
                registry,
                reference,
                source: e,
            },
        }
    }
}

fn verify(what: &str, expected: &str, actual: &str) -> Result<(), ImageError> {
    if expected == actual {
        Ok(())
    } else {
        Err(ImageError::DigestMismatch {
            what: what.to_string(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        })
    }
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|source| ImageError::InvalidJson {
        what: what.to_string(),
        source,
    })
}

fn is_index(bytes: &[u8]) -> Result<bool, ImageError> {
    let v: serde_json::Value = parse("manifest", bytes)?;
    let media = v.get("mediaType").and_then(|m| m.as_str()).unwrap_or("");
    Ok(media == MEDIA_OCI_INDEX
        || media == MEDIA_DOCKER_LIST
        || (media.is_empty() && v.get("manifests").is_some()))
}

/// The reference to ask `ep` for: same repository and tag/digest, the endpoint's host.
fn remote_reference(wanted: &Reference, ep: &Endpoint) -> Reference {
    if ep.host == wanted.registry() {
        return wanted.clone();
    }
    let (reg, repo) = (ep.host.clone(), wanted.repository().to_string());
    match (wanted.digest(), wanted.tag()) {
        (Some(d), _) => Reference::with_digest(reg, repo, d.to_string()),
        (None, t) => Reference::with_tag(reg, repo, t.unwrap_or("latest").to_string()),
    }
}

/// This machine's OCI architecture name (Go's GOARCH) and variant.
pub fn platform_arch() -> (&'static str, Option<&'static str>) {
    match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", Some("v8")),
        "arm" => ("arm", Some("v7")),
        "x86" => ("386", None),
        "powerpc64" => ("ppc64le", None),
        "s390x" => ("s390x", None),
        "riscv64" => ("riscv64", None),
        other => (other, None),
    }
}

pub fn platform_string() -> String {
    let (arch, variant) = platform_arch();
    match variant {
        Some(v) => format!("linux/{arch}/{v}"),
        None => format!("linux/{arch}"),
    }
}

/// Whether an index entry's platform runs here (an arm64 variant may be absent or v8).
pub fn platform_matches(p: &Platform) -> bool {
    let (arch, variant) = platform_arch();
    let os_ok = p.os().to_string() == "linux";
    let arch_ok = p.architecture().to_string() == arch;
    let variant_ok = match (p.variant().as_deref(), variant) {
        (None, _) => true,
        (Some(v), Some(want)) => v == want || arch == "arm64",
        (Some(_), None) => false,
    };
    os_ok && arch_ok && variant_ok
}

/// The first manifest of an index for this machine's platform.
pub fn choose_platform(manifests: &[Descriptor]) -> Option<&Descriptor> {
    manifests
        .iter()
        .find(|d| d.platform().as_ref().is_some_and(platform_matches))
}
