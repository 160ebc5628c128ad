//! weft-cni driven exactly as a container runtime drives it: CNI_* variables and the network
//! config on stdin, with Debian's standard plugins (/usr/lib/cni) as delegates.
//!
//! Safety: the plugin creates the bridge `cni0` in the namespace it runs in, so the root tests run
//! it in a "host" namespace they created (`ip netns exec wcXXXXX-host weft-cni`); containers are
//! further namespaces of the test. A guard deletes them all on drop, also on panic. The tests that
//! run without root give the plugin an empty CNI_PATH, so no delegate could run even by mistake.

mod common;

use common::cni::{plugin_bin, run, Reply};

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Debian's containernetworking-plugins.
const PLUGINS: &str = "/usr/lib/cni";
const GATEWAY: &str = "10.0.37.1";
const MTU: u32 = 1400;

/// One plugin call. `via_ns` runs it inside that namespace; `env` is the whole environment.
fn call(via_ns: Option<&str>, env: &[(&str, String)], stdin: &str) -> Reply {
    run(via_ns, &plugin_bin(), env, stdin)
}

fn subnet_env(ipmasq: bool) -> String {
    format!("FLANNEL_NETWORK=10.0.0.0/16\nFLANNEL_SUBNET={GATEWAY}/24\nFLANNEL_MTU={MTU}\nFLANNEL_IPMASQ={ipmasq}\n")
}

/// A test's files: subnet.env, dataDir and host-local's state, all in a temporary directory (so
/// nothing lands in /var/lib/cni).
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn subnet_file(&self) -> PathBuf {
        self.dir.path().join("subnet.env")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn write_subnet_env(&self, ipmasq: bool) {
        std::fs::write(self.subnet_file(), subnet_env(ipmasq)).expect("write subnet.env");
    }

    /// The network config a runtime passes for the first plugin of contrib/cni/10-weft.conflist:
    /// the plugin's entry with the list's name and cniVersion (as libcni injects them), pointed at
    /// this test's files.
    fn conf(&self) -> Value {
        let text = include_str!("../contrib/cni/10-weft.conflist");
        let list: Value = serde_json::from_str(text).expect("conflist is JSON");
        let mut conf = list["plugins"][0].clone();
        assert_eq!(conf["type"], "weft-cni");
        conf["name"] = json!("weft-test");
        conf["cniVersion"] = list["cniVersion"].clone();
        conf["subnetFile"] = json!(self.subnet_file());
        conf["dataDir"] = json!(self.data_dir());
        conf["delegate"]["ipam"] = json!({ "dataDir": self.dir.path().join("ipam") });
        conf
    }

    fn saved(&self, container: &str) -> PathBuf {
        self.data_dir().join(container)
    }
}

fn runtime_env(command: &str, container: &str, netns: &str, cni_path: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_COMMAND", command.to_string()),
        ("CNI_CONTAINERID", container.to_string()),
        ("CNI_NETNS", netns.to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=test".to_string()),
        ("CNI_PATH", cni_path.display().to_string()),
    ]
}

// ---- without root: everything that fails before a delegate runs ----

