//! The network configuration the runtime passes on stdin.
//!
//! Keys are flannel's (`subnetFile`, `dataDir`, `delegate`, `ipam`, `runtimeConfig`), so a
//! flannel conflist works with `"type": "weft-cni"` and nothing else changed. Unknown keys are
//! ignored, as the spec asks (runtimes add `capabilities`, `args`, ...).

use super::error::CniError;
use serde_json::{Map, Value};
use std::path::PathBuf;

/// Where the agent writes `subnet.env`: flannel's path, so either agent serves either plugin.
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
/// Where ADD saves each container's delegate config for DEL and CHECK.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/weft";

#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub subnet_file: PathBuf,
    pub data_dir: PathBuf,
    /// Overrides merged into the generated delegate config.
    pub delegate: Map<String, Value>,
    /// flannel's top-level `ipam`: overrides for the delegate's IPAM section.
    pub ipam: Map<String, Value>,
    pub runtime_config: Option<Value>,
    pub prev_result: Option<Value>,
    /// `weftNetwork`: the weft L2 network the container joins (see `cni::l2`); without it the
    /// plugin is flannel's (the default network, or the L3 network whose `subnetFile` it reads).
    pub weft_network: Option<String>,
}

/// The `cniVersion` of a config, if stdin holds one: the version error replies should speak.
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    v.get("cniVersion")?.as_str().map(str::to_string)
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| CniError::Decode {
            what: "the network config on stdin".into(),
            problem: format!("{e}: the runtime must pass the network's JSON config on stdin"),
        })?;
        let Value::Object(obj) = value else {
            return Err(CniError::Decode {
                what: "the network config on stdin".into(),
                problem: "it is not a JSON object".into(),
            });
        };

        let cni_version = string(&obj, "cniVersion")?
            .ok_or_else(|| CniError::InvalidConfig("cniVersion is missing: add \"cniVersion\": \"1.0.0\"".into()))?;
        if !super::SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(CniError::IncompatibleVersion(cni_version));
        }
        let name = string(&obj, "name")?
            .ok_or_else(|| CniError::InvalidConfig("name is missing: give the network a name, e.g. \"weft\"".into()))?;
        validate_name(&name)?;

        Ok(NetConf {
            cni_version,
            name,
            subnet_file: path(&obj, "subnetFile")?.unwrap_or_else(|| DEFAULT_SUBNET_FILE.into()),
            data_dir: path(&obj, "dataDir")?.unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            delegate: object(&obj, "delegate")?,
            ipam: object(&obj, "ipam")?,
            runtime_config: obj.get("runtimeConfig").cloned(),
            prev_result: obj.get("prevResult").cloned(),
            weft_network: weft_network(&obj)?,
        })
    }
}

fn string(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(CniError::InvalidConfig(format!("{key} must be a string, not {other}"))),
    }
}

fn path(obj: &Map<String, Value>, key: &str) -> Result<Option<PathBuf>, CniError> {
    let Some(p) = string(obj, key)?.filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    // A relative path would depend on the runtime's working directory, which nobody controls.
    if !p.starts_with('/') {
        return Err(CniError::InvalidConfig(format!(
            "{key} must be an absolute path, not {p:?}"
        )));
    }
    Ok(Some(PathBuf::from(p)))
}

fn object(obj: &Map<String, Value>, key: &str) -> Result<Map<String, Value>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(other) => Err(CniError::InvalidConfig(format!(
            "{key} must be a JSON object, not {other}"
        ))),
    }
}

/// `weftNetwork`, a weft network name (`weft net create NAME`).
fn weft_network(obj: &Map<String, Value>) -> Result<Option<String>, CniError> {
    let Some(name) = string(obj, "weftNetwork")? else {
        return Ok(None);
    };
    crate::network::validate_name(&name).map_err(|e| CniError::InvalidConfig(format!("weftNetwork: {e}")))?;
    Ok(Some(name))
}

/// The spec's rule for network names: letters, digits, `_`, `.`, `-`.
fn validate_name(name: &str) -> Result<(), CniError> {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        Ok(())
    } else {
        Err(CniError::InvalidConfig(format!(
            "name {name:?} may hold only letters, digits, '_', '.' and '-'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_flannels_defaults() {
        let c = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"weft","type":"weft-cni"}"#).unwrap();
        assert_eq!(c.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/cni/weft"));
        assert!(c.delegate.is_empty() && c.ipam.is_empty());
        assert_eq!(c.prev_result, None);
        assert_eq!(c.weft_network, None);
        let c = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"l2","weftNetwork":"tenant-l2"}"#).unwrap();
        assert_eq!(c.weft_network.as_deref(), Some("tenant-l2"));
    }

    #[test]
    fn flannel_keys_are_read() {
        let c = NetConf::parse(
            br#"{"cniVersion":"0.3.1","name":"cbr0","type":"flannel","subnetFile":"/x/s.env","dataDir":"/x/d",
                 "delegate":{"hairpinMode":false},"ipam":{"dataDir":"/x/i"},"runtimeConfig":{"portMappings":[]},
                 "prevResult":{"ips":[]},"capabilities":{"portMappings":true}}"#,
        )
        .unwrap();
        assert_eq!(c.subnet_file, PathBuf::from("/x/s.env"));
        assert_eq!(c.data_dir, PathBuf::from("/x/d"));
        assert_eq!(c.delegate["hairpinMode"], false);
        assert_eq!(c.ipam["dataDir"], "/x/i");
        assert!(c.runtime_config.is_some() && c.prev_result.is_some());
    }

    #[test]
    fn errors_carry_the_spec_codes() {
        for (input, code) in [
            (&b"not json"[..], 6),
            (b"[1,2]", 6),
            (br#"{"cniVersion":"0.2.0","name":"n"}"#, 1),
            (br#"{"cniVersion":"2.0.0","name":"n"}"#, 1),
            (br#"{"name":"n"}"#, 7),
            (br#"{"cniVersion":"1.0.0"}"#, 7),
            (br#"{"cniVersion":"1.0.0","name":"a b"}"#, 7),
            (br#"{"cniVersion":"1.0.0","name":"n","delegate":[]}"#, 7),
            (br#"{"cniVersion":"1.0.0","name":"n","subnetFile":"rel/s.env"}"#, 7),
            (br#"{"cniVersion":1,"name":"n"}"#, 7),
            (br#"{"cniVersion":"1.0.0","name":"n","weftNetwork":"Bad/Name"}"#, 7),
            (br#"{"cniVersion":"1.0.0","name":"n","weftNetwork":"default"}"#, 7),
            (br#"{"cniVersion":"1.0.0","name":"n","weftNetwork":3}"#, 7),
        ] {
            let err = NetConf::parse(input).unwrap_err();
            assert_eq!(err.code(), code, "{}: {err}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn peeks_the_version_of_anything_json() {
        assert_eq!(peek_version(br#"{"cniVersion":"0.4.0"}"#).as_deref(), Some("0.4.0"));
        assert_eq!(peek_version(b"junk"), None);
    }
}
