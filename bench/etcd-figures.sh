#!/usr/bin/env bash
# Issue-3 figures with etcd in the lab (one member in the router namespace): time from a new
# host's agent start until every peer can ping it (median of ROUNDS `weft lab add`s in the 3-host
# lab), and time until 50 agents started at once all reach each other. Rewrites its block
# (between the etcd-figures markers) of docs/benchmarks.md. Usage: sudo bench/etcd-figures.sh [ROUNDS]  (default 15)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-15}
name=wbetcd
weft=./target/release/weft
source scripts/deps.sh
source bench/doc-section.sh
cargo build --release --quiet

$weft lab down --name $name >/dev/null 2>&1 || true
trap '$weft lab down --name $name >/dev/null 2>&1 || true' EXIT
$weft lab up --name $name --nodes 3 --store etcd >/dev/null

times=()
for ((i = 1; i <= rounds; i++)); do
    out=$($weft lab add --name $name)
    ms=$(sed -n 's/.*reaches it \([0-9]*\) ms after its agent started.*/\1/p' <<<"$out")
    host=$(sed -n 's/^added \(h[0-9]*\) .*/\1/p' <<<"$out")
    [[ -n $ms && -n $host ]] || { echo "unexpected output: $out" >&2; exit 1; }
    times+=("$ms")
    $weft lab remove "$host" --name $name >/dev/null
done
sorted=($(printf '%s\n' "${times[@]}" | sort -n))
n=${#sorted[@]}
median=${sorted[$((n / 2))]}
min=${sorted[0]}
max=${sorted[$((n - 1))]}
$weft lab down --name $name >/dev/null

# 50 agents started at once (one right after the other, no waiting in between): until every one
# of the 2450 pairs has answered a ping over the overlay. Median of RUNS50 labs; the same with the
# SQLite store alongside, as a yardstick for what the machine's load costs.
runs50=${RUNS50:-5}
conv50() { # store -> ms
    local out ms
    out=$($weft lab up --name $name --nodes 50 --store "$1" --timeout 120s)
    ms=$(sed -n 's/.*reach each other over the overlay \([0-9]*\) ms after the agents started.*/\1/p' <<<"$out")
    [[ -n $ms ]] || { echo "unexpected output: $out" >&2; exit 1; }
    if [[ $1 == etcd ]]; then
        # conv50 runs in a subshell: leave the count in a file.
        ip netns exec $name-router env ETCDCTL_API=3 etcdctl --endpoints http://192.0.2.2:2379 lease list \
            | head -1 >"$leasefile"
    fi
    $weft lab down --name $name >/dev/null
    echo "$ms"
}
etcd50=() sqlite50=()
leasefile=$(mktemp)
for ((i = 1; i <= runs50; i++)); do
    etcd50+=("$(conv50 etcd)")
    sqlite50+=("$(conv50 sqlite)")
done
median() { local s=($(printf '%s\n' "$@" | sort -n)); echo "${s[$((${#s[@]} / 2))]}"; }
ms50=$(median "${etcd50[@]}")
sq50=$(median "${sqlite50[@]}")
# etcd's lease count in the last etcd lab, read before its teardown.
leases50=$(cat "$leasefile")
rm -f "$leasefile"
load=$(cut -d' ' -f1-3 /proc/loadavg)

commit=$(bench_commit)
section=$(cat <<MD
## With etcd (issue 3)

Figures from \`sudo bench/etcd-figures.sh $rounds\` (release build). Machine: $(nproc) cores,
kernel $(uname -r), $(date -u +%Y-%m-%d), commit $commit. Store: Debian's etcd $(etcd --version | sed -n 's/^etcd Version: //p'),
one member inside the lab's router namespace (\`weft lab up --store etcd\`), agents on
\`--etcd-endpoints http://192.0.2.2:2379\`.

| figure | weft | target | flannel v0.20.2 (same machine kind) |
|---|---|---|---|
| new host reachable by every peer after its agent starts, 3-host lab, median of $n | **$median ms** (min $min, max $max) | ≤ 50 ms | 100–220 ms |
| 50 agents started at once: every pair (2450) answers, from the first agent's start, median of $runs50 | **$ms50 ms** (SQLite store, same runs: $sq50 ms) | ≤ 3 s | |
| etcd leases held by the 50 agents afterwards | $leases50 | one per agent | one per renewal, never revoked |

Measured as in the section above (in-process ICMP probes every few ms from every peer).

The machine was shared with other builds while measuring (load average $load at the end, on 2
cores), which is what spreads the samples.

Raw join samples (ms): ${times[*]}
Raw 50-agent samples (ms): etcd ${etcd50[*]}; SQLite ${sqlite50[*]}
MD
)
block=$(mktemp)
printf '%s\n\n' "$section" >"$block"
write_doc_block etcd-figures "$block"
rm -f "$block"
printf '%s\n' "$section"
