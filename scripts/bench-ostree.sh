#!/bin/bash
# ostree HTTP pull benchmark: one commit of 20,000 content objects (a few
# hundred directories, sizes from empty to 256 KiB) in an archive
# repository served by python3's threading http.server on 127.0.0.1.
# Pulled by ours (into a fresh insecure SHA-512 composefs repository:
# fetch, verify, store, plain and boot EROFS images) and by `ostree pull`
# (into a fresh archive repository), alternating, three runs each, the
# median counts. Prints both wall times and their ratio.
# Usage: scripts/bench-ostree.sh PATH-TO-cfs-deploy
set -euo pipefail
ours=$(realpath "$1")
work=$(realpath -m "${BENCH_DIR:-target/bench}")
source_repo="$work/ostree-served"
mkdir -p "$work"

if [ ! -f "$source_repo/.complete" ]; then
    echo "generating a 20,000-file commit in $source_repo ..."
    rm -rf "$source_repo" "$work/ostree-tree"
    python3 - "$work/ostree-tree" <<'PY'
import os, random, sys
root = sys.argv[1]
rng = random.Random(8)
blob = os.urandom(4 << 20)
for d in ("boot", "sysroot"):
    os.makedirs(os.path.join(root, d))
for i in range(20000):
    d = os.path.join(root, "usr", "lib", "d%03d" % (i % 400))
    os.makedirs(d, exist_ok=True)
    size = rng.choice([0, rng.randrange(1, 128), rng.randrange(128, 8192),
                       rng.randrange(8192, 65536), rng.randrange(65536, 262144)])
    start = rng.randrange(0, len(blob) - size)
    with open(os.path.join(d, "f%05d" % i), "wb") as f:
        f.write(blob[start:start + size])
        f.write(i.to_bytes(4, "little"))  # every file distinct
PY
    ostree --repo="$source_repo" init --mode=archive
    ostree --repo="$source_repo" commit -b bench --owner-uid=0 --owner-gid=0 \
        --timestamp=2024-01-01T00:00:00Z "$work/ostree-tree" > /dev/null
    ostree --repo="$source_repo" summary -u
    rm -rf "$work/ostree-tree"
    touch "$source_repo/.complete"
fi
objects=$(find "$source_repo/objects" -type f | wc -l)
bytes=$(du -sb --apparent-size "$source_repo/objects" | cut -f1)

python3 -u -m http.server 0 --bind 127.0.0.1 --directory "$source_repo" \
    > "$work/ostree-server.out" 2>/dev/null &
server=$!
trap 'kill $server' EXIT
until grep -q 'port' "$work/ostree-server.out" 2>/dev/null; do sleep 0.1; done
port=$(grep -o 'port [0-9]*' "$work/ostree-server.out" | cut -d' ' -f2)
url="http://127.0.0.1:$port"

measure() { # command...: prints wall seconds
    /usr/bin/time -o "$work/time.out" -f '%e' "$@" > /dev/null
    cat "$work/time.out"
}
mine=() theirs=()
for run in 1 2 3; do
    rm -rf "$work/ostree-ours" "$work/ostree-ref"
    sync
    "$ours" --repo "$work/ostree-ours" repo init --insecure > /dev/null
    mine+=("$(measure "$ours" --quiet --repo "$work/ostree-ours" image pull "ostree:$url:bench")")
    ostree --repo="$work/ostree-ref" init --mode=archive
    ostree --repo="$work/ostree-ref" remote add --no-gpg-verify origin "$url"
    sync
    theirs+=("$(measure ostree --repo="$work/ostree-ref" pull origin bench)")
done
median() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
m=$(median "${mine[@]}") t=$(median "${theirs[@]}")
echo "ostree HTTP pull of $objects objects ($bytes bytes), median of 3:"
echo "  ours (fetch + verify + composefs objects + EROFS images): ${m}s   [${mine[*]}]"
echo "  ostree pull into an archive repository:                   ${t}s   [${theirs[*]}]"
awk -v m="$m" -v t="$t" 'BEGIN { printf "  ratio ours/ostree: %.2f (%s)\n", m / t, (m < t ? "ours faster" : "ostree faster") }'
