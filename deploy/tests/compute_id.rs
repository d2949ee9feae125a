//! `cfs-deploy image compute-id` against the reference `cfsctl
//! compute-id` on the same directories: random trees written to disk, and
//! a real Debian root filesystem.

use std::path::{Path, PathBuf};
use std::process::Command;

use cfs_erofs::digest::Sha256Digest;
use cfs_erofs::tree::{Directory, FileName, Inode, Stat};
use cfs_tests::ondisk::{fill_external, write_tree};
use cfs_tests::{random_tree, TreeParams};
use common::{cfsctl, is_root, ok, OURS};

mod common;

/// Both tools' digests for `dir` with `(global, local)` flags; panics
/// naming the flags if they differ.
fn compare(cfsctl: &Path, dir: &Path, (global, local): Flags) -> String {
    let ours = ok(Command::new(OURS)
        .args(global)
        .args(["image", "compute-id"])
        .args(local)
        .arg(dir));
    let theirs = ok(Command::new(cfsctl)
        .arg("--no-repo")
        .args(global)
        .arg("compute-id")
        .args(local)
        .arg(dir));
    assert_eq!(ours, theirs, "compute-id {global:?} {local:?} of {dir:?}");
    ours
}

/// Global options, then compute-id options.
type Flags = (&'static [&'static str], &'static [&'static str]);

const FLAG_SETS: [Flags; 6] = [
    (&[], &[]),
    (&[], &["--no-propagate-usr-to-root"]),
    (&[], &["--xattrs", "keep-user-xattrs"]),
    (&[], &["--bootable"]),
    (&["--hash", "sha256"], &["--bootable"]),
    (&["--erofs-version", "2"], &[]),
];

/// The reference wants /usr (for the /usr-to-root copy) and, for
/// --bootable, /boot and /sysroot.
fn add_os_dirs(root: &mut Directory) {
    for name in [&b"usr"[..], b"boot", b"sysroot"] {
        let name = FileName::new(name).expect("valid");
        if !matches!(root.entries.get(&name), Some(Inode::Directory(_))) {
            let stat = Stat {
                mode: cfs_erofs::tree::Mode::new(0o755),
                ..root.stat.clone()
            };
            root.entries
                .insert(name, Inode::Directory(Box::new(Directory::new(stat))));
        }
    }
}

#[test]
fn random_trees_on_disk() {
    let Some(cfsctl) = cfsctl() else {
        eprintln!("SKIPPED random_trees_on_disk: cfsctl is not installed (run ./dev test)");
        return;
    };
    if !is_root() {
        eprintln!("SKIPPED random_trees_on_disk: writing owners and devices needs root");
        return;
    }
    let mut compared = 0;
    for seed in 0..25 {
        let params = TreeParams {
            entries: 150,
            max_inline: 200,
            ..TreeParams::default()
        };
        let mut fs = random_tree::<Sha256Digest>(seed, &params);
        add_os_dirs(&mut fs.root);
        fs.compact();
        let contents = fill_external(&mut fs, seed, 100_000);
        let work = tempfile::tempdir().expect("tempdir");
        let dir = work.path().join("root");
        std::fs::create_dir(&dir).expect("mkdir");
        write_tree(&fs, &contents, &dir).expect("write tree");
        for flags in FLAG_SETS {
            compare(&cfsctl, &dir, flags);
            compared += 1;
        }
    }
    eprintln!("{compared} compute-id runs equal to cfsctl's on 25 random trees");
}

#[test]
fn debian_root_filesystem() {
    let Some(cfsctl) = cfsctl() else {
        eprintln!("SKIPPED debian_root_filesystem: cfsctl is not installed (run ./dev test)");
        return;
    };
    if !is_root() {
        eprintln!("SKIPPED debian_root_filesystem: mmdebstrap needs root here");
        return;
    }
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-cache");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-rootfs.sh");
    let root = PathBuf::from(ok(Command::new(script).arg(&cache)).trim());
    let files = walk_count(&root);
    for flags in FLAG_SETS {
        let digest = compare(&cfsctl, &root, flags);
        eprintln!("{flags:?}: {digest}");
    }
    eprintln!("Debian root filesystem ({files} paths): ours equal cfsctl's for every flag set");
}

fn walk_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .expect("readdir")
        .map(|e| {
            let e = e.expect("entry");
            1 + if e.file_type().expect("type").is_dir() {
                walk_count(&e.path())
            } else {
                0
            }
        })
        .sum()
}
