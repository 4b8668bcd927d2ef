#!/usr/bin/env bash
# Multi-node network benchmark of issue 10 (must-show 4): two hosts made of network namespaces on
# one Linux bridge (as tests/e2e/hosts.rs builds them), `capstan server` in host A and `capstan
# agent` in host B, three busybox pods pinned by nodeName (two on A, one on B). The host's iperf3
# and ping, run inside the network namespaces, measure TCP throughput (10 s) and RTT for
#   host A -> host B (the link itself), pod A1 -> pod A2 (same node), pod A1 -> pod B (host-gw or vxlan).
# Prints a markdown table with the ratios; everything it made is removed on exit.
# Needs root. usage: scripts/bench-multinode.sh  (env: CAPSTAN_BIN, KUBECTL, BENCH_SECONDS,
# FLANNEL_BACKEND=host-gw|vxlan for the cross-node path, default host-gw)
set -euo pipefail
source "$(dirname "$0")/common.sh"

CAPSTAN="${CAPSTAN_BIN:-$REPO_ROOT/target/debug/capstan}"
KUBECTL="${KUBECTL:-/usr/bin/kubectl}"
BENCH_SECONDS="${BENCH_SECONDS:-10}"
BACKEND="${FLANNEL_BACKEND:-host-gw}"
IMAGE="docker.io/library/busybox:latest"
START_TIMEOUT=180

# Names unique to this run (interface names stay under 15 characters).
TAG="$(($$ % 100000))"
BRIDGE="cbb$TAG"
SCRATCH=""
declare -a NETNS VETH ADDR NODE CNI_BR RUN_DIR CGROUP PROXY DATA PID
declare -a IPERF_PIDS=()
RESULT=""
KUBECONFIG_FILE=""

for i in 0 1; do
    NETNS[i]="capstan-bench-$TAG-h$i"
    VETH[i]="cbv${TAG}h$i"
    NODE[i]="bench$TAG-h$i"
    CNI_BR[i]="cbc${TAG}h$i"
    RUN_DIR[i]="/run/capstan-bench-$TAG-h$i"
    CGROUP[i]="/capstan-bench-$TAG-h$i"
    PROXY[i]="cbt${TAG}h$i"
    DATA[i]=""
    PID[i]=""
done

# ---- tools -----------------------------------------------------------------------------------

install_tools() {
    local pkgs=()
    command -v iperf3 >/dev/null 2>&1 || pkgs+=(iperf3)
    command -v ping >/dev/null 2>&1 || pkgs+=(iputils-ping)
    command -v jq >/dev/null 2>&1 || pkgs+=(jq)
    [ "${#pkgs[@]}" -eq 0 ] && return 0
    log "installing ${pkgs[*]} from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${pkgs[@]}" >/dev/null ||
        { apt-get update -q >/dev/null && apt-get install -y -q "${pkgs[@]}" >/dev/null; }
}

# ---- clean-up (trap) -------------------------------------------------------------------------

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

stop_pid() {
    local pid="$1"
    alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    wait_for 15 "pid $pid to exit" bash -c "! kill -0 $pid 2>/dev/null" 2>/dev/null || {
        kill -KILL "$pid" 2>/dev/null || true
        wait_for 5 "pid $pid to exit after SIGKILL" bash -c "! kill -0 $pid 2>/dev/null" || true
    }
    wait "$pid" 2>/dev/null || true
}

node_ps() { # node_ps I [ps flags]: the runtime's view of host I's node
    local i="$1"
    shift
    "$CAPSTAN" ps --data-dir "${DATA[i]}" --run-dir "${RUN_DIR[i]}" --cgroup-parent "${CGROUP[i]}" "$@"
}

no_sandboxes() {
    local i
    for i in 0 1; do
        [ -n "${DATA[i]}" ] || continue
        [ -z "$(node_ps "$i" --pods -q 2>/dev/null)" ] || return 1
    done
}

