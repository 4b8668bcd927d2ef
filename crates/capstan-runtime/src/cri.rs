//! The runtime's API shaped after CRI (`ImageService`, `RuntimeService`) as Rust traits, so a
//! CRI gRPC front can be put on top later; the kubelet calls these.

pub mod image_service;
pub mod runtime_service;

pub use image_service::{ImageService, LocalImageService};
pub use runtime_service::*;
