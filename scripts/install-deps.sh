#!/usr/bin/env bash
# Installs what building, running and testing Capstan needs on Debian 12 (idempotent).
# Only missing packages are installed; apt-get update runs at most once.
# Starts nothing. Used by setup.sh and test.sh.
set -euo pipefail
source "$(dirname "$0")/common.sh"

# build: compiler, linker, pkg-config; protoc + well-known .proto files for tonic-prost-build
# (etcd-client). runtime: OCI runtimes, CNI plugins (iptables for their masquerade and hostPort
# rules), nft, ip, etcd for the etcd
# store backend, busybox-static to build test images without downloading any, docker-registry and
# apache2-utils (htpasswd) for image pull tests, podman as the runtime benchmarks' peer
# (catatonit: the pause process of `podman kube play`).
PACKAGES=(
    build-essential pkg-config ca-certificates curl diffutils procps
    protobuf-compiler libprotobuf-dev
    runc crun containernetworking-plugins nftables iptables iproute2 etcd-server etcd-client busybox-static
    docker-registry apache2-utils
    podman catatonit
)

missing_packages() {
    local pkg
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
            printf '%s\n' "$pkg"
    done
}

main() {
    need_root
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: these scripts target Debian 12"
    local missing
    mapfile -t missing < <(missing_packages)
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # etcd-server's postinst would start a system etcd on :2379; tests start their own.
        apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
        stop_packaged_etcd
    else
        log "Debian packages: all present"
    fi
    check_rust
}

# Debian starts etcd at install time where an init system exists; it would hold port 2379.
stop_packaged_etcd() {
    if command -v service >/dev/null 2>&1 && [ -e /etc/init.d/etcd ]; then
        service etcd stop >/dev/null 2>&1 || true
    fi
}

main "$@"