# Every pid in a cgroup (v1 or v2) subtree, of every hierarchy the node made it in.
cgroup_pids() {
    local parent="${1#/}" d
    for d in /sys/fs/cgroup/*/"$parent" /sys/fs/cgroup/"$parent"; do
        [ -d "$d" ] || continue
        find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null
    done | sort -u
}

remove_cgroups() {
    local parent="${1#/}" d
    for d in /sys/fs/cgroup/*/"$parent" /sys/fs/cgroup/"$parent"; do
        [ -d "$d" ] || continue
        # Deepest first: a cgroup directory goes only once its children are gone.
        find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
}

unmount_under() {
    local dir="$1"
    [ -n "$dir" ] || return 0
    awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { print length($2), $2 }' /proc/self/mounts |
        sort -rn | cut -d' ' -f2- | while read -r target; do
        umount -l "$target" 2>/dev/null || true
    done
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    log "cleaning up"
    # Pods first, while the kubelets run: they stop the containers and CNI DEL the sandboxes.
    if [ -n "$KUBECONFIG_FILE" ] && [ -f "$KUBECONFIG_FILE" ] && alive "${PID[0]}"; then
        kc delete pods -l app=capstan-bench --grace-period=1 --wait=true --timeout=60s >/dev/null 2>&1
        wait_for 30 "the pod sandboxes to go" no_sandboxes
    fi
    local p
    for p in "${IPERF_PIDS[@]}"; do
        alive "$p" && kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    stop_pid "${PID[1]}"
    stop_pid "${PID[0]}"
    local i
    for i in 1 0; do
        # Whatever the kubelet did not tear down: its containers' processes, mounts, state.
        for p in $(cgroup_pids "${CGROUP[i]}"); do kill -KILL "$p" 2>/dev/null; done
        unmount_under "${RUN_DIR[i]}"
        unmount_under "${DATA[i]}"
        # The node's CNI bridge, nft table and iptables chains live in the host's netns.
        ip netns del "${NETNS[i]}" 2>/dev/null
        ip link del "${VETH[i]}" 2>/dev/null
        rm -rf "${RUN_DIR[i]}"
        [ -n "${DATA[i]}" ] && rm -rf "${DATA[i]}"
    done
    for i in 1 0; do
        wait_for 10 "cgroup ${CGROUP[i]} to empty" bash -c "[ -z \"\$(find /sys/fs/cgroup/*${CGROUP[i]} -name cgroup.procs -exec cat {} + 2>/dev/null)\" ]"
        remove_cgroups "${CGROUP[i]}"
    done
    ip link del "$BRIDGE" 2>/dev/null
    [ -n "$SCRATCH" ] && rm -rf "$SCRATCH"
    exit "$rc"
}

# ---- the hosts -------------------------------------------------------------------------------

kc() { HOME="$SCRATCH/home" "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

# A /24 of 10.250.0.0/16 no interface of the root namespace uses.
free_subnet() {
    local addrs x i
    addrs="$(ip -4 -o addr show)"
    for i in $(seq 0 249); do
        x=$(((TAG + i) % 250 + 1))
        case "$addrs" in *" 10.250.$x."*) ;; *) echo "$x"; return 0 ;; esac
    done
    die "no free 10.250.x.0/24"
}

# A cluster CIDR (a /16 of 172.20.0.0/14+) the root namespace has no route or NAT rule for:
# with br_netfilter, bridged packets meet the root namespace's per-pod-IP CNI rules.
free_cluster_cidr() {
    local seen x i
    seen="$(ip -4 route show table all; iptables-save -t nat 2>/dev/null)"
    for i in $(seq 0 11); do
        x=$((20 + (TAG + i) % 12))
        case "$seen" in *"172.$x."*) ;; *) echo "172.$x.0.0/16"; return 0 ;; esac
    done
    die "no free 172.x.0.0/16 for the cluster CIDR"
}

SERVICE_CIDR="10.$((100 + TAG % 100)).0.0/16"
CLUSTER_DNS="10.$((100 + TAG % 100)).0.10"
NODE_PORTS="$((30000 + TAG % 27 * 100))-$((30000 + TAG % 27 * 100 + 99))"

