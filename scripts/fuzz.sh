#!/usr/bin/env bash
# Fuzzing weft's parsers with cargo-fuzz (libFuzzer) on the stable toolchain; docs/reliability.md,
# "Fuzzing", says what each target checks and what the runs found.
#
#   scripts/fuzz.sh --ci [SECONDS]    every target for SECONDS (default 15) from the committed
#                                     seeds; fails on the first crash (the test suite's step)
#   scripts/fuzz.sh TARGET [SECONDS]  one target for SECONDS (default 600), its corpus kept in
#                                     fuzz/corpus-local/TARGET across runs
#   scripts/fuzz.sh --list            the targets
#
# Stable works because of `--sanitizer none`: cargo-fuzz then passes rustc only stable `-C`
# flags (SanitizerCoverage instrumentation) and no `-Z` one. What is lost is AddressSanitizer,
# which safe Rust hardly needs: a panic (index out of range, overflow, unwrap) aborts the target
# and libFuzzer reports it as a crash either way.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned so that CI builds the same tool every time; --locked uses its tested dependencies.
CARGO_FUZZ_VERSION=0.13.2

usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

targets() {
    cargo fuzz list --fuzz-dir fuzz
}

ensure_cargo_fuzz() {
    if cargo fuzz --version 2>/dev/null | grep -qF "$CARGO_FUZZ_VERSION"; then
        return
    fi
    # libFuzzer itself is C++, compiled by libfuzzer-sys: it needs a C++ compiler.
    if ! command -v c++ >/dev/null 2>&1; then
        echo "weft fuzz: no C++ compiler; install build-essential (scripts/deps.sh does)" >&2
        exit 1
    fi
    echo "weft fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION (a minute or two, once)" >&2
    cargo install --quiet --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
}

# Release build with debug assertions (so overflow and debug_assert! fire), instrumented for
# coverage only. One build serves every target. It is of weft's pure part only (fuzz/Cargo.toml
# leaves out weft's `runtime` feature), a couple of minutes of CPU from scratch.
build() {
    cargo fuzz build --fuzz-dir fuzz --sanitizer none --debug-assertions "$@"
}

# run TARGET SECONDS WORK_DIR: fuzzes TARGET, new inputs going into WORK_DIR, the committed seeds
# read but never written. Prints libFuzzer's closing "Done N runs in S second(s)" line.
run() {
    local target=$1 seconds=$2 work=$3 log
    mkdir -p "$work"
    log=$(mktemp)
    local seeds=()
    [[ -d fuzz/corpus/$target ]] && seeds=("fuzz/corpus/$target")
    # -max_len: every target's real inputs are a few hundred bytes; 4 KiB leaves room for the
    # parsers' size limits (a lease's 4096 bytes) without slowing each run down.
    # -rss_limit_mb: a parser that allocates without bound on a small input is a bug too.
    if ! cargo fuzz run --fuzz-dir fuzz --sanitizer none --debug-assertions "$target" \
        "$work" "${seeds[@]}" -- \
        -max_total_time="$seconds" -max_len=4096 -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        rm -f "$log"
        echo "weft fuzz: $target CRASHED; the input is in fuzz/artifacts/$target/ (replay it with" \
            "cargo fuzz run --fuzz-dir fuzz --sanitizer none $target fuzz/artifacts/$target/<file>)" >&2
        return 1
    fi
    local done_line
    done_line=$(grep -E '^Done [0-9]+ runs' "$log" | tail -n 1)
    local cov
    cov=$(grep -E '^#[0-9]+.*(DONE|INITED)' "$log" | tail -n 1 | grep -oE 'cov: [0-9]+ ft: [0-9]+' || true)
    rm -f "$log"
    printf 'weft fuzz: %-14s %s (%s)\n' "$target" "$done_line" "${cov:-no coverage line}"
}

case "${1:-}" in
--ci)
    seconds=${2:-15}
    ensure_cargo_fuzz
    started=$SECONDS
    build
    echo "weft fuzz: built every target in $((SECONDS - started)) s" >&2
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    passed=0
    failed=0
    for t in $(targets); do
        if run "$t" "$seconds" "$work/$t"; then
            passed=$((passed + 1))
        else
            failed=$((failed + 1))
        fi
    done
    echo "weft fuzz: done in $((SECONDS - started)) s" >&2
    # A plain closing line, one per target run.
    echo "fuzz: $passed passed, $failed failed"
    [[ $failed -eq 0 ]]
    ;;
--list)
    ensure_cargo_fuzz
    targets
    ;;
"" | -h | --help)
    usage
    ;;
*)
    target=$1
    seconds=${2:-600}
    ensure_cargo_fuzz
    if ! targets | grep -qx "$target"; then
        echo "weft fuzz: no target $target; the targets are:" $(targets) >&2
        exit 2
    fi
    build "$target"
    run "$target" "$seconds" "fuzz/corpus-local/$target"
    ;;
esac
