#!/usr/bin/env bash
# Scheduler benchmark of issue 6: builds the release binaries, runs capstan-scheduler-bench (which
# starts its own `capstan server --disable-agent` on SQLite with the built-in scheduler and
# `capstan simulate-nodes`, on loopback with temp data dirs) and prints a markdown table.
# usage: scripts/bench-scheduler.sh [capstan-scheduler-bench flags, e.g. --nodes 1000 --pods 5000]
set -euo pipefail
source "$(dirname "$0")/common.sh"

main() {
    load_rust_env
    command -v cargo >/dev/null 2>&1 || die "cargo not found: run scripts/install-deps.sh first"
    local target="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
    log "building release binaries (capstan, capstan-scheduler-bench)"
    (cd "$REPO_ROOT" && cargo build --release --quiet -p capstan -p capstan-bench --bin capstan --bin capstan-scheduler-bench)
    log "running the scheduler benchmark (several minutes at 5,000 nodes)"
    "$target/release/capstan-scheduler-bench" --capstan "$target/release/capstan" "$@"
}

main "$@"
