//! The plugin's files: the agent's `subnet.env` (read) and the saved delegate configs in dataDir.

use super::error::CniError;
use crate::subnet_env::SubnetEnv;
use serde_json::Value;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

const VARS: [&str; 4] = ["FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ"];

/// Reads the agent's `subnet.env`.
///
/// A missing file is "try again later" (code 11): the agent writes it once it holds a lease, so
/// a pod started while the agent is still coming up succeeds on the runtime's retry.
pub fn read_subnet_env(path: &Path) -> Result<SubnetEnv, CniError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            CniError::TryAgainLater(format!(
                "cannot read {}: {e} — is the weft agent running on this host? It writes this file once it \
                 holds a subnet lease (or set subnetFile in the network config to where it writes it)",
                path.display()
            ))
        } else {
            CniError::Io {
                action: "read",
                path: path.into(),
                source: e,
                hint: " — weft-cni runs as the container runtime's user, which must be able to read it".into(),
            }
        }
    })?;
    SubnetEnv::parse(&text).ok_or_else(|| {
        let missing: Vec<&str> = VARS
            .into_iter()
            .filter(|v| !text.lines().any(|l| l.trim_start().starts_with(&format!("{v}="))))
            .collect();
        let problem = if missing.is_empty() {
            "a value is malformed (expected e.g. FLANNEL_NETWORK=10.0.0.0/16, FLANNEL_SUBNET=10.0.37.1/24, \
             FLANNEL_MTU=1450, FLANNEL_IPMASQ=false)"
                .to_string()
        } else {
            format!("{} missing", missing.join(", "))
        };
        CniError::Decode {
            what: path.display().to_string(),
            problem: format!("{problem} — it is written by the weft agent; restart the agent to rewrite it"),
        }
    })
}

/// Where ADD keeps a container's delegate config.
pub fn saved_path(data_dir: &Path, container_id: &str) -> PathBuf {
    data_dir.join(container_id)
}

/// Saves a container's delegate config atomically: a crash leaves the old file or the new one.
pub fn save(data_dir: &Path, container_id: &str, config: &Value) -> Result<(), CniError> {
    std::fs::create_dir_all(data_dir).map_err(|e| CniError::io("create", data_dir, e))?;
    let path = saved_path(data_dir, container_id);
    let tmp = data_dir.join(format!(".{container_id}.tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(config.to_string().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        CniError::io("write", &path, e)
    })
}

/// A container's saved delegate config; `None` if there is none or it cannot be used (DEL then
/// rebuilds it, so a damaged file must not make the container undeletable).
pub fn load(data_dir: &Path, container_id: &str) -> Option<Value> {
    let text = std::fs::read_to_string(saved_path(data_dir, container_id)).ok()?;
    serde_json::from_str::<Value>(&text).ok().filter(Value::is_object)
}

/// Removes a container's saved config; one that is already gone is fine.
pub fn remove(data_dir: &Path, container_id: &str) -> Result<(), CniError> {
    let path = saved_path(data_dir, container_id);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(CniError::io("remove", path, e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn missing_subnet_env_is_try_again_later_and_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("subnet.env");
        let e = read_subnet_env(&p).unwrap_err();
        assert_eq!(e.code(), 11);
        let msg = e.to_string();
        assert!(
            msg.contains(&p.display().to_string()) && msg.contains("weft agent running"),
            "{msg}"
        );
    }

    #[test]
    fn incomplete_subnet_env_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("subnet.env");
        std::fs::write(&p, "FLANNEL_NETWORK=10.0.0.0/16\nFLANNEL_SUBNET=10.0.37.1/24\n").unwrap();
        let e = read_subnet_env(&p).unwrap_err();
        assert_eq!(e.code(), 6);
        assert!(e.to_string().contains("FLANNEL_MTU, FLANNEL_IPMASQ missing"), "{e}");
        std::fs::write(
            &p,
            "FLANNEL_NETWORK=x\nFLANNEL_SUBNET=10.0.37.1/24\nFLANNEL_MTU=1\nFLANNEL_IPMASQ=no\n",
        )
        .unwrap();
        assert!(read_subnet_env(&p).unwrap_err().to_string().contains("malformed"));
    }

    #[test]
    fn save_load_remove_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        assert_eq!(load(&data, "c1"), None);
        save(&data, "c1", &json!({"type": "bridge"})).unwrap();
        assert_eq!(load(&data, "c1"), Some(json!({"type": "bridge"})));
        assert_eq!(std::fs::read_dir(&data).unwrap().count(), 1, "no temp file left");
        remove(&data, "c1").unwrap();
        remove(&data, "c1").unwrap();
        assert_eq!(load(&data, "c1"), None);
        std::fs::write(saved_path(&data, "c2"), "{half").unwrap();
        assert_eq!(load(&data, "c2"), None, "a damaged file reads as none");
    }
}
