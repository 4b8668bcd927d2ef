//! The image half of CRI as a Rust trait (`ImageService`: list, status, pull, remove, fs
//! info) and its implementation over the local [`ImageStore`].

use std::collections::HashSet;

use crate::image::pull::Puller;
use crate::image::{GcReport, ImageError, ImageRecord, ImageStore, RegistriesConfig, RegistryAuth};

/// CRI's `ImageService`: what the kubelet needs to manage images on its node.
#[async_trait::async_trait]
pub trait ImageService: Send + Sync {
    /// Every image, or only those a reference or ID `filter` names.
    async fn list_images(&self, filter: Option<&str>) -> Result<Vec<ImageRecord>, ImageError>;
    /// The image `image` names, if present.
    async fn image_status(&self, image: &str) -> Result<Option<ImageRecord>, ImageError>;
    /// Pulls `image` with optional credentials (from a pull secret); returns the image.
    async fn pull_image(
        &self,
        image: &str,
        auth: Option<RegistryAuth>,
    ) -> Result<ImageRecord, ImageError>;
    /// Removes a reference, or every reference of an image ID.
    async fn remove_image(&self, image: &str) -> Result<(), ImageError>;
    /// Bytes used by the store (blobs and unpacked layers).
    async fn image_fs_usage(&self) -> Result<u64, ImageError>;
    /// Removes images not in `in_use` (IDs, manifest digests or references) and their data.
    async fn garbage_collect(&self, in_use: HashSet<String>) -> Result<GcReport, ImageError>;
}

/// [`ImageService`] over the node's [`ImageStore`], pulling with a [`Puller`].
#[derive(Clone)]
pub struct LocalImageService {
    puller: Puller,
}

impl LocalImageService {
    pub fn new(store: ImageStore, registries: RegistriesConfig) -> LocalImageService {
        LocalImageService {
            puller: Puller::new(store, registries),
        }
    }

    pub fn store(&self) -> &ImageStore {
        self.puller.store()
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(ImageStore) -> Result<T, ImageError> + Send + 'static,
    ) -> Result<T, ImageError> {
        let store = self.store().clone();
        tokio::task::spawn_blocking(move || f(store))
            .await
            .map_err(|e| ImageError::Task(e.to_string()))?
    }
}

#[async_trait::async_trait]
impl ImageService for LocalImageService {
    async fn list_images(&self, filter: Option<&str>) -> Result<Vec<ImageRecord>, ImageError> {
        let filter = filter.map(str::to_string);
        self.blocking(move |s| match filter {
            None => s.list(),
            Some(f) => Ok(s.resolve(&f)?.into_iter().collect()),
        })
        .await
    }

    async fn image_status(&self, image: &str) -> Result<Option<ImageRecord>, ImageError> {
        let image = image.to_string();
        self.blocking(move |s| s.resolve(&image)).await
    }

    async fn pull_image(
        &self,
        image: &str,
        auth: Option<RegistryAuth>,
    ) -> Result<ImageRecord, ImageError> {
        self.puller.pull(image, auth).await
    }

    async fn remove_image(&self, image: &str) -> Result<(), ImageError> {
        let image = image.to_string();
        self.blocking(move |s| s.remove(&image).map(|_| ())).await
    }

    async fn image_fs_usage(&self) -> Result<u64, ImageError> {
        self.blocking(|s| s.disk_usage()).await
    }

    async fn garbage_collect(&self, in_use: HashSet<String>) -> Result<GcReport, ImageError> {
        self.blocking(move |s| s.gc(&in_use)).await
    }
}
