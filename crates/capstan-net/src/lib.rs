//! `capstan-net` is the node's networking: it invokes standard CNI plugins per the CNI spec to give
//! each pod sandbox its interface and IP, and writes the node's CNI configuration. Later it also
//! owns routes between nodes' pod CIDRs, the service proxy (nftables) and cluster DNS. It knows
//! nothing of pods beyond what CNI needs (container id, netns path, names for CNI_ARGS).

pub mod cni;
pub mod dns;
pub mod hostgw;
pub mod proxy;
pub mod vxlan;
pub mod watch;
