//! An in-process ICMP echo pinger that works from inside any namespace, without a `ping` process
//! per packet.
//!
//! Each probe runs on a short-lived std thread that first joins the source namespace
//! (`setns(/run/netns/NS, CLONE_NEWNET)`) and then opens a raw ICMP socket, which stays bound to
//! that namespace. Only that thread changes namespace — never the caller's. A raw ICMP socket sees
//! every ICMP packet of its namespace, so replies are matched on our echo identifier (unique per
//! socket) and on the address that answered.
//!
//! Everything here is bounded: by a deadline, and (for [`Pinger`]) by a packet count.

use super::{LabError, Result};
use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{
    recvmsg, sendto, setsockopt, socket, sockopt, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockProtocol,
    SockType, SockaddrIn,
};
use nix::sys::time::{TimeVal, TimeValLike};
use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;
/// Payload after the 8-byte ICMP header; small, recognisable in captures.
const PAYLOAD: &[u8] = b"weft-lab-probe";
/// Receive buffer of a probe socket: a few seconds of replies at the rates the tests use.
const RECV_BUFFER: usize = 4 << 20;

/// A different identifier for every socket this process opens, so concurrent probes from the same
/// namespace never take each other's replies.
fn next_ident() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = (std::process::id() as u16).wrapping_mul(31);
    base.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The Internet checksum (RFC 1071) of ICMP and IPv4 headers; tests craft packets with it too.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn echo_request(ident: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![ECHO_REQUEST, 0, 0, 0];
    p.extend(ident.to_be_bytes());
    p.extend(seq.to_be_bytes());
    p.extend(PAYLOAD);
    let c = checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// Parses a packet read from a raw ICMP socket (IPv4 header included): `(ident, seq)` of an echo
/// reply, `None` for anything else.
fn parse_reply(packet: &[u8]) -> Option<(u16, u16)> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    let icmp = packet.get(ihl..ihl + 8)?;
    (icmp[0] == ECHO_REPLY && icmp[1] == 0).then(|| {
        (
            u16::from_be_bytes([icmp[4], icmp[5]]),
            u16::from_be_bytes([icmp[6], icmp[7]]),
        )
    })
}

/// A raw ICMP socket inside a namespace.
struct IcmpSocket {
    fd: OwnedFd,
    ident: u16,
    ns: String,
}

impl IcmpSocket {
    /// Moves the *calling thread* into `ns` and opens the socket there. Call only on a thread of
    /// our own that ends after probing.
    fn open_in(ns: &str) -> Result<IcmpSocket> {
        let path = format!("/run/netns/{ns}");
        let handle = std::fs::File::open(&path).map_err(LabError::io(format!("opening {path}")))?;
        setns(&handle, CloneFlags::CLONE_NEWNET).map_err(LabError::sys(format!("entering namespace {ns}")))?;
        let fd = socket(
            AddressFamily::Inet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::Icmp,
        )
        .map_err(LabError::sys(format!("opening a raw ICMP socket in {ns}")))?;
        // A raw socket gets a copy of every ICMP packet of the namespace: with many pingers there,
        // a thread stalled on a busy machine must not lose replies to a full buffer. Best effort
        // (forcing a size past `rmem_max` needs CAP_NET_ADMIN).
        let _ = setsockopt(&fd, sockopt::RcvBufForce, &RECV_BUFFER);
        Ok(IcmpSocket {
            fd,
            ident: next_ident(),
            ns: ns.to_string(),
        })
    }

    /// Sends one echo. Errors such as "network unreachable" (no route yet) are not failures of the
    /// probe, just an unanswered echo, so they are swallowed.
    fn send(&self, dst: Ipv4Addr, seq: u16) {
        let addr = SockaddrIn::from(SocketAddrV4::new(dst, 0));
        let _ = sendto(
            self.fd.as_raw_fd(),
            &echo_request(self.ident, seq),
            &addr,
            MsgFlags::empty(),
        );
    }

    /// Reads one packet: `Ok(Some(reply))` if it is one of our echo replies, `Ok(None)` for
    /// anything else.
    fn read_one(&self, flags: MsgFlags) -> nix::Result<Option<Reply>> {
        let mut buf = [0u8; 1500];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
        let msg = recvmsg::<SockaddrIn>(self.fd.as_raw_fd(), &mut iov, Some(&mut cmsg), flags)?;
        let at = msg.cmsgs().ok().into_iter().flatten().find_map(|c| match c {
            ControlMessageOwned::ScmTimestampns(ts) => {
                let since_epoch = Duration::new(ts.tv_sec().max(0) as u64, ts.tv_nsec().max(0) as u32);
                Some(SystemTime::UNIX_EPOCH + since_epoch)
            }
            _ => None,
        });
        let (n, from) = (msg.bytes, msg.address);
        let Some(from) = from else { return Ok(None) };
        Ok(parse_reply(&buf[..n])
            .filter(|(ident, _)| *ident == self.ident)
            .map(|(_, seq)| Reply {
                from: from.ip(),
                seq,
                at,
            }))
    }

