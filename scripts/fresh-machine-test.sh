#!/usr/bin/env bash
# `make test` on a fresh machine: a minimal Debian root filesystem (mmdebstrap
# --variant=minbase) on which no package of the project was ever installed, with only
# git and make added (what cloning and running need), a fresh `git clone` of a branch
# of this repository, then `make test` inside it, timed. The machine is a chroot in its
# own mount and PID namespaces (unshare; pivot_root makes it the namespace's root), with
# /dev, /proc and /sys of the host, so the compose test's podman runs inside it as on a
# real machine; everything it mounts
# vanishes with it. Needs root, mmdebstrap, unshare and pivot_root (docs/testing.md).
#   scripts/fresh-machine-test.sh [BRANCH] [WORKDIR]
# BRANCH: a committed branch (default: the checked-out one); WORKDIR: where the machine
# lives (default /var/tmp/safecity-fresh; the minimal root filesystem is cached there as
# rootfs.tar, unpacked afresh on every run). MAKE_TARGET=... runs another target.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BRANCH="${1:-$(git rev-parse --abbrev-ref HEAD)}"
WORK="${2:-/var/tmp/safecity-fresh}"
TARGET="${MAKE_TARGET:-test}"
SUITE=bookworm
ORIGIN="$(cd "$(git rev-parse --git-common-dir)" && pwd)"
ROOTFS="$WORK/rootfs"
# The host's local CA certificates: on a network that intercepts TLS, the fresh machine
# must trust that CA too (a property of the network, not of the project).
HOST_CAS=/usr/local/share/ca-certificates

say() { echo "fresh-machine: $*"; }
die() { echo "fresh-machine: error: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (mmdebstrap, chroot, mounts)"
command -v mmdebstrap >/dev/null || die "mmdebstrap missing (apt-get install mmdebstrap)"
git rev-parse --verify -q "refs/heads/$BRANCH" >/dev/null || die "no branch '$BRANCH'"
mkdir -p "$WORK"

if [ ! -f "$WORK/rootfs.tar" ]; then
    say "mmdebstrap --variant=minbase $SUITE (+ git, make) -> $WORK/rootfs.tar"
    hooks=()
    if compgen -G "$HOST_CAS/*.crt" >/dev/null; then
        hooks=(--include=ca-certificates
            "--customize-hook=sync-in $HOST_CAS $HOST_CAS"
            '--customize-hook=chroot "$1" update-ca-certificates')
    fi
    sources=()
    [ -f /etc/apt/sources.list.d/debian.sources ] && sources=(/etc/apt/sources.list.d/debian.sources)
    mmdebstrap --variant=minbase --format=tar --include=git,make "${hooks[@]}" \
        "$SUITE" "$WORK/rootfs.tar.part" "${sources[@]}"
    mv "$WORK/rootfs.tar.part" "$WORK/rootfs.tar"
fi

say "unpacking a pristine root filesystem into $ROOTFS"
rm -rf --one-file-system "$ROOTFS"
mkdir -p "$ROOTFS"
tar -xf "$WORK/rootfs.tar" -C "$ROOTFS"
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$ROOTFS/etc/hosts"
mkdir -p "$ROOTFS/mnt/origin"

# Inside: a clean environment (nothing of the host's shell), the CA bundle for pip when
# the host trusts a local CA, a fresh clone, then the timed make target.
ca_env=""
compgen -G "$HOST_CAS/*.crt" >/dev/null && ca_env="PIP_CERT=/etc/ssl/certs/ca-certificates.crt"
inner="set -e; cd /root; git clone -q --branch '$BRANCH' /mnt/origin safecity; cd safecity;
    echo \"fresh-machine: \$(git log -1 --format='%h %s' | cut -c1-100)\";
    start=\$(date +%s); rc=0; make $TARGET || rc=\$?;
    echo \"fresh-machine: make $TARGET exited \$rc after \$(( \$(date +%s) - start )) s\"; exit \$rc"

say "clone of '$BRANCH' and make $TARGET inside (the machine's output follows)"
exec unshare --mount --pid --fork --propagation private bash -c '
    set -e
    rootfs=$1 origin=$2 ca_env=$3 inner=$4
    # The root a mount point of its own, as on a real machine: podman remounts it
    # (containers-storage unpacks layers in a chroot and makes / private first).
    mount --bind "$rootfs" "$rootfs"
    mount --rbind /dev "$rootfs/dev"
    mount -t proc proc "$rootfs/proc"
    mount --rbind /sys "$rootfs/sys"
    mount -t tmpfs tmpfs "$rootfs/run"
    mount --bind "$origin" "$rootfs/mnt/origin"
    mount -o remount,bind,ro "$rootfs/mnt/origin"
    # The root filesystem becomes the root of the mount namespace (pivot_root), not a
    # chroot inside the host root: `podman exec` (every health check) joins a container
    # mount namespace, and under a bare chroot it landed in this root instead of the
    # container root (chdir to the image WORKDIR failed), which no real machine does.
    mkdir -p "$rootfs/.oldroot"
    cd "$rootfs"
    pivot_root . .oldroot
    exec /usr/sbin/chroot . /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin $ca_env \
        bash -c "umount -l /.oldroot && rmdir /.oldroot; $inner"
' fresh-machine "$ROOTFS" "$ORIGIN" "$ca_env" "$inner"
