//! `weft-cni`, the container network (CNI) plugin: flannel's plugin for weft.
//!
//! It reads the agent's `subnet.env` and delegates to the standard `bridge` plugin with
//! `host-local` IPAM over the host's subnet (see [`delegate`]). CNI spec 1.0: ADD, DEL, CHECK,
//! VERSION; the delegate config of every ADD is saved in dataDir so DEL works after `subnet.env`
//! changed or vanished, and DEL is idempotent.
//!
//! With `"weftNetwork": "NAME"` it joins containers to a weft L2 network instead ([`l2`]): the
//! network's bridge, an address claimed cluster-wide and the endpoint registered, both through
//! the network's agent ([`agent_client`]).
//!
//! The protocol core ([`args`], [`netconf`], [`delegate`], [`plugin::plan`], the error mapping)
//! is pure; [`files`] and [`exec`] are the thin I/O around it.

pub mod agent_client;
pub mod args;
pub mod delegate;
pub mod error;
pub mod exec;
pub mod files;
pub mod l2;
pub mod netconf;
pub mod plugin;

pub use args::Env;
pub use error::CniError;

/// The spec version this plugin speaks natively.
pub const CNI_VERSION: &str = "1.0.0";
/// Every version whose configs and results this plugin (and the delegate it drives) understands.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// The VERSION reply.
pub fn version_json() -> String {
    serde_json::json!({ "cniVersion": CNI_VERSION, "supportedVersions": SUPPORTED_VERSIONS }).to_string()
}

/// One plugin call: the text for stdout, or the error to report.
pub fn run(env: &Env, stdin: &[u8]) -> Result<String, CniError> {
    let plan = plugin::plan(env, stdin)?;
    plugin::execute(&plan, env)
}

/// The version an error reply is written in: the config's, if it is one we speak.
pub fn reply_version(stdin: &[u8]) -> String {
    netconf::peek_version(stdin)
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| CNI_VERSION.to_string())
}
