#!/bin/bash
# Import benchmark: a ~2 GiB, 50,000-file tree stored into a repository by
# ours and by the reference cfsctl, beside the raw limit measured in the
# same run (reading + SHA-256 of the same bytes on every core).
# Usage: scripts/bench-import.sh PATH-TO-cfs-deploy
set -euo pipefail
ours=$(realpath "$1")
cfsctl=${CFSCTL:-${CARGO_HOME:-$HOME/.cargo}/bin/cfsctl}
work=$(realpath -m "${BENCH_DIR:-target/bench}")
tree="$work/tree"
files=50000
mkdir -p "$work"

if [ ! -f "$tree/.complete" ]; then
    echo "generating $files files in $tree ..."
    rm -rf "$tree"
    python3 - "$tree" "$files" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(42)
blob = os.urandom(8 << 20)
for i in range(n):
    d = os.path.join(root, "usr", "d%03d" % (i % 500), "s%02d" % (i % 7))
    os.makedirs(d, exist_ok=True)
    size = rng.choice([rng.randrange(0, 4096), rng.randrange(4096, 65536), rng.randrange(65536, 160000)])
    start = rng.randrange(0, len(blob) - size)
    with open(os.path.join(d, "f%06d" % i), "wb") as f:
        f.write(blob[start:start + size])
open(os.path.join(root, ".complete"), "w").close()
PY
fi
bytes=$(du -sb --apparent-size "$tree" | cut -f1)
# Warm the page cache so every contender reads from memory.
find "$tree" -type f -print0 | xargs -0 cat > /dev/null

measure() { # command...: prints "seconds peak-KiB"
    /usr/bin/time -o "$work/time.out" -f '%e %M' "$@" > /dev/null
    cat "$work/time.out"
}
raw=$(measure bash -c "find '$tree' -type f -print0 | xargs -0 -n 200 -P $(nproc) sha256sum")

rm -rf "$work/ours" "$work/ref"
"$ours" --repo "$work/ours" --hash sha256 repo init --insecure > /dev/null
mine=$(measure "$ours" --repo "$work/ours" image create --no-propagate-usr-to-root --name bench "$tree")
"$cfsctl" --repo "$work/ref" init --insecure --algorithm fsverity-sha256-12 > /dev/null
theirs=$(measure "$cfsctl" --repo "$work/ref" --insecure create-image --no-propagate-usr-to-root "$tree" bench)

python3 - "$bytes" "$raw" "$mine" "$theirs" <<'PY'
import sys
total = int(sys.argv[1])
rows = [("raw limit (read + sha256)", sys.argv[2]), ("cfs-deploy image create", sys.argv[3]), ("cfsctl create-image", sys.argv[4])]
print("import of %.2f GiB in 50000 files (insecure sha256 repositories, warm cache):" % (total / 2**30))
secs = {}
for name, row in rows:
    s, kib = row.split()
    secs[name] = float(s)
    print("  %-28s %7.2f s  %7.0f MiB/s  peak %6.0f MiB" % (name, float(s), total / float(s) / 2**20, int(kib) / 1024))
print("  ours / raw limit: %.2f (target <= 1.5)   ours / cfsctl: %.2f (target < 1)" % (
    secs[rows[1][0]] / secs[rows[0][0]], secs[rows[1][0]] / secs[rows[2][0]]))
PY
