//! The 3-way merge of `/etc` at upgrade, as ostree and bootc do it: what
//! the administrator changed (the deployment's `/etc` against its image's
//! pristine `/etc`) wins; everything else follows the new image.
//!
//! A path counts as changed when its type, content, symlink target, mode,
//! owner or xattrs differ (mtimes do not count; see [`xattrs::same`] for
//! SELinux labels). Added and changed paths are copied over the new
//! image's version with all their metadata, so a file keeps the label,
//! owner and mode the administrator gave it; untouched paths keep the new
//! image's. Paths the administrator removed are removed. Where the new
//! image changed a path the administrator changed too, the local version
//! wins and the path is reported as a conflict.
//!
//! The new `/etc` comes from an image, so it is hostile: it is changed
//! only through descriptors of directories opened without following
//! symlinks. A changed path whose type differs between the old and new
//! images (a file that became a directory), or below a directory the new
//! image turned into something else, cannot be merged: the merge stops
//! before anything is written.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::ErrorKind;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use cap_std::fs::Dir;
use cfs_erofs::digest::FsVerityDigest;
use cfs_erofs::fsverity::FsVerityHasher;
use cfs_erofs::tree::{Directory, FileSystem, Inode, LeafContent, RegularFile};
use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use super::xattrs::{self, Xattrs};

/// What a path in an image's `/etc` is.
#[derive(Debug, PartialEq, Eq)]
struct ImageEntry<H> {
    kind: ImageKind<H>,
    mode: u32,
    uid: u32,
    gid: u32,
    xattrs: Xattrs,
}

#[derive(Debug, PartialEq, Eq)]
enum ImageKind<H> {
    Dir,
    File(RegularFile<H>),
    Symlink(Vec<u8>),
    Other,
}

/// Every path below `dir` (relative to it) and what the image has there.
fn image_entries<H: FsVerityDigest>(
    fs: &FileSystem<H>,
    dir: &Directory,
) -> BTreeMap<PathBuf, ImageEntry<H>> {
    let mut out = BTreeMap::new();
    collect(fs, dir, Path::new(""), &mut out);
    out
}

fn collect<H: FsVerityDigest>(
    fs: &FileSystem<H>,
    dir: &Directory,
    at: &Path,
    out: &mut BTreeMap<PathBuf, ImageEntry<H>>,
) {
    for (name, inode) in &dir.entries {
        let path = at.join(OsStr::from_bytes(name.as_bytes()));
        let (kind, stat) = match inode {
            Inode::Directory(child) => {
                collect(fs, child, &path, out);
                (ImageKind::Dir, &child.stat)
            }
            Inode::Leaf(id) => {
                let leaf = fs.leaf(*id);
                let kind = match &leaf.content {
                    LeafContent::Regular(content) => ImageKind::File(content.clone()),
                    LeafContent::Symlink(target) => ImageKind::Symlink(target.to_vec()),
                    _ => ImageKind::Other,
                };
                (kind, &leaf.stat)
            }
        };
        out.insert(
            path,
            ImageEntry {
                kind,
                mode: u32::from(stat.mode.bits()),
                uid: stat.uid,
                gid: stat.gid,
                xattrs: stat.xattrs.clone(),
            },
        );
    }
}

/// Whether the file at `path` (not followed) is the image's `entry`.
fn unchanged<H: FsVerityDigest>(path: &Path, entry: &ImageEntry<H>) -> Result<bool> {
    let meta = std::fs::symlink_metadata(path)?;
    let is_symlink = meta.file_type().is_symlink();
    let same_type = match &entry.kind {
        ImageKind::Dir => meta.is_dir(),
        ImageKind::File(_) => meta.is_file(),
        ImageKind::Symlink(_) => is_symlink,
        ImageKind::Other => !meta.is_dir() && !meta.is_file() && !is_symlink,
    };
    // A symlink's mode is always 0777; the kernel ignores it.
    let same_mode = is_symlink || meta.permissions().mode() & 0o7777 == entry.mode;
    if !same_type
        || !same_mode
        || meta.uid() != entry.uid
        || meta.gid() != entry.gid
        || !xattrs::same(&xattrs::read(path)?, &entry.xattrs)
    {
        return Ok(false);
    }
    Ok(match &entry.kind {
        ImageKind::File(RegularFile::Inline(bytes)) => std::fs::read(path)? == bytes.as_ref(),
        ImageKind::File(RegularFile::External { digest, size }) => {
            meta.len() == *size && {
                let mut hasher = FsVerityHasher::<H>::new();
                std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
                hasher.finish() == *digest
            }
        }
        ImageKind::Symlink(target) => {
            std::fs::read_link(path)?.as_os_str().as_bytes() == target.as_slice()
        }
        ImageKind::Dir | ImageKind::Other => true,
    })
}

