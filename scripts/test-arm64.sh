#!/usr/bin/env bash
# Install gated and run its test suite in an arm64 Debian 12 (bookworm) root under qemu user
# emulation: what Raspberry Pi OS 64-bit is built on. Slow (tens of minutes); not part of CI.
#
#   sudo scripts/test-arm64.sh [pytest args…]
#
# Needs root on a Debian/Ubuntu amd64 host with binfmt_misc (a VM or a privileged container).
# Installs debootstrap and qemu-user-static with apt-get, builds the root once in
# ${ARM64_ROOT:-/var/tmp/gated-arm64} (reused on later runs), copies this checkout into it and
# runs `scripts/test.sh` there: the same setup, lint and suite as on any other machine. It proves
# every compiled dependency has an aarch64 wheel and the tests hold on a slower CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$(pwd)
root=${ARM64_ROOT:-/var/tmp/gated-arm64}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if [ "$(id -u)" -ne 0 ]; then
    echo "test-arm64: run as root (debootstrap, chroot and binfmt need it)" >&2
    exit 1
fi

if ! command -v debootstrap >/dev/null || [ ! -e /usr/bin/qemu-aarch64-static ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap qemu-user-static binfmt-support >/dev/null
fi
# The kernel runs aarch64 binaries through qemu only once the handler is registered.
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    update-binfmts --enable qemu-aarch64 || systemctl restart systemd-binfmt || true
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    echo "test-arm64: no binfmt handler for aarch64 (is binfmt_misc available here?)" >&2
    exit 1
fi

if [ ! -x "$root/usr/bin/python3" ]; then
    echo "test-arm64: building an arm64 bookworm root in $root (once)" >&2
    debootstrap --arch=arm64 --variant=minbase \
        --include=python3,python3-venv,python3-pip,mosquitto,ca-certificates,procps \
        bookworm "$root" "$mirror"
fi
# Static qemu inside the root, for hosts whose handler is not registered with the F flag.
cp /usr/bin/qemu-aarch64-static "$root/usr/bin/"

cleanup() {
    for m in dev/pts dev proc sys; do
        mountpoint -q "$root/$m" && umount -l "$root/$m"
    done
}
trap cleanup EXIT
mount --bind /proc "$root/proc"
mount --bind /sys "$root/sys"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"
cp /etc/resolv.conf "$root/etc/resolv.conf"

# A clean copy of the checkout: no host venv (x86_64 wheels), no caches.
rm -rf "$root/opt/gated"
mkdir -p "$root/opt/gated"
tar -C "$src" --exclude=./.venv --exclude=./.git --exclude=./var --exclude='*.egg-info' \
    --exclude='__pycache__' --exclude=.pytest_cache --exclude=.ruff_cache -cf - . |
    tar -C "$root/opt/gated" -xf -

echo "test-arm64: $(chroot "$root" uname -m), $(chroot "$root" python3 --version)" >&2
chroot "$root" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
    /bin/bash -c 'cd /opt/gated && scripts/test.sh "$@"' test-arm64 "$@"
