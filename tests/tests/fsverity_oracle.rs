//! Our userspace fs-verity digests against fsverity-utils' `fsverity
//! digest`, which computes them as the kernel does.

use std::io::Write;
use std::process::Command;

use cfs_erofs::digest::{FsVerityDigest, Sha256Digest, Sha512Digest};
use cfs_erofs::fsverity::FsVerityHasher;

const SIZES: [usize; 12] = [
    0,
    1,
    4095,
    4096,
    4097,
    // Three blocks, eight, nine and a bit: our SHA-512 hashes up to eight
    // data blocks at once.
    4096 * 3,
    4096 * 8,
    4096 * 9 + 100,
    4096 * 128 + 1,
    (1 << 20) + 1,
    (1 << 20) * 8,
    100 << 20,
];

fn oracle(path: &std::path::Path, alg: &str) -> String {
    let out = Command::new("fsverity")
        .args(["digest", "--compact", &format!("--hash-alg={alg}")])
        .arg(path)
        .output()
        .expect("run fsverity");
    assert!(out.status.success(), "fsverity digest failed: {out:?}");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

fn ours<H: FsVerityDigest>(data: &[u8]) -> String {
    // Feed it in uneven pieces: the streaming path must not care.
    let mut hasher = FsVerityHasher::<H>::new();
    for piece in data.chunks(65_537) {
        hasher.update(piece);
    }
    hasher.finish().to_hex()
}

#[test]
fn digests_match_fsverity_utils() {
    if Command::new("fsverity").arg("--version").output().is_err() {
        eprintln!("SKIPPED digests_match_fsverity_utils: fsverity-utils is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut compared = 0;
    for size in SIZES {
        let data: Vec<u8> = (0..size)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let path = dir.path().join(format!("f{size}"));
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(&data))
            .expect("write");
        assert_eq!(
            ours::<Sha256Digest>(&data),
            oracle(&path, "sha256"),
            "sha256, {size} bytes"
        );
        assert_eq!(
            ours::<Sha512Digest>(&data),
            oracle(&path, "sha512"),
            "sha512, {size} bytes"
        );
        compared += 2;
    }
    eprintln!("{compared} digests equal to fsverity-utils' ({SIZES:?} bytes)");
}
