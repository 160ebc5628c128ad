//! [`PeerFilter`]: the peer filter program attached to this network namespace, pinned.

use super::program::peer_filter;
use super::sys::{self, ATTACH_SK_LOOKUP, MAP_TYPE_ARRAY, MAP_TYPE_HASH, PROG_TYPE_SK_LOOKUP};
use super::BpfError;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Room for this many peers (allocated as they come: `BPF_F_NO_PREALLOC`).
const MAX_PEERS: u32 = 1 << 16;
const PIN_PEERS: &str = "peers";
const PIN_DROPPED: &str = "vxlan_dropped";
const PIN_LINK: &str = "link";
/// The program's name, how [`detach_strays`] knows weft's programs.
const PROG_NAME: &str = "weft_vxlan_peers";

/// How [`PeerFilter::ensure`] found the namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    /// No filter was attached: it is now.
    Created,
    /// A previous agent's filter was attached: this agent's program replaced its program in
    /// place, keeping its peers and counter.
    TakenOver,
}

/// The peer filter of one network namespace: while it exists, VXLAN on its port from an
/// address outside its peers map is dropped at the socket lookup and counted.
#[derive(Debug)]
pub struct PeerFilter {
    dir: PathBuf,
    port: u16,
    peers: OwnedFd,
    dropped: OwnedFd,
    link: OwnedFd,
    /// What the peers map holds, as last written or read.
    known: BTreeSet<Ipv4Addr>,
}

/// Whether `dir`, or its nearest existing ancestor, is on a bpffs mount (pins can live there).
pub fn is_bpffs(dir: &Path) -> bool {
    let mut p = Some(dir);
    while let Some(d) = p {
        if d.exists() {
            return nix::sys::statfs::statfs(d).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC);
        }
        p = d.parent();
    }
    false
}

fn io_err(op: &'static str, path: &Path, e: std::io::Error) -> BpfError {
    BpfError {
        op,
        object: path.display().to_string(),
        errno: e.raw_os_error().unwrap_or(0),
        message: e.to_string(),
    }
}

/// The calling thread's network namespace, and its inode.
fn own_netns() -> Result<(OwnedFd, u64), BpfError> {
    let path = Path::new("/proc/thread-self/ns/net");
    let f = std::fs::File::open(path).map_err(|e| io_err("open netns", path, e))?;
    let ino = std::os::unix::fs::MetadataExt::ino(&f.metadata().map_err(|e| io_err("stat netns", path, e))?);
    Ok((OwnedFd::from(f), ino))
}

/// The map pinned at `dir/name`, or a new one pinned there.
fn pinned_map(dir: &Path, name: &str, make: impl FnOnce() -> Result<OwnedFd, BpfError>) -> Result<OwnedFd, BpfError> {
    let path = dir.join(name);
    if let Some(fd) = sys::obj_get(&path)? {
        return Ok(fd);
    }
    let fd = make()?;
    sys::obj_pin(&fd, &path)?;
    Ok(fd)
}

impl PeerFilter {
    /// Attaches the filter for VXLAN on `port` to the calling thread's network namespace,
    /// pinned in `dir` (created if needed, on a bpffs mount), or takes over the one a previous
    /// agent pinned there. Peers already in a taken-over map stay: nothing is let through, or
    /// cut, while this agent catches up (see [`PeerFilter::sync`]).
    pub fn ensure(dir: &Path, port: u16) -> Result<(PeerFilter, Attached), BpfError> {
        if !is_bpffs(dir) {
            return Err(BpfError {
                op: "pin",
                object: dir.display().to_string(),
                message: "not on a bpffs mount (mount -t bpf bpf /sys/fs/bpf)".into(),
                errno: 0,
            });
        }
        std::fs::create_dir_all(dir).map_err(|e| io_err("mkdir", dir, e))?;
        let peers = pinned_map(dir, PIN_PEERS, || {
            sys::map_create(MAP_TYPE_HASH, 4, 1, MAX_PEERS, sys::MAP_F_NO_PREALLOC, "weft_peers")
        })?;
        let dropped = pinned_map(dir, PIN_DROPPED, || {
            sys::map_create(MAP_TYPE_ARRAY, 4, 8, 1, 0, "weft_vxlan_drop")
        })?;
        let code = peer_filter(port, peers.as_raw_fd(), dropped.as_raw_fd());
        let prog = sys::prog_load(PROG_TYPE_SK_LOOKUP, ATTACH_SK_LOOKUP, &code, PROG_NAME)?;
        let (netns, netns_ino) = own_netns()?;
        let link_path = dir.join(PIN_LINK);
        let mut attached = Attached::Created;
        let mut link = None;
        if let Some(old) = sys::obj_get(&link_path)? {
            // A pin left by a namespace that is gone (or another one) guards nothing here.
            if u64::from(sys::link_info(&old)?.netns_ino) == netns_ino {
                sys::link_update(&old, &prog)?;
                attached = Attached::TakenOver;
                link = Some(old);
            } else {
                std::fs::remove_file(&link_path).map_err(|e| io_err("unpin", &link_path, e))?;
            }
        }
        let link = match link {
            Some(l) => l,
            None => {
                let l = sys::link_create(&prog, &netns, ATTACH_SK_LOOKUP)?;
                // Pinned, the link outlives this process; if pinning fails, dropping `l`
                // detaches it again.
                sys::obj_pin(&l, &link_path)?;
                l
            }
        };
        let known = read_peers(&peers)?;
        let filter = PeerFilter {
            dir: dir.to_path_buf(),
            port,
            peers,
            dropped,
            link,
            known,
        };
        Ok((filter, attached))
    }

