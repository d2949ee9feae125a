//! Writing part of an image's tree onto a real filesystem: a deployment's
//! `/etc` and the first `/var` come from the image this way.
//!
//! Everything is created fresh below an empty target directory, through
//! descriptors of directories we created, so a symlink in the image is
//! written as a symlink and never followed. Hard links inside the subtree
//! stay hard links.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use anyhow::{Context, Result};
use cap_std::fs::Dir;
use cfs_erofs::digest::FsVerityDigest;
use cfs_erofs::tree::{Directory, FileSystem, Inode, LeafContent, LeafId, RegularFile, Stat};
use cfs_images::Repository;
use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps};

use super::xattrs;

/// Writes the entries of `dir` (a directory of `fs`) into `target`, with
/// contents from `repo`, and gives `target` the directory's metadata.
pub fn checkout<H: FsVerityDigest>(
    repo: &Repository<H>,
    fs: &FileSystem<H>,
    dir: &Directory,
    target: &Dir,
) -> Result<()> {
    let mut writer = Writer {
        repo,
        fs,
        written: HashMap::new(),
    };
    writer.directory(dir, target, "")?;
    Ok(())
}

struct Writer<'a, H> {
    repo: &'a Repository<H>,
    fs: &'a FileSystem<H>,
    /// Leaves already written, by where (relative path from the target
    /// and the directory holding it).
    written: HashMap<LeafId, (Dir, Vec<u8>)>,
}

impl<H: FsVerityDigest> Writer<'_, H> {
    fn directory(&mut self, dir: &Directory, target: &Dir, at: &str) -> Result<()> {
        for (name, inode) in &dir.entries {
            let name = OsStr::from_bytes(name.as_bytes());
            let shown = format!("{at}/{}", name.to_string_lossy());
            match inode {
                Inode::Directory(child) => {
                    target
                        .create_dir(name)
                        .with_context(|| format!("creating {shown}"))?;
                    let opened = target
                        .open_dir(name)
                        .with_context(|| format!("opening {shown}"))?;
                    self.directory(child, &opened, &shown)?;
                }
                Inode::Leaf(id) => self
                    .leaf(*id, target, name)
                    .with_context(|| format!("writing {shown}"))?,
            }
        }
        set_stat(target, OsStr::new("."), &dir.stat, Kind::Openable)
            .with_context(|| format!("setting the metadata of {at}/"))
    }

    fn leaf(&mut self, id: LeafId, target: &Dir, name: &OsStr) -> Result<()> {
        if let Some((dir, first)) = self.written.get(&id) {
            rustix::fs::linkat(
                dir.as_fd(),
                OsStr::from_bytes(first),
                target.as_fd(),
                name,
                AtFlags::empty(),
            )?;
            return Ok(());
        }
        let leaf = self.fs.leaf(id);
        let fd = target.as_fd();
        match &leaf.content {
            LeafContent::Regular(file) => {
                let mut out = target.create(name)?;
                match file {
                    RegularFile::Inline(bytes) => out.write_all(bytes)?,
                    RegularFile::External { digest, .. } => {
                        let mut object = self.repo.open_object(digest)?;
                        std::io::copy(&mut object, &mut out)?;
                    }
                }
            }
            LeafContent::Symlink(link) => {
                rustix::fs::symlinkat(OsStr::from_bytes(link), fd, name)?;
            }
            LeafContent::BlockDevice(rdev) | LeafContent::CharacterDevice(rdev) => {
                let kind = match leaf.content {
                    LeafContent::BlockDevice(_) => FileType::BlockDevice,
                    _ => FileType::CharacterDevice,
                };
                rustix::fs::mknodat(fd, name, kind, Mode::from_raw_mode(0o600), *rdev)?;
            }
            LeafContent::Fifo => {
                rustix::fs::mknodat(fd, name, FileType::Fifo, Mode::from_raw_mode(0o600), 0)?;
            }
            // A socket is only ever a leftover of a running build.
            LeafContent::Socket => return Ok(()),
        }
        let kind = match leaf.content {
            LeafContent::Regular(_) => Kind::Openable,
            LeafContent::Symlink(_) => Kind::Symlink,
            _ => Kind::Special,
        };
        set_stat(target, name, &leaf.stat, kind)?;
        self.written
            .insert(id, (target.try_clone()?, name.as_bytes().to_vec()));
        Ok(())
    }
}

/// What metadata a file can take.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Regular files and directories: everything.
    Openable,
    /// Devices and fifos: no `user.*` xattrs.
    Special,
    /// Symlinks: no mode, no `user.*` xattrs.
    Symlink,
}

/// Owner, mode, xattrs and mtime of `dir/name` (without following it).
fn set_stat(dir: &Dir, name: &OsStr, stat: &Stat, kind: Kind) -> Result<()> {
    let fd = dir.as_fd();
    rustix::fs::chownat(
        fd,
        name,
        Some(rustix::process::Uid::from_raw(stat.uid)),
        Some(rustix::process::Gid::from_raw(stat.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    if kind != Kind::Symlink {
        // After chown, which clears setuid bits.
        rustix::fs::chmodat(
            fd,
            name,
            Mode::from_raw_mode(u32::from(stat.mode.bits())),
            AtFlags::empty(),
        )?;
    }
    // Every kind of file carries its xattrs (a symlink its SELinux
    // label), but only regular files and directories take `user.*` ones.
    if !stat.xattrs.is_empty() {
        let path = xattrs::at(fd, name);
        for (key, value) in &stat.xattrs {
            if kind == Kind::Openable || !key.starts_with(b"user.") {
                rustix::fs::lsetxattr(
                    &path,
                    OsStr::from_bytes(key),
                    value,
                    rustix::fs::XattrFlags::empty(),
                )?;
            }
        }
    }
    let time = Timespec {
        tv_sec: stat.mtime.sec,
        tv_nsec: i64::from(stat.mtime.nsec) as _,
    };
    rustix::fs::utimensat(
        fd,
        name,
        &Timestamps {
            last_access: time,
            last_modification: time,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    Ok(())
}
