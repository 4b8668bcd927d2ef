#!/usr/bin/env bash
# One command from a fresh Debian 12 machine (as root) to a running all-in-one Capstan cluster:
# installs missing packages, builds the release binary, (re)starts `capstan server` (control
# plane plus the local node's agent) in the background, waits until it is ready and its node is
# Ready, then runs the demo (3 web pods behind a Service) and shows it answering. Safe to run again: it restarts cleanly.
#
# Environment overrides: CAPSTAN_DATA_DIR (/var/lib/capstan), CAPSTAN_HTTPS_PORT (6443),
# CAPSTAN_LOG (/var/log/capstan.log), CAPSTAN_PID_FILE (/run/capstan.pid),
# CAPSTAN_READY_TIMEOUT seconds (60).
set -euo pipefail
source "$(dirname "$0")/common.sh"

DATA_DIR="${CAPSTAN_DATA_DIR:-/var/lib/capstan}"
HTTPS_PORT="${CAPSTAN_HTTPS_PORT:-6443}"
LOG_FILE="${CAPSTAN_LOG:-/var/log/capstan.log}"
PID_FILE="${CAPSTAN_PID_FILE:-/run/capstan.pid}"
READY_TIMEOUT="${CAPSTAN_READY_TIMEOUT:-60}"
BIN=/usr/local/bin/capstan
KUBECONFIG_FILE="$DATA_DIR/admin.kubeconfig"

build_and_install() {
    log "building capstan (release)"
    (cd "$REPO_ROOT" && cargo build --release -p capstan)
    local target_dir="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
    install -m 0755 "$target_dir/release/capstan" "$BIN.new"
    mv -f "$BIN.new" "$BIN"  # atomic: a running server keeps its old inode
    log "installed $BIN"
}

start_server() {
    mkdir -p "$DATA_DIR" "$(dirname "$LOG_FILE")" "$(dirname "$PID_FILE")"
    log "starting capstan server (data dir $DATA_DIR, port $HTTPS_PORT, log $LOG_FILE)"
    printf '\n=== %s capstan server starting ===\n' "$(date -Is)" >>"$LOG_FILE"
    # setsid: the server must outlive this script and its terminal.
    setsid "$BIN" server \
        --data-dir "$DATA_DIR" \
        --https-port "$HTTPS_PORT" \
        --bind-address 127.0.0.1 \
        </dev/null >>"$LOG_FILE" 2>&1 &
    echo "$!" >"$PID_FILE"
}

kubectl_bin() {
    command -v kubectl 2>/dev/null || true
}

server_alive() {
    kill -0 "$(cat "$PID_FILE")" 2>/dev/null
}

# Ready = the process lives, the kubeconfig exists and /readyz answers "ok" with admin credentials.
server_ready() {
    server_alive || { log "capstan server exited during start-up; last log lines:"; tail -n 30 "$LOG_FILE" >&2; exit 1; }
    [ -s "$KUBECONFIG_FILE" ] || return 1
    local kubectl out
    kubectl="$(kubectl_bin)"
    if [ -n "$kubectl" ]; then
        out="$("$kubectl" --kubeconfig "$KUBECONFIG_FILE" --request-timeout=2s get --raw /readyz 2>/dev/null)" || return 1
    else
        out="$(curl -sk --max-time 2 "https://127.0.0.1:$HTTPS_PORT/readyz")" || return 1
    fi
    [ "$out" = "ok" ]
}

kc() { KUBECONFIG="$KUBECONFIG_FILE" "$(kubectl_bin)" "$@"; }

node_ready() {
    [ "$(kc get nodes -o 'jsonpath={.items[*].status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = "True" ]
}

deployment_ready() {
    [ "$(kc get deployment web -o 'jsonpath={.status.readyReplicas}' 2>/dev/null)" = "3" ]
}

# The demo (the seed's Service example): a Deployment of 3 busybox web pods (the image is built
# from the host's busybox-static, no registry needed) behind a NodePort Service, reached through
# the service proxy's ClusterIP and NodePort rules.
show_cluster() {
    if [ -z "$(kubectl_bin)" ]; then
        log "kubectl is not installed; the cluster is up at https://127.0.0.1:$HTTPS_PORT"
        return
    fi
    wait_for "$READY_TIMEOUT" "the node to become Ready" node_ready ||
        { tail -n 30 "$LOG_FILE" >&2; exit 1; }
    log "kubectl get nodes -o wide"
    kc get nodes -o wide
    log "kubectl apply -f tests/e2e/fixtures/web-demo.yaml"
    kc apply -f "$REPO_ROOT/tests/e2e/fixtures/web-demo.yaml"
    wait_for "$READY_TIMEOUT" "deployment web to have 3 ready pods" deployment_ready ||
        { kc describe deployment web >&2; kc get pods -o wide >&2; exit 1; }
    kc get deployment,pods,service -l app=web -o wide
    kc get service web -o wide
    CLUSTER_IP="$(kc get service web -o 'jsonpath={.spec.clusterIP}')"
    NODE_PORT="$(kc get service web -o 'jsonpath={.spec.ports[0].nodePort}')"
    local i
    log "curl http://$CLUSTER_IP/ six times (the Service's ClusterIP; answers come from all 3 pods)"
    for i in 1 2 3 4 5 6; do
        curl -s --max-time 5 "http://$CLUSTER_IP/" || log "no answer from $CLUSTER_IP"
    done
}

print_usage() {
    cat <<USAGE

Capstan is running (pid $(cat "$PID_FILE"), API https://127.0.0.1:$HTTPS_PORT).
The demo web Service answers at http://${CLUSTER_IP:-<cluster-ip>}/ (its ClusterIP, from this
host or any pod) and on every node address at port ${NODE_PORT:-<node-port>} (NodePort):
  curl http://${CLUSTER_IP:-<cluster-ip>}/

  export KUBECONFIG=$KUBECONFIG_FILE
  kubectl get nodes,deployments,pods,services -o wide
  kubectl scale deployment web --replicas=5; kubectl rollout status deployment web
  kubectl exec -it deploy/web -- sh
  kubectl apply -f $REPO_ROOT/tests/e2e/fixtures/app.yaml

Logs:     tail -f $LOG_FILE
Stop:     sudo $REPO_ROOT/scripts/stop.sh
Restart:  sudo $REPO_ROOT/scripts/setup.sh
USAGE
}

main() {
    need_root
    "$REPO_ROOT/scripts/install-deps.sh"
    load_rust_env
    build_and_install
    "$REPO_ROOT/scripts/stop.sh"
    mkdir -p "$DATA_DIR"
    "$BIN" images build-busybox --data-dir "$DATA_DIR" >/dev/null
    start_server
    log "waiting up to ${READY_TIMEOUT}s for /readyz"
    wait_for "$READY_TIMEOUT" "capstan server to become ready" server_ready ||
        { tail -n 30 "$LOG_FILE" >&2; exit 1; }
    log "ready"
    show_cluster
    print_usage
}

main "$@"