    /// The VXLAN port the program checks.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the link is still attached to the calling thread's namespace and still pinned
    /// (a hand-run `bpftool link detach` or a removed pin would otherwise go unnoticed).
    pub fn attached_here(&self) -> Result<bool, BpfError> {
        let (_, ino) = own_netns()?;
        Ok(u64::from(sys::link_info(&self.link)?.netns_ino) == ino && self.dir.join(PIN_LINK).exists())
    }

    /// The pin directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes the peers map hold exactly `peers`: additions first, then removals. With
    /// `reread`, compares with the map as the kernel has it (a resync), not as last written.
    /// Returns (added, removed).
    pub fn sync(&mut self, peers: &BTreeSet<Ipv4Addr>, reread: bool) -> Result<(usize, usize), BpfError> {
        if reread {
            self.known = read_peers(&self.peers)?;
        }
        let add: Vec<Ipv4Addr> = peers.difference(&self.known).copied().collect();
        let remove: Vec<Ipv4Addr> = self.known.difference(peers).copied().collect();
        for ip in &add {
            sys::map_update(&self.peers, &ip.octets(), &[1])?;
            self.known.insert(*ip);
        }
        for ip in &remove {
            sys::map_delete(&self.peers, &ip.octets())?;
            self.known.remove(ip);
        }
        Ok((add.len(), remove.len()))
    }

    /// VXLAN datagrams dropped since the filter was first attached (across agent restarts).
    pub fn dropped(&self) -> Result<u64, BpfError> {
        let mut v = [0u8; 8];
        sys::map_lookup(&self.dropped, &0u32.to_ne_bytes(), &mut v)?;
        Ok(u64::from_ne_bytes(v))
    }

    /// Detaches the filter and removes its pins.
    pub fn remove(self) -> Result<(), BpfError> {
        sys::link_detach(&self.link)?;
        remove_pins(&self.dir)
    }
}

fn read_peers(map: &OwnedFd) -> Result<BTreeSet<Ipv4Addr>, BpfError> {
    Ok(sys::map_keys::<4>(map)?.into_iter().map(Ipv4Addr::from).collect())
}

fn remove_pins(dir: &Path) -> Result<(), BpfError> {
    for name in [PIN_LINK, PIN_PEERS, PIN_DROPPED] {
        let p = dir.join(name);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("unpin", &p, e)),
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("rmdir", dir, e)),
    }
}

/// Detaches every weft peer filter attached to the calling thread's namespace but `keep`:
/// filters pinned elsewhere (a changed `--bpf-pin-dir`) or by an agent that now filters in nft
/// must not go on dropping VXLAN with a peers map nobody updates. Returns how many it detached.
pub fn detach_strays(keep: Option<&PeerFilter>) -> Result<usize, BpfError> {
    let (_, ino) = own_netns()?;
    let keep_prog = match keep {
        Some(f) => Some(sys::link_info(&f.link)?.prog_id),
        None => None,
    };
    let mut n = 0;
    for link in sys::links()? {
        let Ok(info) = sys::link_info(&link) else { continue };
        let sk_lookup_here = info.link_type == sys::LINK_TYPE_NETNS
            && u64::from(info.netns_ino) == ino
            && info.attach_type == ATTACH_SK_LOOKUP;
        if !sk_lookup_here || Some(info.prog_id) == keep_prog {
            continue;
        }
        if sys::prog_name(info.prog_id).is_ok_and(|name| name == PROG_NAME) {
            sys::link_detach(&link)?;
            n += 1;
        }
    }
    Ok(n)
}

/// The drop counter of the filter pinned in `dir` (what the tests read), `None` if nothing is
/// pinned there.
pub fn pinned_dropped(dir: &Path) -> Result<Option<u64>, BpfError> {
    let Some(map) = sys::obj_get(&dir.join(PIN_DROPPED))? else {
        return Ok(None);
    };
    let mut v = [0u8; 8];
    sys::map_lookup(&map, &0u32.to_ne_bytes(), &mut v)?;
    Ok(Some(u64::from_ne_bytes(v)))
}

/// `--cleanup`: detaches the filter pinned in `dir`, if any, and removes the pins. Returns
/// whether there was one.
pub fn remove_pinned(dir: &Path) -> Result<bool, BpfError> {
    if !dir.exists() {
        return Ok(false);
    }
    let link_path = dir.join(PIN_LINK);
    let had = match sys::obj_get(&link_path)? {
        Some(link) => {
            // ENOLINK: its namespace is gone; the pin is all that is left.
            match sys::link_detach(&link) {
                Ok(()) => true,
                Err(e) if e.errno == libc::ENOLINK => true,
                Err(e) => return Err(e),
            }
        }
        None => false,
    };
    remove_pins(dir)?;
    Ok(had)
}
