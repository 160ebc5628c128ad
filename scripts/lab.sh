#!/usr/bin/env bash
# Quick start, part 1: build weft and bring up a multi-host overlay lab on this machine.
# Usage: sudo ./scripts/lab.sh [weft lab up flags, e.g. --nodes 5 --pods 2]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
cargo build --release --quiet
./target/release/weft lab up "$@"
cat <<'MSG'

The lab is up. Try:
  ./target/release/weft lab status             # hosts, subnets, agents
  ./target/release/weft lab add                # one more host, with its convergence time
  ./target/release/weft lab check              # ping matrix (with --pods: pods and outside too)
  ip netns exec weft-h1 ip route               # weft's routes on host 1
  ./target/release/weft lab down               # remove everything the lab made
With pods and DirectRouting: sudo ./scripts/lab.sh --pods 2 --rack-size 2 --direct-routing
MSG