make_hosts() {
    local x i gw
    x="$(free_subnet)"
    gw="10.250.$x.1"
    ip link add "$BRIDGE" type bridge
    ip addr add "$gw/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    for i in 0 1; do
        ADDR[i]="10.250.$x.$((10 + i))"
        ip netns add "${NETNS[i]}"
        ip link add "${VETH[i]}" type veth peer name eth0 netns "${NETNS[i]}"
        ip link set "${VETH[i]}" master "$BRIDGE" up
        ip -n "${NETNS[i]}" addr add "${ADDR[i]}/24" dev eth0
        ip -n "${NETNS[i]}" link set eth0 up
        ip -n "${NETNS[i]}" link set lo up
        ip -n "${NETNS[i]}" route add default via "$gw"
        DATA[i]="$(mktemp -d /tmp/capstan-bench-host-XXXXXX)"
        "$CAPSTAN" images build-busybox --data-dir "${DATA[i]}" "$IMAGE" >"$SCRATCH/image-$i.log" 2>&1 ||
            die "building the busybox image: $(cat "$SCRATCH/image-$i.log")"
    done
}

# Runs capstan (server or agent) in host I's network namespace only: its mounts stay in the
# root mount namespace, where the clean-up finds them.
spawn_in() {
    local i="$1"
    shift
    RUST_LOG="${RUST_LOG:-info}" CAPSTAN_TOKEN='' nsenter --net="/run/netns/${NETNS[i]}" -- \
        "$CAPSTAN" "$@" --data-dir "${DATA[i]}" \
        --node-name "${NODE[i]}" --node-ip "${ADDR[i]}" --kubelet-port 10250 \
        --cni-bridge "${CNI_BR[i]}" --run-dir "${RUN_DIR[i]}" --cgroup-parent "${CGROUP[i]}" \
        --pod-log-dir "${DATA[i]}/pod-logs" --proxy-table "${PROXY[i]}" \
        --cluster-dns "$CLUSTER_DNS" </dev/null >>"${DATA[i]}/capstan.log" 2>&1 &
    PID[i]=$!
}

running() { alive "${PID[0]}" && { [ -z "${PID[1]}" ] || alive "${PID[1]}"; }; }

api_ready() {
    running || die "capstan exited: $(tail -n 30 "${DATA[0]}/capstan.log" "${DATA[1]}/capstan.log" 2>/dev/null)"
    [ -f "$KUBECONFIG_FILE" ] && [ "$(kc --request-timeout=2s get --raw /readyz 2>/dev/null)" = ok ]
}

nodes_ready() {
    running || die "capstan exited: $(tail -n 30 "${DATA[0]}/capstan.log" "${DATA[1]}/capstan.log" 2>/dev/null)"
    local ready
    ready="$(kc get nodes -o jsonpath='{range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null)"
    grep -qx "${NODE[0]} True" <<<"$ready" && grep -qx "${NODE[1]} True" <<<"$ready"
}

start_cluster() {
    KUBECONFIG_FILE="${DATA[0]}/admin.kubeconfig"
    spawn_in 0 server --bind-address "${ADDR[0]}" --https-port 6443 --tls-san "${ADDR[0]}" \
        --service-cidr "$SERVICE_CIDR" --service-node-port-range "$NODE_PORTS" \
        --cluster-cidr "$(free_cluster_cidr)" --flannel-backend "$BACKEND"
    wait_for "$START_TIMEOUT" "the API server" api_ready || die "server not ready"
    local token
    token="$("$CAPSTAN" token --data-dir "${DATA[0]}")"
    spawn_in 1 agent --server "https://${ADDR[0]}:6443" --token "$token" --flannel-backend "$BACKEND"
    wait_for "$START_TIMEOUT" "both nodes Ready" nodes_ready || die "nodes not Ready"
}

pod_yaml() { # pod_yaml NAME NODE
    cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $1
  labels: {app: capstan-bench}
spec:
  nodeName: $2
  terminationGracePeriodSeconds: 1
  containers:
  - name: sleep
    image: $IMAGE
    imagePullPolicy: Never
    command: ["sleep", "3600"]
---
EOF
}

