//! Writing a tree onto a real filesystem, to feed tools that read
//! directories (ours and `cfsctl`) the same strange input.
//!
//! Writing is best effort for what a filesystem may refuse (an xattr in a
//! namespace it does not store, say): the tests compare tools reading the
//! same directory, not the directory with the tree.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use cfs_erofs::digest::FsVerityDigest;
use cfs_erofs::fsverity::FsVerityHasher;
use cfs_erofs::tree::{Directory, FileSystem, Inode, LeafContent, LeafId, RegularFile, Stat};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, CWD};

/// Gives every external file real content (65 bytes up to `max_size`),
/// setting its digest and size to match; returns the contents by digest.
pub fn fill_external<H: FsVerityDigest>(
    fs: &mut FileSystem<H>,
    seed: u64,
    max_size: usize,
) -> HashMap<H, Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut contents = HashMap::new();
    for leaf in &mut fs.leaves {
        if let LeafContent::Regular(RegularFile::External { digest, size }) = &mut leaf.content {
            let len = 65 + (*size as usize) % (max_size - 64);
            let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            *digest = FsVerityHasher::<H>::digest(&data);
            *size = len as u64;
            contents.insert(*digest, data);
        }
    }
    contents
}

fn set_stat(path: &Path, stat: &Stat, is_symlink: bool) -> std::io::Result<()> {
    for (name, value) in &stat.xattrs {
        // Refusals (a namespace the filesystem does not store) are fine.
        let _ = rustix::fs::lsetxattr(
            path,
            OsStr::from_bytes(name),
            value,
            rustix::fs::XattrFlags::empty(),
        );
    }
    rustix::fs::chownat(
        CWD,
        path,
        Some(rustix::process::Uid::from_raw(stat.uid)),
        Some(rustix::process::Gid::from_raw(stat.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    if !is_symlink {
        // After chown, which clears setuid bits.
        rustix::fs::chmod(path, Mode::from_raw_mode(u32::from(stat.mode.bits())))?;
    }
    let time = Timespec {
        tv_sec: stat.mtime.sec,
        tv_nsec: i64::from(stat.mtime.nsec) as _,
    };
    rustix::fs::utimensat(
        CWD,
        path,
        &Timestamps {
            last_access: time,
            last_modification: time,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    Ok(())
}

struct Writer<'a, H> {
    fs: &'a FileSystem<H>,
    contents: &'a HashMap<H, Vec<u8>>,
    /// Where each leaf was first written, for hardlinks.
    written: HashMap<LeafId, std::path::PathBuf>,
}

impl<H: FsVerityDigest> Writer<'_, H> {
    fn dir(&mut self, path: &Path, dir: &Directory) -> std::io::Result<()> {
        for (name, inode) in &dir.entries {
            let child = path.join(OsStr::from_bytes(name.as_bytes()));
            match inode {
                Inode::Directory(sub) => {
                    std::fs::create_dir(&child)?;
                    self.dir(&child, sub)?;
                }
                Inode::Leaf(id) => self.leaf(&child, *id)?,
            }
        }
        // Last, so that creating entries does not change the mtime.
        set_stat(path, &dir.stat, false)
    }

    fn leaf(&mut self, path: &Path, id: LeafId) -> std::io::Result<()> {
        if let Some(first) = self.written.get(&id) {
            return std::fs::hard_link(first, path);
        }
        let leaf = self.fs.leaf(id);
        let device = |kind: FileType, rdev: u64| {
            rustix::fs::mknodat(CWD, path, kind, Mode::from_raw_mode(0o600), rdev)
        };
        match &leaf.content {
            LeafContent::Regular(RegularFile::Inline(data)) => std::fs::write(path, data)?,
            LeafContent::Regular(RegularFile::External { digest, .. }) => {
                std::fs::write(path, &self.contents[digest])?
            }
            LeafContent::Symlink(target) => {
                std::os::unix::fs::symlink(OsStr::from_bytes(target), path)?
            }
            LeafContent::BlockDevice(rdev) => device(FileType::BlockDevice, *rdev)?,
            LeafContent::CharacterDevice(rdev) => device(FileType::CharacterDevice, *rdev)?,
            LeafContent::Fifo => device(FileType::Fifo, 0)?,
            LeafContent::Socket => device(FileType::Socket, 0)?,
        }
        let is_symlink = matches!(leaf.content, LeafContent::Symlink(_));
        set_stat(path, &leaf.stat, is_symlink)?;
        self.written.insert(id, path.to_owned());
        Ok(())
    }
}

/// Writes `fs` into the empty directory `root` (as root: owners, devices
/// and trusted.* xattrs need it). External files take their bytes from
/// `contents`, as made by [`fill_external`].
pub fn write_tree<H: FsVerityDigest>(
    fs: &FileSystem<H>,
    contents: &HashMap<H, Vec<u8>>,
    root: &Path,
) -> std::io::Result<()> {
    let mut writer = Writer {
        fs,
        contents,
        written: HashMap::new(),
    };
    writer.dir(root, &fs.root)
}
