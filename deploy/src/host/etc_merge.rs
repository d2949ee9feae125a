//! The 3-way merge of `/etc` at upgrade, as ostree and bootc do it: what
//! the administrator changed (the deployment's `/etc` against its image's
//! pristine `/etc`) wins; everything else follows the new image.
//!
//! A path counts as changed when its type, content, symlink target, mode
//! or owner differ (mtimes do not count). Added and changed paths are
//! copied over the new image's version; paths the administrator removed
//! are removed. A changed path whose type differs between the old and new
//! images (a file that became a directory) cannot be merged: the upgrade
//! stops before anything is written.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cfs_erofs::digest::FsVerityDigest;
use cfs_erofs::fsverity::FsVerityHasher;
use cfs_erofs::tree::{Directory, FileSystem, Inode, LeafContent, RegularFile};

/// What a path in a pristine `/etc` was.
#[derive(Debug, PartialEq, Eq)]
enum Pristine<H> {
    Dir {
        mode: u32,
        uid: u32,
        gid: u32,
    },
    File {
        mode: u32,
        uid: u32,
        gid: u32,
        content: RegularFile<H>,
    },
    Symlink {
        target: Vec<u8>,
    },
    Other,
}

fn pristine_map<H: FsVerityDigest>(
    fs: &FileSystem<H>,
    dir: &Directory,
    at: &Path,
    out: &mut BTreeMap<PathBuf, Pristine<H>>,
) {
    for (name, inode) in &dir.entries {
        let path = at.join(std::ffi::OsStr::from_bytes(name.as_bytes()));
        match inode {
            Inode::Directory(child) => {
                let stat = &child.stat;
                out.insert(
                    path.clone(),
                    Pristine::Dir {
                        mode: u32::from(stat.mode.bits()),
                        uid: stat.uid,
                        gid: stat.gid,
                    },
                );
                pristine_map(fs, child, &path, out);
            }
            Inode::Leaf(id) => {
                let leaf = fs.leaf(*id);
                let entry = match &leaf.content {
                    LeafContent::Regular(content) => Pristine::File {
                        mode: u32::from(leaf.stat.mode.bits()),
                        uid: leaf.stat.uid,
                        gid: leaf.stat.gid,
                        content: content.clone(),
                    },
                    LeafContent::Symlink(target) => Pristine::Symlink {
                        target: target.to_vec(),
                    },
                    _ => Pristine::Other,
                };
                out.insert(path, entry);
            }
        }
    }
}

/// Whether the file at `path` (not followed) is the pristine `entry`.
fn unchanged<H: FsVerityDigest>(path: &Path, entry: &Pristine<H>) -> Result<bool> {
    let meta = std::fs::symlink_metadata(path)?;
    let mode = meta.permissions().mode() & 0o7777;
    Ok(match entry {
        Pristine::Dir { mode: m, uid, gid } => {
            meta.is_dir() && mode == *m && meta.uid() == *uid && meta.gid() == *gid
        }
        Pristine::File {
            mode: m,
            uid,
            gid,
            content,
        } => {
            meta.is_file()
                && mode == *m
                && meta.uid() == *uid
                && meta.gid() == *gid
                && match content {
                    RegularFile::Inline(bytes) => std::fs::read(path)? == bytes.as_ref(),
                    RegularFile::External { digest, size } => {
                        meta.len() == *size && {
                            let mut hasher = FsVerityHasher::<H>::new();
                            std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
                            hasher.finish() == *digest
                        }
                    }
                }
        }
        Pristine::Symlink { target } => {
            meta.file_type().is_symlink()
                && std::fs::read_link(path)?.as_os_str().as_bytes() == target.as_slice()
        }
        Pristine::Other => !meta.is_dir() && !meta.is_file() && !meta.file_type().is_symlink(),
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
    let mut map = BTreeMap::new();
    pristine_map(pristine_fs, pristine, Path::new(""), &mut map);
    let mut changes = EtcChanges::default();
    walk(current, Path::new(""), &mut |relative, is_dir| {
        let full = current.join(relative);
        match map.get(relative) {
            Some(entry) if unchanged(&full, entry)? => Ok(true),
            // A directory whose own metadata changed is recorded, and its
            // contents compared one by one.
            Some(Pristine::Dir { .. }) if is_dir => {
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

/// Applies `changes` from `current` onto `new` (the new deployment's
/// `/etc`, a fresh copy of the new image's). Checks every path first, so
/// that an unmergeable one stops it before anything changes.
pub fn apply(changes: &EtcChanges, current: &Path, new: &Path) -> Result<()> {
    for path in &changes.changed {
        let (Ok(mine), Ok(theirs)) = (
            std::fs::symlink_metadata(current.join(path)),
            std::fs::symlink_metadata(new.join(path)),
        ) else {
            continue;
        };
        if mine.is_dir() != theirs.is_dir() {
            bail!(
                "cannot merge /etc/{}: changed here, and the new image turned it into {}",
                path.display(),
                if theirs.is_dir() {
                    "a directory"
                } else {
                    "a file"
                }
            );
        }
    }
    for path in &changes.removed {
        let target = new.join(path);
        match std::fs::symlink_metadata(&target) {
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&target)?,
            Ok(_) => std::fs::remove_file(&target)?,
            Err(_) => {}
        }
    }
    for path in &changes.changed {
        copy_over(&current.join(path), &new.join(path))
            .with_context(|| format!("merging /etc/{}", path.display()))?;
    }
    Ok(())
}

/// Replaces `to` with a copy of `from` (not followed), keeping an existing
/// directory's contents when `from` is a directory too (only its metadata
/// is copied; changed children are listed separately).
fn copy_over(from: &Path, to: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(from)?;
    let existing = std::fs::symlink_metadata(to).ok();
    if meta.is_dir() {
        match existing {
            Some(e) if e.is_dir() => {}
            Some(_) => {
                std::fs::remove_file(to)?;
                copy_tree(from, to)?;
            }
            None => copy_tree(from, to)?,
        }
    } else {
        match existing {
            Some(e) if e.is_dir() => std::fs::remove_dir_all(to)?,
            Some(_) => std::fs::remove_file(to)?,
            None => {}
        }
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(from)?, to)?;
        } else if meta.is_file() {
            std::fs::copy(from, to)?;
        } else {
            // Devices and fifos do not belong in /etc; leave them out.
            return Ok(());
        }
    }
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()))?;
    if !meta.file_type().is_symlink() {
        std::fs::set_permissions(to, meta.permissions())?;
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        copy_over(&entry.path(), &to.join(entry.file_name()))?;
    }
    Ok(())
}