pods_running() {
    running || die "capstan exited"
    local n
    n="$(kc get pods -l app=capstan-bench -o jsonpath='{range .items[*]}{.status.phase} {.status.podIP}{"\n"}{end}' 2>/dev/null |
        grep -c '^Running [0-9]')" || true
    [ "$n" -eq 3 ]
}

# The pod's network namespace: `capstan ps --pods` on its node names the sandbox (short id), whose
# namespace the runtime bind-mounts at <run dir>/netns/<sandbox id>; the pod IP must be on it.
# If that fails (ps output changed), every netns of the node is searched for the pod IP.
pod_netns() { # pod_netns POD HOST_INDEX -> path
    local pod="$1" i="$2" ip short f
    ip="$(kc get pod "$pod" -o jsonpath='{.status.podIP}')"
    short="$(node_ps "$i" --pods 2>/dev/null | awk -v p="$pod" '{ for (k = 1; k <= NF; k++) if ($k == p) print $1 }' | head -n1)"
    for f in "${RUN_DIR[i]}"/netns/"$short"* "${RUN_DIR[i]}"/netns/*; do
        [ -e "$f" ] || continue
        if nsenter --net="$f" ip -4 -o addr show 2>/dev/null | grep -q " inet $ip/"; then
            case "$(basename "$f")" in
                "$short"?*) ;;
                *) log "$pod: capstan ps named no sandbox with its IP; found $f by the IP" ;;
            esac
            echo "$f"
            return 0
        fi
    done
    die "no network namespace with $pod's IP $ip on ${NODE[i]}"
}

# ---- measurements ----------------------------------------------------------------------------

listening() { nsenter --net="$1" ss -ltnH 2>/dev/null | grep -q ":$2 "; }

reachable() { nsenter --net="$1" ping -n -c 1 -W 1 "$2" >/dev/null 2>&1; }

# measure SRC_NETNS DST_NETNS DST_IP: sets RESULT to "gbps avg_ms p99_ms". Not run in a subshell,
# so the iperf3 server's pid is in IPERF_PIDS for the clean-up if anything fails.
measure() {
    local src="$1" dst="$2" ip="$3" port=5201 out gbps times
    # host-gw routes may land a moment after the nodes are Ready.
    wait_for 60 "$ip to answer pings" reachable "$src" "$ip" || die "$ip unreachable from $src"
    nsenter --net="$dst" iperf3 -s -1 -B "$ip" -p "$port" >/dev/null 2>&1 &
    IPERF_PIDS+=($!)
    wait_for 10 "iperf3 server on $ip" listening "$dst" "$port" || die "iperf3 server did not start"
    # Bounded: iperf3 waits forever on a peer that stopped answering.
    out="$(timeout $((BENCH_SECONDS + 30)) nsenter --net="$src" iperf3 -c "$ip" -p "$port" -t "$BENCH_SECONDS" -J)" ||
        die "iperf3 to $ip failed: $(jq -r '.error? // empty' <<<"$out" 2>/dev/null)"
    gbps="$(jq -r '.end.sum_received.bits_per_second / 1e9' <<<"$out")"
    # 200 pings 10 ms apart; avg and p99 from the per-packet times.
    times="$(timeout 60 nsenter --net="$src" ping -n -c 200 -i 0.01 "$ip" | sed -n 's/.*time=\([0-9.]*\) ms/\1/p' | sort -n)"
    [ -n "$times" ] || die "no ping replies from $ip"
    RESULT="$(awk -v g="$gbps" '{ t[NR] = $1; s += $1 } END {
        i = int(NR * 0.99); if (i < 1) i = 1; if (i > NR) i = NR
        printf "%.3f %.3f %.3f\n", g, s / NR, t[i] }' <<<"$times")"
}

main() {
    need_root
    [[ "$BENCH_SECONDS" =~ ^[1-9][0-9]*$ ]] || die "BENCH_SECONDS must be a whole number of seconds"
    [ -x "$CAPSTAN" ] || die "no capstan binary at $CAPSTAN (cargo build -p capstan, or set CAPSTAN_BIN)"
    [ -x "$KUBECTL" ] || KUBECTL="$(command -v kubectl)" || die "kubectl not found"
    install_tools
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    SCRATCH="$(mktemp -d /tmp/capstan-bench-mn-XXXXXX)"
    mkdir -p "$SCRATCH/home"
    local t0=$SECONDS
    log "building 2 hosts on bridge $BRIDGE"
    make_hosts
    log "starting capstan server in ${NETNS[0]} and agent in ${NETNS[1]}"
    start_cluster
    log "both nodes Ready after $((SECONDS - t0)) s; starting 3 pods"
    { pod_yaml bench-a1 "${NODE[0]}"; pod_yaml bench-a2 "${NODE[0]}"; pod_yaml bench-b1 "${NODE[1]}"; } |
        kc apply -f - >/dev/null
    wait_for "$START_TIMEOUT" "3 pods Running" pods_running || die "pods not Running: $(kc get pods -o wide)"
    local a1 a2 b1 ip_a2 ip_b1
    a1="$(pod_netns bench-a1 0)"
    a2="$(pod_netns bench-a2 0)"
    b1="$(pod_netns bench-b1 1)"
    ip_a2="$(kc get pod bench-a2 -o jsonpath='{.status.podIP}')"
    ip_b1="$(kc get pod bench-b1 -o jsonpath='{.status.podIP}')"
    log "pod netns: bench-a1 $a1, bench-a2 $a2 ($ip_a2), bench-b1 $b1 ($ip_b1)"
    local via
    via="$(ip -n "${NETNS[0]}" -4 route get "$ip_b1" | head -n1 | sed "s/ *uid .*//")"
    log "host A's route to bench-b1: $via"
    log "pods Running after $((SECONDS - t0)) s; measuring (${BENCH_SECONDS} s iperf3 + 200 pings per path)"
    local host same cross
    measure "/run/netns/${NETNS[0]}" "/run/netns/${NETNS[1]}" "${ADDR[1]}"
    host="$RESULT"
    measure "$a1" "$a2" "$ip_a2"
    same="$RESULT"
    measure "$a1" "$b1" "$ip_b1"
    cross="$RESULT"

    local rev hg ha hp sg sa sp cg ca cp
    rev="$(git -C "$REPO_ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
    printf '\n## Multi-node network benchmark (issue 10)\n\n'
    printf -- '- date: %s\n- nproc: %s, load average: %s\n- revision: %s\n' \
        "$(date -u '+%Y-%m-%d %H:%M UTC')" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)" "$rev"
    printf -- '- iperf3 %s s TCP (one stream), ping -c 200 -i 0.01; kernel %s\n' "$BENCH_SECONDS" "$(uname -r)"
    printf -- '- cross-node route in host A: `%s`\n\n' "$via"
    printf '| path | Gbit/s | RTT avg ms | RTT p99 ms | throughput vs host-to-host | throughput vs same-node |\n'
    printf '|---|---:|---:|---:|---:|---:|\n'
    read -r hg ha hp <<<"$host"
    read -r sg sa sp <<<"$same"
    read -r cg ca cp <<<"$cross"
    awk -v be="$BACKEND" -v hg="$hg" -v ha="$ha" -v hp="$hp" -v sg="$sg" -v sa="$sa" -v sp="$sp" \
        -v cg="$cg" -v ca="$ca" -v cp="$cp" 'BEGIN {
        printf "| host A → host B (the link) | %.2f | %.3f | %.3f | 1.00 | %.2f |\n", hg, ha, hp, hg / sg
        printf "| pod on A → pod on A (same node) | %.2f | %.3f | %.3f | %.2f | 1.00 |\n", sg, sa, sp, sg / hg
        printf "| pod on A → pod on B (cross node, %s) | %.2f | %.3f | %.3f | %.2f | %.2f |\n", be, cg, ca, cp, cg / hg, cg / sg
    }'
    printf '\n(total %s s)\n' "$((SECONDS - t0))"
}

main "$@"
