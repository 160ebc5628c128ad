//! The checksum-offload workaround, applied only where it is needed.
//!
//! Linux before 5.7 computes wrong UDP checksums for VXLAN packets that are NATed after
//! encapsulation when the VXLAN device offloads tx checksums; flannel's docs make operators run
//! `ethtool -K flannel.1 tx-checksum-ip-generic off` by hand, which costs about two thirds of
//! single-stream throughput on kernels that never had the bug. weft decides from `uname -r`
//! ([`TxChecksumPolicy::wanted`]) and flips the device's `tx-checksumming` with the ethtool ioctl
//! ([`ensure_tx_checksum`]).
//!
//! ```no_run
//! use weft::kernel::offload::{self, TxChecksumPolicy};
//! # fn main() -> Result<(), weft::kernel::KernelError> {
//! let release = offload::running_kernel_release();
//! if let Some(on) = TxChecksumPolicy::Auto.wanted(&release) {
//!     if offload::ensure_tx_checksum("flannel.1", on)? {
//!         tracing::info!(%release, "tx checksum offload on flannel.1 turned {}", if on { "on" } else { "off" });
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! The ioctl acts on the device of that name in the network namespace of the calling thread.

use super::KernelError;
use std::ffi::CStr;
use std::os::fd::AsRawFd;

/// `--tx-checksum-offload=auto|on|off`, as the agent's flag would say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TxChecksumPolicy {
    /// Off on kernels that need the workaround, untouched elsewhere.
    #[default]
    Auto,
    /// Always on (e.g. a vendor kernel older than 5.7 with the fix backported).
    ForceOn,
    /// Always off (e.g. a kernel that reports a newer version but has the bug).
    ForceOff,
}

impl TxChecksumPolicy {
    /// The state to put the device in, None to leave it as it is. On a fixed kernel `Auto`
    /// leaves the device alone rather than turning offload on: an operator may have turned it
    /// off on purpose.
    pub fn wanted(self, kernel_release: &str) -> Option<bool> {
        match self {
            TxChecksumPolicy::ForceOn => Some(true),
            TxChecksumPolicy::ForceOff => Some(false),
            TxChecksumPolicy::Auto => kernel_needs_workaround(kernel_release).then_some(false),
        }
    }
}

/// True for kernels older than 5.7, from a `uname -r` string (`5.4.0-150-generic`,
/// `6.18.44-fc-v445`, `4.19.0`). An unparseable release gives false: turning offload off costs
/// most of the throughput, so it is not done on a guess; `ForceOff` exists for such kernels.
pub fn kernel_needs_workaround(release: &str) -> bool {
    parse_major_minor(release).is_some_and(|v| v < (5, 7))
}

/// (major, minor) from the leading `MAJOR.MINOR` of a release string.
fn parse_major_minor(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split('.');
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts.next()?.chars().take_while(char::is_ascii_digit).collect();
    Some((major, minor.parse().ok()?))
}

