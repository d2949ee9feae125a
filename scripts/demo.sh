#!/bin/bash
# The main job on a built-in sample: builds a small bootable sample OS
# image (two versions) as an OCI layout here, installs the first to a
# disk image file, then on a host directory installs it, upgrades to the
# second version, rolls back, and prints the status after each step.
# Usage: scripts/demo.sh PATH-TO-cfs-deploy
set -euo pipefail
bin=$(realpath "$1")
here=$(dirname "$(realpath "$0")")
work=$(mktemp -d "${TMPDIR:-/tmp}/cfs-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# A sample OS: a kernel and initramfs (this machine's kernel if it can be
# read, else a stand-in: the demo does not boot), os-release, /etc, /var.
sample() { # DIR VERSION
    local root=$1 version=$2 kver=6.12.0
    mkdir -p "$root"/{usr/bin,usr/lib/modules/$kver,usr/lib/bootc/kargs.d,etc,boot,sysroot,var/lib/sample}
    local kernel
    kernel=$(ls /boot/vmlinuz-* 2>/dev/null | tail -1 || true)
    if [ -n "$kernel" ] && [ -r "$kernel" ]; then
        cp "$kernel" "$root/usr/lib/modules/$kver/vmlinuz"
    else
        head -c 200000 /dev/urandom > "$root/usr/lib/modules/$kver/vmlinuz"
    fi
    echo "initramfs of the sample OS" > "$root/usr/lib/modules/$kver/initramfs.img"
    printf 'ID=sample\nNAME="Sample OS"\nPRETTY_NAME="Sample OS %s"\nVERSION_ID=%s\n' \
        "$version" "$version" > "$root/usr/lib/os-release"
    ln -sf ../usr/lib/os-release "$root/etc/os-release"
    echo 'kargs = ["console=ttyS0"]' > "$root/usr/lib/bootc/kargs.d/10-console.toml"
    printf '#!/bin/sh\necho hello from sample OS %s\n' "$version" > "$root/usr/bin/hello"
    chmod 755 "$root/usr/bin/hello"
    echo sample > "$root/etc/hostname"
    echo "setting=default-$version" > "$root/etc/sample.conf"
    echo "state" > "$root/var/lib/sample/data"
}

step "Building the sample OS, versions 1 and 2, as an OCI layout"
layout="$work/layout"
sample "$work/v1" 1
sample "$work/v2" 2
"$here/oci-layout.py" "$layout" v1 "$work/v1"
"$here/oci-layout.py" "$layout" v2 "$work/v2"
"$here/oci-layout.py" "$layout" latest "$work/v1" > /dev/null

step "Installing version 1 to a disk image (GPT: ESP + ext4 root, systemd-boot)"
"$bin" --quiet install to-disk "$work/disk.img" --size 2G --insecure \
    --source "oci:$layout:latest"
sfdisk --dump "$work/disk.img" | sed -n '/^label:/p; /start=/p'

step "Installing version 1 on a host tree (physical root + ESP directories)"
host=(--sysroot "$work/host/root" --esp "$work/host/esp")
mkdir -p "$work/host/root" "$work/host/esp"
"$bin" --quiet install to-filesystem "$work/host/root" --esp "$work/host/esp" \
    --root-karg root=LABEL=root --insecure --source "oci:$layout:latest"
"$bin" status "${host[@]}"

step "An administrator edits /etc of the deployment"
dep=$(ls "$work/host/root/state/deploy")
echo "setting=mine" > "$work/host/root/state/deploy/$dep/etc/sample.conf"

step "Version 2 is published; upgrade --check, then upgrade"
"$here/oci-layout.py" "$layout" latest "$work/v2" > /dev/null
"$bin" upgrade --check "${host[@]}"
"$bin" --quiet upgrade "${host[@]}"
"$bin" status "${host[@]}"
new=$("$bin" --json status "${host[@]}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["deployments"][0]["id"])')
echo "/etc/sample.conf of the new deployment (the local edit is kept):"
cat "$work/host/root/state/deploy/$new/etc/sample.conf"

step "Boot entries on the ESP (version 2 is boot-counted: +3)"
ls "$work/host/esp/loader/entries"

step "Rolling back: version 1 is the next boot's default"
"$bin" rollback "${host[@]}"
"$bin" status "${host[@]}"

step "Rolling back again undoes it"
"$bin" rollback "${host[@]}"
"$bin" status "${host[@]}"

step "Garbage collection: nothing in use is removed"
"$bin" gc "${host[@]}"
