#!/bin/bash
# Issue 7's scenario in real QEMU guests: a Debian trixie host (kernel,
# systemd, SELinux policy, dracut with our setup-root module, the
# cfs-deploy under test) built as OCI images v1, v2, v3 on one shared
# base layer; v1 installed with `cfs-deploy install to-disk --insecure`
# and booted with QEMU TCG + OVMF + systemd-boot. Everything after the
# install happens in the guest: a test-driver unit runs the step script
# found on a second virtual disk (which also carries the images as an
# `oci:` layout, tag `os` moving from v2 to v3: no network), reports
# command output framed on the serial console (`CFS-OUT TAG ...`,
# `CFS-RC TAG N`), and reboots or powers off. This script checks each
# boot's report (scripts/vm-serial.py):
#   boot 1  v1: status says v1 booted; `repo enable-verity` makes the
#           repository secure; an /etc change; `switch` to the disk's
#           `os` (v2), finalized at shutdown
#   boot 2  v2: booted, composefs= without `?`, /etc change kept, entry
#           blessed by cfs-deploy-bless.service; `upgrade` (`os` is v3)
#   3-5     v3: a unit required by boot-complete.target fails: not blessed,
#           the counter goes down to +0-3
#   boot 6  v2 again, by systemd-boot alone; status says v3 failed;
#           `rollback` (to v1)
#   boot 7  v1: `gc` removes v3 (entry, kernel, state, image); then one
#           byte of an object of the booted image is flipped on the block
#           device: reading that file fails with EIO (fs-verity)
#
# Usage: scripts/vm-test.sh PATH-TO-cfs-deploy
# Environment: CACHE (default target/vm-cache) keeps the trixie root
# filesystem between runs; VM_TIMEOUT (default 600) bounds each boot, in
# seconds; KEEP_WORK=1 keeps the work directory (disk, serial logs).
#
# Measured on the project's machine (2 cores, QEMU TCG -smp 2 -m 1536),
# Debian trixie kernel 6.12, systemd 257, debug build; first figure with
# the machine otherwise nearly idle, second under load average 12-13:
#   trixie rootfs incl. SELinux policy (first run only, then cached)
#     11 min under load (mmdebstrap), 360 MB
#   images v1 v2 v3 (base tree, dracut, one gzip -1 base layer)   81 / 198 s
#   install to-disk (3 GiB sparse image)                           7 / 30 s
#   boot 1 (driver at guest 46 s; enable-verity on 10794
#     objects 14 s (95 s loaded); switch 6 s)                      84 / 324 s
#   boot 2 (upgrade in the guest 11 s)                             56 / 273 s
#   boots 3-5 (v3 fails, each to poweroff)                        171 / 617 s
#   boot 6 (fallback to v2, rollback)                              44 / 143 s
#   boot 7 (gc, fs-verity byte flip)                               50 / 128 s
#   whole run with a cached rootfs, 7 boots                       493 / 1694 s
set -euo pipefail
bin=$(realpath "$1")
here=$(dirname "$(realpath "$0")")
top=$(dirname "$here")
cache=$(realpath -m "${CACHE:-$top/target/vm-cache}")
timeout_s=${VM_TIMEOUT:-600}
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
# e2fsprogs for filefrag (the fs-verity test), SELinux policy so the boot
# image carries labels from the image's own policy.
packages=linux-image-amd64,systemd,systemd-sysv,dracut,udev,kmod,systemd-boot-efi,e2fsprogs,selinux-policy-default
if [ "$(cat "$rootfs/.complete" 2>/dev/null)" != "$packages" ]; then
    # The archive apt itself uses for bookworm's main component serves
    # trixie too.
    mirror=$(apt-get indextargets --format '$(URI)' 'Identifier: Packages' \
        | sed -n 's|/dists/bookworm/main/.*||p' | head -1)
    [ -n "$mirror" ] || { echo "vm-test: no bookworm archive among apt's sources" >&2; exit 1; }
    rm -rf "$rootfs" "$rootfs.tmp"
    mkdir -p "$cache"
    mmdebstrap --quiet --variant=minbase \
        --include="$packages" \
        trixie "$rootfs.tmp" "$mirror"
    mv "$rootfs.tmp" "$rootfs"
    echo "$packages" > "$rootfs/.complete"
fi

phase "images v1 v2 v3"
base="$work/base"
cp -a "$rootfs" "$base"
rm -f "$base/.complete"
kver=$(ls "$base/usr/lib/modules" | head -1)
install -D -m 755 "$bin" "$base/usr/bin/cfs-deploy"
for unit in setup-root bless finalize; do
    install -D -m 644 "$top/deploy/units/cfs-deploy-$unit.service" \
        "$base/usr/lib/systemd/system/cfs-deploy-$unit.service"
