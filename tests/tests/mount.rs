//! Privileged: the kernel mounts our images (loop-mounted erofs, then
//! overlayfs with the object directory as a data-only lower layer, as
//! composefs mounts them) and what a reader sees must equal the tree:
//! types, contents, modes, owners, xattrs, mtimes, symlink targets, device
//! numbers and hardlink identity.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use cfs_erofs::digest::{FsVerityDigest, Sha256Digest, Sha512Digest};
use cfs_erofs::format::FormatVersion;
use cfs_erofs::fsverity::FsVerityHasher;
use cfs_erofs::tree::{Directory, FileSystem, Inode, LeafContent, RegularFile};
use cfs_tests::{random_tree, TreeParams};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Why this machine cannot run the test, if it cannot.
fn missing_feature() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not running as root".into());
    }
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    for fs in ["erofs", "overlay"] {
        if !filesystems.contains(fs) {
            // The module may just not be loaded yet.
            let _ = Command::new("modprobe").arg(fs).status();
            let again = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
            if !again.contains(fs) {
                return Some(format!("kernel has no {fs} filesystem"));
            }
        }
    }
    None
}

/// Unmounts on drop, so a failed assertion leaves no mount behind.
struct Mounted(Vec<PathBuf>);

impl Drop for Mounted {
    fn drop(&mut self) {
        for path in self.0.iter().rev() {
            let _ = Command::new("umount").arg(path).status();
        }
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(out.status.success(), "{cmd:?} failed: {out:?}");
}

/// Gives every external file real content, written as an object, and
/// drops what no Linux filesystem can hold, so the kernel could not show
/// it as-is: whiteouts (overlayfs hides them), ACL xattrs (the kernel
/// parses them), xattrs outside the namespaces Linux has, and user.*
/// xattrs on anything but files and directories.
///
/// V2 stores inline files wholly after the inode, which the kernel reads
/// only up to a block: larger inline files become objects there (the
/// reference writes the same unreadable V2 images for such trees).
fn materialize<H: FsVerityDigest>(
    fs: &mut FileSystem<H>,
    objects: &Path,
    seed: u64,
    version: FormatVersion,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    for leaf in &mut fs.leaves {
        if let LeafContent::Regular(RegularFile::Inline(data)) = &leaf.content {
            if !version.is_c_layout() && data.len() > 512 {
                leaf.content = LeafContent::Regular(RegularFile::External {
                    digest: H::from_slice(&[0; 64][..H::ALGORITHM.digest_len()]).expect("len"),
                    size: data.len() as u64,
                });
            }
        }
        if let LeafContent::Regular(RegularFile::External { digest, size }) = &mut leaf.content {
            let len = 65 + (*size % 150_000) as usize;
            let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            *digest = FsVerityHasher::<H>::digest(&data);
            *size = len as u64;
            let path = objects.join(digest.object_pathname());
            std::fs::create_dir_all(path.parent().expect("has parent")).expect("mkdir");
            std::fs::write(path, data).expect("write object");
        }
        if leaf.content.is_whiteout() {
            leaf.content = LeafContent::Fifo;
        }
        // The kernel keeps user.* xattrs for files and directories only.
        if !matches!(leaf.content, LeafContent::Regular(_)) {
            leaf.stat
                .xattrs
                .retain(|name, _| !name.starts_with(b"user."));
        }
    }
    fs.for_each_stat_mut(|stat| {
        stat.xattrs.retain(|name, _| {
            // overlayfs re-escapes trusted.overlay.* names when reading,
            // and a name may not exceed 255 bytes once escaped.
            let escaped_len = name.len() + 8 * usize::from(name.starts_with(b"trusted.overlay."));
            escaped_len <= 255
                && ["user.", "trusted.", "security."]
                    .iter()
                    .any(|p| name.starts_with(p.as_bytes()))
        })
    });
}

fn xattrs_of(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut names = vec![0u8; 1 << 20];
    let n = rustix::fs::llistxattr(path, &mut names).expect("llistxattr");
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = names[..n]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|name| {
            let mut value = vec![0u8; 1 << 17];
            let len = rustix::fs::lgetxattr(path, OsStr::from_bytes(name), &mut value)
                .unwrap_or_else(|e| {
                    panic!(
                        "{path:?}: lgetxattr {:?}: {e}",
                        String::from_utf8_lossy(name)
                    )
                });
            (name.to_vec(), value[..len].to_vec())
        })
        .collect();
    out.sort();
    out
}

struct Checker<'a, H> {
    fs: &'a FileSystem<H>,
    objects: &'a Path,
    keeps_nsec: bool,
    /// Inode number seen for each leaf, and leaf for each inode number.
    inos: HashMap<usize, u64>,
    leaves_by_ino: HashMap<u64, usize>,
    checked: usize,
}

