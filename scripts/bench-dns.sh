#!/usr/bin/env bash
# Cluster DNS benchmark of issue 8: builds the release binaries, installs the peer (dnsmasq, from
# Debian's dnsmasq-base) when missing, and runs capstan-dns-bench, which starts its own
# `capstan server --disable-agent` with N Services and a dnsmasq serving the same names from a
# generated hosts file (both on loopback, temp dirs) and prints a markdown table.
# usage: scripts/bench-dns.sh [capstan-dns-bench flags, e.g. --services 1000 --clients 64 --seconds 10]
# BENCH_PROFILE=debug runs a debug build instead (quick checks; figures not worth recording).
set -euo pipefail
source "$(dirname "$0")/common.sh"

main() {
    load_rust_env
    command -v cargo >/dev/null 2>&1 || die "cargo not found: run scripts/install-deps.sh first"
    if ! [ -x /usr/sbin/dnsmasq ]; then
        if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
            log "installing the peer: dnsmasq-base"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q dnsmasq-base >/dev/null ||
                log "could not install dnsmasq-base; the table will lack the peer"
        else
            log "dnsmasq missing and not root: the table will lack the peer"
        fi
    fi
    local target="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
    local profile="${BENCH_PROFILE:-release}"
    local flags=(--release)
    [ "$profile" = debug ] && flags=()
    log "building $profile binaries (capstan, capstan-dns-bench)"
    (cd "$REPO_ROOT" && cargo build "${flags[@]}" --quiet -p capstan -p capstan-bench --bin capstan --bin capstan-dns-bench)
    log "running the DNS benchmark"
    "$target/$profile/capstan-dns-bench" --capstan "$target/$profile/capstan" "$@"
}

main "$@"
