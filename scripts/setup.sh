#!/usr/bin/env bash
# Idempotent set-up of a fresh Linux machine for `make run` / `make test`:
# Debian packages for the broker and the database, then the project virtualenv.
#   scripts/setup.sh               what `make run` needs
#   scripts/setup.sh --test        plus what the tests drive: Chromium, docker-compose,
#                                  podman (runc, iptables) and mmdebstrap for the compose
#                                  run, promtool; each missing piece named with its package
#   scripts/setup.sh --python-only only the virtualenv (enough for `make lint`)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Each piece the stack needs and the Debian package that provides it: "piece package".
# A piece is a command (looked up on PATH, in the sbin directories and podman's helper
# directories), an absolute path (a file that exists), `lib:NAME` (a shared library the
# dynamic linker knows) or `ensurepip` (what `python3 -m venv` needs).
# curl and jq: the README's and the docs' steps beside `make run` use them.
# gcc, make, the C library's headers (gcc only recommends them: a minimal Debian has
# none) and Mosquitto's plugin headers build the broker's guard plugin
# (broker/plugin/safecity_guard.c, into build/broker/).
NEEDS=("mosquitto mosquitto" "mosquitto_pub mosquitto-clients" "mosquitto_sub mosquitto-clients"
    "influxd influxdb" "python3 python3" "ensurepip python3-venv" "curl curl" "jq jq"
    "gcc gcc" "make make" "/usr/include/string.h libc6-dev"
    "/usr/include/mosquitto_plugin.h mosquitto-dev"
    "/usr/include/mosquitto.h libmosquitto-dev")
# Tests only: chromium, the browser the console test drives (Playwright with Debian's
# build, no download); docker-compose, whose `config` validates docker-compose.yml
# without a Docker engine (no recommends: the engine itself is not installed); podman
# with runc (crun fails on cgroup v1 hosts), its network stack (netavark sets up the
# containers' networks with iptables, which podman only suggests) and
# mmdebstrap, which run docker-compose.yml for real from images built from Debian
# packages (tests/test_compose_podman.py, docs/compose.md); promtool (Debian's
# prometheus), which checks the platform's alert rules and every service's /metrics;
# node and npm, which run the tests' OpenID Connect provider (npm's oidc-provider,
# installed from tests/helpers/oidc/package-lock.json); libatomic1, which Playwright's
# own node driver links against (no package of a minimal Debian pulls it in).
TEST_NEEDS=("/usr/bin/chromium chromium" "docker-compose docker-compose" "podman podman"
    "runc runc" "conmon conmon" "netavark netavark" "aardvark-dns aardvark-dns"
    "iptables iptables" "slirp4netns slirp4netns" "newuidmap uidmap" "catatonit catatonit"
    "mmdebstrap mmdebstrap" "promtool prometheus" "node nodejs" "npm npm"
    "lib:libatomic.so.1 libatomic1")
OIDC_DIR=tests/helpers/oidc
VENV=.venv
STAMP="$VENV/.installed"
# Runtime and test dependencies pinned with hashes (`make lock` updates it).
LOCK=requirements-dev.lock
NODEPS_LOCK=requirements-nodeps.lock
PYTHON="${PYTHON:-python3}"

say() { echo "setup: $*"; }
die() { echo "setup: error: $*" >&2; exit 1; }

python_only=false
for_tests=false
case "${1:-}" in
    --python-only) python_only=true ;;
    --test) for_tests=true; NEEDS+=("${TEST_NEEDS[@]}") ;;
    "") ;;
    *) die "unknown argument '$1' (usage: $0 [--test | --python-only])" ;;
esac

