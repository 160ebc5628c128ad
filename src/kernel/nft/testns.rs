//! Test namespaces for the nft and offload tests: `wn-<pid>-<n>`, deleted on drop (also on
//! panic). Code under test runs on a thread that has `setns`'ed into one ([`Netns::enter`]), so
//! its `nft` children and sockets belong to that namespace, never to the root one.

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub(crate) struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        sweep_stale();
        let name = format!("wn-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip("link set lo up");
        ns
    }

    /// Runs `f` on a thread inside the namespace and returns its result; panics propagate.
    /// Sockets opened by `f` stay in the namespace wherever they are used afterwards.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        let thread = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            let want = file.metadata().expect("stat netns").ino();
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            // Belt and braces: never let code under test touch the root namespace's rules.
            let now = std::fs::metadata("/proc/thread-self/ns/net")
                .expect("stat own netns")
                .ino();
            assert_eq!(now, want, "setns did not move the thread into {path}");
            f()
        });
        thread.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    /// `ip -n NS ARGS…`, which must succeed.
    pub fn ip(&self, args: &str) -> String {
        let mut v = vec!["-n", &self.name];
        v.extend(args.split_whitespace());
        run("ip", &v)
    }

    /// `ip netns exec NS CMD ARGS…`: (success, stdout + stderr).
    pub fn exec(&self, cmd: &str) -> (bool, String) {
        let mut v = vec!["netns", "exec", &self.name];
        v.extend(cmd.split_whitespace());
        let out = Command::new("ip").args(&v).output().expect("spawn ip netns exec");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Like [`Netns::exec`], but it must succeed; returns stdout + stderr.
    pub fn exec_ok(&self, cmd: &str) -> String {
        let (ok, text) = self.exec(cmd);
        assert!(ok, "in {}: {cmd}: {text}", self.name);
        text
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Connects `a` and `b` with a veth pair `<a_if>`/`<b_if>`, addresses given as `x.y.z.w/len`,
/// both ends up.
pub fn veth(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str) {
    a.ip(&format!("link add {a_if} type veth peer name {b_if} netns {}", b.name));
    a.ip(&format!("addr add {a_addr} dev {a_if}"));
    b.ip(&format!("addr add {b_addr} dev {b_if}"));
    a.ip(&format!("link set {a_if} up"));
    b.ip(&format!("link set {b_if} up"));
}

/// Deletes `wn-<pid>-*` namespaces left by test processes that died without their guards.
fn sweep_stale() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(dir) = std::fs::read_dir("/run/netns") else {
            return;
        };
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name.strip_prefix("wn-").and_then(|r| r.split('-').next());
            if let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) {
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = Command::new("ip").args(["netns", "del", &name]).status();
                }
            }
        }
    });
}

pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect("spawn command");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// False (with a note) when the tests cannot run; a failure if WEFT_REQUIRE_ROOT=1.
pub fn can_run() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("WEFT_REQUIRE_ROOT").as_deref() != Ok("1"),
        "kernel tests need root and WEFT_REQUIRE_ROOT=1 is set"
    );
    eprintln!("skipping kernel integration test: not root");
    false
}
