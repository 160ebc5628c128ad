//! A throwaway single-member etcd on 127.0.0.1 for pure store tests: free ports picked by the
//! kernel, data in a tempdir, killed when dropped (also on panic).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub client_port: u16,
    peer_port: u16,
    /// `http://127.0.0.1:PORT` or `https://…`.
    pub endpoint: String,
    extra: Vec<String>,
    /// TLS files etcdctl needs to talk to a TLS-only server: (ca, cert, key).
    pub ctl_tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Etcd {
    pub fn start() -> Etcd {
        Etcd::start_with("http", Vec::new(), None)
    }

    /// `scheme` for the client URL; `extra` etcd flags (TLS, …); etcdctl's TLS files if needed.
    pub fn start_with(scheme: &str, extra: Vec<String>, ctl_tls: Option<(PathBuf, PathBuf, PathBuf)>) -> Etcd {
        let client_port = free_port();
        let mut peer_port = free_port();
        while peer_port == client_port {
            peer_port = free_port();
        }
        let mut e = Etcd {
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
            client_port,
            peer_port,
            endpoint: format!("{scheme}://127.0.0.1:{client_port}"),
            extra,
            ctl_tls,
        };
        e.run();
        e
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// (Re)starts the server on the same ports and data, and waits until it answers.
    pub fn run(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd log");
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &self.endpoint])
            .args(["--advertise-client-urls", &self.endpoint])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting etcd (Debian package etcd-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.ctl(&["endpoint", "health"]);
            if out.status.success() {
                return;
            }
            assert!(Instant::now() < deadline, "etcd did not come up: {}", self.log_tail());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the server (SIGKILL) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs `etcdctl` (v3 API) against this server.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint, "--command-timeout", "3s"]);
        if let Some((ca, cert, key)) = &self.ctl_tls {
            cmd.arg("--cacert")
                .arg(ca)
                .arg("--cert")
                .arg(cert)
                .arg("--key")
                .arg(key);
        }
        cmd.args(args).stdin(Stdio::null()).output().expect("running etcdctl")
    }

    /// `etcdctl ARGS` stdout, failing the test if it fails.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Number of leases etcd holds.
    pub fn lease_count(&self) -> usize {
        self.ctl_ok(&["lease", "list"])
            .lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .count()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
