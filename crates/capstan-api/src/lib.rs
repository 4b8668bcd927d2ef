//! `capstan-api` is the Kubernetes API machinery Capstan shares between components, with no
//! I/O: the table of served resources, Status errors, label and field selectors, patch
//! application (JSON patch, merge patch, strategic merge patch), server-side apply with
//! managedFields, defaulting, validation, and the Table rendering `kubectl get` asks for.
//! Objects are handled as `serde_json::Value` at the edges and as k8s-openapi types where a
//! kind's rules need them. Storage, HTTP and watch fan-out live in other crates.

pub mod apply;
pub mod defaults;
pub mod patch;
pub mod protobuf;
pub mod quantity;
pub mod resources;
pub mod schema;
pub mod selectors;
pub mod status;
pub mod table;
pub mod typed;
pub mod validation;

pub use resources::{ResourceInfo, Subresource};
pub use status::ApiError;
