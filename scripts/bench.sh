#!/usr/bin/env bash
# API benchmark of issue 2: builds the release binaries, runs capstan-bench (which starts its own
# `capstan server --disable-agent` and an etcd peer on loopback, each with a temp data dir), prints
# a markdown table and rewrites the generated block of docs/benchmarks.md.
# usage: scripts/bench.sh [capstan-bench flags, e.g. --cell-seconds 1]
set -euo pipefail
source "$(dirname "$0")/common.sh"

main() {
    load_rust_env
    command -v cargo >/dev/null 2>&1 || die "cargo not found: run scripts/install-deps.sh first"
    [ -x /usr/bin/etcd ] || die "/usr/bin/etcd not found: run scripts/install-deps.sh (Debian package etcd-server)"
    local target="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
    log "building release binaries (capstan, capstan-bench)"
    (cd "$REPO_ROOT" && cargo build --release --quiet -p capstan -p capstan-bench)
    local revision
    revision="$(git -C "$REPO_ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
    log "running the benchmark (about 3 minutes)"
    "$target/release/capstan-bench" \
        --capstan "$target/release/capstan" \
        --etcd /usr/bin/etcd \
        --output "$REPO_ROOT/docs/benchmarks.md" \
        --revision "$revision" \
        "$@"
}

main "$@"
