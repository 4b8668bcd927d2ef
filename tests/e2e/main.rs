//! End-to-end tests: `capstan server` runs as a real process (its own data dir and port) and the
//! stock kubectl binaries drive it. See harness.rs for the process handling.

mod admission;
mod authn;
mod bad_input;
mod deployments;
mod dns;
mod encryption;
mod ha;
mod harness;
mod hosts;
mod images;
mod jobs;
mod kubectl_workflow;
mod lifecycle;
mod multinode;
mod multinode_restart;
mod node;
mod nodeauth;
mod pods;
mod rbac;
mod restart;
mod runtime;
mod scheduler;
mod services;
mod sets;
mod snapshot;
mod streaming;
mod util;
mod vxlan;
