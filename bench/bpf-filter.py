#!/usr/bin/env python3
"""The VXLAN peer filter as an eBPF program, for bench/filter-cost.sh only: what the filter
costs outside netfilter. weft ships the sk_lookup form (src/kernel/bpf, with a drop counter and
pins); this script loads a bare copy by hand, next to variants weft does not ship (tcx).

  bpf-filter.py attach DEV PORT PEER...   tc (tcx) ingress of DEV: drop UDP to PORT from
                                          anything but PEERs (IPv4)
  bpf-filter.py detach DEV                take every program off DEV's tcx ingress
  bpf-filter.py sklookup PORT PEER...     the same check as a BPF sk_lookup program of the
                                          whole network namespace, attached until this process
                                          is stopped (a link, held open; SIGTERM detaches)

Run it inside the namespace (ip netns exec NS ...). The tcx program stays attached after this
process exits (BPF_PROG_ATTACH without a link), until `detach` or the device goes away.
"""
import ctypes
import os
import signal
import socket
import struct
import sys

SYS_BPF = 321  # x86_64
BPF_MAP_CREATE, BPF_MAP_UPDATE_ELEM, BPF_PROG_LOAD = 0, 2, 5
BPF_PROG_ATTACH, BPF_PROG_DETACH, BPF_PROG_GET_FD_BY_ID, BPF_PROG_QUERY = 8, 9, 13, 16
BPF_LINK_CREATE = 28
BPF_MAP_TYPE_HASH, BPF_PROG_TYPE_SCHED_CLS, BPF_PROG_TYPE_SK_LOOKUP = 1, 3, 30
BPF_TCX_INGRESS, BPF_SK_LOOKUP = 46, 36
TCX_NEXT, TCX_DROP = -1, 2
SK_DROP, SK_PASS = 0, 1

libc = ctypes.CDLL(None, use_errno=True)


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    r = libc.syscall(SYS_BPF, cmd, buf, 128)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"bpf({cmd}): {os.strerror(e)}")
    return r, buf


def insn(code, dst=0, src=0, off=0, imm=0):
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def program(map_fd, port):
    """Legacy packet loads (LD_ABS/LD_IND: bounds-checked, host byte order, offsets from the
    Ethernet header at tc ingress); a miss in the peers map drops. Jump offsets count
    instructions after the jump."""
    pass_ = 24  # index of the "pass" exit

    def to_pass(at):
        return pass_ - (at + 1)

    return b"".join([
        insn(0xBF, 6, 1),                                  # 0  r6 = skb (LD_ABS wants it there)
        insn(0x28, imm=12),                                # 1  r0 = ethertype
        insn(0x55, 0, off=to_pass(2), imm=0x0800),         # 2  not IPv4: pass
        insn(0x30, imm=14 + 9),                            # 3  r0 = IP protocol
        insn(0x55, 0, off=to_pass(4), imm=17),             # 4  not UDP: pass
        insn(0x28, imm=14 + 6),                            # 5  r0 = flags + fragment offset
        insn(0x54, 0, imm=0x1FFF),                         # 6  r0 &= fragment offset
        insn(0x55, 0, off=to_pass(7), imm=0),              # 7  not a first fragment: pass
        insn(0x30, imm=14),                                # 8  r0 = version + IHL
        insn(0x54, 0, imm=0x0F),                           # 9
        insn(0x64, 0, imm=2),                              # 10 r0 = IP header length
        insn(0xBF, 7, 0),                                  # 11 r7 = r0
        insn(0x48, src=7, imm=14 + 2),                     # 12 r0 = UDP destination port
        insn(0x55, 0, off=to_pass(13), imm=port),          # 13 not VXLAN: pass
        insn(0x20, imm=14 + 12),                           # 14 r0 = source address
        insn(0x63, 10, 0, off=-4),                         # 15 key on the stack
        insn(0x18, 1, 1, imm=map_fd), insn(0, imm=0),      # 16 r1 = peers map
        insn(0xBF, 2, 10),                                 # 18 r2 = &key
        insn(0x07, 2, imm=-4),                             # 19
        insn(0x85, imm=1),                                 # 20 map_lookup_elem
        insn(0x55, 0, off=to_pass(21), imm=0),             # 21 a peer: pass
        insn(0xB7, 0, imm=TCX_DROP),                       # 22
        insn(0x95),                                        # 23 exit
        insn(0xB7, 0, imm=TCX_NEXT),                       # 24 pass
        insn(0x95),                                        # 25 exit
    ])


