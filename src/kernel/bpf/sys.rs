//! The few `bpf(2)` commands the peer filter needs, as raw syscalls: maps, one program, a
//! network-namespace link, pins in bpffs. Each attribute struct is the prefix of the kernel's
//! `union bpf_attr` that its command reads (the kernel zero-fills the rest).

use super::BpfError;
use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

const MAP_CREATE: u32 = 0;
const MAP_LOOKUP_ELEM: u32 = 1;
const MAP_UPDATE_ELEM: u32 = 2;
const MAP_DELETE_ELEM: u32 = 3;
const MAP_GET_NEXT_KEY: u32 = 4;
const PROG_LOAD: u32 = 5;
const OBJ_PIN: u32 = 6;
const OBJ_GET: u32 = 7;
const PROG_GET_FD_BY_ID: u32 = 13;
const OBJ_GET_INFO_BY_FD: u32 = 15;
const LINK_CREATE: u32 = 28;
const LINK_UPDATE: u32 = 29;
const LINK_GET_FD_BY_ID: u32 = 30;
const LINK_GET_NEXT_ID: u32 = 31;
const LINK_DETACH: u32 = 34;

pub const MAP_TYPE_HASH: u32 = 1;
pub const MAP_TYPE_ARRAY: u32 = 2;
/// Hash map entries allocated as they are added, not all at creation.
pub const MAP_F_NO_PREALLOC: u32 = 1;
pub const PROG_TYPE_SK_LOOKUP: u32 = 30;
pub const ATTACH_SK_LOOKUP: u32 = 36;

fn bpf<T>(cmd: u32, attr: &mut T, op: &'static str, object: &str) -> Result<i32, BpfError> {
    // SAFETY: `attr` is a #[repr(C)] prefix of `union bpf_attr` for `cmd`, valid for its size;
    // pointers inside it point to buffers that outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_long,
        )
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return Err(BpfError {
            op,
            object: object.to_string(),
            errno: e.raw_os_error().unwrap_or(0),
            message: e.to_string(),
        });
    }
    Ok(r as i32)
}

fn fd(r: i32) -> OwnedFd {
    // SAFETY: the kernel just returned this new descriptor to us.
    unsafe { OwnedFd::from_raw_fd(r) }
}

fn c_path(path: &Path, op: &'static str) -> Result<CString, BpfError> {
    CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| BpfError {
        op,
        object: path.display().to_string(),
        errno: libc::EINVAL,
        message: "path contains a NUL byte".into(),
    })
}

#[repr(C)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// A new map; `name` (at most 15 bytes) is what `bpftool map` shows.
pub fn map_create(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    name: &str,
) -> Result<OwnedFd, BpfError> {
    let mut attr = MapCreate {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_flags,
        inner_map_fd: 0,
        numa_node: 0,
        map_name: name16(name),
    };
    bpf(MAP_CREATE, &mut attr, "map create", name).map(fd)
}

fn name16(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (o, b) in out.iter_mut().zip(name.bytes().take(15)) {
        *o = b;
    }
    out
}

