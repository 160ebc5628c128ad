//! Where another firewall drops forwarded packets by default (Docker's and ufw's iptables
//! `FORWARD` policy), pods lose their neighbours on other hosts; weft cannot override that drop,
//! so its agent says so in the log, and says when it is over.

mod common;

use common::{have_root, lab_name};
use std::time::{Duration, Instant};
use weft::lab::{Lab, LabOptions};

/// Waits (bounded) until the host's agent log holds `text`; returns the log.
fn wait_log(lab: &Lab, host: &str, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = std::fs::read_to_string(lab.agent_log(host)).unwrap_or_default();
        if log.contains(text) {
            return log;
        }
        assert!(Instant::now() < deadline, "{host}'s log never said {text:?}:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `GET path` from the host's agent (on the lab's default address).
fn get(lab: &Lab, host: &str, path: &str) -> String {
    let addr = weft::agent::status::DEFAULT_HTTP_ADDR.parse().unwrap();
    let (_, body) = weft::lab::probe::http_get(lab.namespace(host).unwrap(), addr, path, Duration::from_secs(2))
        .unwrap()
        .unwrap_or_else(|| panic!("{host}: {path} does not answer"));
    body
}

fn status_json(lab: &Lab, host: &str) -> serde_json::Value {
    serde_json::from_str(&get(lab, host, "/status")).unwrap()
}

/// One unlabelled series of `/metrics`.
fn metric(lab: &Lab, host: &str, name: &str) -> Option<f64> {
    get(lab, host, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn nft(lab: &Lab, host: &str, script: &str) {
    let out = lab.exec(host, &["nft", script]).unwrap();
    assert!(
        out.status.success(),
        "nft {script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pod_ping(lab: &Lab, from: &str, to: &str) -> bool {
    let (a, b) = (&lab.pods(from)[0], &lab.pods(to)[0]);
    std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &a.namespace,
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            &b.ip.to_string(),
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_policy_of_drop_elsewhere_is_named_in_the_log() {
    if !have_root("a_forward_policy_of_drop_elsewhere_is_named_in_the_log") {
        return;
    }
    let lab = Lab::up(
        LabOptions::new(&lab_name(), 2)
            .weft_bin(common::weft_bin())
            .pods(1)
            .ip_masq(false)
            .agent_arg("--resync-interval=1s"),
    )
    .await
    .expect("lab up");
    assert!(pod_ping(&lab, "h2", "h1"), "pods do not reach each other to begin with");
    let h1_subnet = lab.leases().await.unwrap()["h1"].subnet;

    // What `iptables -P FORWARD DROP` makes with iptables-nft (Docker does this).
    nft(&lab, "h1", "add table ip filter");
    nft(
        &lab,
        "h1",
        "add chain ip filter FORWARD { type filter hook forward priority 0; policy drop; }",
    );
    assert!(!pod_ping(&lab, "h2", "h1"), "the drop policy let pod traffic through");
    let log = wait_log(&lab, "h1", "no rule there accepts this subnet");
    let line = log.lines().find(|l| l.contains("no rule there accepts")).unwrap();
    assert!(
        line.contains("ip filter FORWARD") && line.contains(&h1_subnet.to_string()),
        "{line}"
    );
    // `/status` and `weft status` say it too.
    let status = status_json(&lab, "h1");
    assert_eq!(
        status["forward_drops"],
        serde_json::json!([{"chain": "ip filter FORWARD", "subnet": h1_subnet.to_string()}]),
        "{status}"
    );
    let text = lab
        .exec("h1", &[common::weft_bin().to_str().unwrap(), "status"])
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("forward    ip filter FORWARD drops forwarded packets by default"),
        "{text}"
    );
    assert_eq!(metric(&lab, "h1", "weft_forward_drops"), Some(1.0));
    assert_eq!(metric(&lab, "h2", "weft_forward_drops"), Some(0.0));
    // h2's forwarding is untouched: nothing to say there.
    let h2 = std::fs::read_to_string(lab.agent_log("h2")).unwrap();
    assert!(!h2.contains("no rule there accepts"), "{h2}");

    // flannel's accept for the network: traffic flows, and the agent says the drop is over.
    nft(&lab, "h1", "insert rule ip filter FORWARD ip saddr 10.0.0.0/16 accept");
    wait_log(&lab, "h1", "no other firewall drops this host's pod traffic any more");
    assert!(status_json(&lab, "h1").get("forward_drops").is_none());
    assert_eq!(metric(&lab, "h1", "weft_forward_drops"), Some(0.0));
    assert!(pod_ping(&lab, "h2", "h1"), "pods still cut off after flannel's accept");
}