done
install -D -m 755 "$top/deploy/dracut/50cfs-deploy/module-setup.sh" \
    "$base/usr/lib/dracut/modules.d/50cfs-deploy/module-setup.sh"
cat > "$base/etc/dracut.conf.d/50-cfs-deploy.conf" <<'EOF'
add_dracutmodules+=" cfs-deploy "
hostonly="no"
EOF
# The driver: says what booted and how the root is assembled, runs the
# step script of the test disk (which ends with a reboot or poweroff).
cat > "$base/usr/libexec/cfs-vm-driver" <<'EOF'
#!/bin/sh
. /usr/lib/os-release
id=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^composefs=?\{0,1\}//p')
echo "CFS-MOUNTS /=$(findmnt -no SOURCE /) /etc=$(findmnt -no FSTYPE /etc)" \
    "/var=$(findmnt -no FSTYPE /var) /sysroot=$(findmnt -no OPTIONS /sysroot | cut -d, -f1)"
echo "CFS-BOOTED $id $VERSION_ID"
# Runs "$@", reporting its output and exit status under TAG ($1).
run() {
    tag=$1
    shift
    "$@" > /run/cfs-out 2>&1
    rc=$?
    sed "s/^/CFS-OUT $tag /" /run/cfs-out
    echo "CFS-RC $tag $rc"
}
mkdir -p /run/cfs-media
if mount -o ro /dev/vdb /run/cfs-media; then
    . /run/cfs-media/step.sh
else
    echo "CFS-ERROR no test disk"
    systemctl poweroff --no-block
fi
EOF
chmod 755 "$base/usr/libexec/cfs-vm-driver"
# After bless (which waits for boot-complete.target), so status shows
# its work; a failed boot-complete.target does not stop the driver.
cat > "$base/usr/lib/systemd/system/cfs-vm-driver.service" <<'EOF'
[Unit]
Description=cfs-deploy VM test driver
After=multi-user.target boot-complete.target cfs-deploy-bless.service

[Service]
Type=oneshot
StandardOutput=journal+console
StandardError=journal+console
ExecStart=/usr/libexec/cfs-vm-driver
EOF
# No getty on the serial console: starting, it flushes what the driver
# wrote but the console had not sent yet.
ln -s /dev/null "$base/etc/systemd/system/serial-getty@ttyS0.service"
mkdir -p "$base/etc/systemd/system/multi-user.target.wants" \
    "$base/etc/systemd/system/basic.target.wants"
ln -sf /usr/lib/systemd/system/cfs-vm-driver.service \
    "$base/etc/systemd/system/multi-user.target.wants/cfs-vm-driver.service"
ln -sf /usr/lib/systemd/system/cfs-deploy-bless.service \
    "$base/etc/systemd/system/basic.target.wants/cfs-deploy-bless.service"
# No fstab entry for the ESP, and systemd-gpt-auto-generator does not
# mount it (it only looks at the disk of a block-device root): cfs-deploy
# and bless mount the ESP systemd-boot started from for themselves. The
# checks below look at it through a read-only mount of their own, undone
# before cfs-deploy runs again (a second, writable mount of a device
# mounted read-only is refused with EBUSY).
# The file whose object the fs-verity check corrupts: a size no other
# object has, so the guest finds it by size.
head -c 77777 /dev/urandom > "$base/usr/share/cfs-verity-victim"
mkdir -p "$base/sysroot" "$base/usr/lib/bootc/kargs.d"
# No first-boot prompts on the console; a failed initramfs powers off
# instead of waiting in a shell (dracut: rd.shell=0 rd.emergency=poweroff).
echo 'kargs = ["console=ttyS0", "systemd.firstboot=off", "rd.shell=0", "rd.emergency=poweroff"]' \
    > "$base/usr/lib/bootc/kargs.d/10-vm-test.toml"
# The kernel where bootc-style images keep it, with its initramfs.
mv "$base/boot/vmlinuz-$kver" "$base/usr/lib/modules/$kver/vmlinuz"
rm -f "$base/boot/"*
initramfs="usr/lib/modules/$kver/initramfs.img"
unshare --mount --propagation private sh -euc '
    mount -t proc proc "$1/proc"
    mount --rbind /dev "$1/dev"
    mount -t sysfs sysfs "$1/sys"
    chroot "$1" dracut --quiet --force --kver "$2" "/$3"
