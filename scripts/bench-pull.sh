#!/bin/bash
# Pull benchmark: the same ~1 GiB, 5-layer (gzip) image in an `oci:`
# directory pulled by ours and by the reference `cfsctl oci pull
# --bootable` (both store the layers and write the plain and boot EROFS
# images), each into a fresh insecure SHA-512 repository, page cache warm.
# Prints wall time, CPU time and peak memory of both and their ratios.
# Usage: scripts/bench-pull.sh PATH-TO-cfs-deploy
set -euo pipefail
ours=$(realpath "$1")
cfsctl=${CFSCTL:-${CARGO_HOME:-$HOME/.cargo}/bin/cfsctl}
work=$(realpath -m "${BENCH_DIR:-target/bench}")
layout="$work/pull-layout"
mkdir -p "$work"

if [ ! -f "$layout/.complete" ]; then
    echo "generating a 5-layer image of ~1 GiB in $layout ..."
    rm -rf "$layout" "$work/pull-trees"
    python3 - "$work/pull-trees" <<'PY'
import os, random, sys
root = sys.argv[1]
rng = random.Random(7)
blob = os.urandom(16 << 20)
# Bootable as the reference wants it: /boot and /sysroot exist.
for d in ("boot", "sysroot"):
    os.makedirs(os.path.join(root, "0", d))
# Five layers of ~200 MiB: many small files, some large ones, as an OS.
for layer in range(5):
    budget = 200 << 20
    i = 0
    while budget > 0:
        d = os.path.join(root, str(layer), "usr", "l%d" % layer, "d%03d" % (i % 300))
        os.makedirs(d, exist_ok=True)
        size = rng.choice([rng.randrange(0, 4096), rng.randrange(4096, 65536),
                           rng.randrange(65536, 400000), rng.randrange(1 << 20, 8 << 20)])
        start = rng.randrange(0, len(blob) - size)
        with open(os.path.join(d, "f%06d" % i), "wb") as f:
            f.write(blob[start:start + size])
        budget -= size
        i += 1
PY
    "$(dirname "$0")/oci-layout.py" "$layout" bench --gzip-level 1 \
        "$work"/pull-trees/{0,1,2,3,4} > /dev/null
    rm -rf "$work/pull-trees"
    touch "$layout/.complete"
fi
bytes=$(du -sb --apparent-size "$layout/blobs" | cut -f1)
cat "$layout"/blobs/sha256/* > /dev/null

measure() { # command...: prints "wall user sys peak-KiB"
    /usr/bin/time -o "$work/time.out" -f '%e %U %S %M' "$@" > /dev/null
    cat "$work/time.out"
}
# Three alternating runs each, into fresh repositories; the median counts.
mine=() theirs=()
for run in 1 2 3; do
    rm -rf "$work/pull-ours" "$work/pull-ref"
    sync
    "$ours" --repo "$work/pull-ours" repo init --insecure > /dev/null
    mine+=("$(measure "$ours" --quiet --repo "$work/pull-ours" image pull "oci:$layout:bench" --name bench)")
    sync
    "$cfsctl" --repo "$work/pull-ref" init --insecure > /dev/null
    theirs+=("$(measure "$cfsctl" --repo "$work/pull-ref" --insecure oci pull --bootable "oci:$layout:bench" bench)")
done
median() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
mine=$(median "${mine[@]}")
theirs=$(median "${theirs[@]}")

python3 - "$bytes" "$mine" "$theirs" <<'PY'
import sys
total = int(sys.argv[1])
print("pull of a 5-layer image, %.2f GiB of gzip blobs, from an oci: directory (warm cache):" % (total / 2**30))
rows = {}
for name, row in (("cfs-deploy image pull", sys.argv[2]), ("cfsctl oci pull --bootable", sys.argv[3])):
    wall, user, sys_, kib = row.split()
    rows[name] = (float(wall), float(user) + float(sys_), int(kib))
    print("  %-28s wall %7.2f s  cpu %7.2f s  peak %6.0f MiB" % (name, rows[name][0], rows[name][1], rows[name][2] / 1024))
(ow, oc, om), (tw, tc, tm) = rows.values()
print("  ours / cfsctl: wall %.2f (target <= 0.8)  cpu %.2f  peak memory %.2f" % (ow / tw, oc / tc, om / tm))
print("  (median of 3 by wall time; ours also checks each blob's compressed digest)")
PY