    /// Our echo replies already waiting in the socket, without waiting for more.
    fn drain(&self) -> Vec<Reply> {
        let mut out = Vec::new();
        // Bounded: at most a full receive buffer's worth of packets.
        for _ in 0..100_000 {
            match self.read_one(MsgFlags::MSG_DONTWAIT) {
                Ok(Some(r)) => out.push(r),
                Ok(None) | Err(nix::Error::EINTR) => {}
                Err(_) => break,
            }
        }
        out
    }

    /// Waits up to `timeout` for one of our echo replies. `None` on timeout.
    fn recv(&self, timeout: Duration) -> Result<Option<Reply>> {
        // A zero SO_RCVTIMEO would mean "block forever".
        let micros = timeout.as_micros().clamp(100, 1_000_000) as i64;
        setsockopt(&self.fd, sockopt::ReceiveTimeout, &TimeVal::microseconds(micros))
            .map_err(LabError::sys(format!("setting a receive timeout in {}", self.ns)))?;
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_one(MsgFlags::empty()) {
                Ok(Some(r)) => return Ok(Some(r)),
                Ok(None) | Err(nix::Error::EINTR) => {}
                Err(nix::Error::EAGAIN) => return Ok(None),
                Err(e) => {
                    return Err(LabError::Sys {
                        context: format!("receiving ICMP in {}", self.ns),
                        source: e,
                    })
                }
            }
            // Other traffic (someone else's echoes) must not extend the wait.
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }
}

/// One of our echo replies: who answered, to which sequence number, and when the kernel received
/// it (`SO_TIMESTAMPNS`, wall clock; `None` if the kernel gave no timestamp).
struct Reply {
    from: Ipv4Addr,
    seq: u16,
    at: Option<SystemTime>,
}

/// Sends one echo from namespace `ns` to `dst`; true if it is answered within `timeout`.
pub fn reach(ns: &str, dst: Ipv4Addr, timeout: Duration) -> Result<bool> {
    let first = wait_all(&[(ns.to_string(), dst)], timeout, timeout)?;
    Ok(first[0].is_some())
}

/// `GET path` from `addr` as seen from inside namespace `ns` (e.g. an agent's `/healthz` on its
/// host's loopback): the status code and body. `Ok(None)` when nothing answers there (agent
/// down, not listening yet); other failures are errors. Runs on a thread of its own that enters
/// the namespace, so the caller's namespace never changes; the socket stays in `ns`.
pub fn http_get(ns: &str, addr: std::net::SocketAddr, path: &str, timeout: Duration) -> Result<Option<(u16, String)>> {
    let (ns, path) = (ns.to_string(), path.to_string());
    let worker = std::thread::spawn(move || -> Result<Option<(u16, String)>> {
        let netns = format!("/run/netns/{ns}");
        let handle = std::fs::File::open(&netns).map_err(LabError::io(format!("opening {netns}")))?;
        setns(&handle, CloneFlags::CLONE_NEWNET).map_err(LabError::sys(format!("entering namespace {ns}")))?;
        match crate::agent::status::get(addr, &path, timeout) {
            Ok(answer) => Ok(Some(answer)),
            Err(e) if e.contains("Connection refused") => Ok(None),
            Err(e) => Err(LabError::Invalid {
                lab: ns.clone(),
                reason: format!("GET {path}: {e}"),
            }),
        }
    });
    worker.join().unwrap_or_else(|_| {
        Err(LabError::Invalid {
            lab: String::new(),
            reason: "HTTP probe thread panicked".into(),
        })
    })
}

