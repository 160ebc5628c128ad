//! weft: a flannel-compatible VXLAN overlay network agent.
//!
//! Layout: `store` (key-value backends) → `lease`/`config` (flannel's schema) → `planner` (pure:
//! desired vs observed kernel state → operations) → `kernel` (netlink executor and observer) →
//! `agent` (the daemon loop). `lab` builds a many-host cluster out of network namespaces.

pub mod agent;
pub mod alloc;
pub mod cli;
pub mod cni;
pub mod config;
pub mod kernel;
pub mod lab;
pub mod lease;
pub mod mac;
pub mod network;
pub mod planner;
pub mod store;
pub mod subnet_env;
