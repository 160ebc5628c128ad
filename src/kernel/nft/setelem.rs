//! Peers set elements added and removed over nfnetlink, in-process: the fast path of
//! [`super::NftRequest::UpdatePeers`].
//!
//! An `nft` run costs about 7 ms whatever it does (process start-up and loading the kernel's
//! ruleset cache), and a peer joining waits for its set element before its routes are useful.
//! Sending the same transaction ourselves costs a few syscalls. Everything else (listing,
//! comparing, rewriting a table) stays with `nft`: a set element's encoding is small and
//! stable, a rule's is not.
//!
//! One transaction is a batch (`NFNL_MSG_BATCH_BEGIN` … `END`) of `NFT_MSG_DELSETELEM` and
//! `NFT_MSG_NEWSETELEM` messages, each asking for an acknowledgement; the kernel applies all or
//! none. Semantics are `nft`'s `delete element` / `add element`: deleting an element that is not
//! there fails the whole batch (ENOENT), adding one that is there is no error.

use crate::kernel::KernelError;
use netlink_packet_core::{
    ErrorBuffer, NetlinkBuffer, NLA_ALIGNTO, NLA_F_NESTED, NLMSG_ALIGNTO, NLMSG_ERROR, NLM_F_ACK, NLM_F_CREATE,
    NLM_F_REQUEST,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::time::Duration;

// nfnetlink's and nf_tables' numbers (linux/netfilter/nfnetlink.h, nf_tables.h), which the
// netlink crates we use do not define.
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_IPV4: u8 = 2;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;

/// Elements per message: an attribute's length is 16 bits and each element takes 16 bytes.
const PER_MESSAGE: usize = 2048;
/// Elements per transaction: the batch goes in one `send` (the kernel wants a batch in one
/// buffer), which must stay under the socket's send buffer. Bigger changes go to `nft`.
pub const MAX_ELEMENTS: usize = 8192;
/// How long to wait for the kernel's answers before giving up (then `nft` is tried).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// One table's change to its `set` (an `ip` family set of `ipv4_addr`).
#[derive(Debug, Clone, Copy)]
pub struct SetChange<'a> {
    pub table: &'a str,
    pub set: &'a str,
    pub added: &'a [Ipv4Addr],
    pub removed: &'a [Ipv4Addr],
}

/// Applies all changes in one transaction, in the calling thread's network namespace.
pub fn apply(changes: &[SetChange<'_>]) -> Result<(), KernelError> {
    let total: usize = changes.iter().map(|c| c.added.len() + c.removed.len()).sum();
    if total == 0 {
        return Ok(());
    }
    if total > MAX_ELEMENTS {
        return Err(err(format!("{total} elements in one change, more than {MAX_ELEMENTS}")));
    }
    let (batch, acks) = encode(changes, 1);
    let sock = open()?;
    sock.send(&batch, 0)
        .map_err(|e| err(format!("sending the batch: {e}")))?;
    read_acks(&sock, acks)
}

/// The batch's bytes, and the sequence numbers of the messages the kernel acknowledges.
fn encode(changes: &[SetChange<'_>], first_seq: u32) -> (Vec<u8>, Vec<u32>) {
    let mut out = Vec::new();
    let mut seq = first_seq;
    let mut acks = Vec::new();
    message(
        &mut out,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
        |_| {},
    );
    // Removals first, as `nft` orders `delete` before `add` in one transaction.
    for (kind, flags) in [
        (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK),
        (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE),
    ] {
        for c in changes {
            let elements = if kind == NFT_MSG_DELSETELEM { c.removed } else { c.added };
            for chunk in elements.chunks(PER_MESSAGE) {
                seq += 1;
                acks.push(seq);
                let msg_type = (NFNL_SUBSYS_NFTABLES << 8) | kind;
                message(&mut out, msg_type, flags, seq, NFPROTO_IPV4, 0, |b| {
                    attr(b, NFTA_SET_ELEM_LIST_TABLE, &c_string(c.table));
                    attr(b, NFTA_SET_ELEM_LIST_SET, &c_string(c.set));
                    nested(b, NFTA_SET_ELEM_LIST_ELEMENTS, |b| {
                        for ip in chunk {
                            nested(b, NFTA_LIST_ELEM, |b| {
                                nested(b, NFTA_SET_ELEM_KEY, |b| attr(b, NFTA_DATA_VALUE, &ip.octets()));
                            });
                        }
                    });
                });
            }
        }
    }
    seq += 1;
    message(
        &mut out,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
        |_| {},
    );
    (out, acks)
}

/// A netlink message with an nfgenmsg header (`res_id` big-endian, as the kernel reads it).
fn message(
    out: &mut Vec<u8>,
    msg_type: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    body: impl FnOnce(&mut Vec<u8>),
) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]); // length, filled in below
    out.extend_from_slice(&msg_type.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    out.extend_from_slice(&[family, 0]);
    out.extend_from_slice(&res_id.to_be_bytes());
    body(out);
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

fn attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    pad(out);
}

