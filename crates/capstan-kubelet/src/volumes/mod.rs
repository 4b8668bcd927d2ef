//! Pod volumes on the node, under `<pods_dir>/<pod uid>/volumes/<plugin>/<volume name>` as
//! upstream lays them out: emptyDir (disk or tmpfs), hostPath, and the API-data volumes
//! (configMap, secret, downwardAPI, projected) written with the atomic writer.

mod atomic_writer;
mod host_path;
mod mounter;
mod payload;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capstan_runtime::cri::runtime_service::{Mount, MountPropagation};
use k8s_openapi::api::core::v1::{Container, Pod, Volume};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

pub use atomic_writer::{FileProjection, Payload, validate_path};
pub use mounter::{Mounter, RealMounter, mount_points_in};

use crate::source::{ObjectSource, SourceError};

/// Errors preparing volumes; Display is the FailedMount event message.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("MountVolume.SetUp failed for volume \"{volume}\" : {source}")]
    SetUp {
        volume: String,
        #[source]
        source: Box<VolumeError>,
    },
    #[error("{kind} \"{name}\" not found")]
    NotFound { kind: &'static str, name: String },
    #[error("{0}")]
    MissingKey(String),
    #[error("{0}")]
    Field(String),
    #[error("{0}")]
    HostPathType(String),
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },
    #[error("mount {}: {message}", path.display())]
    Mount { path: PathBuf, message: String },
    #[error("volume type of {0} is not supported")]
    Unsupported(String),
    #[error("pod has no uid")]
    NoUid,
    #[error("cannot find volume \"{volume}\" to mount into container \"{container}\"")]
    NoSuchVolume { volume: String, container: String },
    #[error(
        "failed to prepare subPath for volumeMount \"{mount}\" of container \"{container}\": {message}"
    )]
    SubPath {
        mount: String,
        container: String,
        message: String,
    },
    #[error("{} still has mounts after unmounting: {mounts:?}", dir.display())]
    StillMounted { dir: PathBuf, mounts: Vec<PathBuf> },
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// A pod's prepared volumes.
#[derive(Clone, Debug, Default)]
pub struct PodVolumes {
    /// Volume name -> host path.
    pub paths: BTreeMap<String, PathBuf>,
    /// API-data volumes (configMap, secret, downwardAPI, projected): always mounted read-only.
    pub read_only: BTreeSet<String>,
}

struct CachedToken {
    token: String,
    fetched: Instant,
    lifetime: Duration,
}

/// Prepares and tears down pod volumes.
#[derive(Clone)]
pub struct VolumeManager {
    pods_dir: PathBuf,
    mounter: Arc<dyn Mounter>,
    node_allocatable: Arc<BTreeMap<String, Quantity>>,
    /// Projected service-account tokens by `uid/volume/path`, re-requested at 80% of lifetime.
    tokens: Arc<Mutex<HashMap<String, CachedToken>>>,
}

const EMPTY_DIR: &str = "kubernetes.io~empty-dir";
const CONFIG_MAP: &str = "kubernetes.io~configmap";
const SECRET: &str = "kubernetes.io~secret";
const DOWNWARD_API: &str = "kubernetes.io~downward-api";
const PROJECTED: &str = "kubernetes.io~projected";

impl VolumeManager {
    /// Real mounts (tmpfs for medium: Memory, secrets and projected volumes).
    pub fn new(pods_dir: PathBuf) -> VolumeManager {
        VolumeManager::with_mounter(pods_dir, Arc::new(RealMounter))
    }

