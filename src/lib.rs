//! weft: a flannel-compatible VXLAN overlay network agent.
//!
//! Layout: `store` (key-value backends) → `lease`/`config` (flannel's schema) → `planner` (pure:
//! desired vs observed kernel state → operations) → `kernel` (netlink executor and observer) →
//! `agent` (the daemon loop). `lab` builds a many-host cluster out of network namespaces.
//!
//! `agent`, `cli`, `kernel`, `lab` and the store's backends need the `runtime` feature (on by
//! default); without it what is left is pure parsing and planning with few dependencies, which
//! is what the fuzz targets build (see Cargo.toml).

#[cfg(feature = "runtime")]
pub mod agent;
pub mod alloc;
#[cfg(feature = "runtime")]
pub mod cli;
pub mod cni;
pub mod config;
pub mod endpoint;
#[cfg(feature = "runtime")]
pub mod kernel;
pub mod l2ipam;
#[cfg(feature = "runtime")]
pub mod lab;
pub mod lease;
pub mod mac;
pub mod network;
pub mod planner;
pub mod store;
pub mod subnet_env;