' sh "$base" "$kver" "$initramfs" > "$work/dracut.log" 2>&1 \
    || { tail -30 "$work/dracut.log" >&2; echo "vm-test: dracut failed" >&2; exit 1; }
lsinitrd_out=$(chroot "$base" lsinitrd "/$initramfs" 2>/dev/null || true)
for needed in usr/bin/cfs-deploy cfs-deploy-setup-root.service erofs.ko overlay.ko; do
    grep -q "$needed" <<<"$lsinitrd_out" \
        || { echo "vm-test: the initramfs lacks $needed" >&2; exit 1; }
done
rm -rf "$base/var/tmp/"* "$base/var/cache/apt/"*.bin
base_version=$(. "$base/usr/lib/os-release" && echo "$VERSION_ID")
# Each version is one small layer over the base: its os-release
# VERSION_ID and a file.
for n in 1 2 3; do
    delta="$work/delta$n"
    mkdir -p "$delta/usr/lib" "$delta/usr/share"
    sed "s/^VERSION_ID=.*/VERSION_ID=\"$base_version.$n\"/" "$base/usr/lib/os-release" \
        > "$delta/usr/lib/os-release"
    echo "v$n" > "$delta/usr/share/cfs-test-version"
done
# v3 never reaches boot-complete.target: a unit it requires fails (and
# says so on the console). Its initramfs gets one more cpio member, so
# v3 has a kernel+initrd pair of its own on the ESP (for gc to remove).
mkdir -p "$work/delta3/usr/lib/systemd/system/boot-complete.target.requires" \
    "$work/delta3/$(dirname "$initramfs")"
cat > "$work/delta3/usr/lib/systemd/system/cfs-vm-v3-fails.service" <<'EOF'
[Unit]
Description=v3 is broken: boot-complete.target is never reached
Before=boot-complete.target

[Service]
Type=oneshot
StandardOutput=journal+console
ExecStart=/bin/sh -c 'echo CFS-V3-FAILS; exit 1'
EOF
ln -s ../cfs-vm-v3-fails.service \
    "$work/delta3/usr/lib/systemd/system/boot-complete.target.requires/cfs-vm-v3-fails.service"
mkdir -p "$work/v3-cpio/etc"
echo v3 > "$work/v3-cpio/etc/cfs-v3-initrd"
{ cat "$base/$initramfs"; (cd "$work/v3-cpio" && echo etc/cfs-v3-initrd | cpio --quiet -o -H newc); } \
    > "$work/delta3/$initramfs"
"$here/oci-layout.py" "$work/layout" v1 "$base" "$work/delta1" -- v2 "$base" "$work/delta2" \
    -- v3 "$base" "$work/delta3" --gzip-level 1 >/dev/null
rm -rf "$base" "$work"/delta? "$work/v3-cpio"

phase "install to-disk"
install_out=$("$bin" --quiet install to-disk "$work/disk.img" --size 3G --insecure \
    --source "oci:$work/layout:v1")
echo "$install_out"
id1=$(sed -n 's/^installed: //p' <<<"$install_out")
[ -n "$id1" ] || { echo "vm-test: install printed no deployment id" >&2; exit 1; }

