//! The peer filter's program, assembled here (no compiler, no ELF): a BPF `sk_lookup` program
//! the kernel runs when a datagram looks for its UDP socket. For IPv4 UDP to the VXLAN port
//! from an address not in the peers map it counts the datagram and drops it; everything else
//! goes on to the usual socket lookup. Pure: bytes in, bytes out.

/// `struct bpf_sk_lookup` offsets (uapi/linux/bpf.h): the 5-tuple, no packet bytes.
const CTX_FAMILY: i16 = 8;
const CTX_PROTOCOL: i16 = 12;
/// Network byte order, as the map's keys.
const CTX_REMOTE_IP4: i16 = 16;
/// Host byte order.
const CTX_LOCAL_PORT: i16 = 60;

const AF_INET: i32 = 2;
const IPPROTO_UDP: i32 = 17;
const SK_DROP: i32 = 0;
const SK_PASS: i32 = 1;
const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
/// `src_reg` of a 64-bit immediate load that names a map by fd.
const PSEUDO_MAP_FD: u8 = 1;

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R10: u8 = 10;

/// One instruction: opcode, registers, offset, immediate (little-endian `struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Insn {
    code: u8,
    dst: u8,
    src: u8,
    off: i16,
    imm: i32,
}

impl Insn {
    fn bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = (self.src << 4) | (self.dst & 0x0f);
        b[2..4].copy_from_slice(&self.off.to_le_bytes());
        b[4..8].copy_from_slice(&self.imm.to_le_bytes());
        b
    }
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        dst,
        src,
        off,
        imm,
    }
}
/// `dst = *(u32 *)(src + off)`
fn ldx_w(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x61, dst, src, off, 0)
}
/// `*(u32 *)(dst + off) = src`
fn stx_w(dst: u8, off: i16, src: u8) -> Insn {
    insn(0x63, dst, src, off, 0)
}
/// `*(u32 *)(dst + off) = imm`
fn st_w(dst: u8, off: i16, imm: i32) -> Insn {
    insn(0x62, dst, 0, off, imm)
}
fn mov_imm(dst: u8, imm: i32) -> Insn {
    insn(0xb7, dst, 0, 0, imm)
}
fn mov_reg(dst: u8, src: u8) -> Insn {
    insn(0xbf, dst, src, 0, 0)
}
fn add_imm(dst: u8, imm: i32) -> Insn {
    insn(0x07, dst, 0, 0, imm)
}
/// `if dst != imm goto +off`
fn jne(dst: u8, imm: i32, off: i16) -> Insn {
    insn(0x55, dst, 0, off, imm)
}
/// `if dst == imm goto +off`
fn jeq(dst: u8, imm: i32, off: i16) -> Insn {
    insn(0x15, dst, 0, off, imm)
}
fn call(helper: i32) -> Insn {
    insn(0x85, 0, 0, 0, helper)
}
fn exit() -> Insn {
    insn(0x95, 0, 0, 0, 0)
}
/// `lock *(u64 *)(dst + 0) += src`
fn atomic_add_dw(dst: u8, src: u8) -> Insn {
    insn(0xdb, dst, src, 0, 0)
}
/// `dst = map` (two instruction slots).
fn ld_map(dst: u8, map_fd: i32) -> [Insn; 2] {
    [insn(0x18, dst, PSEUDO_MAP_FD, 0, map_fd), insn(0, 0, 0, 0, 0)]
}

