#!/usr/bin/env bash
# Stops the server started by setup.sh: SIGTERM, then SIGKILL if it has not exited in time.
# Does nothing when no server runs. Only the process named in the pid file is signalled.
set -euo pipefail
source "$(dirname "$0")/common.sh"

PID_FILE="${CAPSTAN_PID_FILE:-/run/capstan.pid}"
STOP_TIMEOUT="${CAPSTAN_STOP_TIMEOUT:-15}"

# A stale pid file may name a recycled pid: only signal it if it really is capstan.
is_capstan() {
    local pid="$1"
    [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'capstan server'
}

gone() { ! kill -0 "$1" 2>/dev/null; }

main() {
    [ -f "$PID_FILE" ] || { log "no pid file at $PID_FILE: nothing to stop"; return 0; }
    local pid
    pid="$(cat "$PID_FILE")"
    if [ -n "$pid" ] && is_capstan "$pid"; then
        log "stopping capstan server (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        if ! wait_for "$STOP_TIMEOUT" "pid $pid to exit" gone "$pid"; then
            log "sending SIGKILL to $pid"
            kill -KILL "$pid" 2>/dev/null || true
            wait_for 5 "pid $pid to exit after SIGKILL" gone "$pid"
        fi
    else
        log "pid file names no running capstan server: removing it"
    fi
    rm -f "$PID_FILE"
}

main "$@"
