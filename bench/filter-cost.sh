#!/usr/bin/env bash
# What the VXLAN peer filter costs the data plane, and where: UDP 64 B packets/s between two lab
# hosts (agents running with --vxlan-peer-filter=false), with variants of a filter table loaded
# by hand into the receiver, interleaved round by round (order rotated), medians over ROUNDS.
#   none        no nft table at all (what hand-configured VXLAN has)
#   empty-input an `input` base chain with no rule: the cost of the hook alone
#   weft        weft's table: `udp dport 8472 ip saddr != @peers counter name vxlan_dropped drop`
#   ingress     the same rule in a netdev `ingress` chain on eth0 (sees only the outer packets)
#   tcx         no nft table: the same check as an eBPF program on eth0's tc (tcx) ingress
#               (bench/tcx-filter.py), what the filter would cost outside netfilter
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
    tcx) ;;
    ingress) printf 'table netdev fc {\n set peers { type ipv4_addr; elements = { %s } }\n counter vxlan_dropped { }\n chain ingress {\n  type filter hook ingress device eth0 priority filter; policy accept;\n  %s\n }\n}\n' "$peer" "$rule" ;;
    *) echo "unknown variant $1" >&2; exit 2 ;;
    esac
}

rate() { # variant -> received packets/s
    ip netns exec $h2 nft delete table ip fc 2>/dev/null || true
    ip netns exec $h2 nft delete table netdev fc 2>/dev/null || true
    ip netns exec $h2 python3 bench/tcx-filter.py detach eth0
    [[ $1 != tcx ]] || ip netns exec $h2 python3 bench/tcx-filter.py attach eth0 8472 "$peer"
    local t
    t=$(table "$1")
    [[ -z $t ]] || ip netns exec $h2 nft -f - <<<"$t"
    ip netns exec $h2 iperf3 -s -1 -D >/dev/null
    sleep 0.3
    ip netns exec $h1 iperf3 -c "$dst" -u -l 64 -b 0 -t "$secs" -J |
        python3 -c 'import json,sys; s=json.load(sys.stdin)["end"]["sum"]; print(round((s["packets"]-s["lost_packets"])/s["seconds"]))'
}

# The tcx variant filters for real: with another address as the only peer, the overlay is cut.
ip netns exec $h2 python3 bench/tcx-filter.py attach eth0 8472 192.0.2.254
if ip netns exec $h1 ping -c 2 -W 1 -i 0.2 -q "$dst" >/dev/null; then
    echo "tcx-filter.py did not drop VXLAN from a non-peer" >&2
    exit 1
fi
ip netns exec $h2 python3 bench/tcx-filter.py detach eth0
ip netns exec $h1 ping -c 2 -W 1 -i 0.2 -q "$dst" >/dev/null

variants=(none empty-input weft ingress tcx)
declare -A samples
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for ((r = 0; r < rounds; r++)); do
    for ((k = 0; k < ${#variants[@]}; k++)); do
        v=${variants[$(((k + r) % ${#variants[@]}))]}
        samples[$v]+="$(rate "$v") "
    done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

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
MD
)
block=$(mktemp)
printf '%s\n' "$section" >"$block"
write_doc_block filter-cost "$block"
rm -f "$block"
printf '%s\n' "$section"
