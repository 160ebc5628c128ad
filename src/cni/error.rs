//! The plugin's errors and their CNI error codes.
//!
//! Every message names what is wrong *and* what to change, because the runtime shows it verbatim
//! to an operator (`kubectl describe pod`, containerd's log) who did not write the plugin.

use serde_json::{json, Map, Value};
use std::path::PathBuf;

/// Well-known error codes of the CNI spec 1.0 (section "Error").
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// Plugin-specific (100 and up): the weft agent refused to register the container in an L2
    /// network (its address or MAC is taken, the network is full, a CHECK found it changed).
    pub const REFUSED: u32 = 100;
    /// Not in the spec's table; libcni uses it for a failure with no better code (`ErrInternal`).
    pub const INTERNAL: u32 = 999;
}

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("CNI version {0:?} is not supported: set the network config's cniVersion to one of {list}", list = super::SUPPORTED_VERSIONS.join(", "))]
    IncompatibleVersion(String),

    #[error("CHECK needs cniVersion 0.4.0 or newer, the network config says {0}: raise its cniVersion")]
    CheckNeedsNewerVersion(String),

    #[error("{field} is not supported: {hint}")]
    UnsupportedField { field: String, hint: String },

    #[error("container {id} is unknown to weft-cni: {hint}")]
    UnknownContainer { id: String, hint: String },

    #[error("{var} {problem}")]
    InvalidEnv { var: &'static str, problem: String },

    #[error("cannot {action} {}: {source}{hint}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
        /// Appended as is; starts with " — " when present.
        hint: String,
    },

    #[error("cannot decode {what}: {problem}")]
    Decode { what: String, problem: String },

    #[error("invalid network config: {0}")]
    InvalidConfig(String),

    #[error("{0}")]
    TryAgainLater(String),

    /// The L2 network's agent refused the request.
    #[error("weft agent of L2 network {network} refused {op}: {msg}")]
    Refused {
        network: String,
        op: &'static str,
        msg: String,
    },

    /// The delegate answered with a CNI error: its code is passed through, its message wrapped.
    #[error("delegate plugin {plugin} failed: {msg}")]
    Delegate {
        plugin: String,
        code: u32,
        msg: String,
        details: String,
    },

    /// The delegate could not be run, or failed without a CNI error.
    #[error("delegate plugin {plugin} {problem}")]
    DelegateRun {
        plugin: String,
        problem: String,
        /// The tail of its stderr, if any.
        details: String,
    },
}

impl CniError {
    pub fn code(&self) -> u32 {
        match self {
            CniError::IncompatibleVersion(_) | CniError::CheckNeedsNewerVersion(_) => code::INCOMPATIBLE_VERSION,
            CniError::UnsupportedField { .. } => code::UNSUPPORTED_FIELD,
            CniError::UnknownContainer { .. } => code::UNKNOWN_CONTAINER,
            CniError::InvalidEnv { .. } => code::INVALID_ENV,
            CniError::Io { .. } => code::IO,
            CniError::Decode { .. } => code::DECODE,
            CniError::InvalidConfig(_) => code::INVALID_CONFIG,
            CniError::TryAgainLater(_) => code::TRY_AGAIN_LATER,
            CniError::Refused { .. } => code::REFUSED,
            CniError::Delegate { code, .. } => *code,
            CniError::DelegateRun { .. } => code::INTERNAL,
        }
    }

    pub fn details(&self) -> &str {
        match self {
            CniError::Delegate { details, .. } | CniError::DelegateRun { details, .. } => details,
            _ => "",
        }
    }

    /// The error as the spec's JSON object, for stdout.
    pub fn to_json(&self, cni_version: &str) -> String {
        let mut m = Map::new();
        m.insert("cniVersion".into(), json!(cni_version));
        m.insert("code".into(), json!(self.code()));
        m.insert("msg".into(), json!(self.to_string()));
        if !self.details().is_empty() {
            m.insert("details".into(), json!(self.details()));
        }
        Value::Object(m).to_string()
    }

    pub(crate) fn invalid_env(var: &'static str, problem: impl Into<String>) -> CniError {
        CniError::InvalidEnv {
            var,
            problem: problem.into(),
        }
    }

    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> CniError {
        CniError::Io {
            action,
            path: path.into(),
            source,
            hint: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_code_msg_and_details_only_when_present() {
        let e = CniError::InvalidConfig("name is missing".into());
        let v: Value = serde_json::from_str(&e.to_json("1.0.0")).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["code"], 7);
        assert_eq!(v["msg"], "invalid network config: name is missing");
        assert!(v.get("details").is_none());

        let e = CniError::Delegate {
            plugin: "bridge".into(),
            code: 11,
            msg: "busy".into(),
            details: "try later".into(),
        };
        let v: Value = serde_json::from_str(&e.to_json("0.4.0")).unwrap();
        assert_eq!(v["code"], 11, "a delegate's code is passed through");
        assert_eq!(v["msg"], "delegate plugin bridge failed: busy");
        assert_eq!(v["details"], "try later");
    }

    #[test]
    fn io_message_names_the_path_and_the_hint() {
        let e = CniError::Io {
            action: "read",
            path: "/run/flannel/subnet.env".into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            hint: " — run the runtime as root".into(),
        };
        assert_eq!(e.code(), 5);
        let msg = e.to_string();
        assert!(msg.starts_with("cannot read /run/flannel/subnet.env: "), "{msg}");
        assert!(msg.ends_with(" — run the runtime as root"), "{msg}");
    }
}