def sk_lookup_program(map_fd, port):
    """The context (struct bpf_sk_lookup) gives the 5-tuple, no packet bytes: protocol at 12,
    remote_ip4 at 16 (network order), local_port at 60 (host order). IPv6 lookups have 0 in
    remote_ip4, which is no peer: this bench filter is IPv4-only."""
    return b"".join([
        insn(0x61, 2, 1, off=12),                          # 0  r2 = protocol
        insn(0x55, 2, off=12, imm=17),                     # 1  not UDP: pass (14)
        insn(0x61, 2, 1, off=60),                          # 2  r2 = local port
        insn(0x55, 2, off=10, imm=port),                   # 3  not VXLAN: pass
        insn(0x61, 2, 1, off=16),                          # 4  r2 = remote address
        insn(0x63, 10, 2, off=-4),                         # 5  key on the stack
        insn(0x18, 1, 1, imm=map_fd), insn(0, imm=0),      # 6  r1 = peers map
        insn(0xBF, 2, 10),                                 # 8  r2 = &key
        insn(0x07, 2, imm=-4),                             # 9
        insn(0x85, imm=1),                                 # 10 map_lookup_elem
        insn(0x55, 0, off=2, imm=0),                       # 11 a peer: pass
        insn(0xB7, 0, imm=SK_DROP),                        # 12
        insn(0x95),                                        # 13 exit
        insn(0xB7, 0, imm=SK_PASS),                        # 14 pass
        insn(0x95),                                        # 15 exit
    ])


def peers_map(peers, key_order):
    """A hash map of the peers' addresses (4-byte keys in `key_order`: "<" host, ">" network)."""
    map_fd, _ = bpf(BPF_MAP_CREATE, struct.pack("<IIIII", BPF_MAP_TYPE_HASH, 4, 1, 65536, 0))
    for p in peers:
        key = ctypes.create_string_buffer(struct.pack(key_order + "I", struct.unpack(">I", socket.inet_aton(p))[0]))
        one = ctypes.create_string_buffer(b"\x01")
        bpf(BPF_MAP_UPDATE_ELEM, struct.pack("<IIQQQ", map_fd, 0, ctypes.addressof(key), ctypes.addressof(one), 0))
    return map_fd


def load(prog_type, code, name, expected_attach_type=0):
    insns = ctypes.create_string_buffer(code)
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(65536)
    attr = struct.pack("<IIQQIIQII16sII", prog_type, len(code) // 8, ctypes.addressof(insns),
                       ctypes.addressof(license_), 1, len(log), ctypes.addressof(log), 0, 0, name,
                       0, expected_attach_type)
    try:
        prog_fd, _ = bpf(BPF_PROG_LOAD, attr)
    except OSError:
        sys.stderr.write(log.value.decode())
        raise
    return prog_fd


def attach(dev, port, peers):
    # LD_ABS loads give host byte order: keys in host order.
    prog_fd = load(BPF_PROG_TYPE_SCHED_CLS, program(peers_map(peers, "<"), port), b"weft_bench_tcx")
    bpf(BPF_PROG_ATTACH, struct.pack("<IIIIIIQ", socket.if_nametoindex(dev), prog_fd, BPF_TCX_INGRESS, 0, 0, 0, 0))


def sk_lookup(port, peers):
    """Attaches to this process's network namespace and holds the link until SIGTERM/SIGINT."""
    code = sk_lookup_program(peers_map(peers, ">"), port)
    prog_fd = load(BPF_PROG_TYPE_SK_LOOKUP, code, b"weft_bench_skl", BPF_SK_LOOKUP)
    netns = os.open("/proc/self/ns/net", os.O_RDONLY)
    bpf(BPF_LINK_CREATE, struct.pack("<IIII", prog_fd, netns, BPF_SK_LOOKUP, 0))
    print("attached", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.pause()


def detach(dev):
    ifindex = socket.if_nametoindex(dev)
    ids = (ctypes.c_uint32 * 64)()
    _, out = bpf(BPF_PROG_QUERY, struct.pack("<IIIIQIIQQ", ifindex, BPF_TCX_INGRESS, 0, 0, ctypes.addressof(ids), 64, 0, 0, 0))
    for prog_id in ids[: struct.unpack_from("<I", out, 24)[0]]:
        fd, _ = bpf(BPF_PROG_GET_FD_BY_ID, struct.pack("<I", prog_id))
        bpf(BPF_PROG_DETACH, struct.pack("<IIII", ifindex, fd, BPF_TCX_INGRESS, 0))


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "attach":
        attach(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
    elif len(sys.argv) == 3 and sys.argv[1] == "detach":
        detach(sys.argv[2])
    elif len(sys.argv) >= 3 and sys.argv[1] == "sklookup":
        sk_lookup(int(sys.argv[2]), sys.argv[3:])
    else:
        sys.exit(__doc__)
