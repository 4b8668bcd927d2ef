//! What containers need from images: the unpacked layer directories and the image's defaults
//! (ENTRYPOINT, CMD, ENV, WORKDIR, USER). The image store provides them; tests may use a plain
//! directory.

use std::path::PathBuf;

use crate::cri::runtime_service::RuntimeError;

/// The process defaults of an image's config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

/// An image resolved for a container.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// The image id (config digest) reported as `image_ref`.
    pub id: String,
    /// Unpacked layer directories, bottom layer first.
    pub layers: Vec<PathBuf>,
    pub defaults: ImageDefaults,
}

/// Resolves image references for containers.
pub trait ImageSource: Send + Sync {
    fn resolve_image(&self, reference: &str) -> Result<ResolvedImage, RuntimeError>;
}

/// A single directory used as a one-layer image (tests, debugging).
#[derive(Clone, Debug)]
pub struct DirImage {
    pub dir: PathBuf,
    pub defaults: ImageDefaults,
}

impl ImageSource for DirImage {
    fn resolve_image(&self, _reference: &str) -> Result<ResolvedImage, RuntimeError> {
        Ok(ResolvedImage {
            id: format!("dir:{}", self.dir.display()),
            layers: vec![self.dir.clone()],
            defaults: self.defaults.clone(),
        })
    }
}

impl ImageSource for crate::image::ImageStore {
    fn resolve_image(&self, reference: &str) -> Result<ResolvedImage, RuntimeError> {
        let wrap = |e: crate::image::ImageError| RuntimeError::Image {
            reference: reference.to_string(),
            source: Box::new(e),
        };
        let record =
            self.resolve(reference)
                .map_err(wrap)?
                .ok_or_else(|| RuntimeError::NotFound {
                    kind: "image",
                    id: reference.to_string(),
                })?;
        let layers = self.layer_dirs(&record).map_err(wrap)?;
        let config = self.config(&record).map_err(wrap)?;
        let defaults = config
            .config()
            .as_ref()
            .map(|c| ImageDefaults {
                entrypoint: c.entrypoint().clone().unwrap_or_default(),
                cmd: c.cmd().clone().unwrap_or_default(),
                env: c.env().clone().unwrap_or_default(),
                working_dir: c.working_dir().clone().unwrap_or_default(),
                user: c.user().clone().unwrap_or_default(),
            })
            .unwrap_or_default();
        Ok(ResolvedImage {
            id: record.id.clone(),
            layers,
            defaults,
        })
    }
}
