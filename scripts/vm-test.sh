#!/bin/bash
# Boots a real installed host in QEMU: a Debian trixie image (kernel,
# systemd, dracut with our setup-root module) made into an OCI layout,
# installed with `cfs-deploy install to-disk --insecure`, booted with
# QEMU TCG + OVMF + systemd-boot. A unit in the image prints
# `CFS-BOOTED <composefs id> <VERSION_ID>` on the serial console and
# powers off; the script asserts that line, with the id install printed.
# Then a broken v2 entry (its image missing) is made the boot-counted
# default on the ESP with mtools: it must fail three times, its counter
# must reach +0-3, and the fourth boot must be v1 again, by systemd-boot
# alone.
#
# Usage: scripts/vm-test.sh PATH-TO-cfs-deploy
# Environment: CACHE (default target/vm-cache) keeps the trixie root
# filesystem between runs; VM_TIMEOUT (default 300) bounds each boot, in
# seconds; KEEP_WORK=1 keeps the work directory (disk, serial log).
#
# Measured on the project's machine (2 cores shared with other jobs, load
# about 6, QEMU TCG -smp 2 -m 1536), Debian trixie kernel 6.12, systemd 257:
#   trixie rootfs (mmdebstrap, first run only, then cached)  107 s, 334 MB
#   image tree + dracut initramfs with our module              44-48 s
#   OCI layout (one gzip -1 layer)                             17-30 s
#   install to-disk (3 GiB sparse image)                        7-27 s
#   boot of v1 to poweroff                                     65-71 s
#     (guest clock: setup-root done at 28 s, marker at 49 s, power down 59 s)
#   3 failing boots of v2 (setup-root fails at 21 s, powers off) 90 s
#   fallback boot of v1                                         52 s
#   whole run with a cached rootfs, 5 boots                    275 s
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
# instead of waiting in a shell (dracut: rd.shell=0 rd.emergency=poweroff).
echo 'kargs = ["console=ttyS0", "systemd.firstboot=off", "rd.shell=0", "rd.emergency=poweroff"]' \
    > "$tree/usr/lib/bootc/kargs.d/10-vm-test.toml"
# The kernel where bootc-style images keep it, with its initramfs.
mv "$tree/boot/vmlinuz-$kver" "$tree/usr/lib/modules/$kver/vmlinuz"
rm -f "$tree/boot/"*
unshare --mount --propagation private sh -euc '
    mount -t proc proc "$1/proc"
    mount --rbind /dev "$1/dev"
    mount -t sysfs sysfs "$1/sys"
    chroot "$1" dracut --quiet --force --kver "$2" "/usr/lib/modules/$2/initramfs.img"
' sh "$tree" "$kver" > "$work/dracut.log" 2>&1 \
    || { tail -30 "$work/dracut.log" >&2; echo "vm-test: dracut failed" >&2; exit 1; }
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

version=$(. "$rootfs/usr/lib/os-release" && echo "$VERSION_ID")
cp "$ovmf/OVMF_VARS_4M.fd" "$work/vars.fd"
boots=0
# Boots the disk once, to poweroff (or reboot: -no-reboot ends QEMU too);
# the console goes to $work/serial-N.log, named in $serial.
boot() {
    boots=$((boots + 1))
    serial="$work/serial-$boots.log"
    local status=0
    timeout "$timeout_s" qemu-system-x86_64 -accel tcg -m 1536 -smp 2 \
        -display none -monitor none -no-reboot \
        -drive "if=pflash,format=raw,unit=0,readonly=on,file=$ovmf/OVMF_CODE_4M.fd" \
        -drive "if=pflash,format=raw,unit=1,file=$work/vars.fd" \
        -drive "file=$work/disk.img,if=virtio,format=raw" \
        -serial "file:$serial" || status=$?
    tr -d '\r' < "$serial" | grep -a 'CFS-\|cfs-deploy\[' | cut -c1-220 || true
    if [ "$status" = 124 ]; then
        echo "vm-test: FAILED: boot $boots did not end within $timeout_s s; last console lines:" >&2
        tail -30 "$serial" >&2
        exit 1
    fi
}
# Whether $serial shows the marker of deployment $1.
booted() {
    # grep reads it all (no -q): an early exit would fail the pipeline.
    tr -d '\r' < "$serial" | grep -a "CFS-BOOTED $1 $version\$" >/dev/null
}
entries() { mdir -b -i "$work/disk.img@@1M" ::/loader/entries | sed 's|.*/||'; }

phase "boot v1 (QEMU TCG)"
boot
if ! booted "$id"; then
    echo "vm-test: FAILED: no 'CFS-BOOTED $id $version' on the console; last lines:" >&2
    tail -40 "$serial" >&2
    exit 1
fi
# The root is the image, /etc and /var come from the ext4 physical root,
# which itself is read-only at /sysroot.
mounts="CFS-MOUNTS /=composefs:$id /etc=ext4 /var=ext4 /sysroot=ro"
if ! tr -d '\r' < "$serial" | grep -aF "$mounts" >/dev/null; then
    echo "vm-test: FAILED: the guest's mounts are not '$mounts'" >&2
    exit 1
fi
echo "vm-test: booted deployment $id (VERSION_ID $version)"

# Scenario 2: a broken v2 becomes the boot-counted default. Its entry is
# v1's with a newer sort key and version, naming an image the repository
# does not have (an upgrade whose image went missing): setup-root fails,
# the initramfs powers off. systemd-boot counts each try down; at +0 the
# entry is bad, sorts last, and v1 boots again by itself.
phase "3 failing boots of v2"
v1_entry=$(entries | grep -v '+' | head -1)
mtype -i "$work/disk.img@@1M" "::/loader/entries/$v1_entry" | tr -d '\r' > "$work/v1.conf"
broken=$(echo "missing v2 image" | sha512sum | cut -d' ' -f1)
v2_entry="cfs-${broken:0:32}+3.conf"
v1_key=$(sed -n 's/^sort-key cfs-deploy-//p' "$work/v1.conf")
sed -e "s/composefs=?$id/composefs=?$broken/" \
    -e "s/^sort-key .*/sort-key cfs-deploy-$(printf '%012d' $((10#$v1_key - 1)))/" \
    -e "s/^title .*/& (v2, broken)/" -e "s/^version .*/&.1/" \
    "$work/v1.conf" > "$work/v2.conf"
mcopy -i "$work/disk.img@@1M" "$work/v2.conf" "::/loader/entries/$v2_entry"
echo "entries: $(entries | tr '\n' ' ')"
for try in 1 2 3; do
    boot
    if booted "$id"; then
        echo "vm-test: FAILED: try $try of v2 booted v1; entries: $(entries | tr '\n' ' ')" >&2
        exit 1
    fi
    grep -aq "$broken" "$serial" \
        || { echo "vm-test: FAILED: try $try did not boot the v2 entry" >&2; tail -30 "$serial" >&2; exit 1; }
    echo "try $try: v2 failed; entries: $(entries | tr '\n' ' ')"
done
entries | grep -qx "cfs-${broken:0:32}+0-3.conf" \
    || { echo "vm-test: FAILED: v2's entry is not at +0-3 after 3 tries" >&2; exit 1; }

phase "fallback boot of v1"
boot
if ! booted "$id"; then
    echo "vm-test: FAILED: after 3 failed tries of v2, v1 did not boot; last lines:" >&2
    tail -40 "$serial" >&2
    exit 1
fi
phase ""
echo "vm-test: v2 failed 3 times, then systemd-boot fell back to v1 ($id) by itself"
echo "vm-test: $boots boots, $((SECONDS - started)) s in all"
