# Shared by scripts/bench-edge, bench-keys-api and bench-waf (sourced, not
# run): installing what a benchmark needs from Debian, the release binary,
# free loopback ports and a throwaway certificate.

# bench_install PKG... : installs the Debian packages named (as root, or
# through sudo), quietly unless the first attempt fails.
bench_install() {
    (($#)) || return 0
    local sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    echo "$(basename "$0"): installing $*" >&2
    export DEBIAN_FRONTEND=noninteractive
    "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 || {
        "${sudo_cmd[@]}" apt-get update -qq
        "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "$@"
    }
}

# bench_release_bin : builds the release `rampart` and prints its path, or
# prints $RAMPART_BENCH_BIN when set (a binary built elsewhere, to compare
# two builds on the same load).
bench_release_bin() {
    if [ -n "${RAMPART_BENCH_BIN:-}" ]; then
        echo "$RAMPART_BENCH_BIN"
        return
    fi
    cargo build --release -q -p rampart
    local target="${CARGO_TARGET_DIR:-target}"
    case "$target" in
        /*) echo "$target/release/rampart" ;;
        *) echo "$PWD/$target/release/rampart" ;;
    esac
}

# free_port : a TCP port on 127.0.0.1 that nothing listens on now.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# bench_cert KEY CERT CN SAN : a one-day self-signed ECDSA P-256 certificate.
bench_cert() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
        -subj "/CN=$3" -addext "subjectAltName=$4" -keyout "$1" -out "$2" 2>/dev/null
}
