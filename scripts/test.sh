#!/usr/bin/env bash
# The whole test suite, as CI runs it (as root, CI=true, no stdin): installs what the tests need,
# then one debug build and `cargo test --workspace` (unit, integration, store conformance and the
# end-to-end tests in tests/e2e, which start their own servers on free ports and temp data dirs).
# Extra arguments go to `cargo test` (e.g. scripts/test.sh --test e2e -- restart).
set -euo pipefail
source "$(dirname "$0")/common.sh"

# The end-to-end tests drive the stock kubectl; they fail (never skip) without it.
check_kubectl() {
    local v missing=()
    for v in 27 33; do
        [ -x "/usr/lib/google-cloud-sdk/bin/kubectl.1.$v" ] || missing+=("kubectl.1.$v")
    done
    [ -x /usr/bin/kubectl ] || missing+=("/usr/bin/kubectl")
    [ "${#missing[@]}" -eq 0 ] ||
        die "end-to-end tests need the stock kubectl binaries, missing: ${missing[*]} (google-cloud-sdk kubectl components)"
}

main() {
    need_root
    "$REPO_ROOT/scripts/install-deps.sh"
    load_rust_env
    check_kubectl
    cd "$REPO_ROOT"
    export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}" RUST_BACKTRACE=1
    local start=$SECONDS
    # --no-fail-fast: one run reports every failing test binary, not just the first.
    cargo test --workspace --no-fail-fast "$@" </dev/null
    if [ "$#" -eq 0 ]; then
        # The foundation's kubectl end-to-end tests once more, every server on its own etcd
        # (issue 3: same tests, parameterised by the store backend). Same build, no rebuild.
        log "end-to-end kubectl tests on the etcd store backend"
        CAPSTAN_E2E_DATASTORE=etcd cargo test -p capstan --test e2e --no-fail-fast -- \
            kubectl_workflow:: bad_input:: restart:: </dev/null
    fi
    log "test suite passed in $((SECONDS - start))s"
}

main "$@"