    /// With a custom mounter (unit tests).
    pub fn with_mounter(pods_dir: PathBuf, mounter: Arc<dyn Mounter>) -> VolumeManager {
        VolumeManager {
            pods_dir,
            mounter,
            node_allocatable: Arc::new(BTreeMap::new()),
            tokens: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Node allocatable, the default for unset limits in downwardAPI resourceFieldRefs.
    pub fn with_node_allocatable(mut self, allocatable: BTreeMap<String, Quantity>) -> Self {
        self.node_allocatable = Arc::new(allocatable);
        self
    }

    /// `<pods_dir>/<uid>`.
    pub fn pod_dir(&self, pod_uid: &str) -> PathBuf {
        self.pods_dir.join(pod_uid)
    }

    /// Prepares every volume of the pod; idempotent (called again on each sync).
    pub async fn setup(
        &self,
        pod: &Pod,
        source: &dyn ObjectSource,
    ) -> Result<PodVolumes, VolumeError> {
        let uid = pod
            .metadata
            .uid
            .as_deref()
            .filter(|u| !u.is_empty())
            .ok_or(VolumeError::NoUid)?;
        let mut out = PodVolumes::default();
        for vol in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let (path, api_data) = self
                .setup_volume(pod, uid, vol, source)
                .await
                .map_err(|e| VolumeError::SetUp {
                    volume: vol.name.clone(),
                    source: Box::new(e),
                })?;
            out.paths.insert(vol.name.clone(), path);
            if api_data {
                out.read_only.insert(vol.name.clone());
            }
        }
        Ok(out)
    }

    /// Re-writes configMap/secret/projected/downwardAPI content when it changed.
    pub async fn refresh(&self, pod: &Pod, source: &dyn ObjectSource) -> Result<(), VolumeError> {
        self.setup(pod, source).await.map(|_| ())
    }

    fn volume_dir(&self, uid: &str, plugin: &str, name: &str) -> PathBuf {
        self.pods_dir
            .join(uid)
            .join("volumes")
            .join(plugin)
            .join(name)
    }

    /// Makes `dir` and mounts a tmpfs there unless one already is.
    fn ensure_tmpfs(&self, dir: &Path, size: Option<u64>) -> Result<(), VolumeError> {
        create_dir(dir, 0o777)?;
        if !self
            .mounter
            .mount_points_under(dir)?
            .iter()
            .any(|p| p == dir)
        {
            self.mounter.mount_tmpfs(dir, size)?;
        }
        Ok(())
    }

    /// One volume: its host path and whether it is API data.
    async fn setup_volume(
        &self,
        pod: &Pod,
        uid: &str,
        vol: &Volume,
        source: &dyn ObjectSource,
    ) -> Result<(PathBuf, bool), VolumeError> {
        let name = vol.name.as_str();
        if let Some(hp) = &vol.host_path {
            let path = PathBuf::from(&hp.path);
            host_path::check_type(&path, hp.type_.as_deref())?;
            return Ok((path, false));
        }
        if let Some(ed) = &vol.empty_dir {
            let dir = self.volume_dir(uid, EMPTY_DIR, name);
            if ed.medium.as_deref() == Some("Memory") {
                let size = ed
                    .size_limit
                    .as_ref()
                    .and_then(|q| crate::resources::parse_quantity(&q.0))
                    .filter(|s| *s > 0.0)
                    .map(|s| s.ceil() as u64);
                self.ensure_tmpfs(&dir, size)?;
            } else {
                create_dir(&dir, 0o777)?;
            }
            return Ok((dir, false));
        }
        let mut files = Payload::new();
        let dir = if let Some(cm) = &vol.config_map {
            let mode = cm.default_mode.unwrap_or(payload::DEFAULT_MODE);
            payload::config_map(
                pod,
                &cm.name,
                cm.items.as_ref(),
                mode,
                cm.optional == Some(true),
                source,
                &mut files,
            )
            .await?;
            let dir = self.volume_dir(uid, CONFIG_MAP, name);
            create_dir(&dir, 0o755)?;
            dir
        } else if let Some(s) = &vol.secret {
            let secret_name = s.secret_name.as_deref().unwrap_or("");
            let mode = s.default_mode.unwrap_or(payload::DEFAULT_MODE);
            payload::secret(
                pod,
                secret_name,
                s.items.as_ref(),
                mode,
                s.optional == Some(true),
                source,
                &mut files,
            )
            .await?;
            // Secrets stay off disk, as upstream.
            let dir = self.volume_dir(uid, SECRET, name);
            self.ensure_tmpfs(&dir, None)?;
            dir
        } else if let Some(d) = &vol.downward_api {
            let mode = d.default_mode.unwrap_or(payload::DEFAULT_MODE);
            payload::downward_api(
                pod,
                d.items.as_deref().unwrap_or_default(),
                mode,
                &self.node_allocatable,
                &mut files,
            )?;
            let dir = self.volume_dir(uid, DOWNWARD_API, name);
            create_dir(&dir, 0o755)?;
            dir
        } else if let Some(p) = &vol.projected {
            let mode = p.default_mode.unwrap_or(payload::DEFAULT_MODE);
            for src in p.sources.iter().flatten() {
                if let Some(cm) = &src.config_map {
                    payload::config_map(
                        pod,
                        &cm.name,
                        cm.items.as_ref(),
                        mode,
                        cm.optional == Some(true),
                        source,
                        &mut files,
                    )
                    .await?;
                }
                if let Some(s) = &src.secret {
                    payload::secret(
                        pod,
                        &s.name,
                        s.items.as_ref(),
                        mode,
                        s.optional == Some(true),
                        source,
                        &mut files,
                    )
                    .await?;
                }
                if let Some(d) = &src.downward_api {
                    payload::downward_api(
                        pod,
                        d.items.as_deref().unwrap_or_default(),
                        mode,
                        &self.node_allocatable,
                        &mut files,
                    )?;
                }
                if let Some(t) = &src.service_account_token {
                    let key = format!("{uid}/{name}/{}", t.path);
                    let token = self.token(pod, &key, t, source).await?;
                    files.insert(
                        t.path.clone(),
                        FileProjection {
                            data: token.into_bytes(),
                            mode: (mode & 0o7777) as u32,
                        },
                    );
                }
            }
            let dir = self.volume_dir(uid, PROJECTED, name);
            self.ensure_tmpfs(&dir, None)?;
            dir
        } else {
            return Err(VolumeError::Unsupported(name.into()));
        };
        atomic_writer::write(&dir, &files)?;
        Ok((dir, true))
    }

    /// A cached token, or a new one once 80% of the old one's lifetime has passed.
    async fn token(
        &self,
        pod: &Pod,
        key: &str,
        t: &k8s_openapi::api::core::v1::ServiceAccountTokenProjection,
        source: &dyn ObjectSource,
    ) -> Result<String, VolumeError> {
        if let Ok(tokens) = self.tokens.lock()
            && let Some(c) = tokens.get(key)
            && c.fetched.elapsed() < c.lifetime.mul_f64(0.8)
        {
            return Ok(c.token.clone());
        }
        let seconds = payload::token_seconds(t);
        let sa = payload::service_account_name(pod);
        let token = source
            .service_account_token(
                pod,
                &sa,
                t.audience.as_deref().filter(|a| !a.is_empty()),
                seconds,
            )
            .await?;
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.insert(
                key.to_string(),
                CachedToken {
                    token: token.clone(),
                    fetched: Instant::now(),
                    lifetime: Duration::from_secs(u64::try_from(seconds).unwrap_or(3600)),
                },
            );
        }
        Ok(token)
    }

