//! Helpers shared by the lab-based integration tests.
#![allow(dead_code)]

pub mod cni;
pub mod etcd;
pub mod kernel;
pub mod l2;
pub mod vxlan;

use std::path::PathBuf;

/// True if the test can run. Lab tests need root (network namespaces): without it they print a
/// note and skip — unless `WEFT_REQUIRE_ROOT=1`, where skipping would hide a gap, so they fail.
pub fn have_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("WEFT_REQUIRE_ROOT").as_deref() == Ok("1") {
        panic!("{test} needs root (WEFT_REQUIRE_ROOT=1 is set)");
    }
    eprintln!("skipping {test}: needs root");
    false
}

/// A unique lab name (`t` + 5 hex digits).
pub fn lab_name() -> String {
    weft::lab::random_name()
}

/// The weft binary built for this test run.
pub fn weft_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

/// The namespaces that exist now and belong to lab `name`.
pub fn namespaces_of(name: &str) -> Vec<String> {
    weft::lab::netns::list()
        .expect("ip netns list")
        .into_iter()
        .filter(|ns| ns.starts_with(&format!("{name}-")))
        .collect()
}

/// Asserts that lab `name` left nothing behind: no namespace, no state directory.
pub fn assert_gone(name: &str) {
    assert_eq!(
        namespaces_of(name),
        Vec::<String>::new(),
        "namespaces of lab {name} left behind"
    );
    let dir = weft::lab::state::lab_dir(name);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

/// Runs `weft ARGS --store <the lab's store>` and returns its stdout (panics if it fails).
pub fn weft_ok(lab: &weft::lab::Lab, args: &[&str]) -> String {
    let out = std::process::Command::new(weft_bin())
        .args(args)
        .args(["--store", lab.store_url()])
        .output()
        .expect("running weft");
    assert!(
        out.status.success(),
        "weft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `weft net create NAME --vni VNI --cidr CIDR --mode l2` in the lab's store.
pub fn create_l2_network(lab: &weft::lab::Lab, name: &str, vni: u32, cidr: &str) {
    weft_ok(
        lab,
        &[
            "net",
            "create",
            name,
            "--vni",
            &vni.to_string(),
            "--cidr",
            cidr,
            "--mode",
            "l2",
        ],
    );
}

/// Stops `host`'s agent (SIGTERM) and runs `weft agent --cleanup [--release]` there; returns
/// what it printed (panics if it fails).
pub fn cleanup(lab: &mut weft::lab::Lab, host: &str, release: bool) -> String {
    lab.kill_agent(host, nix::sys::signal::Signal::SIGTERM).unwrap();
    let bin = weft_bin().display().to_string();
    let subnet_file = lab.subnet_file(host).display().to_string();
    let pin_dir = lab.dir().join("bpf").join(host).display().to_string();
    let mut argv = vec![
        bin.as_str(),
        "agent",
        "--cleanup",
        "--store",
        lab.store_url(),
        "--iface",
        "eth0",
        "--subnet-file",
        &subnet_file,
        "--bpf-pin-dir",
        &pin_dir,
    ];
    if release {
        argv.push("--release");
    }
    let out = lab.exec(host, &argv).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{host}: cleanup failed: {text}");
    text
}
