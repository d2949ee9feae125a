#!/bin/bash
# Demo of the image and repository commands on a small sample OS tree
# built here.
# Usage: scripts/demo.sh PATH-TO-cfs-deploy
set -euo pipefail
bin=$(realpath "$1")
work=$(mktemp -d "${TMPDIR:-/tmp}/cfs-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Building a sample OS tree in $root"
mkdir -p "$root"/{usr/bin,usr/lib/modules/6.12.0,etc,boot,sysroot,var,run/lock}
printf '#!/bin/sh\necho hello from the sample OS\n' > "$root/usr/bin/hello"
chmod 755 "$root/usr/bin/hello"
head -c 100000 /dev/urandom > "$root/usr/lib/modules/6.12.0/vmlinuz"
printf 'NAME="Sample OS"\nVERSION_ID=1\n' > "$root/usr/lib/os-release"
ln -s ../usr/lib/os-release "$root/etc/os-release"
ln "$root/usr/bin/hello" "$root/usr/bin/hello-again"
echo "a kernel lives here" > "$root/boot/README"
find "$root" | sed "s|$root||; s|^$|/|" | sort | head -20

step "Image id (same as 'cfsctl compute-id')"
"$bin" image compute-id "$root"

step "Bootable image id (/boot and /sysroot emptied, SELinux labels from the tree's policy)"
"$bin" image compute-id --bootable "$root"

step "Writing the image and reading it back as a dumpfile"
"$bin" image mkfs "$root" "$work/sample.erofs"
ls -l "$work/sample.erofs"
"$bin" image dump "$work/sample.erofs" | cut -c1-120

repo="$work/repo"
step "A repository (insecure: this kernel may lack fs-verity) and the image stored in it"
"$bin" --repo "$repo" repo init --insecure
"$bin" --repo "$repo" image create --name sample "$root"
"$bin" --repo "$repo" repo ls

if [ "$(id -u)" = 0 ]; then
    step "Mounting it as composefs does (erofs + overlay over the objects)"
    mkdir "$work/mnt"
    "$bin" --repo "$repo" image mount sample "$work/mnt"
    "$work/mnt/usr/bin/hello"
    ls -l "$work/mnt/usr/bin"
    umount "$work/mnt"
fi

step "Checking the repository, then collecting what no ref keeps"
"$bin" --repo "$repo" repo fsck
"$bin" --repo "$repo" image rm sample
"$bin" --repo "$repo" repo gc
"$bin" --repo "$repo" repo fsck