/// What the administrator did to `/etc`, by path relative to it.
#[derive(Debug, Default)]
pub struct EtcChanges {
    /// Added or changed (copied from the current `/etc`).
    pub changed: Vec<PathBuf>,
    /// Removed.
    pub removed: Vec<PathBuf>,
}

/// Compares the current `/etc` with its image's pristine one.
pub fn local_changes<H: FsVerityDigest>(
    pristine_fs: &FileSystem<H>,
    pristine: &Directory,
    current: &Path,
) -> Result<EtcChanges> {
    let map = image_entries(pristine_fs, pristine);
    let mut changes = EtcChanges::default();
    walk(current, Path::new(""), &mut |relative, is_dir| {
        let full = current.join(relative);
        match map.get(relative) {
            Some(entry) if unchanged(&full, entry)? => Ok(true),
            // A directory whose own metadata changed is recorded, and its
            // contents compared one by one.
            Some(ImageEntry {
                kind: ImageKind::Dir,
                ..
            }) if is_dir => {
                changes.changed.push(relative.to_owned());
                Ok(true)
            }
            _ => {
                changes.changed.push(relative.to_owned());
                // A new or replaced directory is copied whole.
                Ok(false)
            }
        }
    })?;
    for path in map.keys() {
        if std::fs::symlink_metadata(current.join(path)).is_err()
            && !path
                .ancestors()
                .skip(1)
                .any(|a| changes.removed.iter().any(|r| r == a))
        {
            changes.removed.push(path.clone());
        }
    }
    Ok(changes)
}

/// The paths where the administrator's version wins over a change the new
/// image made: changed or removed here, and different between the old and
/// the new image.
pub fn conflicts<H: FsVerityDigest>(
    changes: &EtcChanges,
    old_fs: &FileSystem<H>,
    old: Option<&Directory>,
    new_fs: &FileSystem<H>,
    new: Option<&Directory>,
) -> Vec<PathBuf> {
    let old = old.map(|d| image_entries(old_fs, d)).unwrap_or_default();
    let new = new.map(|d| image_entries(new_fs, d)).unwrap_or_default();
    let mut found: Vec<PathBuf> = changes
        .changed
        .iter()
        .chain(&changes.removed)
        .filter(|path| old.get(*path) != new.get(*path))
        .cloned()
        .collect();
    found.sort();
    found
}

/// Calls `visit(relative, is_dir)` for every path below `root`;
/// descends into a directory only if `visit` returns true.
fn walk(root: &Path, at: &Path, visit: &mut dyn FnMut(&Path, bool) -> Result<bool>) -> Result<()> {
    let dir = root.join(at);
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    for name in names {
        let relative = at.join(&name);
        let is_dir = std::fs::symlink_metadata(root.join(&relative))?.is_dir();
        if visit(&relative, is_dir)? && is_dir {
            walk(root, &relative, visit)?;
        }
    }
    Ok(())
}

/// Opens the directory `name` in `dir` without following a symlink;
/// `None` if it does not exist, an error naming `shown` if it is not a
/// directory.
fn open_subdir(dir: impl AsFd, name: &OsStr, shown: &Path) -> Result<Option<OwnedFd>> {
    match rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::NOENT) => Ok(None),
        Err(Errno::NOTDIR | Errno::LOOP) => bail!(
            "cannot merge /etc: the new image made /etc/{} something other than a directory",
            shown.display()
        ),
        Err(e) => Err(e).with_context(|| format!("opening /etc/{}", shown.display())),
    }
}

/// The parent directory of `path` in the tree at `root`, opened without
/// following symlinks: `None` if part of it is missing (and `create` is
/// false). Missing directories are created with the metadata of the same
/// directories below `current`.
fn open_parent(
    root: &OwnedFd,
    path: &Path,
    current: &Path,
    create: bool,
) -> Result<Option<OwnedFd>> {
    let mut dir = rustix::io::dup(root)?;
    let mut at = PathBuf::new();
    let parent = path.parent().unwrap_or(Path::new(""));
    for component in parent.components() {
        let Component::Normal(name) = component else {
            bail!("/etc/{} is not a plain relative path", path.display());
        };
        at.push(name);
        dir = match open_subdir(&dir, name, &at)? {
            Some(next) => next,
            None if create => {
                rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700))?;
                let meta = std::fs::symlink_metadata(current.join(&at))?;
                set_metadata(&dir, name, &meta, &xattrs::read(&current.join(&at))?)?;
                open_subdir(&dir, name, &at)?.context("a directory just made")?
            }
            None => return Ok(None),
        };
    }
    Ok(Some(dir))
}

fn file_name(path: &Path) -> Result<&OsStr> {
    path.file_name()
        .with_context(|| format!("/etc/{} has no file name", path.display()))
}

