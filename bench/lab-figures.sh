#!/usr/bin/env bash
# Issue-2 figures in the 3-host lab: time from a new host's agent start until every peer can ping
# it (median of ROUNDS `weft lab add`s), agent memory after joining, idle CPU. Rewrites its block
# (between the lab-figures markers) of docs/benchmarks.md; the full suite is bench/run.sh. Usage: sudo bench/lab-figures.sh [ROUNDS]   (default 15)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-15}
name=wbench
weft=./target/release/weft
source scripts/deps.sh
source bench/doc-section.sh
cargo build --release --quiet

$weft lab down --name $name >/dev/null 2>&1 || true
trap '$weft lab down --name $name >/dev/null 2>&1 || true' EXIT
$weft lab up --name $name --nodes 3 >/dev/null

# Convergence: add a 4th host, read the time the lab measured (agent spawn -> every peer's ping
# answered, probed every few ms), remove it again.
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

# Memory and idle CPU of the three agents, after joining and settling.
sleep 2
rss=() pss=() cpu=()
hz=$(getconf CLK_TCK)
for pid in $(for ns in $name-h1 $name-h2 $name-h3; do ip netns pids $ns; done); do
    [[ $(tr '\0' ' ' </proc/$pid/cmdline) == *" agent "* ]] || continue
    rss+=($(awk '/^VmRSS/{print $2}' /proc/$pid/status))
    pss+=($(awk '/^Pss:/{print $2}' /proc/$pid/smaps_rollup))
    t0=$(awk '{print $14 + $15}' /proc/$pid/stat)
    cpu+=("$pid:$t0")
done
sleep 10
idle=()
for e in "${cpu[@]}"; do
    pid=${e%%:*} t0=${e##*:}
    t1=$(awk '{print $14 + $15}' /proc/$pid/stat)
    idle+=($(awk -v d=$((t1 - t0)) -v hz=$hz 'BEGIN{printf "%.2f", 100 * d / hz / 10}'))
done
max_of() { printf '%s\n' "$@" | sort -n | tail -1; }
rss_mb=$(awk -v k=$(max_of "${rss[@]}") 'BEGIN{printf "%.1f", k / 1024}')
pss_mb=$(awk -v k=$(max_of "${pss[@]}") 'BEGIN{printf "%.1f", k / 1024}')
size_mb=$(awk -v b=$(stat -c %s $weft) 'BEGIN{printf "%.1f", b / 1048576}')

commit=$(bench_commit)
block=$(mktemp)
cat >"$block" <<MD
Figures from \`sudo bench/lab-figures.sh $rounds\` (release build). Machine: $(nproc) cores,
kernel $(uname -r), $(date -u +%Y-%m-%d), commit $commit. The lab is the default 3-host lab
(veth underlay through a router namespace, embedded SQLite store).

| figure | weft | target | flannel v0.20.2 (same machine kind) |
|---|---|---|---|
| new host reachable by every peer after its agent starts, median of $n | **$median ms** (min $min, max $max) | ≤ 50 ms | 100–220 ms |
| agent resident memory after joining (largest of 3), RSS | **$rss_mb MB** (PSS $pss_mb MB) | ≤ 10 MB | ~43 MB |
| agent CPU while idle (10 s, each of 3) | ${idle[*]} % | ≈ 0 | |
| binary size (stripped, LTO) | $size_mb MB | | |

How the convergence time is measured: \`weft lab add\` starts the new host's agent and, from that
instant, every other host pings the new host's overlay address every few milliseconds with an
in-process ICMP prober; the figure is the moment the last peer first gets an answer. It includes
process start, leasing, device creation, the peers noticing the new lease and programming it, and
the new host programming its peers.

Raw convergence samples (ms): ${times[*]}
MD
write_doc_block lab-figures "$block"
cat "$block"
rm -f "$block"
