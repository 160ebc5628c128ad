#!/usr/bin/env bash
# What the VXLAN peer filter costs the data plane, and where: UDP 64 B packets/s between two lab
# hosts (agents running with --vxlan-peer-filter=false), with variants of a filter table loaded
# by hand into the receiver, interleaved round by round (order rotated), medians over ROUNDS.
#   none        no nft table at all (what hand-configured VXLAN has)
#   empty-input an `input` base chain with no rule: the cost of the hook alone
#   weft        weft's table: `udp dport 8472 ip saddr != @peers counter name vxlan_dropped drop`
#   ingress     the same rule in a netdev `ingress` chain on eth0 (sees only the outer packets)
#   tcx         no nft table: the same check as an eBPF program on eth0's tc (tcx) ingress
#               (bench/bpf-filter.py), what the filter would cost outside netfilter
#   sklookup    no nft table: the same check as a BPF sk_lookup program of the receiver's whole
#               namespace (bench/bpf-filter.py): runs at the UDP socket lookup, not per hook
# Then, unless PROFILE=0, where the CPU goes: `perf record` of the whole machine during one run
# per variant (all but tcx): CPU per received datagram, and the part of it spent in
# the filter's kernel functions (netfilter's hook and nft, or the BPF program and its lookup).
# Rewrites its block (between the filter-cost markers) of docs/benchmarks.md.
# Usage: sudo bench/filter-cost.sh [ROUNDS] [SECONDS]   (default 12 rounds of 3 s per variant)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-12}
secs=${2:-3}
name=wbfc
weft=./target/release/weft
source scripts/deps.sh
source bench/doc-section.sh
cargo build --release --quiet --bin weft --bin weft-agent

$weft lab down --name $name >/dev/null 2>&1 || true
trap '$weft lab down --name $name >/dev/null 2>&1 || true' EXIT
$weft lab up --name $name --nodes 2 --agent-arg=--vxlan-peer-filter=false >/dev/null
h1=$name-h1
h2=$name-h2
dst=$(ip netns exec $h2 ip -4 -o addr show flannel.1 | awk '{print $4}' | cut -d/ -f1)
peer=$(ip netns exec $h1 ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)
rule="udp dport 8472 ip saddr != @peers counter name \"vxlan_dropped\" drop"

table() { # variant -> nft script for the receiver
    case $1 in
    none) ;;
    empty-input) printf 'table ip fc {\n chain input { type filter hook input priority filter; policy accept; }\n}\n' ;;
    weft) printf 'table ip fc {\n set peers { type ipv4_addr; elements = { %s } }\n counter vxlan_dropped { }\n chain input {\n  type filter hook input priority filter; policy accept;\n  %s\n }\n}\n' "$peer" "$rule" ;;
    tcx | sklookup) ;;
    ingress) printf 'table netdev fc {\n set peers { type ipv4_addr; elements = { %s } }\n counter vxlan_dropped { }\n chain ingress {\n  type filter hook ingress device eth0 priority filter; policy accept;\n  %s\n }\n}\n' "$peer" "$rule" ;;
    *) echo "unknown variant $1" >&2; exit 2 ;;
    esac
}

skl_pid=
unfilter() { # takes every variant off the receiver
    ip netns exec $h2 nft delete table ip fc 2>/dev/null || true
    ip netns exec $h2 nft delete table netdev fc 2>/dev/null || true
    ip netns exec $h2 python3 bench/bpf-filter.py detach eth0
    if [[ -n $skl_pid ]]; then
        kill "$skl_pid" && wait "$skl_pid" || true
        skl_pid=
    fi
}

filter() { # variant [PEER]: puts the variant on the receiver, with PEER as the only peer
    local p=${2:-$peer} t
    unfilter
    [[ $1 != tcx ]] || ip netns exec $h2 python3 bench/bpf-filter.py attach eth0 8472 "$p"
    if [[ $1 == sklookup ]]; then
        local ready
        ready=$(mktemp)
        ip netns exec $h2 python3 bench/bpf-filter.py sklookup 8472 "$p" >"$ready" &
        skl_pid=$!
        for _ in {1..50}; do [[ -s $ready ]] && break; sleep 0.1; done
        rm -f "$ready"
    fi
    t=$(table "$1")
    [[ -z $t ]] || ip netns exec $h2 nft -f - <<<"$t"
}

udp64() { # [iperf3 seconds] -> iperf3's JSON of one UDP 64 B run
    ip netns exec $h2 iperf3 -s -1 -D >/dev/null
    sleep 0.3
    ip netns exec $h1 iperf3 -c "$dst" -u -l 64 -b 0 -t "${1:-$secs}" -J
}
received='import json,sys; s=json.load(sys.stdin)["end"]["sum"]; print(round((s["packets"]-s["lost_packets"])/s["seconds"]))'

# variant: received packets/s into $last_rate. Not called in a subshell: the next `unfilter`
# must know the sk_lookup holder that `filter` started.
rate() {
    filter "$1"
    last_rate=$(udp64 | python3 -c "$received")
}
trap 'unfilter 2>/dev/null; $weft lab down --name $name >/dev/null 2>&1 || true' EXIT

