#!/bin/bash
# Boots a real installed host in QEMU: a Debian trixie image (kernel,
# systemd, dracut with our setup-root module) made into an OCI layout,
# installed with `cfs-deploy install to-disk --insecure`, booted with
# QEMU TCG + OVMF + systemd-boot. A unit in the image prints
# `CFS-BOOTED <composefs id> <VERSION_ID>` on the serial console and
# powers off; the script asserts that line, with the id install printed.
#
# Usage: scripts/vm-test.sh PATH-TO-cfs-deploy
# Environment: CACHE (default target/vm-cache) keeps the trixie root
# filesystem between runs; VM_TIMEOUT (default 300) bounds each boot, in
# seconds; KEEP_WORK=1 keeps the work directory (disk, serial log).
#
# Measured on the project's machine (2 cores shared with other jobs, load
# about 6, QEMU TCG -smp 2 -m 1536), Debian trixie kernel 6.12, systemd 257:
#   trixie rootfs (mmdebstrap, first run only, then cached)  107 s, 334 MB
#   image tree + dracut initramfs with our module              47 s
#   OCI layout (one gzip -1 layer)                             19-30 s
#   install to-disk (3 GiB sparse image)                        8-27 s
#   boot to poweroff                                            71 s
#     (guest clock: setup-root done at 28 s, marker at 49 s, power down 59 s)
#   whole run with a cached rootfs                             145 s
set -euo pipefail
bin=$(realpath "$1")
here=$(dirname "$(realpath "$0")")
top=$(dirname "$here")
cache=$(realpath -m "${CACHE:-$top/target/vm-cache}")
timeout_s=${VM_TIMEOUT:-300}
work=$(mktemp -d "${TMPDIR:-/tmp}/cfs-vm.XXXXXX")
cleanup() {
    if [ "${KEEP_WORK:-0}" = 1 ]; then
        echo "work directory kept: $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

started=$SECONDS
phase_start=$SECONDS
phase() { # NAME: ends the previous phase, starts NAME
    if [ -n "${phase_name:-}" ]; then
        printf '== %-28s %4d s\n' "$phase_name" $((SECONDS - phase_start))
    fi
    phase_name=$1
    phase_start=$SECONDS
}

for tool in mmdebstrap qemu-system-x86_64 sfdisk mkfs.vfat mcopy mkfs.ext4 python3; do
    command -v "$tool" >/dev/null || { echo "vm-test: $tool is missing (scripts/setup.sh)" >&2; exit 1; }
done
ovmf=/usr/share/OVMF
[ -f "$ovmf/OVMF_CODE_4M.fd" ] || { echo "vm-test: no OVMF firmware in $ovmf (package ovmf)" >&2; exit 1; }

phase "trixie rootfs (cached)"
rootfs="$cache/rootfs"
if ! [ -f "$rootfs/.complete" ]; then
    # The archive apt itself uses for bookworm's main component serves
    # trixie too.
    mirror=$(apt-get indextargets --format '$(URI)' 'Identifier: Packages' \
        | sed -n 's|/dists/bookworm/main/.*||p' | head -1)
    [ -n "$mirror" ] || { echo "vm-test: no bookworm archive among apt's sources" >&2; exit 1; }
    rm -rf "$rootfs" "$rootfs.tmp"
    mkdir -p "$cache"
    mmdebstrap --quiet --variant=minbase \
        --include=linux-image-amd64,systemd,systemd-sysv,dracut,udev,kmod,systemd-boot-efi \
        trixie "$rootfs.tmp" "$mirror"
    mv "$rootfs.tmp" "$rootfs"
    touch "$rootfs/.complete"
fi

phase "image tree + initramfs"
tree="$work/v1"
cp -a "$rootfs" "$tree"
rm -f "$tree/.complete"
kver=$(ls "$tree/usr/lib/modules" | head -1)
install -D -m 755 "$bin" "$tree/usr/bin/cfs-deploy"
install -D -m 644 "$top/deploy/units/cfs-deploy-setup-root.service" \
    "$tree/usr/lib/systemd/system/cfs-deploy-setup-root.service"
install -D -m 755 "$top/deploy/dracut/50cfs-deploy/module-setup.sh" \
    "$tree/usr/lib/dracut/modules.d/50cfs-deploy/module-setup.sh"
cat > "$tree/etc/dracut.conf.d/50-cfs-deploy.conf" <<'EOF'
add_dracutmodules+=" cfs-deploy "
hostonly="no"
EOF
# The marker: what booted, read from the kernel command line and the
# image's os-release, and how the root is assembled; then power off.
cat > "$tree/usr/libexec/cfs-vm-marker" <<'EOF'
#!/bin/sh
. /usr/lib/os-release
id=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^composefs=?\{0,1\}//p')
echo "CFS-MOUNTS /=$(findmnt -no SOURCE /) /etc=$(findmnt -no FSTYPE /etc)" \
    "/var=$(findmnt -no FSTYPE /var) /sysroot=$(findmnt -no OPTIONS /sysroot | cut -d, -f1)"
echo "CFS-BOOTED $id $VERSION_ID"
EOF
chmod 755 "$tree/usr/libexec/cfs-vm-marker"
cat > "$tree/usr/lib/systemd/system/cfs-vm-marker.service" <<'EOF'
[Unit]
Description=Print the cfs-deploy VM test marker and power off
After=basic.target

[Service]
Type=oneshot
StandardOutput=journal+console
ExecStart=/usr/libexec/cfs-vm-marker
ExecStartPost=/usr/bin/systemctl poweroff --no-block

[Install]
WantedBy=multi-user.target
EOF
mkdir -p "$tree/etc/systemd/system/multi-user.target.wants"
ln -sf /usr/lib/systemd/system/cfs-vm-marker.service \
    "$tree/etc/systemd/system/multi-user.target.wants/cfs-vm-marker.service"
mkdir -p "$tree/sysroot" "$tree/usr/lib/bootc/kargs.d"
# No first-boot prompts on the console; a failed initramfs powers off
# instead of waiting in a shell.
echo 'kargs = ["console=ttyS0", "systemd.firstboot=off", "rd.emergency=poweroff"]' \
    > "$tree/usr/lib/bootc/kargs.d/10-vm-test.toml"
# The kernel where bootc-style images keep it, with its initramfs.
mv "$tree/boot/vmlinuz-$kver" "$tree/usr/lib/modules/$kver/vmlinuz"
rm -f "$tree/boot/"*
unshare --mount --propagation private sh -euc '
    mount -t proc proc "$1/proc"
    mount --rbind /dev "$1/dev"
    mount -t sysfs sysfs "$1/sys"
    chroot "$1" dracut --quiet --force --kver "$2" "/usr/lib/modules/$2/initramfs.img"
' sh "$tree" "$kver"
lsinitrd_out=$(chroot "$tree" lsinitrd "/usr/lib/modules/$kver/initramfs.img" 2>/dev/null || true)
for needed in usr/bin/cfs-deploy cfs-deploy-setup-root.service erofs.ko overlay.ko; do
    grep -q "$needed" <<<"$lsinitrd_out" \
        || { echo "vm-test: the initramfs lacks $needed" >&2; exit 1; }
done
rm -rf "$tree/var/tmp/"* "$tree/var/cache/apt/"*.bin

phase "OCI layout"
"$here/oci-layout.py" "$work/layout" v1 "$tree" --gzip-level 1 >/dev/null
rm -rf "$tree"

phase "install to-disk"
install_out=$("$bin" --quiet install to-disk "$work/disk.img" --size 3G --insecure \
    --source "oci:$work/layout:v1")
echo "$install_out"
id=$(sed -n 's/^installed: //p' <<<"$install_out")
[ -n "$id" ] || { echo "vm-test: install printed no deployment id" >&2; exit 1; }

phase "boot (QEMU TCG)"
cp "$ovmf/OVMF_VARS_4M.fd" "$work/vars.fd"
set +e
timeout "$timeout_s" qemu-system-x86_64 -accel tcg -m 1536 -smp 2 \
    -display none -monitor none -no-reboot \
    -drive "if=pflash,format=raw,unit=0,readonly=on,file=$ovmf/OVMF_CODE_4M.fd" \
    -drive "if=pflash,format=raw,unit=1,file=$work/vars.fd" \
    -drive "file=$work/disk.img,if=virtio,format=raw" \
    -serial "file:$work/serial.log"
qemu_status=$?
set -e
phase ""
tr -d '\r' < "$work/serial.log" | grep -a 'CFS-\|cfs-deploy\[' | head -20 || true
if [ "$qemu_status" = 124 ]; then
    echo "vm-test: FAILED: no poweroff within $timeout_s s; last console lines:" >&2
    tail -30 "$work/serial.log" >&2
    exit 1
fi
version=$(. "$rootfs/usr/lib/os-release" && echo "$VERSION_ID")
# grep reads it all (no -q): an early exit would fail the pipeline.
if ! tr -d '\r' < "$work/serial.log" | grep -a "CFS-BOOTED $id $version\$" >/dev/null; then
    echo "vm-test: FAILED: no 'CFS-BOOTED $id $version' on the console; last lines:" >&2
    tail -40 "$work/serial.log" >&2
    exit 1
fi
echo "vm-test: booted deployment $id (VERSION_ID $version) in $((SECONDS - started)) s in all"
