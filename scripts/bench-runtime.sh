#!/usr/bin/env bash
# Container runtime benchmark of issue 4: start-to-exit of a container running `true`, Capstan
# (shim + runc) beside bare `runc run` and `crun run` of the same bundle and `podman run
# --network none` of the same image. Builds the release binaries, prints a markdown table and
# rewrites the runtime block of docs/benchmarks.md. Needs root.
# usage: scripts/bench-runtime.sh [capstan-runtime-bench flags, e.g. --runs 20 --no-podman]
set -euo pipefail
source "$(dirname "$0")/common.sh"

# crun 1.8 refuses cgroup v1 hybrid hosts while hugetlb is bound to the v2 hierarchy
# ("cgroups in hybrid mode not supported"); binding hugetlb to v1 lets it run.
bind_hugetlb_v1() {
    [ -d /sys/fs/cgroup/unified ] || return 0           # pure v1 or pure v2: nothing to do
    mountpoint -q /sys/fs/cgroup/hugetlb && return 0
    log "binding the hugetlb cgroup controller to v1 (/sys/fs/cgroup/hugetlb) for crun"
    mkdir -p /sys/fs/cgroup/hugetlb
    mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb ||
        die "could not bind hugetlb to cgroup v1; crun will not run on this host"
}

main() {
    need_root
    load_rust_env
    command -v cargo >/dev/null 2>&1 || die "cargo not found: run scripts/install-deps.sh first"
    local tool
    for tool in runc crun podman; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool not found: run scripts/install-deps.sh"
    done
    [ -x /bin/busybox ] || die "/bin/busybox not found: run scripts/install-deps.sh (busybox-static)"
    bind_hugetlb_v1
    local target="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
    log "building release binaries (capstan, capstan-runtime-bench)"
    (cd "$REPO_ROOT" && cargo build --release --quiet -p capstan --bin capstan -p capstan-bench --bin capstan-runtime-bench)
    local revision
    revision="$(git -C "$REPO_ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
    log "running the benchmark (about 30 s)"
    "$target/release/capstan-runtime-bench" \
        --capstan "$target/release/capstan" \
        --output "$REPO_ROOT/docs/benchmarks.md" \
        --revision "$revision" \
        "$@"
}

main "$@"
