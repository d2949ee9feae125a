#!/bin/sh
# Installs the project's build and test dependencies: Debian packages and
# cargo-installed tools. Safe to run repeatedly: it only installs what is
# missing. The reference tools are pinned: image digests depend on their
# format defaults, which change between releases.
set -eu

APT_PACKAGES="erofs-utils xfsprogs fsverity policycoreutils selinux-policy-default \
mmdebstrap util-linux e2fsprogs time skopeo docker-registry podman umoci buildah \
libssl-dev pkg-config systemd-boot systemd-boot-efi binutils dosfstools mtools fdisk \
python3 python3-pip qemu-system-x86 ovmf cpio strace ostree liblzma-dev gpgv gnupg python3-gi"
CFSCTL_VERSION=0.9.4

run_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

missing=""
for pkg in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" \
        || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    echo "setup: installing Debian packages:$missing"
    run_root apt-get update -qq
    run_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

bin="${CARGO_HOME:-$HOME/.cargo}/bin"
if ! [ -x "$bin/just" ] && ! command -v just >/dev/null 2>&1; then
    echo "setup: installing just"
    cargo install --locked --quiet just
fi
if ! "$bin/cfsctl" --version 2>/dev/null | grep -q "$CFSCTL_VERSION"; then
    echo "setup: installing the reference cfsctl $CFSCTL_VERSION (takes a few minutes)"
    cargo install --locked --quiet "composefs-ctl@$CFSCTL_VERSION"
fi
# The `varlink` Python module: an independent client for the tests of
# `serve --varlink` (Debian 12's systemd has no varlinkctl).
PY_VARLINK_VERSION=31.0.0
if ! python3 -c 'import importlib.metadata as m, sys; sys.exit(m.version("varlink") != sys.argv[1])' \
        "$PY_VARLINK_VERSION" 2>/dev/null; then
    echo "setup: installing the Python varlink module $PY_VARLINK_VERSION"
    # Debian's own python3 refuses pip installs unless told otherwise.
    PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet --disable-pip-version-check \
        --root-user-action=ignore "varlink==$PY_VARLINK_VERSION"
fi