fn nested(out: &mut Vec<u8>, kind: u16, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 2]);
    out.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    body(out);
    let len = (out.len() - start) as u16;
    out[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

fn pad(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(NLA_ALIGNTO), 0);
}

fn c_string(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn open() -> Result<Socket, KernelError> {
    let mut sock = Socket::new(NETLINK_NETFILTER).map_err(|e| err(format!("opening a netfilter socket: {e}")))?;
    sock.bind(&SocketAddr::new(0, 0))
        .map_err(|e| err(format!("binding the netfilter socket: {e}")))?;
    // Error answers without a copy of the (up to 32 KiB) message they answer.
    sock.set_cap_ack(true)
        .map_err(|e| err(format!("setting NETLINK_CAP_ACK: {e}")))?;
    nix::sys::socket::setsockopt(
        &sock.as_fd(),
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(ANSWER_TIMEOUT.as_secs() as _, 0),
    )
    .map_err(|e| err(format!("setting the receive timeout: {e}")))?;
    Ok(sock)
}

/// Reads an answer for every sequence number in `want`. The first error answer is the result,
/// whatever message it answers (an error about the batch itself carries the batch's number).
fn read_acks(sock: &Socket, mut want: Vec<u32>) -> Result<(), KernelError> {
    let mut buf = vec![0u8; 64 * 1024];
    while !want.is_empty() {
        let n = sock
            .recv(&mut &mut buf[..], 0)
            .map_err(|e| err(format!("reading the kernel's answer: {e}")))?;
        for (seq, code) in answers(&buf[..n]) {
            if code != 0 {
                let e = std::io::Error::from_raw_os_error(-code);
                return Err(err(format!("the kernel refused the set change: {e}")));
            }
            want.retain(|&s| s != seq);
        }
    }
    Ok(())
}

/// The (sequence number, error code) of each NLMSG_ERROR message in a datagram (code 0 is an
/// acknowledgement). A cut or malformed message ends the reading.
fn answers(mut buf: &[u8]) -> Vec<(u32, i32)> {
    let mut found = Vec::new();
    while let Ok(msg) = NetlinkBuffer::new_checked(buf) {
        if msg.message_type() == NLMSG_ERROR {
            if let Ok(e) = ErrorBuffer::new_checked(msg.payload()) {
                found.push((msg.sequence_number(), e.code().map_or(0, |c| c.get())));
            }
        }
        let next = (msg.length() as usize).next_multiple_of(NLMSG_ALIGNTO.into());
        buf = &buf[next.min(buf.len())..];
    }
    found
}

fn err(message: String) -> KernelError {
    KernelError::Nft {
        op: "update peers (netlink)",
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change<'a>(added: &'a [Ipv4Addr], removed: &'a [Ipv4Addr]) -> SetChange<'a> {
        SetChange {
            table: "weft",
            set: "peers",
            added,
            removed,
        }
    }

    #[test]
    fn one_element_encodes_as_nft_sends_it() {
        let ip: Ipv4Addr = "192.0.2.10".parse().unwrap();
        let (bytes, acks) = encode(&[change(&[ip], &[])], 1);
        assert_eq!(acks, vec![2]);
        // begin (20 bytes), NEWSETELEM, end (20 bytes); every length a multiple of 4.
        let new = &bytes[20..bytes.len() - 20];
        assert_eq!(u32::from_ne_bytes(new[0..4].try_into().unwrap()) as usize, new.len());
        assert_eq!(u16::from_ne_bytes([new[4], new[5]]), 0x0a0c);
        assert_eq!(
            u16::from_ne_bytes([new[6], new[7]]),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE
        );
        assert_eq!(new[16], NFPROTO_IPV4);
        // table "weft\0" (4+5, padded to 12), set "peers\0" (4+6 → 12), then the nested list.
        assert_eq!(&new[20..32], b"\x09\x00\x01\x00weft\0\0\0\0");
        assert_eq!(&new[32..44], b"\x0a\x00\x02\x00peers\0\0\0");
        assert_eq!(&new[44..48], &[20, 0, 3, 0x80]);
        assert_eq!(
            &new[48..64],
            &[16, 0, 1, 0x80, 12, 0, 1, 0x80, 8, 0, 1, 0, 192, 0, 2, 10]
        );
        assert_eq!(new.len(), 64);
    }

    #[test]
    fn removals_come_first_and_big_changes_are_split() {
        let many: Vec<Ipv4Addr> = (0..(PER_MESSAGE as u32 + 1)).map(Ipv4Addr::from).collect();
        let gone = ["198.51.100.1".parse().unwrap()];
        let (bytes, acks) = encode(&[change(&many, &gone)], 7);
        assert_eq!(acks, vec![8, 9, 10]);
        let mut kinds = Vec::new();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
            kinds.push(u16::from_ne_bytes([rest[4], rest[5]]));
            rest = &rest[len..];
        }
        assert_eq!(kinds, vec![0x10, 0x0a0e, 0x0a0c, 0x0a0c, 0x11]);
    }

    /// An error about the batch itself (here: a batch for no known subsystem) answers a number
    /// that was not waited for; it still ends the wait at once, not after the timeout.
    #[test]
    fn an_error_about_the_batch_ends_the_wait() {
        use crate::kernel::nft::testns::{can_run, Netns};
        if !can_run() {
            return;
        }
        let ip: Ipv4Addr = "192.0.2.10".parse().unwrap();
        let (mut bytes, acks) = encode(&[change(&[ip], &[])], 1);
        bytes[18..20].copy_from_slice(&99u16.to_be_bytes()); // BATCH_BEGIN's subsystem
        let result = Netns::new().enter(move || {
            let sock = open()?;
            sock.send(&bytes, 0).map_err(|e| err(e.to_string()))?;
            read_acks(&sock, acks)
        });
        // Had it waited for the timeout, the error would be the timed-out read's.
        let e = result.unwrap_err().to_string();
        assert!(e.contains("refused the set change: Invalid argument"), "{e}");
    }

    #[test]
    fn answers_are_read_by_sequence_number() {
        let mut buf = Vec::new();
        for (seq, code) in [(2u32, 0i32), (3, -2)] {
            buf.extend_from_slice(&36u32.to_ne_bytes());
            buf.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            buf.extend_from_slice(&0u16.to_ne_bytes());
            buf.extend_from_slice(&seq.to_ne_bytes());
            buf.extend_from_slice(&0u32.to_ne_bytes());
            buf.extend_from_slice(&code.to_ne_bytes());
            buf.extend_from_slice(&[0; 16]); // the original message's header
        }
        assert_eq!(answers(&buf), vec![(2, 0), (3, -2)]);
        assert!(answers(&buf[..30]).is_empty(), "a cut message is not read");
    }
}
