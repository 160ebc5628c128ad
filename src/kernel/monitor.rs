//! Change notifications: links, IPv4 addresses, IPv4 routes, neighbours (ARP and FDB).

use super::{KernelError, KernelEvent};
use crate::planner::state::Change;
use futures::StreamExt;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::neighbour::NeighbourMessage;
use netlink_packet_route::route::{RouteAttribute, RouteMessage};
use netlink_packet_route::RouteNetlinkMessage as M;
use netlink_sys::AsyncSocket;
use rtnetlink::MulticastGroup;
use tokio::sync::mpsc;

/// Events waiting for the consumer; beyond this the consumer gets one Overrun instead.
const QUEUE: usize = 4096;
/// Socket receive buffer. Bursts (a 10,000-peer sync) produce tens of thousands of
/// notifications; the default ~200 KiB overflows in milliseconds.
const RCVBUF: libc::c_int = 32 << 20;

/// Subscribes to the kernel's change notifications in the current network namespace. Needs a
/// tokio runtime (the socket and converter tasks are spawned on it). The receiver yields `None`
/// if the socket dies, which the caller should treat as fatal (or as an Overrun + resubscribe).
pub fn monitor() -> Result<mpsc::Receiver<KernelEvent>, KernelError> {
    let rt =
        tokio::runtime::Handle::try_current().map_err(|e| KernelError::Socket(format!("no tokio runtime: {e}")))?;
    let groups = [
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Neigh,
    ];
    let (mut connection, _handle, mut messages) =
        rtnetlink::new_multicast_connection(&groups).map_err(|e| KernelError::Socket(e.to_string()))?;
    set_rcvbuf(connection.socket_mut().socket_mut());
    rt.spawn(connection);

    let (tx, rx) = mpsc::channel(QUEUE);
    rt.spawn(async move {
        while let Some((msg, _)) = messages.next().await {
            let Some(event) = to_event(msg) else { continue };
            match tx.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => break,
                // The consumer is behind: rather than queue without bound, drop this event and
                // have the consumer resync everything, which subsumes it.
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if tx.send(KernelEvent::Overrun).await.is_err() {
                        break;
                    }
                }
            }
        }
        tracing::debug!("netlink monitor stopped");
    });
    Ok(rx)
}

/// SO_RCVBUFFORCE (root) ignores net.core.rmem_max; fall back to the capped SO_RCVBUF.
fn set_rcvbuf(sock: &netlink_sys::Socket) {
    use std::os::fd::AsRawFd;
    let size = RCVBUF;
    // SAFETY: a valid socket fd and a pointer to a live c_int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        if let Err(e) = sock.set_rx_buf_sz(size) {
            tracing::debug!("netlink monitor: cannot enlarge receive buffer: {e}");
        }
    }
}

fn to_event(msg: NetlinkMessage<M>) -> Option<KernelEvent> {
    match msg.payload {
        // netlink-proto turns ENOBUFS on the socket into an Overrun message.
        NetlinkPayload::Overrun(_) => Some(KernelEvent::Overrun),
        NetlinkPayload::InnerMessage(m) => match m {
            M::NewLink(l) => Some(KernelEvent::Link {
                index: l.header.index,
                deleted: false,
            }),
            M::DelLink(l) => Some(KernelEvent::Link {
                index: l.header.index,
                deleted: true,
            }),
            M::NewAddress(a) | M::DelAddress(a) => Some(KernelEvent::Address { index: a.header.index }),
            M::NewRoute(r) => Some(route_event(&r, false)),
            M::DelRoute(r) => Some(route_event(&r, true)),
            M::NewNeighbour(n) => Some(neigh_event(&n, false)),
            M::DelNeighbour(n) => Some(neigh_event(&n, true)),
            _ => None,
        },
        _ => None,
    }
}

fn route_event(r: &RouteMessage, deleted: bool) -> KernelEvent {
    let oif = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    });
    let change = super::route::parse_any_unicast(r).map(|(table, entry)| Change::Route { table, entry, deleted });
    KernelEvent::Route { oif, change }
}

fn neigh_event(n: &NeighbourMessage, deleted: bool) -> KernelEvent {
    let change = if let Some((index, entry, permanent)) = super::neigh::parse_neigh(n) {
        Some(Change::Neigh {
            index,
            entry,
            permanent,
            deleted,
        })
    } else {
        super::fdb::parse_fdb(n).map(|(index, entry, permanent)| Change::Fdb {
            index,
            entry,
            permanent,
            deleted,
        })
    };
    KernelEvent::Neigh {
        index: n.header.ifindex,
        change,
    }
}
