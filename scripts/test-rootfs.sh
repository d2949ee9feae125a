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
mirror=$(grep -rhoE '^(deb|URIs:)[^#]*https?://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
    | grep -oE 'https?://[^ ]+' | head -1)
rm -rf "$root"
mkdir -p "$cache"
mmdebstrap --quiet --variant=minbase \
    --include=selinux-policy-default,systemd,openssh-client \
    bookworm "$root" "$mirror" >&2
touch "$root/.complete"
echo "$root"
