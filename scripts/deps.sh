#!/usr/bin/env bash
# Installs what weft's lab and tests need on a Debian machine, skipping what is already there.
set -euo pipefail

packages=(iproute2 iputils-ping nftables procps psmisc tcpdump iperf3 protobuf-compiler
          etcd-server etcd-client containernetworking-plugins build-essential pkg-config ca-certificates
          python3 python3-prometheus-client)

missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "weft: missing packages ${missing[*]}; run as root (sudo) to install them" >&2
        exit 1
    fi
    echo "weft: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    [[ -x "$HOME/.cargo/bin/cargo" ]] && export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "weft: no Rust toolchain found; install one with rustup (https://rustup.rs), Rust 1.85 or newer" >&2
    exit 1
fi
