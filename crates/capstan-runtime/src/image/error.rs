//! Errors of the image store, import and pull.

use std::path::PathBuf;

/// What went wrong in the image store. Display messages never repeat their source.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image store I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("image {0:?} not found")]
    NotFound(String),
    #[error("reference {reference:?} is ambiguous: it matches {count} images")]
    Ambiguous { reference: String, count: usize },
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("invalid archive {path}: {reason}")]
    InvalidArchive { path: PathBuf, reason: String },
    #[error("invalid {what}")]
    InvalidJson {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid image: {0}")]
    InvalidImage(String),
    #[error("unsupported media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("layer {layer}: tar entry {entry:?} escapes the layer root")]
    PathTraversal { layer: String, entry: String },
    #[error("unpacking layer {layer}")]
    Unpack {
        layer: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no manifest for platform {platform} in image index of {reference}")]
    NoMatchingPlatform { reference: String, platform: String },
    #[error("registry {registry} refused credentials for {reference} (401 Unauthorized)")]
    Unauthorized { registry: String, reference: String },
    #[error("image {reference} not found in registry {registry}")]
    NotFoundInRegistry { registry: String, reference: String },
    #[error("cannot reach registry {registry}")]
    Unreachable {
        registry: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    #[error("registry {registry} failed for {reference}")]
    Registry {
        registry: String,
        reference: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    #[error("invalid registries config {path}: {reason}")]
    RegistriesConfig { path: PathBuf, reason: String },
    #[error("invalid docker config json: {0}")]
    DockerConfig(String),
    #[error("a blocking image task failed: {0}")]
    Task(String),
}

impl ImageError {
    /// An I/O error with the path it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ImageError {
        let path = path.into();
        move |source| ImageError::Io { path, source }
    }
}
