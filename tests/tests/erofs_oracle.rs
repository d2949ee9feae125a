//! Our EROFS writer against the reference crate (composefs 0.9.4): the
//! same tree must give byte-identical images in every format version.

mod reference;

use reference::{ref_version, to_reference, Pair};


use cfs_erofs::digest::{Sha256Digest, Sha512Digest};
use cfs_erofs::format::FormatVersion;
use cfs_erofs::tree::FileSystem;
use cfs_erofs::writer::mkfs;
use cfs_tests::{random_tree, TreeParams};
use composefs::erofs::writer::{mkfs_erofs_versioned, ValidatedFileSystem};

/// Compares both writers on `fs`; returns a description of the first
/// difference.
fn compare<H: Pair>(fs: &FileSystem<H>, version: FormatVersion) -> Result<(), String> {
    let ours = mkfs(fs, version).map_err(|e| format!("our writer failed: {e}"))?;
    let validated = ValidatedFileSystem::new(to_reference(fs))
        .map_err(|e| format!("reference refused the tree: {e}"))?;
    let theirs = mkfs_erofs_versioned(&validated, ref_version(version));
    if ours[..] == theirs[..] {
        return Ok(());
    }
    let first = ours
        .iter()
        .zip(theirs.iter())
        .position(|(a, b)| a != b)
        .unwrap_or(ours.len().min(theirs.len()));
    Err(format!(
        "{version:?}/{}: images differ: ours {} bytes, theirs {} bytes, first difference at {first:#x}",
        H::ALGORITHM,
        ours.len(),
        theirs.len()
    ))
}

#[test]
fn generated_trees_are_byte_identical() {
    let mut failures = Vec::new();
    let count = 500u64;
    for seed in 0..count {
        let params = TreeParams {
            entries: 20 + (seed as usize * 7) % 400,
            ..TreeParams::default()
        };
        let fs256 = random_tree::<Sha256Digest>(seed, &params);
        let fs512 = random_tree::<Sha512Digest>(seed, &params);
        for version in FormatVersion::ALL {
            if let Err(e) = compare(&fs256, version) {
                failures.push(format!("seed {seed}: {e}"));
            }
            if let Err(e) = compare(&fs512, version) {
                failures.push(format!("seed {seed}: {e}"));
            }
        }
    }
    for f in failures.iter().take(20) {
        eprintln!("{f}");
    }
    assert!(
        failures.is_empty(),
        "{} of {} comparisons differ",
        failures.len(),
        count * 6
    );
    eprintln!("{} trees x 3 versions x 2 hashes: identical", count);
}

#[test]
#[ignore = "debugging aid: writes both images of one seed to $CFS_DUMP_DIR"]
fn dump_one() {
    let seed: u64 = std::env::var("SEED").map_or(0, |s| s.parse().unwrap());
    let entries: usize = std::env::var("ENTRIES").map_or(3, |s| s.parse().unwrap());
    let version =
        FormatVersion::from_number(std::env::var("V").map_or(1, |s| s.parse().unwrap())).unwrap();
    let params = TreeParams {
        entries,
        ..TreeParams::default()
    };
    let fs = random_tree::<Sha256Digest>(seed, &params);
    let dir = std::env::var("CFS_DUMP_DIR").unwrap();
    std::fs::write(format!("{dir}/ours.img"), mkfs(&fs, version).unwrap()).unwrap();
    let validated = ValidatedFileSystem::new(to_reference(&fs)).unwrap();
    std::fs::write(
        format!("{dir}/theirs.img"),
        mkfs_erofs_versioned(&validated, ref_version(version)),
    )
    .unwrap();
    let mut dump = Vec::new();
    composefs::dumpfile::write_dumpfile(&mut dump, &to_reference(&fs)).unwrap();
    std::fs::write(format!("{dir}/tree.dump"), dump).unwrap();
}