/// `uname -r` of the running kernel ("" if uname fails, which gives "no workaround").
pub fn running_kernel_release() -> String {
    // SAFETY: utsname is plain bytes; uname fills it with NUL-terminated strings.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut uts) } != 0 {
        return String::new();
    }
    // SAFETY: release is NUL-terminated within its array after a successful uname.
    unsafe { CStr::from_ptr(uts.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Whether tx checksum offload (`ethtool -k DEV`: `tx-checksumming`) is on.
pub fn tx_checksum(dev: &str) -> Result<bool, KernelError> {
    ethtool_value(dev, "get tx-checksumming", ETHTOOL_GTXCSUM, 0).map(|v| v != 0)
}

/// Turns tx checksum offload on or off (`ethtool -K DEV tx on|off`).
pub fn set_tx_checksum(dev: &str, on: bool) -> Result<(), KernelError> {
    ethtool_value(dev, "set tx-checksumming", ETHTOOL_STXCSUM, u32::from(on)).map(drop)
}

/// Sets tx checksum offload to `on` if it is not already; true if it changed.
pub fn ensure_tx_checksum(dev: &str, on: bool) -> Result<bool, KernelError> {
    if tx_checksum(dev)? == on {
        return Ok(false);
    }
    set_tx_checksum(dev, on)?;
    Ok(true)
}

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;

/// `struct ethtool_value` from linux/ethtool.h.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` with the `ifr_data` member of its union; the padding makes up the union's
/// 24 bytes (`struct ifmap`), so the kernel's copy of 40 bytes stays inside this struct.
#[repr(C)]
struct IfreqData {
    name: [u8; libc::IFNAMSIZ],
    data: *mut EthtoolValue,
    _pad: [u8; 24 - std::mem::size_of::<*mut EthtoolValue>()],
}

/// One SIOCETHTOOL request with a `struct ethtool_value`; returns the value's `data`.
fn ethtool_value(dev: &str, op: &'static str, cmd: u32, data: u32) -> Result<u32, KernelError> {
    let err = |errno: i32, message: String| KernelError::Ethtool {
        op,
        dev: dev.to_string(),
        message,
        errno,
    };
    if dev.is_empty() || dev.len() >= libc::IFNAMSIZ || dev.contains('\0') {
        return Err(err(libc::EINVAL, "not a valid interface name".into()));
    }
    // Any socket of the namespace will do; the ioctl names the device.
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| err(e as i32, format!("socket: {}", e.desc())))?;
    let mut value = EthtoolValue { cmd, data };
    let mut ifr = IfreqData {
        name: [0; libc::IFNAMSIZ],
        data: &mut value,
        _pad: [0; 24 - std::mem::size_of::<*mut EthtoolValue>()],
    };
    ifr.name[..dev.len()].copy_from_slice(dev.as_bytes());
    // SAFETY: ifr and value are live, correctly laid out for SIOCETHTOOL with an ethtool_value
    // command, and the kernel writes only into `value` (at most 8 bytes).
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut ifr as *mut IfreqData) };
    if rc < 0 {
        let e = nix::errno::Errno::last();
        if e == nix::errno::Errno::ENODEV {
            return Err(KernelError::NoSuchLink(dev.to_string()));
        }
        return Err(err(e as i32, e.desc().to_string()));
    }
    Ok(value.data)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn kernel_versions() {
        for r in [
            "5.4.0-150-generic",
            "4.19.0",
            "3.10.0-1160.el7.x86_64",
            "5.6.19",
            "4.18.0-553.el8_10.x86_64",
        ] {
            assert!(kernel_needs_workaround(r), "{r}");
        }
        for r in [
            "5.7.0",
            "6.18.44-fc-v445",
            "5.10.0-28-amd64",
            "6.1.0",
            "5.15.0-1050-aws",
            "10.0.0",
            "5.7",
        ] {
            assert!(!kernel_needs_workaround(r), "{r}");
        }
        // Unparseable: no workaround on a guess.
        for r in ["", "linux", "5", "5.x", "-5.4", "v5.4.0"] {
            assert!(!kernel_needs_workaround(r), "{r:?}");
        }
    }

    #[test]
    fn policy() {
        assert_eq!(TxChecksumPolicy::Auto.wanted("5.4.0-150-generic"), Some(false));
        assert_eq!(TxChecksumPolicy::Auto.wanted("6.1.0"), None);
        assert_eq!(TxChecksumPolicy::ForceOn.wanted("5.4.0"), Some(true));
        assert_eq!(TxChecksumPolicy::ForceOff.wanted("6.1.0"), Some(false));
    }

    #[test]
    fn running_release_parses() {
        let r = running_kernel_release();
        assert!(parse_major_minor(&r).is_some(), "{r:?}");
    }

    #[test]
    fn bad_names_are_refused_without_io() {
        let long = "x".repeat(16);
        for dev in ["", long.as_str(), "a\0b"] {
            assert!(matches!(
                tx_checksum(dev),
                Err(KernelError::Ethtool {
                    errno: libc::EINVAL,
                    ..
                })
            ));
        }
    }
}

/// Against a real VXLAN device in a fresh namespace (root needed).
#[cfg(test)]
mod kernel_tests {
    use super::*;
    use crate::kernel::nft::testns::{can_run, Netns};

    #[test]
    fn toggle_on_vxlan_device() {
        if !can_run() {
            return;
        }
        let ns = Netns::new();
        ns.ip("link add va type veth peer name vb");
        ns.ip("addr add 192.0.2.1/24 dev va");
        ns.ip("link set va up");
        ns.ip("link add weft.1 type vxlan id 1 local 192.0.2.1 dev va dstport 8472 nolearning");
        ns.ip("link set weft.1 up");
        // `ethtool -k` is the operator's view; checked when the binary is installed.
        let has_ethtool = std::process::Command::new("ethtool")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !has_ethtool {
            eprintln!("ethtool not installed: checking the ioctl's own view only");
        }
        let ethtool_says = |on: bool| {
            if has_ethtool {
                let text = ns.exec_ok("ethtool -k weft.1");
                let want = format!("tx-checksumming: {}", if on { "on" } else { "off" });
                assert!(text.contains(&want), "{want} missing in\n{text}");
                // TCP segmentation depends on it: off with it (still "requested on"), and back
                // with it.
                let tso = format!("tx-tcp-segmentation: {}", if on { "on" } else { "off" });
                assert!(text.contains(&tso), "{tso} missing in\n{text}");
            }
        };

        let (before, off) = ns.enter(|| {
            let before = tx_checksum("weft.1").unwrap();
            set_tx_checksum("weft.1", false).unwrap();
            (before, tx_checksum("weft.1").unwrap())
        });
        assert!(before, "VXLAN devices start with tx checksum offload on");
        assert!(!off);
        ethtool_says(false);

        let (changed, again, on) = ns.enter(|| {
            let changed = ensure_tx_checksum("weft.1", false).unwrap();
            let again = ensure_tx_checksum("weft.1", true).unwrap();
            (changed, again, tx_checksum("weft.1").unwrap())
        });
        assert!(!changed && again && on);
        ethtool_says(true);

        let missing = ns.enter(|| tx_checksum("nope0"));
        assert!(
            matches!(missing, Err(KernelError::NoSuchLink(ref d)) if d == "nope0"),
            "{missing:?}"
        );
    }
}