#[repr(C)]
struct MapElem {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn elem(cmd: u32, map: &OwnedFd, key: *const u8, value: *mut u8, op: &'static str) -> Result<i32, BpfError> {
    use std::os::fd::AsRawFd;
    let mut attr = MapElem {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: key as u64,
        value: value as u64,
        flags: 0,
    };
    bpf(cmd, &mut attr, op, "map")
}

/// Inserts or overwrites `key`.
pub fn map_update(map: &OwnedFd, key: &[u8], value: &[u8]) -> Result<(), BpfError> {
    elem(
        MAP_UPDATE_ELEM,
        map,
        key.as_ptr(),
        value.as_ptr() as *mut u8,
        "map update",
    )
    .map(drop)
}

/// Deletes `key`; `Ok(false)` if it was not there.
pub fn map_delete(map: &OwnedFd, key: &[u8]) -> Result<bool, BpfError> {
    match elem(MAP_DELETE_ELEM, map, key.as_ptr(), std::ptr::null_mut(), "map delete") {
        Ok(_) => Ok(true),
        Err(e) if e.errno == libc::ENOENT => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads `key`'s value into `value`.
pub fn map_lookup(map: &OwnedFd, key: &[u8], value: &mut [u8]) -> Result<(), BpfError> {
    elem(MAP_LOOKUP_ELEM, map, key.as_ptr(), value.as_mut_ptr(), "map lookup").map(drop)
}

/// Every key of a map with `N`-byte keys.
pub fn map_keys<const N: usize>(map: &OwnedFd) -> Result<Vec<[u8; N]>, BpfError> {
    let mut keys = Vec::new();
    let mut next = [0u8; N];
    // A null key asks for the first one; ENOENT ends the walk.
    let mut cur: Option<[u8; N]> = None;
    loop {
        let key = cur.as_ref().map_or(std::ptr::null(), |k| k.as_ptr());
        match elem(MAP_GET_NEXT_KEY, map, key, next.as_mut_ptr(), "map next key") {
            Ok(_) => {
                keys.push(next);
                cur = Some(next);
            }
            Err(e) if e.errno == libc::ENOENT => return Ok(keys),
            Err(e) => return Err(e),
        }
    }
}

#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// Loads a program; on a verifier refusal the error carries the verifier's log.
pub fn prog_load(prog_type: u32, attach_type: u32, insns: &[u8], name: &str) -> Result<OwnedFd, BpfError> {
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = ProgLoad {
        prog_type,
        insn_cnt: (insns.len() / 8) as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name16(name),
        prog_ifindex: 0,
        expected_attach_type: attach_type,
    };
    bpf(PROG_LOAD, &mut attr, "program load", name)
        .map(fd)
        .map_err(|mut e| {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let verifier = String::from_utf8_lossy(&log[..end]);
            if !verifier.trim().is_empty() {
                e.message = format!("{}; verifier: {}", e.message, verifier.trim());
            }
            e
        })
}

#[repr(C)]
struct ObjPath {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// Pins `obj` at `path` (in a bpffs mount).
pub fn obj_pin(obj: &OwnedFd, path: &Path) -> Result<(), BpfError> {
    use std::os::fd::AsRawFd;
    let p = c_path(path, "pin")?;
    let mut attr = ObjPath {
        pathname: p.as_ptr() as u64,
        bpf_fd: obj.as_raw_fd() as u32,
        file_flags: 0,
    };
    bpf(OBJ_PIN, &mut attr, "pin", &path.display().to_string()).map(drop)
}

/// The object pinned at `path`, `Ok(None)` if nothing is.
pub fn obj_get(path: &Path) -> Result<Option<OwnedFd>, BpfError> {
    let p = c_path(path, "open pin")?;
    let mut attr = ObjPath {
        pathname: p.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    match bpf(OBJ_GET, &mut attr, "open pin", &path.display().to_string()) {
        Ok(r) => Ok(Some(fd(r))),
        Err(e) if e.errno == libc::ENOENT => Ok(None),
        Err(e) => Err(e),
    }
}

#[repr(C)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

/// Attaches `prog` to the network namespace `netns` (an fd of `/proc/…/ns/net`).
pub fn link_create(prog: &OwnedFd, netns: &OwnedFd, attach_type: u32) -> Result<OwnedFd, BpfError> {
    use std::os::fd::AsRawFd;
    let mut attr = LinkCreate {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: netns.as_raw_fd() as u32,
        attach_type,
        flags: 0,
    };
    bpf(LINK_CREATE, &mut attr, "link create", "netns").map(fd)
}

#[repr(C)]
struct LinkUpdate {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// Swaps the program behind `link`, atomically: no packet runs without one.
pub fn link_update(link: &OwnedFd, prog: &OwnedFd) -> Result<(), BpfError> {
    use std::os::fd::AsRawFd;
    let mut attr = LinkUpdate {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: prog.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    bpf(LINK_UPDATE, &mut attr, "link update", "netns").map(drop)
}

#[repr(C)]
struct LinkDetach {
    link_fd: u32,
}

/// Detaches `link` now, even if it is pinned or open elsewhere.
pub fn link_detach(link: &OwnedFd) -> Result<(), BpfError> {
    use std::os::fd::AsRawFd;
    let mut attr = LinkDetach {
        link_fd: link.as_raw_fd() as u32,
    };
    bpf(LINK_DETACH, &mut attr, "link detach", "netns").map(drop)
}

#[repr(C)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `bpf_link_info.type` of a network-namespace link.
pub const LINK_TYPE_NETNS: u32 = 5;

/// What `struct bpf_link_info` says of a network-namespace link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetnsLinkInfo {
    /// The link's kind: the other fields mean what they say only for [`LINK_TYPE_NETNS`].
    pub link_type: u32,
    pub prog_id: u32,
    /// The namespace's inode; 0 once that namespace is gone.
    pub netns_ino: u32,
    pub attach_type: u32,
}

/// A link's program and namespace (meaningful for netns links only).
pub fn link_info(link: &OwnedFd) -> Result<NetnsLinkInfo, BpfError> {
    use std::os::fd::AsRawFd;
    // struct bpf_link_info: type, id, prog_id, then a union (8-aligned) whose netns member is
    // netns_ino, attach_type.
    let mut info = [0u32; 8];
    let mut attr = InfoByFd {
        bpf_fd: link.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    bpf(OBJ_GET_INFO_BY_FD, &mut attr, "link info", "netns")?;
    Ok(NetnsLinkInfo {
        link_type: info[0],
        prog_id: info[2],
        netns_ino: info[4],
        attach_type: info[5],
    })
}

/// A program's name (`bpf_prog_info.name`, at byte 64).
pub fn prog_name(prog_id: u32) -> Result<String, BpfError> {
    use std::os::fd::AsRawFd;
    let mut id_attr = [prog_id, 0, 0, 0];
    let prog = fd(bpf(
        PROG_GET_FD_BY_ID,
        &mut id_attr,
        "program by id",
        &prog_id.to_string(),
    )?);
    let mut info = [0u8; 80];
    let mut attr = InfoByFd {
        bpf_fd: prog.as_raw_fd() as u32,
        info_len: info.len() as u32,
        info: info.as_mut_ptr() as u64,
    };
    bpf(OBJ_GET_INFO_BY_FD, &mut attr, "program info", &prog_id.to_string())?;
    let name = &info[64..80];
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// Every link in the system, opened (links that vanish while we walk are skipped). A kernel
/// without the command (before 5.8: EINVAL) has no links to list, sk_lookup ones least of all.
pub fn links() -> Result<Vec<OwnedFd>, BpfError> {
    let mut out = Vec::new();
    let mut id = 0u32;
    loop {
        // start_id, next_id
        let mut attr = [id, 0u32, 0, 0];
        match bpf(LINK_GET_NEXT_ID, &mut attr, "next link id", "links") {
            Ok(_) => id = attr[1],
            Err(e) if e.errno == libc::ENOENT => return Ok(out),
            Err(e) if e.errno == libc::EINVAL && id == 0 => return Ok(out),
            Err(e) => return Err(e),
        }
        let mut by_id = [id, 0u32, 0, 0];
        match bpf(LINK_GET_FD_BY_ID, &mut by_id, "link by id", &id.to_string()) {
            Ok(r) => out.push(fd(r)),
            Err(e) if e.errno == libc::ENOENT => {}
            Err(e) => return Err(e),
        }
    }
}