/// Pings every `(source namespace, destination)` pair until each has answered once, or until
/// `timeout`. An unanswered pair is re-pinged every `interval` (keep it small — ≤ 5 ms — when the
/// moment of first answer is what is being measured). Returns, per pair and in order, the instant
/// of its first answer, or `None`. Pairs from one namespace share one thread and one socket; the
/// namespaces are probed concurrently.
pub fn wait_all(pairs: &[(String, Ipv4Addr)], interval: Duration, timeout: Duration) -> Result<Vec<Option<Instant>>> {
    let deadline = Instant::now() + timeout;
    let mut by_ns: BTreeMap<&str, Vec<Ipv4Addr>> = BTreeMap::new();
    for (ns, dst) in pairs {
        let dsts = by_ns.entry(ns).or_default();
        if !dsts.contains(dst) {
            dsts.push(*dst);
        }
    }
    let threads: Vec<(&str, JoinHandle<Result<FirstAnswers>>)> = by_ns
        .into_iter()
        .map(|(ns, dsts)| {
            let owned = ns.to_string();
            let handle = std::thread::Builder::new()
                .name(format!("probe {ns}"))
                .spawn(move || probe_from(&owned, &dsts, interval, deadline))
                .map_err(LabError::io(format!("starting a probe thread for {ns}")));
            handle.map(|h| (ns, h))
        })
        .collect::<Result<_>>()?;
    let mut answered: HashMap<&str, HashMap<Ipv4Addr, Instant>> = HashMap::new();
    let mut first_error = None;
    for (ns, t) in threads {
        match t.join() {
            Ok(Ok(m)) => {
                answered.insert(ns, m);
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(_) => {
                first_error.get_or_insert(LabError::Io {
                    context: format!("probe thread for {ns}"),
                    source: std::io::Error::other("panicked"),
                });
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(pairs
        .iter()
        .map(|(ns, dst)| answered.get(ns.as_str()).and_then(|m| m.get(dst)).copied())
        .collect())
}

/// Destination → instant of its first answer.
type FirstAnswers = HashMap<Ipv4Addr, Instant>;

/// One namespace's side of [`wait_all`] (runs on its own thread).
fn probe_from(
    ns: &str,
    dsts: &[Ipv4Addr],
    interval: Duration,
    deadline: Instant,
) -> Result<HashMap<Ipv4Addr, Instant>> {
    let sock = IcmpSocket::open_in(ns)?;
    let mut answered: HashMap<Ipv4Addr, Instant> = HashMap::new();
    let mut seq: u16 = 0;
    let mut next_round = Instant::now();
    while answered.len() < dsts.len() {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if now >= next_round {
            for dst in dsts.iter().filter(|d| !answered.contains_key(d)) {
                sock.send(*dst, seq);
                seq = seq.wrapping_add(1);
            }
            next_round = now + interval;
        }
        let wait = next_round.min(deadline).saturating_duration_since(Instant::now());
        if let Some(r) = sock.recv(wait)? {
            if dsts.contains(&r.from) {
                answered.entry(r.from).or_insert_with(Instant::now);
            }
        }
    }
    Ok(answered)
}

/// What a [`Pinger`] saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PingStats {
    pub sent: u32,
    pub received: u32,
    /// `sent - received`: echoes never answered (counted by sequence number, duplicates ignored).
    pub lost: u32,
    /// The longest run of consecutive unanswered echoes (× interval ≈ the longest outage).
    pub longest_gap: u32,
    /// Sequence numbers of the lost echoes (at most the first 1000).
    pub lost_seqs: Vec<u16>,
    /// The slowest answer's round trip, by the kernel's receive time. An echo that waited in a
    /// queue (a neighbour being resolved again) is answered, not lost: this shows the wait.
    pub max_rtt: Duration,
}

/// A continuous pinger for tests: one echo every `interval` from a namespace to an address, for
/// at most `count` echoes and at most `max_duration`, counting answers by sequence number. It
/// stops by itself at either bound; [`Pinger::stop`] stops it early and returns the counts.
pub struct Pinger {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<PingStats>>>,
}

/// How long a stopping pinger still waits for replies to its last echoes.
const REPLY_GRACE: Duration = Duration::from_millis(200);

impl Pinger {
    /// `count` is capped at 65 536 (sequence numbers must not wrap).
    pub fn start(ns: &str, dst: Ipv4Addr, interval: Duration, count: u32, max_duration: Duration) -> Result<Pinger> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let ns = ns.to_string();
        let count = count.min(1 << 16);
        let thread = std::thread::Builder::new()
            .name(format!("pinger {ns}"))
            .spawn(move || run_pinger(&ns, dst, interval, count, max_duration, &flag))
            .map_err(LabError::io("starting a pinger thread"))?;
        Ok(Pinger {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the pinger (if it has not stopped by itself) and returns its counts.
    pub fn stop(mut self) -> Result<PingStats> {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }

    /// Waits for the pinger to reach its count or duration.
    pub fn wait(mut self) -> Result<PingStats> {
        self.join()
    }

    fn join(&mut self) -> Result<PingStats> {
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            _ => Err(LabError::Io {
                context: "pinger thread".into(),
                source: std::io::Error::other("panicked or already joined"),
            }),
        }
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A pinger's bookkeeping: send times, answered sequence numbers, the slowest answer.
struct Tally {
    dst: Ipv4Addr,
    sent_at: Vec<SystemTime>,
    got: Vec<bool>,
    max_rtt: Duration,
}

impl Tally {
    fn answer(&mut self, r: Reply) {
        let i = usize::from(r.seq);
        if r.from == self.dst && i < self.sent_at.len() && !self.got[i] {
            self.got[i] = true;
            let at = r.at.unwrap_or_else(SystemTime::now);
            self.max_rtt = self.max_rtt.max(at.duration_since(self.sent_at[i]).unwrap_or_default());
        }
    }

    fn missing(&self) -> bool {
        self.got[..self.sent_at.len()].contains(&false)
    }
}

fn run_pinger(
    ns: &str,
    dst: Ipv4Addr,
    interval: Duration,
    count: u32,
    max_duration: Duration,
    stop: &AtomicBool,
) -> Result<PingStats> {
    let sock = IcmpSocket::open_in(ns)?;
    // Kernel receive times: a reply's round trip is not stretched by this thread waiting for a
    // CPU on a busy machine.
    let _ = setsockopt(&sock.fd, sockopt::ReceiveTimestampns, &true);
    let start = Instant::now();
    let end = start + max_duration;
    let mut t = Tally {
        dst,
        sent_at: Vec::new(),
        got: vec![false; count as usize],
        max_rtt: Duration::ZERO,
    };
    // Send on a fixed schedule (start + k·interval) so slow receives do not stretch it.
    while (t.sent_at.len() as u32) < count && !stop.load(Ordering::Relaxed) && Instant::now() < end {
        t.sent_at.push(SystemTime::now());
        sock.send(dst, (t.sent_at.len() - 1) as u16);
        let next = start + interval * t.sent_at.len() as u32;
        while Instant::now() < next {
            if let Some(r) = sock.recv(next.saturating_duration_since(Instant::now()))? {
                t.answer(r);
            }
        }
    }
    let grace_end = Instant::now() + REPLY_GRACE;
    while t.missing() && Instant::now() < grace_end {
        if let Some(r) = sock.recv(grace_end.saturating_duration_since(Instant::now()))? {
            t.answer(r);
        }
    }
    // Replies that arrived while this thread was not running (a busy machine) are in the socket
    // already: take them before counting anything lost.
    if t.missing() {
        for r in sock.drain() {
            t.answer(r);
        }
    }
    let mut stats = stats(&t.got[..t.sent_at.len()]);
    stats.max_rtt = t.max_rtt;
    Ok(stats)
}

fn stats(got: &[bool]) -> PingStats {
    let received = got.iter().filter(|g| **g).count() as u32;
    let (mut run, mut longest) = (0u32, 0u32);
    for g in got {
        run = if *g { 0 } else { run + 1 };
        longest = longest.max(run);
    }
    PingStats {
        sent: got.len() as u32,
        received,
        lost: got.len() as u32 - received,
        longest_gap: longest,
        lost_seqs: got
            .iter()
            .enumerate()
            .filter(|(_, g)| !**g)
            .map(|(i, _)| i as u16)
            .take(1000)
            .collect(),
        max_rtt: Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_has_a_valid_checksum() {
        let p = echo_request(0x1234, 7);
        assert_eq!(checksum(&p), 0, "a packet including its checksum sums to zero");
        assert_eq!(&p[4..8], &[0x12, 0x34, 0, 7]);
    }

    #[test]
    fn parses_echo_replies_only() {
        let mut ip = vec![0x45u8; 1];
        ip.extend([0u8; 19]);
        let mut reply = ip.clone();
        reply.extend([ECHO_REPLY, 0, 0, 0, 0xab, 0xcd, 0, 9]);
        assert_eq!(parse_reply(&reply), Some((0xabcd, 9)));
        let mut request = ip.clone();
        request.extend([ECHO_REQUEST, 0, 0, 0, 0xab, 0xcd, 0, 9]);
        assert_eq!(parse_reply(&request), None);
        assert_eq!(parse_reply(&ip), None);
        assert_eq!(parse_reply(&[]), None);
    }

    #[test]
    fn stats_count_runs() {
        let s = stats(&[true, false, false, true, false, true]);
        assert_eq!((s.sent, s.received, s.lost, s.longest_gap), (6, 3, 3, 2));
        assert_eq!(s.lost_seqs, vec![1, 2, 4]);
    }
}