# The eBPF variants filter for real: with another address as the only peer, the overlay is cut.
for v in tcx sklookup; do
    filter $v 192.0.2.254
    if ip netns exec $h1 ping -c 2 -W 1 -i 0.2 -q "$dst" >/dev/null; then
        echo "bpf-filter.py ($v) did not drop VXLAN from a non-peer" >&2
        exit 1
    fi
    unfilter
    ip netns exec $h1 ping -c 2 -W 1 -i 0.2 -q "$dst" >/dev/null
done

variants=(none empty-input weft ingress tcx sklookup)
declare -A samples
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for ((r = 0; r < rounds; r++)); do
    for ((k = 0; k < ${#variants[@]}; k++)); do
        v=${variants[$(((k + r) % ${#variants[@]}))]}
        rate "$v"
        samples[$v]+="$last_rate "
    done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# Where the CPU goes: one 8 s run per variant, sampled with call graphs (cpu-clock, 2 kHz, every
# CPU) from its 2nd to its 7th second. Each sample stands for 0.5 ms of one CPU. The filter's
# time is everything under netfilter's hook (`nf_hook_slow`: nft included) or under the BPF
# sk_lookup run (`inet_lookup_run_sk_lookup`: the program and its map lookup), callees included.
profile_md=
if [[ ${PROFILE:-1} != 0 ]] && ! command -v perf >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends linux-perf >/dev/null ||
        echo "filter-cost: no perf (Debian package linux-perf): skipping the CPU profile" >&2
fi
if [[ ${PROFILE:-1} != 0 ]] && command -v perf >/dev/null; then
    pdir=$(mktemp -d)
    for v in none empty-input weft ingress sklookup; do
        filter $v
        udp64 8 >"$pdir/$v.json" &
        sleep 2
        perf record -a -g -F 2000 -o "$pdir/$v.data" -- sleep 5 >/dev/null 2>&1
        wait $!
        perf report -i "$pdir/$v.data" --stdio --no-children --sort comm -n -g none 2>/dev/null |
            awk '/^ +[0-9.]+%/ {print $2, $3}' >"$pdir/$v.comm"
        perf report -i "$pdir/$v.data" --stdio --children --sort sym -g none 2>/dev/null |
            awk '/^ +[0-9.]+%/ {print $1, $NF}' >"$pdir/$v.incl"
    done
    unfilter
    profile_md=$(python3 - "$pdir" <<'PY'
import json, sys
d = sys.argv[1]
print("| receiver's filter | UDP 64 B packets/s | busy CPU per datagram | under the filter's hook |")
print("|---|---|---|---|")
for v in ("none", "empty-input", "weft", "ingress", "sklookup"):
    s = json.load(open(f"{d}/{v}.json"))["end"]["sum"]
    pps = (s["packets"] - s["lost_packets"]) / s["seconds"]
    comm = [line.split() for line in open(f"{d}/{v}.comm")]
    total = sum(int(n) for n, _ in comm)
    busy = sum(int(n) for n, c in comm if c != "swapper")
    incl = {sym: float(pct.rstrip("%")) for pct, sym in (line.split() for line in open(f"{d}/{v}.incl"))}
    filt = total * (incl.get("nf_hook_slow", 0) + incl.get("inet_lookup_run_sk_lookup", 0)) / 100
    per = lambda samples: samples * 0.5e-3 / (pps * 5) * 1e9  # ns per datagram
    print("| %s | %s | %.1f µs | %.0f ns (%.1f %%) |" % (v, format(round(pps), ","), per(busy) / 1e3, per(filt), 100 * filt / busy))
PY
)
    rm -rf "$pdir"
fi

commit=$(bench_commit)
table_md=$(for v in "${variants[@]}"; do echo "$v ${samples[$v]}"; done | python3 -c '
import statistics, sys
rows = [l.split() for l in sys.stdin if l.strip()]
med = {r[0]: statistics.median(map(int, r[1:])) for r in rows}
n = min(len(r) - 1 for r in rows)
def per_round(r):  # each round'"'"'s ratio to that round'"'"'s `none` sample: median, quartiles
    q = sorted(int(r[i]) / int(rows[0][i]) for i in range(1, n + 1))
    return "%.3f (%.3f–%.3f)" % (statistics.median(q), q[n // 4], q[(3 * n) // 4])
print("| receiver'"'"'s filter | UDP 64 B packets/s, median | ÷ none | per round ÷ none: median (quartiles) |")
print("|---|---|---|---|")
for r in rows:
    print("| %s | %s | %.3f | %s |" % (r[0], format(round(med[r[0]]), ","), med[r[0]] / med[rows[0][0]], per_round(r)))
print()
print("Samples: " + "; ".join(f"{r[0]} " + " ".join(r[1:]) for r in rows))
')
section=$(cat <<MD
\`sudo bench/filter-cost.sh $rounds $secs\`: $rounds interleaved rounds of $secs s per variant, 2 cores, kernel
$(uname -r), $(date -u +%Y-%m-%dT%H:%MZ), commit $commit, load average $load_before before, $load_after after.

$table_md
${profile_md:+
Where the CPU goes (\`perf record -a\` of 5 s of one run per variant; busy CPU is every sample
outside the idle task, over both cores, per datagram received):

$profile_md}
MD
)
block=$(mktemp)
printf '%s\n' "$section" >"$block"
write_doc_block filter-cost "$block"
rm -f "$block"
printf '%s\n' "$section"
