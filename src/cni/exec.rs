//! Running the delegate plugin: found in CNI_PATH, given our environment and its config on stdin.

use super::args::Env;
use super::error::CniError;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The first executable file named `plugin` in the CNI_PATH directories.
pub fn find_plugin(plugin: &str, path: &[PathBuf]) -> Option<PathBuf> {
    path.iter().map(|dir| dir.join(plugin)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `binary` with exactly the environment we were given (CNI_COMMAND and all) and `config` on
/// stdin, and returns its stdout on success.
pub fn run(plugin: &str, binary: &Path, env: &Env, config: &Value) -> Result<String, CniError> {
    let run_err = |problem: String| CniError::DelegateRun {
        plugin: plugin.to_string(),
        problem,
        details: String::new(),
    };
    let mut child = Command::new(binary)
        .env_clear()
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| run_err(format!("could not be started ({}): {e}", binary.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        // Configs are far smaller than a pipe buffer, so this cannot block on a child that has
        // not started reading. A write error means the child died early: its status says why.
        let _ = stdin.write_all(config.to_string().as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| run_err(format!("could not be waited for: {e}")))?;
    // The runtime logs our stderr; the delegate's diagnostics belong there too.
    let _ = std::io::stderr().write_all(&out.stderr);
    outcome(plugin, &out)
}

/// A finished delegate's stdout, or its failure as our error (pure, for tests).
pub fn outcome(plugin: &str, out: &Output) -> Result<String, CniError> {
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() {
        return Ok(stdout);
    }
    // A failing plugin prints a CNI error on stdout: keep its code, wrap its message.
    if let Ok(Value::Object(e)) = serde_json::from_str::<Value>(&stdout) {
        if let (Some(code), Some(msg)) = (
            e.get("code").and_then(Value::as_u64),
            e.get("msg").and_then(Value::as_str),
        ) {
            return Err(CniError::Delegate {
                plugin: plugin.to_string(),
                code: u32::try_from(code).unwrap_or(super::error::code::INTERNAL),
                msg: msg.to_string(),
                details: e.get("details").and_then(Value::as_str).unwrap_or_default().to_string(),
            });
        }
    }
    Err(CniError::DelegateRun {
        plugin: plugin.to_string(),
        problem: format!("failed ({}) without a CNI error: {}", out.status, tail(&stdout)),
        details: tail(String::from_utf8_lossy(&out.stderr).trim()),
    })
}

/// The last few hundred bytes of a text, on a character boundary.
fn tail(s: &str) -> String {
    const MAX: usize = 400;
    let start = s.len().saturating_sub(MAX);
    let start = (start..=s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(s.len());
    s[start..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    fn output(code: i32, stdout: &str, stderr: &str) -> Output {
        Output {
            status: ExitStatus::from_raw(code << 8),
            stdout: stdout.as_bytes().to_vec(),
            stderr: stderr.as_bytes().to_vec(),
        }
    }

    #[test]
    fn success_returns_stdout() {
        assert_eq!(
            outcome("bridge", &output(0, " {\"ips\":[]}\n", "")).unwrap(),
            "{\"ips\":[]}"
        );
    }

    #[test]
    fn a_cni_error_keeps_its_code() {
        let e = outcome(
            "bridge",
            &output(1, r#"{"cniVersion":"1.0.0","code":11,"msg":"busy","details":"d"}"#, ""),
        )
        .unwrap_err();
        assert_eq!(e.code(), 11);
        assert_eq!(e.to_string(), "delegate plugin bridge failed: busy");
        assert_eq!(e.details(), "d");
    }

    #[test]
    fn garbage_is_an_internal_error_with_stderr() {
        let e = outcome("bridge", &output(2, "panic", "goroutine 1")).unwrap_err();
        assert_eq!(e.code(), 999);
        assert!(e.to_string().contains("without a CNI error: panic"), "{e}");
        assert_eq!(e.details(), "goroutine 1");
    }

    #[test]
    fn finds_only_executables() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bridge"), "").unwrap();
        assert_eq!(find_plugin("bridge", &[dir.path().into()]), None, "not executable");
        assert_eq!(
            find_plugin("sh", &[dir.path().into(), "/bin".into()]),
            Some(PathBuf::from("/bin/sh"))
        );
    }

    #[test]
    fn tail_cuts_on_a_char_boundary() {
        let s = "é".repeat(300);
        assert!(tail(&s).len() <= 400 && tail(&s).chars().all(|c| c == 'é'));
    }
}
