//! The boot transform: from an image's merged tree to the tree a host
//! boots.
//!
//! `/boot` is emptied because a sealed UKI there embeds the digest of the
//! very image being computed, and `/sysroot` because it only ever holds
//! host state; both stay as empty directories (mount points) with `/usr`'s
//! mtime, so the result does not depend on when they were last touched.
//! Leaves only those directories linked are dropped, then the whole tree
//! is SELinux-labelled (see [`crate::selabel`]). This is composefs-rs
//! 0.9.4's `transform_for_boot` without the boot-entry discovery, which
//! does not change the tree.

use cfs_erofs::digest::FsVerityDigest;
use cfs_erofs::tree::{Directory, FileSystem, Inode, Mtime};

use crate::content::ContentSource;
use crate::selabel::{selabel, SelabelError};

/// Top-level directories emptied for boot, in the order they are handled.
const EMPTIED: [&str; 2] = ["boot", "sysroot"];

/// Why an image cannot be made bootable.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A top-level directory the transform needs does not exist.
    #[error("the image has no /{name} directory")]
    MissingDirectory {
        /// `usr`, `boot` or `sysroot`.
        name: &'static str,
    },
    /// A top-level name the transform needs is not a directory.
    #[error("/{name} in the image is not a directory")]
    NotADirectory {
        /// `usr`, `boot` or `sysroot`.
        name: &'static str,
    },
    /// Labelling failed.
    #[error("SELinux labelling: {0}")]
    Selabel(#[from] SelabelError),
}

fn top_level<'a>(
    root: &'a mut Directory,
    name: &'static str,
) -> Result<&'a mut Directory, BootError> {
    let file_name = cfs_erofs::tree::FileName::new(name.as_bytes())
        .expect("the transform's directory names are valid");
    match root.entries.get_mut(&file_name) {
        Some(Inode::Directory(dir)) => Ok(dir),
        Some(Inode::Leaf(_)) => Err(BootError::NotADirectory { name }),
        None => Err(BootError::MissingDirectory { name }),
    }
}

/// Empties `/boot` and `/sysroot` (giving them `/usr`'s mtime), drops the
/// leaves that only they linked, then labels every inode from the image's
/// SELinux policy, or strips all labels if the image has none. `source`
/// supplies the content of policy files stored as objects.
pub fn transform_for_boot<H: FsVerityDigest>(
    fs: &mut FileSystem<H>,
    source: &impl ContentSource<H>,
) -> Result<(), BootError> {
    let usr_mtime: Mtime = top_level(&mut fs.root, "usr")?.stat.mtime;
    for name in EMPTIED {
        let dir = top_level(&mut fs.root, name)?;
        dir.stat.mtime = usr_mtime;
        dir.entries.clear();
    }
    fs.compact();
    selabel(fs, source)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use cfs_erofs::digest::Sha256Digest;
    use cfs_erofs::tree::{FileName, Leaf, LeafContent, Mode, RegularFile, Stat};

    type Fs = FileSystem<Sha256Digest>;

    fn dir(sec: i64, nsec: u32) -> Inode {
        Inode::Directory(Box::new(Directory::new(Stat {
            mode: Mode::new(0o755),
            uid: 7,
            mtime: Mtime { sec, nsec },
            ..Stat::default()
        })))
    }

    fn name(text: &str) -> FileName {
        FileName::new(text.as_bytes()).unwrap()
    }

    fn file(fs: &mut Fs, text: &str) -> Inode {
        Inode::Leaf(fs.push_leaf(Leaf {
            stat: Stat::default(),
            content: LeafContent::Regular(RegularFile::Inline(text.as_bytes().into())),
        }))
    }

    fn image() -> Fs {
        let mut fs = Fs::new(Stat::default());
        for (top, sec) in [("usr", 100), ("boot", 5), ("sysroot", 6)] {
            fs.root.entries.insert(name(top), dir(sec, 9));
            let inner = file(&mut fs, top);
            fs.root
                .subdir_mut(top.as_bytes())
                .unwrap()
                .entries
                .insert(name("f"), inner);
        }
        // A leaf linked from /boot and /usr survives the emptying.
        let shared = match fs.root.subdir(b"usr").unwrap().entries[&name("f")] {
            Inode::Leaf(id) => id,
            Inode::Directory(_) => unreachable!(),
        };
        fs.root
            .subdir_mut(b"boot")
            .unwrap()
            .entries
            .insert(name("link"), Inode::Leaf(shared));
        fs
    }

    fn objects() -> HashMap<Sha256Digest, Vec<u8>> {
        HashMap::new()
    }

    #[test]
    fn empties_boot_and_sysroot() {
        let mut fs = image();
        if let Some(Inode::Directory(usr)) = fs.root.entries.get_mut(&name("usr")) {
            usr.stat.mtime = Mtime {
                sec: 123,
                nsec: 456,
            };
        }
        transform_for_boot(&mut fs, &objects()).unwrap();
        for top in ["boot", "sysroot"] {
            let d = fs.root.subdir(top.as_bytes()).unwrap();
            assert!(d.entries.is_empty());
            assert_eq!(
                d.stat.mtime,
                Mtime {
                    sec: 123,
                    nsec: 456
                }
            );
            assert_eq!(d.stat.uid, 7);
            assert_eq!(d.stat.mode, Mode::new(0o755));
        }
        assert_eq!(fs.leaves.len(), 1);
        assert_eq!(fs.check(), Ok(()));
        assert_eq!(fs.root.subdir(b"usr").unwrap().entries.len(), 1);
    }

    #[test]
    fn required_directories() {
        for missing in ["usr", "boot", "sysroot"] {
            let mut fs = image();
            fs.root.entries.remove(&name(missing));
            let err = transform_for_boot(&mut fs, &objects()).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("the image has no /{missing} directory")
            );

            let mut fs = image();
            let leaf = file(&mut fs, "x");
            fs.root.entries.insert(name(missing), leaf);
            let err = transform_for_boot(&mut fs, &objects()).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("/{missing} in the image is not a directory")
            );
        }
    }
}
