//! The peer filter against the real kernel: a bpffs mounted for the test, a namespace of its
//! own, UDP datagrams over its loopback. Needs root.

use super::{is_bpffs, remove_pinned, Attached, PeerFilter};
use crate::kernel::nft::testns::{can_run, Netns};
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// A private bpffs at `/run/weft-test-bpf-<pid>-<n>`, unmounted and removed on drop.
struct Bpffs {
    dir: PathBuf,
}

impl Bpffs {
    fn new() -> Bpffs {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = PathBuf::from(format!(
            "/run/weft-test-bpf-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&dir)
            .status()
            .unwrap()
            .success();
        let fs = Bpffs { dir };
        assert!(ok, "mount -t bpf at {}", fs.dir.display());
        fs
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

const PORT: u16 = 48472;
const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Sends one datagram from 127.0.0.1 to `port` in `ns` and says whether a socket listening
/// there got it.
fn delivered(ns: &Netns, port: u16) -> bool {
    ns.enter(move || {
        let rx = UdpSocket::bind((LO, port)).unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let tx = UdpSocket::bind((LO, 0)).unwrap();
        tx.send_to(b"vxlan?", (LO, port)).unwrap();
        let mut buf = [0u8; 16];
        rx.recv_from(&mut buf).is_ok()
    })
}

fn ensure(ns: &Netns, dir: &Path, port: u16) -> (PeerFilter, Attached) {
    let dir = dir.to_path_buf();
    ns.enter(move || PeerFilter::ensure(&dir, port).unwrap())
}

fn peers(ips: &[Ipv4Addr]) -> BTreeSet<Ipv4Addr> {
    ips.iter().copied().collect()
}

#[test]
fn drops_and_counts_a_stranger_passes_a_peer_and_survives_its_owner() {
    if !can_run() {
        return;
    }
    let fs = Bpffs::new();
    let ns = Netns::new();
    let dir = fs.dir.join("h1");
    assert!(delivered(&ns, PORT), "nothing filters before the filter");

    let (mut f, how) = ensure(&ns, &dir, PORT);
    assert_eq!(how, Attached::Created);
    assert!(!delivered(&ns, PORT), "127.0.0.1 is no peer yet");
    assert!(delivered(&ns, PORT + 1), "other ports are not the filter's business");
    assert_eq!(f.dropped().unwrap(), 1);
    assert_eq!(
        f.sync(&peers(&[LO, Ipv4Addr::new(192, 0, 2, 9)]), false).unwrap(),
        (2, 0)
    );
    assert!(delivered(&ns, PORT), "a peer passes");

    // The agent goes away (its fds close): the pinned filter stays attached.
    drop(f);
    assert!(delivered(&ns, PORT));
    f = ensure(&ns, &dir, PORT).0;
    f.sync(&peers(&[Ipv4Addr::new(192, 0, 2, 9)]), false).unwrap();
    assert!(!delivered(&ns, PORT), "still attached after its owner left");
    assert_eq!(f.dropped().unwrap(), 2, "the count survives too");

    // The next agent takes over: same map (peers kept), its own program.
    let (mut next, how) = ensure(&ns, &dir, PORT);
    assert_eq!(how, Attached::TakenOver);
    assert_eq!(next.sync(&peers(&[Ipv4Addr::new(192, 0, 2, 9)]), true).unwrap(), (0, 0));
    drop(f);
    // A new port in the config: the program is swapped, the old port is free.
    let (moved, how) = ensure(&ns, &dir, PORT + 1);
    assert_eq!(how, Attached::TakenOver);
    assert!(delivered(&ns, PORT));
    assert!(!delivered(&ns, PORT + 1));
    drop(next);

    ns.enter(move || moved.remove().unwrap());
    assert!(delivered(&ns, PORT + 1), "removed");
    assert!(!dir.exists(), "pins removed");
    assert!(!remove_pinned(&dir).unwrap());
}

#[test]
fn a_pin_left_by_a_deleted_namespace_is_replaced_and_cleanup_finds_pins() {
    if !can_run() {
        return;
    }
    let fs = Bpffs::new();
    let dir = fs.dir.join("h1");
    {
        let old = Netns::new();
        ensure(&old, &dir, PORT);
    }
    let ns = Netns::new();
    let (_f, how) = ensure(&ns, &dir, PORT);
    assert_eq!(how, Attached::Created, "the old link guarded a namespace that is gone");
    assert!(!delivered(&ns, PORT));
    assert!(ns.enter({
        let dir = dir.clone();
        move || remove_pinned(&dir).unwrap()
    }));
    assert!(delivered(&ns, PORT), "--cleanup detached it");
    assert!(!dir.exists());
}

#[test]
fn refuses_a_directory_outside_bpffs() {
    if !can_run() {
        return;
    }
    let fs = Bpffs::new();
    assert!(is_bpffs(&fs.dir.join("a/b")));
    assert!(!is_bpffs(Path::new("/run")));
    let ns = Netns::new();
    let e = ns.enter(|| PeerFilter::ensure(Path::new("/run/weft-not-bpffs/h1"), PORT).unwrap_err());
    assert!(e.to_string().contains("not on a bpffs mount"), "{e}");
    assert!(!Path::new("/run/weft-not-bpffs").exists());
}
