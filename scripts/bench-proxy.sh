#!/usr/bin/env bash
# Service proxy benchmark of issue 8: rule sync time for 1,000 Services × 10 endpoints (build +
# render + one `nft -f` transaction on a benchmark-owned table) and for a change of one endpoint,
# beside kube-proxy's iptables mode (iptables-restore of the equivalent ruleset). Prints a
# markdown table; the table and the peer chains are removed afterwards. Needs root and nft.
# usage: scripts/bench-proxy.sh [capstan-proxy-bench flags, e.g. --services 1000 --endpoints 10 --runs 5]
set -euo pipefail
source "$(dirname "$0")/common.sh"

main() {
    need_root
    load_rust_env
    command -v cargo >/dev/null 2>&1 || die "cargo not found: run scripts/install-deps.sh first"
    command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || die "nft not found: run scripts/install-deps.sh"
    local target="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
    log "building the release benchmark (capstan-proxy-bench)"
    (cd "$REPO_ROOT" && cargo build --release --quiet -p capstan-bench --bin capstan-proxy-bench)
    "$target/release/capstan-proxy-bench" "$@"
}

main "$@"
