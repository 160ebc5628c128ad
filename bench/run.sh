#!/usr/bin/env bash
# weft's benchmark suite (issue #6), one command:
#
#   sudo bench/run.sh            # full run (~8 min on 2 cores, plus the build): writes docs/benchmarks.{md,json},
#                                # docs/bench-dataplane.png, docs/bench-convergence.png
#   sudo bench/run.sh --quick    # smoke run (~1 min): 1 round, labs of 3 and 10, into target/bench-quick/
#
# Further options go to the runner (bench/weft-bench.rs): --only dataplane,convergence,footprint
# --rounds N --secs S --tests tcp1,tcp2,udp64,ping --sizes 3,10,30,50 --stores sqlite,etcd
# --adds N --out DIR; --report-only rewrites the docs and plots from benchmarks.json. WEFT_BENCH_POLL_MS sets the removal watchers' fallback dump interval.
# Everything runs inside lab namespaces named wbh-*, wbw-*, wbn-*, wbf-*, wbc-*; they are removed on exit,
# also after an error or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
if ! fc-list 2>/dev/null | grep -q DejaVuSans.ttf && [[ ! -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fonts-dejavu-core >/dev/null
fi
for t in iperf3 ethtool ping; do
    command -v $t >/dev/null || { echo "bench: $t missing" >&2; exit 1; }
done

labs=(wbh wbw wbn wbf wbc)
weft=./target/release/weft
cleanup() {
    for l in "${labs[@]}"; do $weft lab down --name "$l" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT INT TERM

cargo build --release --quiet --bin weft --bin weft-agent --bin weft-cni
# The runner itself needs no optimisation (the work is in the kernel, iperf3 and the agents).
cargo build --quiet --example weft-bench
cleanup
start=$(date +%s)
args=("$@")
WEFT_BENCH_COMMAND="sudo bench/run.sh${*:+ $*}" ./target/debug/examples/weft-bench --weft-bin "$weft" "${args[@]}"
echo "bench: done in $(($(date +%s) - start)) s" >&2
