//! The VXLAN peer filter as a BPF `sk_lookup` program, the cheap alternative to the nft rule
//! for a host whose VXLAN port belongs to one network only (see `docs/benchmarks.md`: an nft
//! `input` chain costs every datagram the host receives a hook pass, this costs only the UDP
//! socket lookups, a third of the CPU).
//!
//! - `program`: the program, assembled here (pure).
//! - `sys`: the `bpf(2)` commands it needs.
//! - [`PeerFilter`]: the program, its peers map and drop counter, attached to the network
//!   namespace by a link. All three are pinned in a bpffs directory (`--bpf-pin-dir`), so the
//!   filter outlives the agent (a crash, a restart, an upgrade) exactly as its nft table does,
//!   and the next agent takes it over (swapping in its own program atomically).
//!
//! Everything acts in the network namespace of the calling thread.

mod program;
mod sk_lookup;
mod sys;
#[cfg(test)]
mod tests;

pub use sk_lookup::{detach_strays, is_bpffs, pinned_dropped, remove_pinned, Attached, PeerFilter};

/// A `bpf(2)` command failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("bpf {op} on {object}: {message}")]
pub struct BpfError {
    pub op: &'static str,
    /// The map, program, pin path or namespace the command was about.
    pub object: String,
    pub message: String,
    /// The positive errno, 0 if the failure was not one.
    pub errno: i32,
}