/// Applies `changes` from `current` onto `new` (the new deployment's
/// `/etc`, a fresh copy of the new image's). Checks every path first, so
/// that an unmergeable one stops it before anything changes.
pub fn apply(changes: &EtcChanges, current: &Path, new: &Path) -> Result<()> {
    let root = rustix::fs::open(
        new,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("opening {}", new.display()))?;
    for path in changes.changed.iter().chain(&changes.removed) {
        let Some(parent) = open_parent(&root, path, current, false)? else {
            continue;
        };
        let mine = std::fs::symlink_metadata(current.join(path)).ok();
        let theirs = match rustix::fs::statat(&parent, file_name(path)?, AtFlags::SYMLINK_NOFOLLOW)
        {
            Ok(stat) => stat,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(e).with_context(|| format!("reading /etc/{}", path.display())),
        };
        let theirs_dir = rustix::fs::FileType::from_raw_mode(theirs.st_mode).is_dir();
        if let Some(mine) = mine.filter(|m| m.is_dir() != theirs_dir) {
            bail!(
                "cannot merge /etc/{}: it is a {} here, and the new image made it a {}",
                path.display(),
                if mine.is_dir() { "directory" } else { "file" },
                if theirs_dir { "directory" } else { "file" }
            );
        }
    }
    for path in &changes.removed {
        if let Some(parent) = open_parent(&root, path, current, false)? {
            remove(&parent, file_name(path)?)
                .with_context(|| format!("removing /etc/{}", path.display()))?;
        }
    }
    for path in &changes.changed {
        let parent = open_parent(&root, path, current, true)?
            .context("the parent directory was just made")?;
        copy_over(&current.join(path), &parent, file_name(path)?)
            .with_context(|| format!("merging /etc/{}", path.display()))?;
    }
    Ok(())
}

/// Removes `name` from `dir`, a whole directory tree included, never
/// following a symlink.
fn remove(dir: &OwnedFd, name: &OsStr) -> Result<()> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
        Ok(stat) if rustix::fs::FileType::from_raw_mode(stat.st_mode).is_dir() => {
            let parent = Dir::from_std_file(std::fs::File::from(rustix::io::dup(dir)?));
            parent.remove_dir_all(Path::new(name))?;
            Ok(())
        }
        Ok(_) => Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?),
    }
}

/// Replaces `name` in `dir` with a copy of `from` (not followed) and all
/// its metadata, keeping an existing directory's contents when `from` is a
/// directory too (changed children are listed separately).
fn copy_over(from: &Path, dir: &OwnedFd, name: &OsStr) -> Result<()> {
    let meta = std::fs::symlink_metadata(from)?;
    let kind = meta.file_type();
    let existing = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => Some(rustix::fs::FileType::from_raw_mode(stat.st_mode)),
        Err(Errno::NOENT) => None,
        Err(e) => return Err(e.into()),
    };
    if kind.is_dir() {
        if existing.is_some_and(|t| !t.is_dir()) {
            rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
        }
        if !existing.is_some_and(|t| t.is_dir()) {
            rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700))?;
            let child =
                open_subdir(dir, name, Path::new(name))?.context("a directory just made")?;
            for entry in std::fs::read_dir(from)? {
                let entry = entry?;
                copy_over(&entry.path(), &child, &entry.file_name())?;
            }
        }
    } else {
        if existing.is_some() {
            remove(dir, name)?;
        }
        if kind.is_symlink() {
            rustix::fs::symlinkat(std::fs::read_link(from)?.as_os_str(), dir, name)?;
        } else if kind.is_file() {
            let out = rustix::fs::openat(
                dir,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )?;
            let mut out = std::fs::File::from(out);
            std::io::copy(&mut std::fs::File::open(from)?, &mut out)?;
        } else {
            // Devices and fifos do not belong in /etc; leave them out.
            return Ok(());
        }
    }
    set_metadata(dir, name, &meta, &xattrs::read(from)?)
}

/// Owner, mode, xattrs and mtime of `dir/name` (not followed) from
/// `meta` and `xattrs`: in that order, as chown clears setuid bits and
/// file capabilities.
fn set_metadata(
    dir: impl AsFd,
    name: &OsStr,
    meta: &std::fs::Metadata,
    wanted: &Xattrs,
) -> Result<()> {
    let dir = dir.as_fd();
    rustix::fs::chownat(
        dir,
        name,
        Some(rustix::process::Uid::from_raw(meta.uid())),
        Some(rustix::process::Gid::from_raw(meta.gid())),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    if !meta.file_type().is_symlink() {
        // Not a symlink (we made it), so following is safe.
        rustix::fs::chmodat(
            dir,
            name,
            Mode::from_raw_mode(meta.permissions().mode() & 0o7777),
            AtFlags::empty(),
        )?;
    }
    xattrs::replace_at(dir, name, wanted)?;
    let time = Timespec {
        tv_sec: meta.mtime(),
        tv_nsec: meta.mtime_nsec() as _,
    };
    match rustix::fs::utimensat(
        dir,
        name,
        &Timestamps {
            last_access: time,
            last_modification: time,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    ) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::Unsupported => Ok(()),
        Err(e) => Err(e.into()),
    }
}
