#!/usr/bin/env bash
# Quick start, part 2: the whole test suite (unit, property and integration tests).
# Integration tests build real namespaces and VXLAN devices, so they need root; as root,
# WEFT_REQUIRE_ROOT=1 makes any test that cannot do so fail instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
if [[ $(id -u) -eq 0 ]]; then
    export WEFT_REQUIRE_ROOT="${WEFT_REQUIRE_ROOT:-1}"
fi
cargo build --quiet --all-targets
cargo test --no-fail-fast -- --test-threads "${WEFT_TEST_THREADS:-2}"

# Fuzzing (docs/reliability.md, "Fuzzing"): a bounded run of every fuzz target from the committed
# seeds, failing on any crash. It installs cargo-fuzz itself if missing. WEFT_FUZZ_SECONDS sets
# the seconds per target; 0 skips the step.
if [[ ${WEFT_FUZZ_SECONDS:-5} != 0 ]]; then
    ./scripts/fuzz.sh --ci "${WEFT_FUZZ_SECONDS:-5}"
fi