/// The program for VXLAN on `port`, with the peers map (4-byte keys: IPv4 addresses in
/// network order) and the dropped-counter map (an array of one `u64`) given by fd.
pub fn peer_filter(port: u16, peers_map_fd: i32, dropped_map_fd: i32) -> Vec<u8> {
    // Jump offsets count instructions after the jump; `to(at, target)` computes one.
    const PASS: usize = 25;
    const DROP: usize = 23;
    let to = |at: usize, target: usize| (target - at - 1) as i16;
    let mut p: Vec<Insn> = vec![
        ldx_w(R2, R1, CTX_FAMILY),             // 0
        jne(R2, AF_INET, to(1, PASS)),         // 1
        ldx_w(R2, R1, CTX_PROTOCOL),           // 2
        jne(R2, IPPROTO_UDP, to(3, PASS)),     // 3
        ldx_w(R2, R1, CTX_LOCAL_PORT),         // 4
        jne(R2, i32::from(port), to(5, PASS)), // 5
        ldx_w(R2, R1, CTX_REMOTE_IP4),         // 6
        stx_w(R10, -4, R2),                    // 7: the key, on the stack
    ];
    p.extend(ld_map(R1, peers_map_fd)); // 8, 9
    p.extend([
        mov_reg(R2, R10),             // 10
        add_imm(R2, -4),              // 11
        call(HELPER_MAP_LOOKUP_ELEM), // 12
        jne(R0, 0, to(13, PASS)),     // 13: a peer
        st_w(R10, -8, 0),             // 14: counter index 0
    ]);
    p.extend(ld_map(R1, dropped_map_fd)); // 15, 16
    p.extend([
        mov_reg(R2, R10),             // 17
        add_imm(R2, -8),              // 18
        call(HELPER_MAP_LOOKUP_ELEM), // 19
        jeq(R0, 0, to(20, DROP)),     // 20
        mov_imm(R1, 1),               // 21
        atomic_add_dw(R0, R1),        // 22
        mov_imm(R0, SK_DROP),         // 23 = DROP
        exit(),                       // 24
        mov_imm(R0, SK_PASS),         // 25 = PASS
        exit(),                       // 26
    ]);
    debug_assert_eq!(p[DROP], mov_imm(R0, SK_DROP));
    debug_assert_eq!(p[PASS], mov_imm(R0, SK_PASS));
    p.into_iter().flat_map(Insn::bytes).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insns(code: &[u8]) -> Vec<[u8; 8]> {
        code.chunks(8).map(|c| c.try_into().unwrap()).collect()
    }

    #[test]
    fn encodes_like_the_kernel_headers_say() {
        // r2 = *(u32 *)(r1 + 60): opcode, dst in the low nibble, src in the high one.
        assert_eq!(ldx_w(R2, R1, 60).bytes(), [0x61, 0x12, 60, 0, 0, 0, 0, 0]);
        // *(u32 *)(r10 - 4) = r2: a negative offset, little-endian.
        assert_eq!(stx_w(R10, -4, R2).bytes(), [0x63, 0x2a, 0xfc, 0xff, 0, 0, 0, 0]);
        assert_eq!(jne(R2, 8472, 3).bytes(), [0x55, 0x02, 3, 0, 0x18, 0x21, 0, 0]);
        assert_eq!(ld_map(R1, 7)[0].bytes(), [0x18, 0x11, 0, 0, 7, 0, 0, 0]);
    }

    #[test]
    fn checks_family_protocol_and_port_then_looks_the_peer_up() {
        let p = insns(&peer_filter(8472, 5, 6));
        assert_eq!(p.len(), 27);
        assert_eq!(p[5][4..8], 8472i32.to_le_bytes());
        // The two map loads name their maps' fds.
        assert_eq!(p[8][4..8], 5i32.to_le_bytes());
        assert_eq!(p[15][4..8], 6i32.to_le_bytes());
        // Every early "not ours" jump lands on the pass exit, the counter miss on the drop.
        for at in [1usize, 3, 5, 13] {
            let off = i16::from_le_bytes([p[at][2], p[at][3]]);
            assert_eq!(at + 1 + off as usize, 25, "jump at {at}");
        }
        let off = i16::from_le_bytes([p[20][2], p[20][3]]);
        assert_eq!(20 + 1 + off as usize, 23);
        assert_eq!(p[23], mov_imm(R0, SK_DROP).bytes());
        assert_eq!(p[25], mov_imm(R0, SK_PASS).bytes());
        assert_eq!(p[26], exit().bytes());
    }

    #[test]
    fn the_port_is_the_only_thing_that_changes_with_the_config() {
        let a = peer_filter(8472, 5, 6);
        let b = peer_filter(4789, 5, 6);
        let differ: Vec<usize> = (0..a.len() / 8)
            .filter(|i| a[i * 8..i * 8 + 8] != b[i * 8..i * 8 + 8])
            .collect();
        assert_eq!(differ, vec![5]);
    }
}