# /usr/sbin is often not on a non-root PATH, yet it is where Debian puts mosquitto;
# podman's helpers live in its own directories.
have() {
    case "$1" in
        /*) [ -e "$1" ] ;;
        ensurepip) "$PYTHON" -c 'import ensurepip' >/dev/null 2>&1 || [ -x "$VENV/bin/python" ] ;;
        lib:*) /sbin/ldconfig -p 2>/dev/null | grep -qE "^[[:space:]]+${1#lib:} " ;;
        *) command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ] \
            || [ -x "/usr/local/sbin/$1" ] || [ -x "/usr/lib/podman/$1" ] \
            || [ -x "/usr/libexec/podman/$1" ] ;;
    esac
}

# The preflight check: one line per missing piece, naming its package; sets `packages`.
preflight() {
    packages=()
    local need piece package
    for need in "${NEEDS[@]}"; do
        read -r piece package <<<"$need"
        if ! have "$piece"; then
            echo "setup: missing $piece (Debian package $package)" >&2
            [[ " ${packages[*]} " == *" $package "* ]] || packages+=("$package")
        fi
    done
}

apt_lists_empty() {
    ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null
}

install_system_packages() {
    preflight
    if [ ${#packages[@]} -eq 0 ]; then
        say "preflight: every piece present (${#NEEDS[@]} checked)"
        return
    fi
    local install_cmd="apt-get install -y --no-install-recommends ${packages[*]}"
    command -v apt-get >/dev/null 2>&1 \
        || die "apt-get not found: install ${packages[*]} with your package manager"
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            echo "setup: cannot install packages without root; run this, then retry:" >&2
            echo "    sudo apt-get update && sudo $install_cmd" >&2
            exit 1
        fi
    fi
    say "installing Debian packages ${packages[*]}"

    export DEBIAN_FRONTEND=noninteractive
    # `apt-get update` only when needed: it is slow and needs the network.
    if apt_lists_empty || ! "${sudo[@]}" apt-get install -y --no-install-recommends "${packages[@]}"; then
        say "apt-get update"
        "${sudo[@]}" apt-get update
        "${sudo[@]}" apt-get install -y --no-install-recommends "${packages[@]}"
    fi

    # The packages may have started their system daemons on 1883/8086/9090; the stack
    # runs its own instances, so stop those. Every step may fail (no init system, nothing
    # started). pkill is limited to the daemons' own users so that a stack of ours,
    # which runs as the invoking user, is never hit.
    say "stopping the packages' system daemons (the stack runs its own)"
    local daemon
    for daemon in mosquitto influxdb prometheus; do
        "${sudo[@]}" service "$daemon" stop >/dev/null 2>&1 || true
    done
    "${sudo[@]}" pkill -x -u mosquitto mosquitto >/dev/null 2>&1 || true
    "${sudo[@]}" pkill -x -u influxdb influxd >/dev/null 2>&1 || true
    "${sudo[@]}" pkill -x -u prometheus prometheus >/dev/null 2>&1 || true

    preflight
    [ ${#packages[@]} -eq 0 ] || die "still missing after apt-get install (lines above)"
}

python_ok() {
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null
}

setup_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        command -v "$PYTHON" >/dev/null 2>&1 \
            || die "$PYTHON not found: install Python >= 3.11 (apt-get install python3 python3-venv)"
        if ! python_ok "$PYTHON"; then
            die "Python >= 3.11 needed, $PYTHON is $("$PYTHON" -V 2>&1); set PYTHON=/path/to/python3.11+"
        fi
        say "creating $VENV with $("$PYTHON" -V 2>&1)"
        "$PYTHON" -m venv "$VENV" \
            || die "python -m venv failed: install the Debian package python3-venv"
    fi
    python_ok "$VENV/bin/python" \
        || die "$VENV uses $("$VENV/bin/python" -V 2>&1), need >= 3.11: remove $VENV and retry"

    if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ "$LOCK" -nt "$STAMP" ] \
        || [ "$NODEPS_LOCK" -nt "$STAMP" ]; then
        # Exactly the locked versions, each checked against its hash; then the project
        # itself, whose dependencies are all in the lock already.
        say "installing the locked dependencies into $VENV (pip install --require-hashes -r $LOCK)"
        "$VENV/bin/python" -m pip install --require-hashes -r "$LOCK"
        say "installing the project into $VENV (pip install --no-deps -e .)"
        "$VENV/bin/python" -m pip install --no-deps -e .
        # The NGSI-LD client of the tests, without its dependencies (they are in the lock;
        # its metadata pins an httpx older than ours): requirements-nodeps.in.
        "$VENV/bin/python" -m pip install --no-deps --require-hashes -r "$NODEPS_LOCK"
        touch "$STAMP"
    else
        say "$VENV up to date"
    fi
}

# The tests' identity provider: exactly the locked npm packages (integrity-checked).
setup_oidc_provider() {
    if [ ! -d "$OIDC_DIR/node_modules/oidc-provider" ] \
        || [ "$OIDC_DIR/package-lock.json" -nt "$OIDC_DIR/node_modules/.package-lock.json" ]; then
        say "installing the tests' OIDC provider (npm ci in $OIDC_DIR)"
        npm ci --prefix "$OIDC_DIR" --no-audit --no-fund --loglevel=error
    else
        say "$OIDC_DIR up to date"
    fi
}

# The broker's guard plugin (the local stack and the tests load it before dynamic security).
build_guard() {
    say "building the broker guard plugin (make -C broker/plugin OUT=$PWD/build/broker)"
    make -s -C broker/plugin OUT="$PWD/build/broker"
}

if ! $python_only; then
    install_system_packages
    build_guard
fi
setup_venv
if $for_tests; then
    setup_oidc_provider
fi
say "done"
