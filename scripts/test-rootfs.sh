#!/bin/bash
# Builds (once) a small Debian root filesystem with SELinux policy for the
# tests, from the mirror this machine's apt already uses, and prints its
# path. Usage: scripts/test-rootfs.sh CACHE-DIR
set -euo pipefail
cache=$1
root="$cache/debian-rootfs"
if [ -f "$root/.complete" ]; then
    echo "$root"
    exit 0
fi
# The archive apt itself uses for bookworm's main component.
mirror=$(apt-get indextargets --format '$(URI)' 'Identifier: Packages' \
    | sed -n 's|/dists/bookworm/main/.*||p' | head -1)
[ -n "$mirror" ] || { echo "no bookworm archive among apt's sources" >&2; exit 1; }
rm -rf "$root"
mkdir -p "$cache"
mmdebstrap --quiet --variant=minbase \
    --include=selinux-policy-default,systemd,openssh-client \
    bookworm "$root" "$mirror" >&2
# Bootable composefs images have a /sysroot to mount the real root on.
mkdir -p "$root/sysroot"
touch "$root/.complete"
echo "$root"