    /// The CRI mounts for one container's volumeMounts (subPath, subPathExpr expanded with
    /// `env`, readOnly, propagation).
    pub fn container_mounts(
        &self,
        _pod: &Pod,
        container: &Container,
        volumes: &PodVolumes,
        env: &[(String, String)],
    ) -> Result<Vec<Mount>, VolumeError> {
        let mut mounts = Vec::new();
        for vm in container.volume_mounts.iter().flatten() {
            let base = volumes
                .paths
                .get(&vm.name)
                .ok_or_else(|| VolumeError::NoSuchVolume {
                    volume: vm.name.clone(),
                    container: container.name.clone(),
                })?;
            let sub_err = |message: String| VolumeError::SubPath {
                mount: vm.name.clone(),
                container: container.name.clone(),
                message,
            };
            let sub = match (&vm.sub_path, &vm.sub_path_expr) {
                (Some(p), _) if !p.is_empty() => Some(p.clone()),
                (_, Some(expr)) if !expr.is_empty() => Some(crate::env::expand(expr, env)),
                _ => None,
            };
            let host_path = match sub {
                None => base.clone(),
                Some(sub) => {
                    let rel = Path::new(&sub);
                    if rel.is_absolute() {
                        return Err(sub_err(format!("subPath {sub:?} must be a relative path")));
                    }
                    if rel.components().any(|c| matches!(c, Component::ParentDir)) {
                        return Err(sub_err(format!("subPath {sub:?} must not contain '..'")));
                    }
                    safe_sub_path(base, rel).map_err(sub_err)?
                }
            };
            let propagation = match vm.mount_propagation.as_deref() {
                Some("HostToContainer") => MountPropagation::HostToContainer,
                Some("Bidirectional") => MountPropagation::Bidirectional,
                _ => MountPropagation::Private,
            };
            mounts.push(Mount {
                container_path: vm.mount_path.clone(),
                host_path,
                readonly: vm.read_only == Some(true) || volumes.read_only.contains(&vm.name),
                propagation,
            });
        }
        Ok(mounts)
    }

    /// Unmounts and removes `<pods_dir>/<uid>`; idempotent.
    pub async fn teardown(&self, pod_uid: &str) -> Result<(), VolumeError> {
        if pod_uid.is_empty() || pod_uid.contains('/') || pod_uid.starts_with('.') {
            return Err(VolumeError::NoUid);
        }
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.retain(|k, _| !k.starts_with(&format!("{pod_uid}/")));
        }
        let dir = self.pod_dir(pod_uid);
        if std::fs::symlink_metadata(&dir).is_err() {
            return Ok(());
        }
        for point in self.mounter.mount_points_under(&dir)? {
            self.mounter.unmount(&point)?;
        }
        // Never delete through a mount that is still there (it may be a bind of host data).
        let left = self.mounter.mount_points_under(&dir)?;
        if !left.is_empty() {
            return Err(VolumeError::StillMounted { dir, mounts: left });
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(VolumeError::Io {
                path: dir,
                message: e.to_string(),
            }),
        }
    }
}

/// `base/rel`, created as a directory when missing, and checked to resolve inside `base`
/// (a symlink in the volume must not lead the container out of it).
fn safe_sub_path(base: &Path, rel: &Path) -> Result<PathBuf, String> {
    let path = base.join(rel);
    if std::fs::symlink_metadata(&path).is_err() {
        std::fs::create_dir_all(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o750));
    }
    let real_base = std::fs::canonicalize(base).map_err(|e| format!("{}: {e}", base.display()))?;
    let real = std::fs::canonicalize(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !real.starts_with(&real_base) {
        return Err(format!(
            "subpath {} resolves outside the volume",
            rel.display()
        ));
    }
    Ok(path)
}

fn create_dir(dir: &Path, mode: u32) -> Result<(), VolumeError> {
    let err = |e: std::io::Error| VolumeError::Io {
        path: dir.to_path_buf(),
        message: e.to_string(),
    };
    if !dir.is_dir() {
        std::fs::create_dir_all(dir).map_err(err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
