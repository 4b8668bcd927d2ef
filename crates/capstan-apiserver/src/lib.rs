//! `capstan-apiserver` serves the Kubernetes REST API over HTTPS on top of a `capstan-store`
//! backend: request routing by the resource table of `capstan-api`, a watch cache that serves
//! lists and watches from memory, discovery and OpenAPI, Service address allocation, and the
//! objects a cluster starts with, and authentication, authorization and admission of every
//! request. It owns no scheduling or controller logic.

pub mod admission;
pub mod allocator;
pub mod auth;
pub mod bootstrap;
pub mod cache;
pub mod discovery;
mod handlers;
pub mod object;
pub mod openapi;
pub mod openapi_proto;
pub mod pki;
pub mod request;
pub mod response;
pub mod server;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tokens;

pub use server::{ApiServer, Running, ServeError, ServerConfig, start};