impl<H: FsVerityDigest> Checker<'_, H> {
    fn check_stat(&self, path: &Path, meta: &std::fs::Metadata, stat: &cfs_erofs::tree::Stat) {
        assert_eq!(
            meta.mode() & 0o7777,
            u32::from(stat.mode.bits()),
            "{path:?} mode"
        );
        assert_eq!(meta.uid(), stat.uid, "{path:?} uid");
        assert_eq!(meta.gid(), stat.gid, "{path:?} gid");
        assert_eq!(meta.mtime(), stat.mtime.sec, "{path:?} mtime");
        let nsec = if self.keeps_nsec { stat.mtime.nsec } else { 0 };
        assert_eq!(meta.mtime_nsec(), i64::from(nsec), "{path:?} mtime nsec");
        let expected: Vec<(Vec<u8>, Vec<u8>)> = stat
            .xattrs
            .iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        assert_eq!(xattrs_of(path), expected, "{path:?} xattrs");
    }

    fn check_dir(&mut self, path: &Path, dir: &Directory) {
        let meta = std::fs::symlink_metadata(path).expect("stat dir");
        assert!(meta.is_dir(), "{path:?} is a directory");
        self.check_stat(path, &meta, &dir.stat);
        let mut names: Vec<Vec<u8>> = std::fs::read_dir(path)
            .expect("readdir")
            .map(|e| e.expect("entry").file_name().as_bytes().to_vec())
            .collect();
        names.sort();
        let expected: Vec<Vec<u8>> = dir.entries.keys().map(|n| n.as_bytes().to_vec()).collect();
        assert_eq!(names, expected, "{path:?} entries");
        for (name, inode) in &dir.entries {
            let child = path.join(OsStr::from_bytes(name.as_bytes()));
            match inode {
                Inode::Directory(sub) => self.check_dir(&child, sub),
                Inode::Leaf(id) => self.check_leaf(&child, id.0),
            }
            self.checked += 1;
        }
    }

    fn check_leaf(&mut self, path: &Path, id: usize) {
        let leaf = &self.fs.leaves[id];
        let meta = std::fs::symlink_metadata(path).expect("stat leaf");
        self.check_stat(path, &meta, &leaf.stat);
        let ft = meta.file_type();
        match &leaf.content {
            LeafContent::Regular(content) => {
                assert!(ft.is_file(), "{path:?} is a regular file");
                let data = std::fs::read(path).expect("read file");
                let expected = match content {
                    RegularFile::Inline(data) => data.to_vec(),
                    RegularFile::External { digest, .. } => {
                        std::fs::read(self.objects.join(digest.object_pathname()))
                            .expect("read object")
                    }
                };
                if data != expected {
                    let first = data.iter().zip(&expected).position(|(a, b)| a != b);
                    panic!(
                        "{path:?}: content differs ({} read, {} expected, first difference at {first:?}, {})",
                        data.len(),
                        expected.len(),
                        if matches!(content, RegularFile::Inline(_)) { "inline" } else { "external" },
                    );
                }
            }
            LeafContent::Symlink(target) => {
                assert!(ft.is_symlink(), "{path:?} is a symlink");
                let read = std::fs::read_link(path).expect("readlink");
                assert_eq!(read.as_os_str().as_bytes(), &target[..], "{path:?} target");
            }
            LeafContent::BlockDevice(rdev) => {
                assert!(ft.is_block_device(), "{path:?} is a block device");
                assert_eq!(meta.rdev(), *rdev, "{path:?} rdev");
            }
            LeafContent::CharacterDevice(rdev) => {
                assert!(ft.is_char_device(), "{path:?} is a char device");
                assert_eq!(meta.rdev(), *rdev, "{path:?} rdev");
            }
            LeafContent::Fifo => assert!(ft.is_fifo(), "{path:?} is a fifo"),
            LeafContent::Socket => assert!(ft.is_socket(), "{path:?} is a socket"),
        }
        // Hardlinks: one inode number per leaf, a different one per leaf.
        let ino = meta.ino();
        let seen = *self.inos.entry(id).or_insert(ino);
        assert_eq!(seen, ino, "{path:?}: links to one leaf share an inode");
        let owner = *self.leaves_by_ino.entry(ino).or_insert(id);
        assert_eq!(owner, id, "{path:?}: distinct leaves have distinct inodes");
    }
}

fn mount_and_compare<H: FsVerityDigest>(seed: u64, version: FormatVersion) -> usize {
    let work = tempfile::tempdir().expect("tempdir");
    let objects = work.path().join("objects");
    std::fs::create_dir(&objects).expect("mkdir objects");
    let params = TreeParams {
        entries: 300,
        ..TreeParams::default()
    };
    let mut fs = random_tree::<H>(seed, &params);
    materialize(&mut fs, &objects, seed, version);
    fs.compact();

    let image = work.path().join("image.erofs");
    std::fs::write(&image, cfs_erofs::writer::mkfs(&fs, version).expect("mkfs")).expect("write");
    let lower = work.path().join("erofs");
    let root = work.path().join("root");
    std::fs::create_dir(&lower).expect("mkdir");
    std::fs::create_dir(&root).expect("mkdir");

    let mut mounted = Mounted(Vec::new());
    run(Command::new("mount")
        .args(["-t", "erofs", "-o", "loop,ro"])
        .arg(&image)
        .arg(&lower));
    mounted.0.push(lower.clone());
    let options = format!(
        "ro,metacopy=on,redirect_dir=on,lowerdir={}::{}",
        lower.display(),
        objects.display()
    );
    run(Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &options])
        .arg(&root));
    mounted.0.push(root.clone());

    let mut checker = Checker {
        fs: &fs,
        objects: &objects,
        keeps_nsec: version.is_c_layout(),
        inos: HashMap::new(),
        leaves_by_ino: HashMap::new(),
        checked: 0,
    };
    checker.check_dir(&root, &fs.root);
    checker.checked
}

#[test]
fn mounted_images_show_the_tree() {
    if let Some(reason) = missing_feature() {
        eprintln!("SKIPPED mounted_images_show_the_tree: {reason}");
        return;
    }
    let mut paths = 0;
    for seed in 0..8 {
        for version in FormatVersion::ALL {
            paths += mount_and_compare::<Sha256Digest>(seed, version);
            paths += mount_and_compare::<Sha512Digest>(seed + 100, version);
        }
    }
    eprintln!("mounted 48 images, {paths} paths compared with their trees");
}
