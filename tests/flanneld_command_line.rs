//! A flanneld command line, as a flanneld unit has it (Go's one-dash flags, flanneld's own
//! names), runs `weft-agent` unchanged: the flags take effect, those with nothing to do are
//! logged, and what weft cannot do is refused with what to use instead.

mod common;

use common::{have_root, lab_name};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use weft::lab::{Lab, LabOptions};

/// Kills the agent this test started by hand (the lab only stops the agents it started).
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flanneld_command_line_runs_the_agent() {
    if !have_root("a_flanneld_command_line_runs_the_agent") {
        return;
    }
    let mut lab = Lab::up(LabOptions::topology_only(&lab_name(), 2).weft_bin(common::weft_bin()))
        .await
        .expect("lab up");
    lab.write_network_config().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("h1.log");
    let subnet_file = lab.subnet_file("h1");
    let words = [
        format!("-store={}", lab.store_url()),
        "-etcd-prefix=/coreos.com/network".into(),
        "-iface=eth0".into(),
        format!("-subnet-file={}", subnet_file.display()),
        "-ip-masq=true".into(),
        "-healthz-ip=127.0.0.1".into(),
        "-healthz-port=9111".into(),
        "-subnet-lease-renew-margin=30".into(),
        "-iptables-resync=5".into(),
        "-iptables-forward-rules=true".into(),
        "-v=2".into(),
    ];
    let agent = Agent(
        Command::new("ip")
            .args(["netns", "exec", lab.namespace("h1").unwrap()])
            .arg(env!("CARGO_BIN_EXE_weft-agent"))
            .args(&words)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .expect("spawning weft-agent"),
    );
    lab.start_agent("h2").await.unwrap();
    let converged = lab.wait_converged(Duration::from_secs(30)).await;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    converged.unwrap_or_else(|e| panic!("no overlay with a flanneld command line: {e}\n{log}"));

    // -ip-masq=true: the subnet file says so and the table masquerades.
    let env = std::fs::read_to_string(&subnet_file).unwrap();
    assert!(env.contains("FLANNEL_IPMASQ=true"), "{env}");
    let table = lab.exec("h1", &["nft", "list", "table", "ip", "weft"]).unwrap();
    assert!(String::from_utf8_lossy(&table.stdout).contains("masquerade"));
    // -healthz-ip/-healthz-port: /healthz is served there.
    let addr: SocketAddr = "127.0.0.1:9111".parse().unwrap();
    let got =
        weft::lab::probe::http_get(lab.namespace("h1").unwrap(), addr, "/healthz", Duration::from_secs(2)).unwrap();
    assert_eq!(got.map(|(code, _)| code), Some(200), "{log}");
    // -v=2 logs at debug; the iptables flags are accepted and said to be without effect.
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("DEBUG"), "{log}");
    assert!(log.contains("--iptables-resync 5 ignored"), "{log}");
    assert!(log.contains("adds no iptables FORWARD rules"), "{log}");
    drop(agent);
}

/// Runs a `--print-config` command; its output, which must be a success.
fn print_config(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn what_weft_cannot_do_is_refused_before_anything_starts() {
    for (words, says) in [
        (&["-kube-subnet-mgr"][..], "--etcd-endpoints"),
        (
            &["--net-config-path=/etc/kube-flannel/net-conf.json"][..],
            "Kubernetes subnet manager",
        ),
        (&["-public-ipv6=2001:db8::1"][..], "IPv4 only"),
        (
            &["-healthz-port=9111", "--healthz-addr=127.0.0.1:9102"][..],
            "give one of them",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_weft-agent"))
            .args(words)
            .arg("--store=sqlite:/nonexistent/weft-test/store.db")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{words:?} was accepted");
        assert!(err.contains(says), "{words:?}: {err}");
    }
    // `weft agent` reads the same one-dash words.
    let mut weft_agent = Command::new(common::weft_bin());
    weft_agent.args(["agent", "-iface=eth9", "-ip-masq", "-v=1", "--print-config"]);
    let text = print_config(weft_agent);
    assert!(text.contains("iface = [\"eth9\"]  # flag"), "{text}");
    assert!(text.contains("ip-masq = true  # flag"), "{text}");
    assert!(text.contains("v = \"1\"  # flag"), "{text}");
}

/// flanneld's `FLANNELD_*` variables count as the flags (below weft's own `WEFT_*`).
#[test]
fn flanneld_environment_variables_are_read() {
    let mut agent = Command::new(env!("CARGO_BIN_EXE_weft-agent"));
    agent.arg("--print-config").env_clear().envs([
        ("FLANNELD_ETCD_PREFIX", "/flannel/network"),
        ("FLANNELD_IP_MASQ", "true"),
        ("FLANNELD_HEALTHZ_PORT", "8471"),
        ("FLANNELD_IFACE", "eth2"),
        ("WEFT_IFACE", "eth1"),
    ]);
    let text = print_config(agent);
    assert!(text.contains("etcd-prefix = \"/flannel/network\"  # env"), "{text}");
    assert!(text.contains("ip-masq = true  # env"), "{text}");
    assert!(text.contains("healthz-port = \"8471\"  # env"), "{text}");
    assert!(
        text.contains("iface = [\"eth1\"]  # env"),
        "weft's own variable wins: {text}"
    );
    // And what weft refuses, it refuses from the environment too.
    let out = Command::new(env!("CARGO_BIN_EXE_weft-agent"))
        .arg("--store=sqlite:/nonexistent/weft-test/store.db")
        .env_clear()
        .env("FLANNELD_KUBE_SUBNET_MGR", "true")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--kube-subnet-mgr"));
}
