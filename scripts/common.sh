# Shared by the scripts in this directory (sourced, not executed).
# Paths, logging and the Rust toolchain environment.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export REPO_ROOT

# Minimum Rust version: kube 5 and the workspace's rust-version need 1.89.
MIN_RUST_MINOR=89

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

need_root() {
    [ "$(id -u)" -eq 0 ] || die "run this as root (sudo $0)"
}

# rustup installs into ~/.cargo/bin; sudo and CI shells often lack it on PATH.
load_rust_env() {
    local home_cargo
    for home_cargo in "${CARGO_HOME:-}" "$HOME/.cargo" "/root/.cargo"; do
        if [ -n "$home_cargo" ] && [ -x "$home_cargo/bin/cargo" ]; then
            case ":$PATH:" in
                *":$home_cargo/bin:"*) ;;
                *) PATH="$home_cargo/bin:$PATH" ;;
            esac
            break
        fi
    done
    export PATH
}

# The toolchain cannot be downloaded on these machines: check it, never install it.
check_rust() {
    load_rust_env
    command -v cargo >/dev/null 2>&1 || die "cargo not found; install Rust >= 1.$MIN_RUST_MINOR with rustup (https://rustup.rs)"
    local version minor
    version="$(rustc --version | awk '{print $2}')"
    minor="$(printf '%s' "$version" | cut -d. -f2)"
    [ "${version%%.*}" -ge 1 ] && [ "$minor" -ge "$MIN_RUST_MINOR" ] ||
        die "Rust $version is too old; Capstan needs >= 1.$MIN_RUST_MINOR"
    log "Rust toolchain: $(rustc --version)"
}

# Poll a condition (a command) until it succeeds or the deadline passes.
# usage: wait_for SECONDS DESCRIPTION CMD...
wait_for() {
    local seconds="$1" what="$2"
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "timed out after ${seconds}s waiting for $what"
            return 1
        fi
        sleep 0.2
    done
}
