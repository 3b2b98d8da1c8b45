#!/usr/bin/env bash
# Idempotent set-up of a fresh Linux machine for `make run` / `make test`:
# Debian packages for the broker and the database, then the project virtualenv.
#   scripts/setup.sh               what `make run` needs
#   scripts/setup.sh --test        plus what the tests drive: Chromium, docker-compose,
#                                  podman (runc) and mmdebstrap for the compose run
#   scripts/setup.sh --python-only only the virtualenv (enough for `make lint`)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PACKAGES=(mosquitto mosquitto-clients influxdb)
# Tests only: chromium, the browser the console test drives (Playwright with Debian's
# build, no download); docker-compose, whose `config` validates docker-compose.yml
# without a Docker engine (no recommends: the engine itself is not installed); podman
# with runc (crun fails on cgroup v1 hosts), its network stack and mmdebstrap, which
# run docker-compose.yml for real from images built from Debian packages
# (tests/test_compose_podman.py, docs/compose.md).
TEST_PACKAGES=(chromium docker-compose podman runc netavark aardvark-dns slirp4netns
    uidmap catatonit conmon mmdebstrap)
CHROMIUM=/usr/bin/chromium
VENV=.venv
STAMP="$VENV/.installed"
PYTHON="${PYTHON:-python3}"

say() { echo "setup: $*"; }
die() { echo "setup: error: $*" >&2; exit 1; }

python_only=false
for_tests=false
case "${1:-}" in
    --python-only) python_only=true ;;
    --test) for_tests=true; PACKAGES+=("${TEST_PACKAGES[@]}") ;;
    "") ;;
    *) die "unknown argument '$1' (usage: $0 [--test | --python-only])" ;;
esac

# /usr/sbin is often not on a non-root PATH, yet it is where Debian puts mosquitto.
have() {
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/local/sbin/$1" ]
}

apt_lists_empty() {
    ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null
}

install_system_packages() {
    local missing=()
    for cmd in mosquitto mosquitto_pub influxd; do
        have "$cmd" || missing+=("$cmd")
    done
    if $for_tests; then
        [ -x "$CHROMIUM" ] || missing+=("$CHROMIUM")
        have docker-compose || missing+=(docker-compose)
        for cmd in podman runc mmdebstrap netavark; do
            have "$cmd" || [ -x "/usr/lib/podman/$cmd" ] || missing+=("$cmd")
        done
    fi
    if [ ${#missing[@]} -eq 0 ]; then
        say "packages present: ${PACKAGES[*]}"
        return
    fi
    say "missing: ${missing[*]}; installing Debian packages ${PACKAGES[*]}"

    local install_cmd="apt-get install -y --no-install-recommends ${PACKAGES[*]}"
    command -v apt-get >/dev/null 2>&1 \
        || die "apt-get not found: install ${PACKAGES[*]} with your package manager"
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

    export DEBIAN_FRONTEND=noninteractive
    # `apt-get update` only when needed: it is slow and needs the network.
    if apt_lists_empty || ! "${sudo[@]}" apt-get install -y --no-install-recommends "${PACKAGES[@]}"; then
        say "apt-get update"
        "${sudo[@]}" apt-get update
        "${sudo[@]}" apt-get install -y --no-install-recommends "${PACKAGES[@]}"
    fi

    # The packages may have started their system daemons on 1883/8086; the stack runs
    # its own instances, so stop those. Every step may fail (no init system, nothing
    # started). pkill is limited to the daemons' own users so that a stack of ours,
    # which runs as the invoking user, is never hit.
    say "stopping the packages' system daemons (the stack runs its own)"
    "${sudo[@]}" service mosquitto stop >/dev/null 2>&1 || true
    "${sudo[@]}" service influxdb stop >/dev/null 2>&1 || true
    "${sudo[@]}" pkill -x -u mosquitto mosquitto >/dev/null 2>&1 || true
    "${sudo[@]}" pkill -x -u influxdb influxd >/dev/null 2>&1 || true

    for cmd in mosquitto mosquitto_pub influxd; do
        have "$cmd" || die "$cmd still missing after installing ${PACKAGES[*]}"
    done
    if $for_tests; then
        [ -x "$CHROMIUM" ] || die "$CHROMIUM still missing after installing ${PACKAGES[*]}"
        have docker-compose || die "docker-compose still missing after installing ${PACKAGES[*]}"
        for cmd in podman runc mmdebstrap; do
            have "$cmd" || die "$cmd still missing after installing ${PACKAGES[*]}"
        done
    fi
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

    if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
        say "installing the project and dev tools into $VENV (pip install -e '.[dev]')"
        "$VENV/bin/python" -m pip install -e '.[dev]'
        # The NGSI-LD client of the tests; its dependencies are in the dev extra (see
        # pyproject.toml: its metadata pins an httpx older than ours).
        "$VENV/bin/python" -m pip install --no-deps 'ngsildclient==0.5.2'
        touch "$STAMP"
    else
        say "$VENV up to date"
    fi
}

if ! $python_only; then
    install_system_packages
fi
setup_venv
say "done"
