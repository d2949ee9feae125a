#!/bin/bash
# dracut module: puts `cfs-deploy setup-root` into the initramfs, so a
# composefs= kernel argument boots that deployment. Opt-in (an image that
# uses cfs-deploy says so in dracut.conf.d: add_dracutmodules+=" cfs-deploy "),
# as a general-purpose initramfs has no business mounting composefs roots.

check() {
    require_binaries /usr/bin/cfs-deploy || return 1
    return 255
}

depends() {
    echo systemd
}

installkernel() {
    instmods erofs overlay
}

install() {
    inst_binary /usr/bin/cfs-deploy
    inst_simple "$systemdsystemunitdir/cfs-deploy-setup-root.service"
    $SYSTEMCTL -q --root "$initdir" add-wants initrd-root-fs.target cfs-deploy-setup-root.service
}
