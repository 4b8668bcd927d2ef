#!/usr/bin/env bash
# Pod start benchmark of issue 5: 50 pods created through the API with 10 in flight, measured
# from create to the watch event showing them Running, on `capstan server` + a separate
# `capstan agent` (whose idle memory is reported), beside `podman kube play` of the same pod
# spec and bare `runc run --detach`. Builds release binaries, prints a markdown table and
# rewrites the pods block of docs/benchmarks.md. Needs root.
# usage: scripts/bench-pods.sh [capstan-pods-bench flags, e.g. --pods 20 --no-podman --bind-directly]
set -euo pipefail
source "$(dirname "$0")/common.sh"

main() {
    need_root
    load_rust_env
    command -v cargo >/dev/null 2>&1 || die "cargo not found: run scripts/install-deps.sh first"
    local tool
    for tool in runc podman; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool not found: run scripts/install-deps.sh"
    done
    [ -d /usr/lib/cni ] || [ -d /opt/cni/bin ] || die "CNI plugins not found: run scripts/install-deps.sh"
    local target="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
    log "building release binaries (capstan, capstan-pods-bench)"
    (cd "$REPO_ROOT" && cargo build --release --quiet -p capstan --bin capstan -p capstan-bench --bin capstan-pods-bench)
    local revision
    revision="$(git -C "$REPO_ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
    log "running the benchmark (about a minute)"
    "$target/release/capstan-pods-bench" \
        --capstan "$target/release/capstan" \
        --output "$REPO_ROOT/docs/benchmarks.md" \
        --revision "$revision" \
        "$@"
}

main "$@"
