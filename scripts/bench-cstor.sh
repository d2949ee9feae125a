#!/bin/bash
# containers-storage import benchmark: a ~1 GiB, 3-layer image built by
# `podman build` into an overlay store on a loop-mounted reflink XFS,
# pulled into a fresh insecure repository on the same filesystem straight
# from the store (files reflinked) and through skopeo (`--via-skopeo`,
# every byte written). Prints wall time, CPU time, peak memory and the
# bytes each allocated on the filesystem (free space before and after,
# synced). Needs root (loop mount) and podman.
# Usage: scripts/bench-cstor.sh PATH-TO-cfs-deploy
set -euo pipefail
ours=$(realpath "$1")
work=$(realpath -m "${BENCH_DIR:-target/bench}")
if [ "$(id -u)" != 0 ] || ! command -v podman > /dev/null || ! command -v mkfs.xfs > /dev/null; then
    echo "bench-cstor: SKIPPED (needs root, podman and mkfs.xfs)"
    exit 0
fi
mkdir -p "$work"
image="$work/cstor-xfs.img"
mnt="$work/cstor-xfs"
if [ ! -f "$image" ]; then
    truncate -s 6G "$image"
    mkfs.xfs -q -f -m reflink=1 "$image"
fi
mkdir -p "$mnt"
mountpoint -q "$mnt" || mount -o loop "$image" "$mnt"
trap 'umount -R "$mnt" 2> /dev/null || true' EXIT
podman=(podman --root "$mnt/store" --runroot "$mnt/run" --storage-driver overlay)

if [ ! -f "$mnt/.complete" ]; then
    echo "building a 3-layer image of ~1 GiB with podman build in $mnt ..."
    rm -rf "$mnt/context"
    python3 - "$mnt/context" <<'PY'
import os, random, sys
root = sys.argv[1]
rng = random.Random(9)
blob = os.urandom(16 << 20)
# Three layers of ~340 MiB: many small files, some large ones, as an OS.
for layer in range(3):
    budget = 340 << 20
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
    printf 'FROM scratch\nCOPY 0 /\nCOPY 1 /\nCOPY 2 /\n' > "$mnt/context/Containerfile"
    "${podman[@]}" build -q -t localhost/bench-cstor:1 "$mnt/context" > /dev/null
    rm -rf "$mnt/context"
    touch "$mnt/.complete"
fi
reference="containers-storage:[overlay@$mnt/store+$mnt/run]localhost/bench-cstor:1"
tar_bytes=$(python3 -c 'import json,sys; print(sum(l.get("diff-size", 0) for l in json.load(open(sys.argv[1]))))' "$mnt/store/overlay-layers/layers.json")

avail() { sync -f "$mnt"; echo $(($(stat -f -c '%a' "$mnt") * $(stat -f -c '%S' "$mnt"))); }
measure() { # command...: prints "wall user sys peak-KiB allocated-bytes"
    local before after
    before=$(avail)
    /usr/bin/time -o "$work/time.out" -f '%e %U %S %M' "$@" > /dev/null
    after=$(avail)
    echo "$(cat "$work/time.out") $((before - after))"
}
# Three alternating runs each, into fresh repositories; the median counts.
direct=() skopeo=()
for run in 1 2 3; do
    rm -rf "$mnt/repo-direct" "$mnt/repo-skopeo"
    "$ours" --repo "$mnt/repo-direct" repo init --insecure > /dev/null
    direct+=("$(measure "$ours" --quiet --repo "$mnt/repo-direct" image pull "$reference" --name bench)")
    "$ours" --repo "$mnt/repo-skopeo" repo init --insecure > /dev/null
    skopeo+=("$(measure "$ours" --quiet --repo "$mnt/repo-skopeo" image pull --via-skopeo "$reference" --name bench)")
done
rm -rf "$mnt/repo-direct" "$mnt/repo-skopeo"
median() { printf '%s\n' "$@" | sort -n | sed -n 2p; }

python3 - "$tar_bytes" "$(median "${direct[@]}")" "$(median "${skopeo[@]}")" <<'PY'
import sys
total = int(sys.argv[1])
print("containers-storage import of a 3-layer podman-built image, %.2f GiB of layer tars, store and repository on one reflink XFS:" % (total / 2**30))
rows = []
for name, row in (("straight from the store", sys.argv[2]), ("--via-skopeo", sys.argv[3])):
    wall, user, sys_, kib, allocated = row.split()
    rows.append((float(wall), float(user) + float(sys_), int(allocated)))
    print("  %-24s wall %7.2f s  cpu %7.2f s  peak %6.0f MiB  allocated %8.1f MiB" % (
        name, float(wall), rows[-1][1], int(kib) / 1024, int(allocated) / 2**20))
(dw, dc, da), (sw, sc, sa) = rows
print("  direct / skopeo: wall %.2f  cpu %.2f  bytes allocated %.3f" % (dw / sw, dc / sc, da / max(sa, 1)))
print("  (median of 3 by wall time; allocated = free space before - after, synced)")
PY
