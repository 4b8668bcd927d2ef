//! The node's image store: a content-addressed OCI image layout under `<data-dir>/images`
//! (`blobs/sha256/…`, `index.json` whose entries carry `org.opencontainers.image.ref.name`),
//! filled by [`ImageStore::import_archive`] (OCI and `docker save` archives) and by registry
//! pulls ([`pull`]), with layers unpacked once into `layers/<diff-id>/` in overlayfs form so a
//! container's root filesystem is an overlay over those directories.
//!
//! Every write is staged in `tmp/`, verified against its digest, and only then renamed into
//! place under the store lock, so a failed import or pull leaves nothing behind.

mod digest;
mod error;
mod import;
pub mod pull;
mod reference;
pub mod registries;
mod store;
mod unpack;

pub use digest::{Sha256Writer, sha256_digest};
pub use error::ImageError;
pub use reference::{normalize_reference, parse_reference};
pub use registries::{DockerConfigJson, RegistriesConfig, RegistryAuth};
pub use store::{GcReport, ImageRecord, ImageStore};
