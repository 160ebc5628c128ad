//! Running a CNI plugin exactly as a container runtime does, and reading its reply.

use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The weft-cni binary built for this test run.
pub fn plugin_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft-cni"))
}

/// What a runtime sees of one call.
#[derive(Debug)]
pub struct Reply {
    pub ok: bool,
    pub stdout: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }

    /// Asserts a CNI error with `code` and returns its message.
    pub fn error(&self, code: u64) -> String {
        assert!(!self.ok, "expected an error, got success: {}", self.stdout);
        let v = self.json();
        assert_eq!(v["code"], code, "{v}");
        assert!(v["cniVersion"].is_string(), "{v}");
        v["msg"].as_str().expect("msg").to_string()
    }

    pub fn success(&self) -> &Self {
        assert!(self.ok, "plugin failed: {}", self.stdout);
        self
    }
}

/// Runs a CNI plugin binary as a runtime does: only the given environment, the config on stdin.
pub fn run(via_ns: Option<&str>, binary: &Path, env: &[(&str, String)], stdin: &str) -> Reply {
    let mut cmd = match via_ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(binary);
            c
        }
        None => Command::new(binary),
    };
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("start the plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait for the plugin");
    Reply {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
    }
}