cp "$ovmf/OVMF_VARS_4M.fd" "$work/vars.fd"
boots=0
# Boots the disk once with the step script $1 and `oci:` layout tag `os`
# pointing at $2, to poweroff (or reboot: -no-reboot ends QEMU too); the
# console goes to $work/serial-N.log, named in $serial.
boot() {
    boots=$((boots + 1))
    serial="$work/serial-$boots.log"
    local media="$work/media" status=0
    rm -rf "$media" "$work/media.img"
    mkdir -p "$media"
    cp -al "$work/layout" "$media/layout"
    rm "$media/layout/index.json"
    python3 - "$work/layout/index.json" "$2" "$media/layout/index.json" <<'EOF'
import json, sys
index = json.load(open(sys.argv[1]))
name = "org.opencontainers.image.ref.name"
[m] = [dict(m) for m in index["manifests"] if m["annotations"][name] == sys.argv[2]]
m["annotations"] = {name: "os"}
index["manifests"].append(m)
json.dump(index, open(sys.argv[3], "w"))
EOF
    printf '%s\n' "$1" > "$media/step.sh"
    truncate -s "$(( $(du -sm "$media" | cut -f1) + 64 ))M" "$work/media.img"
    mkfs.ext4 -q -F -L cfs-media -d "$media" "$work/media.img"
    timeout "$timeout_s" qemu-system-x86_64 -accel tcg -m 1536 -smp 2 \
        -display none -monitor none -no-reboot \
        -drive "if=pflash,format=raw,unit=0,readonly=on,file=$ovmf/OVMF_CODE_4M.fd" \
        -drive "if=pflash,format=raw,unit=1,file=$work/vars.fd" \
        -drive "file=$work/disk.img,if=virtio,format=raw" \
        -drive "file=$work/media.img,if=virtio,format=raw" \
        -serial "file:$serial" || status=$?
    if [ "$status" = 124 ]; then
        echo "vm-test: FAILED: boot $boots did not end within $timeout_s s; last console lines:" >&2
        tail -40 "$serial" >&2
        exit 1
    fi
}
fail() {
    echo "vm-test: FAILED: boot $boots: $*; last console lines:" >&2
    tail -40 "$serial" >&2
    exit 1
}
# Asserts that $serial shows deployment $1 with VERSION_ID base.$2 booted.
booted() {
    # grep reads it all (no -q): an early exit would fail the pipeline.
    tr -d '\r' < "$serial" | grep -a "CFS-BOOTED $1 $base_version.$2\$" >/dev/null \
        || fail "no 'CFS-BOOTED $1 $base_version.$2' on the console"
}
check() { "$here/vm-serial.py" check "$serial" "$@"; }
get() { "$here/vm-serial.py" get "$serial" "$@"; }
# Status: the deployment with id $1 (a Python expression), as `d`.
dep() { echo "[d for d in j['deployments'] if d['id'] == '$1'][0]"; }

phase "boot 1: v1, switch to v2"
boot '
run status cfs-deploy status --json
run cmdline cat /proc/cmdline
run esp sh -c "findmnt -n /boot; findmnt -n /efi; findmnt -n /boot/efi; true"
run enable-verity cfs-deploy repo enable-verity
echo "changed in boot 1" > /etc/cfs-test.conf
run switch cfs-deploy --quiet switch oci:/run/cfs-media/layout:os
run staged cfs-deploy status --json
systemctl reboot --no-block
' v2
booted "$id1" 1
mounts="CFS-MOUNTS /=composefs:$id1 /etc=ext4 /var=ext4 /sysroot=ro"
tr -d '\r' < "$serial" | grep -aF "$mounts" >/dev/null || fail "the guest's mounts are not '$mounts'"
check status "j['booted'] == '$id1' and 'booted' in $(dep "$id1")['roles']" "status --json does not say v1 is booted"
check cmdline "'composefs=?$id1' in out" "v1 (installed insecure) does not boot with composefs=?"
check esp "out == ''" "something mounted the ESP: cfs-deploy's own mount is not tested"
check enable-verity "rc == 0" "repo enable-verity failed"
check switch "rc == 0" "switch to v2 failed"
id2=$(get staged "[d['id'] for d in j['deployments'] if 'staged' in d['roles']][0]")
echo "vm-test: v1 booted; repository made secure ($(get enable-verity out)); v2 staged: $id2"

phase "boot 2: v2, upgrade to v3"
boot '
run status cfs-deploy status --json
run cmdline cat /proc/cmdline
run etc cat /etc/cfs-test.conf
run version cat /usr/share/cfs-test-version
run upgrade cfs-deploy --quiet upgrade
run staged cfs-deploy status --json
systemctl reboot --no-block
' v3
booted "$id2" 2
check status "j['booted'] == '$id2'" "status --json does not say v2 is booted"
check cmdline "'composefs=$id2' in out and '?' not in out" "v2's composefs= is not the fs-verity form (no ?)"
check etc "out == 'changed in boot 1'" "the /etc change of boot 1 did not survive the switch"
check version "out == 'v2'" "v2's own file is not there"
check status "$(dep "$id2")['bootCounter'] is None and '+' not in $(dep "$id2")['entry']" \
    "v2's entry was not blessed (it still has a boot counter)"
check upgrade "rc == 0" "upgrade to v3 failed"
id3=$(get staged "[d['id'] for d in j['deployments'] if 'staged' in d['roles']][0]")
echo "vm-test: v2 booted with composefs=$id2, /etc change kept, entry blessed; v3 staged: $id3"

phase "boots 3-5: v3 fails"
for try in 1 2 3; do
    boot '
