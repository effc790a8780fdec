#!/usr/bin/env bash
# Install what building, testing and demoing Distributed Servers needs on Debian 12.
# Idempotent and quiet: when everything is present it prints nothing and touches no network.
set -euo pipefail

PACKAGES=(clang llvm libelf-dev zlib1g-dev pkg-config iproute2 nftables iptables ethtool tshark curl wrk iperf3 python3 gcc libc6-dev protobuf-compiler etcd-server nginx rt-tests)
OPTIONAL=(libbpf-dev) # installed when the distribution has it

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

available() {
    apt-cache show "$1" >/dev/null 2>&1
}

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup.sh: this script expects a Debian-based system (apt-get/dpkg not found)" >&2
    exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
    installed "$p" || missing+=("$p")
done
optional_missing=()
for p in "${OPTIONAL[@]}"; do
    installed "$p" || optional_missing+=("$p")
done

if ((${#missing[@]} + ${#optional_missing[@]} > 0)); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup.sh: missing packages: ${missing[*]} ${optional_missing[*]}; run as root to install them" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # Only refresh the package lists when a package we need is really missing (or unknown).
    need_update=0
    for p in "${missing[@]}" "${optional_missing[@]}"; do
        available "$p" || need_update=1
    done
    ((${#missing[@]} > 0)) && need_update=1
    if ((need_update)); then
        echo "setup.sh: apt-get update" >&2
        apt-get update -qq
    fi
    for p in "${optional_missing[@]}"; do
        if available "$p"; then
            missing+=("$p")
        else
            echo "setup.sh: optional package $p not available, skipping" >&2
        fi
    done
    if ((${#missing[@]} > 0)); then
        echo "setup.sh: installing ${missing[*]}" >&2
        # tshark asks whether non-root users may capture; answer no without a prompt.
        echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
        # nginx and etcd are benchmark and test peers started by the project itself, never
        # system services: keep their packages' init scripts from starting them.
        policy=/usr/sbin/policy-rc.d
        made_policy=0
        if [[ ! -e $policy ]]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
        fi
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        if ((made_policy)); then rm -f "$policy"; fi
    fi
fi

if ! command -v cargo >/dev/null 2>&1; then
    if [[ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]]; then
        echo "setup.sh: cargo is installed in ${CARGO_HOME:-$HOME/.cargo}/bin but not on PATH;" \
            "run: export PATH=\"${CARGO_HOME:-$HOME/.cargo}/bin:\$PATH\"" >&2
    else
        echo "setup.sh: cargo not found: install a Rust toolchain (1.85 or newer) first, e.g. with rustup" >&2
    fi
    exit 1
fi
