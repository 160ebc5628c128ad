//! VXLAN datagrams crafted in Rust, sent from a lab namespace: what a peer's (or a stranger's)
//! VTEP would send, for the VXLAN filter tests.

use super::kernel::sh;
use nix::sched::{setns, CloneFlags};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;
use weft::lab::probe::checksum;
use weft::lab::Lab;

/// A VXLAN payload: header (I flag, `vni`), inner Ethernet to `dst_mac`, IPv4 `src` → `dst`,
/// ICMP echo request — what a peer's VTEP would send, and enough for the target to deliver it.
pub fn vxlan_echo(vni: u32, src_mac: [u8; 6], dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, seq: u16) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x77, 0x65, (seq >> 8) as u8, seq as u8];
    icmp.extend_from_slice(b"weft vxlan filter test");
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());

    let total = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&seq.to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());

    let mut p = vec![0x08, 0, 0, 0];
    p.extend_from_slice(&(vni << 8).to_be_bytes());
    p.extend_from_slice(&dst_mac);
    p.extend_from_slice(&src_mac);
    p.extend_from_slice(&[0x08, 0x00]);
    p.extend_from_slice(&ip);
    p.extend_from_slice(&icmp);
    p
}

/// Sends each packet once over UDP from namespace `ns` (on a thread of our own that enters it).
pub fn send_from(ns: &str, to: SocketAddrV4, packets: Vec<Vec<u8>>) {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("netns handle");
        setns(&f, CloneFlags::CLONE_NEWNET).expect("setns");
        let s = UdpSocket::bind("0.0.0.0:0").expect("udp socket");
        for p in packets {
            s.send_to(&p, to).expect("send");
            std::thread::sleep(Duration::from_millis(5));
        }
    })
    .join()
    .expect("sender thread");
}

pub fn mac_bytes(mac: &str) -> [u8; 6] {
    let v: Vec<u8> = mac
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

/// The VXLAN drop counter of nft table `table` in the host's namespace.
pub fn vxlan_dropped(lab: &Lab, host: &str, table: &str) -> u64 {
    let out = sh(
        lab,
        host,
        &["nft", "-j", "list", "counter", "ip", table, "vxlan_dropped"],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|o| o["counter"]["packets"].as_u64())
        .expect("counter packets")
}

/// `nft list set ip TABLE peers` in the host's namespace.
pub fn nft_peers(lab: &Lab, host: &str, table: &str) -> String {
    sh(lab, host, &["nft", "list", "set", "ip", table, "peers"])
}
