#!/usr/bin/env bash
# API benchmark of issues 2 and 3: builds the release binaries, runs capstan-bench (which starts its
# own `capstan server --disable-agent` on SQLite, a raw etcd peer, and a second `capstan server` on
# its own etcd, all on loopback with temp data dirs, measuring one at a time), prints markdown tables
# and rewrites the generated block of docs/benchmarks.md.
# usage: scripts/bench.sh [capstan-bench flags, e.g. --cell-seconds 1, --skip-backends,
#                          --output FILE instead of docs/benchmarks.md)]
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
    local minutes=5
    case " $* " in *" --skip-backends "*) minutes=3 ;; esac
    log "running the benchmark (about $minutes minutes)"
    "$target/release/capstan-bench" \
        --capstan "$target/release/capstan" \
        --etcd /usr/bin/etcd \
        --output "$REPO_ROOT/docs/benchmarks.md" \
        --revision "$revision" \
        "$@"
}

main "$@"