run status cfs-deploy status --json
run version cat /usr/share/cfs-test-version
run boot-complete systemctl is-active boot-complete.target
run bless systemctl is-active cfs-deploy-bless.service
systemctl poweroff --no-block
' v3
    booted "$id3" 3
    grep -aq CFS-V3-FAILS "$serial" || fail "v3's failing unit did not run"
    check boot-complete "out != 'active'" "v3 reached boot-complete.target"
    check status "$(dep "$id3")['bootCounter'] == {'left': 3 - $try, 'done': $try}" \
        "v3's boot counter is not at +$((3 - try))-$try"
    echo "try $try: v3 did not reach boot-complete.target; counter $(get status "$(dep "$id3")['bootCounter']")"
done

phase "boot 6: back on v2, rollback"
boot '
run status cfs-deploy status --json
mkdir -p /run/esp && mount -o ro LABEL=ESP /run/esp
run entries grep -H ^linux /run/esp/loader/entries/cfs-'"${id3:0:32}"'+0-3.conf
umount /run/esp
run rollback cfs-deploy rollback
run after cfs-deploy status --json
systemctl reboot --no-block
' v3
booted "$id2" 2
check status "j['booted'] == '$id2'" "status --json does not say v2 is booted"
check status "$(dep "$id3")['bad'] and $(dep "$id3")['bootCounter'] == {'left': 0, 'done': 3}" \
    "status does not say v3 failed"
v3_kernel=$(get entries "out.split()[-1].rsplit('/', 1)[0]")
check rollback "rc == 0" "rollback failed"
check after "'default' in $(dep "$id1")['roles']" "after rollback, v1 is not the default"
echo "vm-test: systemd-boot fell back to v2 by itself; status: v3 bad, $(get status "$(dep "$id3")['bootCounter']"); rollback made v1 the default"

phase "boot 7: v1, gc, fs-verity"
boot '
run status cfs-deploy status --json
run gc cfs-deploy gc
run after cfs-deploy status --json
mkdir -p /run/esp && mount -o ro LABEL=ESP /run/esp
run kernels ls /run/esp'"$v3_kernel"'
umount /run/esp
run state ls /sysroot/state/deploy
run refs cfs-deploy repo ls
run root-options findmnt -no OPTIONS /
victim=$(find /sysroot/composefs/objects -type f -size 77777c)
run victim-object echo "$victim"
run read-before sha256sum /usr/share/cfs-verity-victim
dev=$(findmnt -no SOURCE /sysroot)
dev=${dev%%\[*}
block=$(filefrag -v "$victim" | awk "/^ *0:/ { sub(/\\.\\..*/, \"\", \$4); print \$4 }")
bsize=$(stat -f -c %S "$victim")
start=$(cat /sys/class/block/${dev#/dev/}/start)
disk=/dev/$(basename "$(readlink -f /sys/class/block/${dev#/dev/}/..)")
offset=$((start * 512 + block * bsize + 100))
byte=$(dd if=$disk bs=1 skip=$offset count=1 2>/dev/null | od -An -tu1 | tr -d " ")
run flip sh -c "printf \"\\\\$(printf %o $(((byte + 1) % 256)))\" | dd of=$disk bs=1 seek=$offset conv=notrunc,fsync"
echo 3 > /proc/sys/vm/drop_caches
run read-after cat /usr/share/cfs-verity-victim
run read-object cat "$victim"
systemctl poweroff --no-block
' v3
booted "$id1" 1
check status "j['booted'] == '$id1'" "status --json does not say v1 is booted"
check gc "rc == 0" "gc failed"
check after "sorted(d['id'] for d in j['deployments']) == sorted(['$id1', '$id2'])" \
    "after gc the deployments are not v1 and v2"
check kernels "rc != 0" "v3's kernel directory $v3_kernel is still on the ESP"
check state "'$id3' not in out and '$id1' in out and '$id2' in out" "state dirs after gc are not v1's and v2's"
check refs "'${id3}' not in out" "the repository still has a ref to v3's image"
check root-options "'verity=require' in out" "the booted root is not mounted with verity=require"
check victim-object "out.count('/') > 0 and '\n' not in out" "no single object of the victim's size"
check read-before "rc == 0" "reading the victim before the flip failed"
check flip "rc == 0" "flipping a byte on the block device failed"
check read-after "rc != 0 and 'Input/output error' in out" "reading the corrupted file was not refused with EIO"
check read-object "rc != 0 and 'Input/output error' in out" "reading the corrupted object was not refused with EIO"
echo "vm-test: v1 booted after rollback; gc removed v3 (entry, kernel $v3_kernel, state, image)"
echo "vm-test: a byte flipped in object $(get victim-object out | sed 's|.*/objects/||'): read refused: $(get read-after out)"
phase ""
echo "vm-test: $boots boots, $((SECONDS - started)) s in all"