#[test]
fn version_lists_the_supported_versions() {
    let r = call(None, &[("CNI_COMMAND", "VERSION".into())], "");
    r.success();
    assert_eq!(
        r.json(),
        json!({"cniVersion": "1.0.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]})
    );
}

#[test]
fn malformed_configs_get_the_spec_codes() {
    let f = Files::new();
    f.write_subnet_env(false);
    let env = runtime_env("ADD", "c1", "/run/netns/none", f.dir.path());
    assert!(call(None, &env, "this is not json").error(6).contains("stdin"));
    let msg = call(None, &env, r#"{"cniVersion":"0.2.0","name":"weft","type":"weft-cni"}"#).error(1);
    assert!(msg.contains("0.2.0") && msg.contains("1.0.0"), "{msg}");
    let msg = call(None, &env, r#"{"cniVersion":"1.0.0","type":"weft-cni"}"#).error(7);
    assert!(msg.contains("name is missing"), "{msg}");
    let msg = call(
        None,
        &env,
        r#"{"cniVersion":"1.0.0","name":"w","delegate":{"name":"x"}}"#,
    )
    .error(2);
    assert!(msg.contains("delegate.name"), "{msg}");
    assert!(!f.data_dir().exists(), "nothing saved for a rejected config");
}

#[test]
fn missing_environment_is_code_4() {
    let f = Files::new();
    let conf = f.conf().to_string();
    let mut env = runtime_env("ADD", "c1", "/run/netns/none", f.dir.path());
    env.retain(|(k, _)| *k != "CNI_COMMAND");
    assert!(call(None, &env, &conf).error(4).starts_with("CNI_COMMAND"));
    let mut env = runtime_env("ADD", "c1", "/run/netns/none", f.dir.path());
    env.retain(|(k, _)| *k != "CNI_CONTAINERID");
    assert!(call(None, &env, &conf).error(4).starts_with("CNI_CONTAINERID"));
}

#[test]
fn add_without_subnet_env_says_to_start_the_agent() {
    let f = Files::new();
    let env = runtime_env("ADD", "c1", "/run/netns/none", f.dir.path());
    let msg = call(None, &env, &f.conf().to_string()).error(11);
    assert!(msg.contains(&f.subnet_file().display().to_string()), "{msg}");
    assert!(
        msg.contains("No such file or directory") && msg.contains("weft agent running"),
        "{msg}"
    );
}

#[test]
fn a_missing_delegate_names_the_plugin_and_the_path() {
    let f = Files::new();
    f.write_subnet_env(false);
    let env = runtime_env("ADD", "c1", "/run/netns/none", f.dir.path());
    let msg = call(None, &env, &f.conf().to_string()).error(4);
    assert!(msg.starts_with("CNI_PATH") && msg.contains("\"bridge\"") && msg.contains("containernetworking-plugins"));
}

#[test]
fn del_with_nothing_to_delete_succeeds() {
    let f = Files::new();
    let env = runtime_env("DEL", "never-added", "", f.dir.path());
    call(None, &env, &f.conf().to_string()).success();
    call(None, &env, &f.conf().to_string()).success();
}

// ---- as root, with the real bridge and host-local plugins in test namespaces ----

/// The test's namespaces (`wcXXXXX-host`, `wcXXXXX-pod1`, …), deleted on drop.
struct Namespaces {
    prefix: String,
    names: Vec<String>,
}

impl Namespaces {
    fn new() -> Namespaces {
        let prefix = format!("wc{:05x}", rand::random::<u32>() & 0xf_ffff);
        let mut ns = Namespaces {
            prefix,
            names: Vec::new(),
        };
        ns.add("host");
        ns
    }

    fn add(&mut self, what: &str) -> String {
        let name = format!("{}-{what}", self.prefix);
        weft::lab::netns::add_namespaces(std::slice::from_ref(&name)).expect("ip netns add");
        self.names.push(name.clone());
        weft::lab::netns::batch(Some(&name), false, "link set lo up\n").expect("lo up");
        name
    }

    fn host(&self) -> String {
        format!("{}-host", self.prefix)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // Deleting a namespace deletes its links (the bridge, the veths) and iptables rules too.
        let _ = weft::lab::netns::delete_namespaces(&self.names);
    }
}

fn netns_path(ns: &str) -> String {
    format!("/run/netns/{ns}")
}

fn ip_in(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip").args(["-n", ns]).args(args).output().expect("run ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Pings from `ns`, a few tries (the first may wait on ARP).
fn pings(ns: &str, target: &str) -> bool {
    (0..3).any(|_| {
        Command::new("ip")
            .args(["netns", "exec", ns, "ping", "-c1", "-W1", target])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// The IPv4 address in an ADD result.
fn result_address(r: &Value) -> ipnet::Ipv4Net {
    r["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no IPv4 address in {r}"))
}

/// contrib/cni/10-weft.conflist's second plugin, as a runtime passes it after our ADD.
fn portmap_conf(prev_result: &Value) -> Value {
    let list: Value = serde_json::from_str(include_str!("../contrib/cni/10-weft.conflist")).expect("conflist is JSON");
    let mut conf = list["plugins"][1].clone();
    assert_eq!(conf["type"], "portmap");
    conf["name"] = json!("weft-test");
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["runtimeConfig"] = json!({"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]});
    conf["prevResult"] = prev_result.clone();
    conf
}

/// Runs one of Debian's plugins in namespace `ns`, as the runtime runs the rest of a chain.
fn call_plugin(ns: &str, plugin: &str, env: &[(&str, String)], stdin: &str) -> Reply {
    run(Some(ns), &Path::new(PLUGINS).join(plugin), env, stdin)
}

fn no_cni0_in_root_namespace() {
    let out = Command::new("ip")
        .args(["link", "show", "cni0"])
        .output()
        .expect("ip link");
    assert!(!out.status.success(), "cni0 appeared in the root namespace");
}

fn skip_without_root_or_plugins(test: &str) -> bool {
    if !common::have_root(test) {
        return true;
    }
    assert!(
        Path::new(PLUGINS).join("bridge").exists(),
        "{PLUGINS}/bridge missing: run scripts/deps.sh (installs containernetworking-plugins)"
    );
    false
}

#[test]
fn add_check_del_with_the_real_bridge() {
    if skip_without_root_or_plugins("add_check_del_with_the_real_bridge") {
        return;
    }
    let mut ns = Namespaces::new();
    let pod = ns.add("pod1");
    let f = Files::new();
    f.write_subnet_env(false);
    let host = ns.host();
    let env = |cmd: &str| runtime_env(cmd, "pod1", &netns_path(&pod), Path::new(PLUGINS));

    let r = call(Some(&host), &env("ADD"), &f.conf().to_string());
    let result = r.success().json();
    let addr = result_address(&result);
    assert!(
        "10.0.37.0/24".parse::<ipnet::Ipv4Net>().unwrap().contains(&addr.addr()),
        "{addr}"
    );
    assert_eq!(result["cniVersion"], "1.0.0");
    assert!(f.saved("pod1").exists(), "delegate config saved for DEL");

    let link: Value = serde_json::from_str(&ip_in(&pod, &["-j", "addr", "show", "dev", "eth0"])).expect("ip -j");
    assert_eq!(link[0]["mtu"], MTU, "MTU from subnet.env");
    assert_eq!(link[0]["addr_info"][0]["local"], addr.addr().to_string());
    let route = ip_in(&pod, &["route", "show", "10.0.0.0/16"]);
    assert!(
        route.contains(&format!("via {GATEWAY}")),
        "route to FLANNEL_NETWORK: {route:?}"
    );
    assert!(pings(&pod, GATEWAY), "container cannot ping its gateway {GATEWAY}");
    // FLANNEL_IPMASQ=false: the agent does not masquerade, so the bridge plugin does.
    let nat = Command::new("ip")
        .args(["netns", "exec", &host, "iptables", "-t", "nat", "-S", "POSTROUTING"])
        .output()
        .expect("iptables");
    assert!(
        String::from_utf8_lossy(&nat.stdout).contains("CNI-"),
        "bridge masquerade rule"
    );
    no_cni0_in_root_namespace();

    // The next plugin of the conflist (portmap) takes our result as its prevResult.
    let portmap = portmap_conf(&result);
    let chained = call_plugin(&host, "portmap", &env("ADD"), &portmap.to_string());
    assert_eq!(result_address(&chained.success().json()), addr);

    let mut check_conf = f.conf();
    check_conf["prevResult"] = result;
    call(Some(&host), &env("CHECK"), &check_conf.to_string()).success();

    // A runtime deletes in reverse order.
    call_plugin(&host, "portmap", &env("DEL"), &portmap.to_string()).success();
    call(Some(&host), &env("DEL"), &f.conf().to_string()).success();
    assert!(!f.saved("pod1").exists(), "saved config removed by DEL");
    assert!(
        ip_in(&pod, &["link", "show", "eth0"]).is_empty(),
        "eth0 left in the container"
    );
    call(Some(&host), &env("DEL"), &f.conf().to_string()).success();

    // CHECK of a deleted container: unknown container.
    let mut check_conf = f.conf();
    check_conf["prevResult"] = json!({"cniVersion": "1.0.0", "ips": []});
    call(Some(&host), &env("CHECK"), &check_conf.to_string()).error(3);
}

#[test]
fn two_containers_get_distinct_addresses_and_reach_each_other() {
    if skip_without_root_or_plugins("two_containers_get_distinct_addresses_and_reach_each_other") {
        return;
    }
    let mut ns = Namespaces::new();
    let pods = [ns.add("pod1"), ns.add("pod2")];
    let f = Files::new();
    f.write_subnet_env(true);
    let host = ns.host();
    let env = |cmd: &str, i: usize| runtime_env(cmd, &format!("pod{i}"), &netns_path(&pods[i]), Path::new(PLUGINS));

    let a = result_address(
        &call(Some(&host), &env("ADD", 0), &f.conf().to_string())
            .success()
            .json(),
    );
    let b = result_address(
        &call(Some(&host), &env("ADD", 1), &f.conf().to_string())
            .success()
            .json(),
    );
    assert_ne!(a.addr(), b.addr());
    assert!(pings(&pods[0], &b.addr().to_string()), "pod1 cannot reach pod2 at {b}");
    assert!(pings(&pods[1], &a.addr().to_string()), "pod2 cannot reach pod1 at {a}");
    no_cni0_in_root_namespace();
    for i in 0..2 {
        call(Some(&host), &env("DEL", i), &f.conf().to_string()).success();
    }
}

#[test]
fn del_after_subnet_env_vanished_uses_the_saved_config() {
    if skip_without_root_or_plugins("del_after_subnet_env_vanished_uses_the_saved_config") {
        return;
    }
    let mut ns = Namespaces::new();
    let pod = ns.add("pod1");
    let f = Files::new();
    f.write_subnet_env(true);
    let host = ns.host();
    let env = |cmd: &str| runtime_env(cmd, "pod1", &netns_path(&pod), Path::new(PLUGINS));

    let addr = result_address(&call(Some(&host), &env("ADD"), &f.conf().to_string()).success().json());
    std::fs::remove_file(f.subnet_file()).expect("remove subnet.env");
    call(Some(&host), &env("DEL"), &f.conf().to_string()).success();
    assert!(
        ip_in(&pod, &["link", "show", "eth0"]).is_empty(),
        "eth0 left in the container"
    );
    // host-local keeps one file per allocated address: DEL must have released it.
    let leased = f.dir.path().join("ipam/weft-test").join(addr.addr().to_string());
    assert!(!leased.exists(), "{} still allocated", leased.display());
    call(Some(&host), &env("DEL"), &f.conf().to_string()).success();
}

#[test]
fn a_failing_delegate_passes_its_error_through() {
    if skip_without_root_or_plugins("a_failing_delegate_passes_its_error_through") {
        return;
    }
    let ns = Namespaces::new();
    let f = Files::new();
    f.write_subnet_env(true);
    let host = ns.host();
    // A container namespace that does not exist: the bridge plugin fails to enter it.
    let missing = netns_path(&format!("{}-nope", ns.prefix));
    let env = |cmd: &str| runtime_env(cmd, "pod1", &missing, Path::new(PLUGINS));
    let r = call(Some(&host), &env("ADD"), &f.conf().to_string());
    assert!(!r.ok, "ADD into a missing namespace succeeded: {}", r.stdout);
    let v = r.json();
    let msg = v["msg"].as_str().unwrap_or_default();
    assert!(msg.starts_with("delegate plugin bridge failed: "), "{v}");
    assert!(msg.contains("-nope"), "the delegate's own message is kept: {v}");
    assert_ne!(v["code"], 0);
    // The runtime cleans up a failed ADD with DEL, which must succeed.
    call(Some(&host), &env("DEL"), &f.conf().to_string()).success();
    assert!(!f.saved("pod1").exists());
}
