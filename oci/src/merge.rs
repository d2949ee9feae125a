//! Applying an image's layers, in order, to build its filesystem tree.
//!
//! Each layer is a list of changes to the tree below it, with overlayfs
//! conventions for deletions: `.wh.<name>` deletes `<name>`, and
//! `.wh..wh..opq` makes its directory opaque, hiding everything lower
//! layers put there. A directory over a directory updates its metadata and
//! keeps its children; anything else replaces what was there. A hard link
//! names the leaf of its target, which must exist by then.
//!
//! We follow composefs-rs 0.9.4 (`process_entry`), whose image digests
//! ours must equal, except where it departs from what container engines
//! (podman's containers/storage, umoci, Docker) do with the same layers;
//! there we do what the engines do, and report each such place as a
//! [`Departure`] so that a digest difference can be explained:
//!
//! - **Missing parent directories.** A layer may name `a/b/c` without
//!   entries for `a` or `a/b`. The reference fails ("Directory entry does
//!   not exist"); engines create the missing directories (containers/storage
//!   with mode 0755 owned by root, umoci with 0777 less the umask, i.e.
//!   0755) and leave them the time of extraction as mtime. We create them
//!   with mode 0755, uid 0, gid 0, no xattrs, and mtime 0 (the epoch): the
//!   extraction time would make the digest depend on the clock. A later
//!   entry for the directory itself replaces this metadata as usual.
//!   Like containers/storage, we also create the missing parents of
//!   whiteouts (umoci ignores a whiteout whose directory is missing).
//! - **An opaque marker after its siblings.** The OCI image spec says
//!   whiteouts apply to lower layers only, and engines remove only what
//!   this layer did not itself extract (umoci's "upper paths",
//!   containers/storage's "unpacked paths"), wherever the marker sits in
//!   the archive. The reference empties the directory at the marker, so
//!   entries of the same layer archived before it are lost. We keep every
//!   entry this layer created, the directories above them, and nothing
//!   else from below (recursively).
//!
//! Plain whiteouts follow the reference, which agrees with
//! containers/storage: `.wh.<name>` removes `<name>` even when this layer
//! created it earlier (umoci would keep it).

use std::collections::HashSet;
use std::fmt;

use cfs_erofs::digest::FsVerityDigest;
use cfs_erofs::tree::{Directory, FileName, FileSystem, Inode, Leaf, LeafId, Mode, Stat};

use crate::tar::{shown, TarEntry, TarError, TarItem};

/// Prefix of whiteout names.
const WHITEOUT: &[u8] = b".wh.";
/// Name of the opaque-directory marker.
const OPAQUE: &[u8] = b".wh..wh..opq";

/// Why the layers could not be merged.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// Reading an entry of a layer failed.
    #[error("layer {layer}: {source}")]
    Tar {
        /// Index of the layer, from 0 at the bottom.
        layer: usize,
        /// The error.
        #[source]
        source: Box<TarError>,
    },
    /// An entry path that is not absolute and canonical.
    #[error("layer {layer}: entry path {path} is not canonical")]
    BadPath {
        /// Index of the layer.
        layer: usize,
        /// The path.
        path: String,
    },
    /// An entry for the root that is not a directory.
    #[error("layer {layer}: the root entry is a {kind}, not a directory")]
    RootNotDirectory {
        /// Index of the layer.
        layer: usize,
        /// What it is.
        kind: &'static str,
    },
    /// An entry below something that is not a directory. A symlink
    /// there is the classic attempt to write outside the tree through
    /// it, so the message says what the ancestor is.
    #[error("layer {layer}: cannot add {path}: {parent} is a {kind}, not a directory")]
    ParentNotDirectory {
        /// Index of the layer.
        layer: usize,
        /// The entry's path.
        path: String,
        /// The ancestor that is not a directory.
        parent: String,
        /// What the ancestor is.
        kind: &'static str,
    },
    /// A hard link to a path that does not exist (yet).
    #[error("layer {layer}: hard link {path} points to {target}, which does not exist")]
    HardlinkTargetMissing {
        /// Index of the layer.
        layer: usize,
        /// The link's path.
        path: String,
        /// Its target.
        target: String,
    },
    /// A hard link to a directory.
    #[error("layer {layer}: hard link {path} points to {target}, which is a directory")]
    HardlinkToDirectory {
        /// Index of the layer.
        layer: usize,
        /// The link's path.
        path: String,
        /// Its target.
        target: String,
    },
}

/// A place where the merged tree differs from what composefs-rs 0.9.4
/// would build (or where it would fail), because we follow container
/// engines there; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Departure {
    /// Index of the layer, from 0 at the bottom.
    pub layer: usize,
    /// Absolute path of the directory concerned.
    pub path: Vec<u8>,
    /// What we did differently.
    pub kind: DepartureKind,
}

/// The kinds of [`Departure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepartureKind {
    /// A directory the layer used without an entry for it was created
    /// (the reference fails).
    CreatedParent,
    /// An opaque marker came after entries of its own layer in the
    /// directory; they were kept (the reference drops them).
    OpaqueKeptLayerEntries,
}

impl fmt::Display for Departure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = shown(&self.path);
        match self.kind {
            DepartureKind::CreatedParent => write!(
                f,
                "layer {}: created missing directory {path} (the reference tool fails here)",
                self.layer
            ),
            DepartureKind::OpaqueKeptLayerEntries => write!(
                f,
                "layer {}: opaque marker in {path} kept entries of its own layer archived \
                 before it (the reference tool drops them)",
                self.layer
            ),
        }
    }
}

/// The merged tree of an image's layers.
#[derive(Debug, Clone)]
pub struct Merged<H> {
    /// The tree, with no orphaned leaves, before
    /// `cfs_erofs::transform::transform_for_oci`.
    pub fs: FileSystem<H>,
    /// Where we followed the engines rather than the reference.
    pub departures: Vec<Departure>,
}

/// Metadata of directories created for entries whose parents are missing
/// (and of the root until an entry sets it).
fn created_dir_stat() -> Stat {
    Stat {
        mode: Mode::new(0o755),
        ..Stat::default()
    }
}

/// `parent/name` in the internal form where the root is the empty path.
fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    [parent, b"/", name].concat()
}

/// A path for messages and departures; the root is `/`.
fn display_path(path: &[u8]) -> Vec<u8> {
    if path.is_empty() {
        b"/".to_vec()
    } else {
        path.to_vec()
    }
}

struct Merger<H> {
    fs: FileSystem<H>,
    departures: Vec<Departure>,
    layer: usize,
    /// Paths this layer created or extracted into (and their ancestors),
    /// which its opaque markers do not hide.
    touched: HashSet<Vec<u8>>,
}

/// The directory at `path` (internal form), creating what is missing.
/// Creations are recorded in `departures`.
fn directory_mut<'a, H>(
    fs: &'a mut FileSystem<H>,
    path: &[u8],
    layer: usize,
    entry: &[u8],
    departures: &mut Vec<Departure>,
) -> Result<&'a mut Directory, MergeError> {
    let FileSystem { root, leaves } = fs;
    let mut dir = root;
    let mut at = 0;
    for component in path.split(|&b| b == b'/').skip(1) {
        at += 1 + component.len();
        let name = FileName::new(component).map_err(|_| MergeError::BadPath {
            layer,
            path: shown(entry),
        })?;
        let inode = dir.entries.entry(name).or_insert_with(|| {
            departures.push(Departure {
                layer,
                path: path[..at].to_vec(),
                kind: DepartureKind::CreatedParent,
            });
            Inode::Directory(Box::new(Directory::new(created_dir_stat())))
        });
        dir = match inode {
            Inode::Directory(sub) => sub,
            Inode::Leaf(id) => {
                return Err(MergeError::ParentNotDirectory {
                    layer,
                    path: shown(entry),
                    parent: shown(&path[..at]),
                    kind: leaves
                        .get(id.0)
                        .map_or("leaf", |leaf| leaf_kind(&leaf.content)),
                })
            }
        };
    }
    Ok(dir)
}

/// Removes from `dir` (at `path`) everything not in `touched`, and from
/// the touched subdirectories likewise. Returns whether anything stayed.
fn prune(dir: &mut Directory, path: &[u8], touched: &HashSet<Vec<u8>>) -> bool {
    let mut kept = false;
    dir.entries.retain(|name, inode| {
        let child = join(path, name.as_bytes());
        if !touched.contains(&child) {
            return false;
        }
        kept = true;
        if let Inode::Directory(sub) = inode {
            prune(sub, &child, touched);
        }
        true
    });
    kept
}

impl<H: FsVerityDigest> Merger<H> {
    /// The leaf at `target` (absolute canonical), for a hard link.
    fn link_target(&self, path: &[u8], target: &[u8]) -> Result<LeafId, MergeError> {
        let missing = || MergeError::HardlinkTargetMissing {
            layer: self.layer,
            path: shown(path),
            target: shown(target),
        };
        let mut dir = &self.fs.root;
        // The inode of the last component seen; `None` for the root.
        let mut inode: Option<&Inode> = None;
        for component in target.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            match inode {
                None => {}
                Some(Inode::Directory(sub)) => dir = sub.as_ref(),
                Some(Inode::Leaf(_)) => return Err(missing()),
            }
            let name = FileName::new(component).map_err(|_| missing())?;
            inode = Some(dir.entries.get(&name).ok_or_else(missing)?);
        }
        match inode {
            Some(Inode::Leaf(id)) => Ok(*id),
            _ => Err(MergeError::HardlinkToDirectory {
                layer: self.layer,
                path: shown(path),
                target: shown(target),
            }),
        }
    }

    fn mark_touched(&mut self, path: &[u8]) {
        let ends = path
            .iter()
            .enumerate()
            .skip(1)
            .filter(|&(_, &b)| b == b'/')
            .map(|(i, _)| i)
            .chain([path.len()]);
        for end in ends {
            if !self.touched.contains(&path[..end]) {
                self.touched.insert(path[..end].to_vec());
            }
        }
    }

    fn apply(&mut self, entry: TarEntry<H>) -> Result<(), MergeError> {
        let layer = self.layer;
        let TarEntry { path, stat, item } = entry;
        let bad_path = || MergeError::BadPath {
            layer,
            path: shown(&path),
        };
        if path == b"/" {
            return match item {
                TarItem::Directory => {
                    self.fs.root.stat = stat;
                    Ok(())
                }
                TarItem::Leaf(content) => Err(MergeError::RootNotDirectory {
                    layer,
                    kind: leaf_kind(&content),
                }),
                TarItem::Hardlink(_) => Err(MergeError::RootNotDirectory {
                    layer,
                    kind: "hard link",
                }),
            };
        }
        if !path.starts_with(b"/") || path.ends_with(b"/") {
            return Err(bad_path());
        }
        let split = path.iter().rposition(|&b| b == b'/').unwrap_or(0);
        let (parent, name) = (&path[..split], &path[split + 1..]);

        if let Some(whiteout) = name.strip_prefix(WHITEOUT) {
            let dir = directory_mut(&mut self.fs, parent, layer, &path, &mut self.departures)?;
            if name == OPAQUE {
                if prune(dir, parent, &self.touched) {
                    self.departures.push(Departure {
                        layer,
                        path: display_path(parent),
                        kind: DepartureKind::OpaqueKeptLayerEntries,
                    });
                }
            } else if let Ok(hidden) = FileName::new(whiteout) {
                dir.entries.remove(&hidden);
            }
            return Ok(());
        }

        let name = FileName::new(name).map_err(|_| bad_path())?;
        // Hard links are resolved before the tree changes.
        let new = match item {
            TarItem::Directory => New::Directory(stat),
            TarItem::Leaf(content) => New::Leaf(self.fs.push_leaf(Leaf { stat, content })),
            TarItem::Hardlink(ref target) => New::Leaf(self.link_target(&path, target)?),
        };
        let dir = directory_mut(&mut self.fs, parent, layer, &path, &mut self.departures)?;
        match new {
            New::Leaf(id) => {
                dir.entries.insert(name, Inode::Leaf(id));
            }
            // Over a directory, a directory only changes its metadata.
            New::Directory(stat) => match dir.entries.get_mut(&name) {
                Some(Inode::Directory(existing)) => existing.stat = stat,
                _ => {
                    dir.entries
                        .insert(name, Inode::Directory(Box::new(Directory::new(stat))));
                }
            },
        }
        self.mark_touched(&path);
        Ok(())
    }
}

/// What an entry puts in its directory.
enum New {
    Directory(Stat),
    Leaf(LeafId),
}

/// How errors name a leaf's kind.
fn leaf_kind<H>(content: &cfs_erofs::tree::LeafContent<H>) -> &'static str {
    use cfs_erofs::tree::LeafContent;
    match content {
        LeafContent::Regular(_) => "regular file",
        LeafContent::Symlink(_) => "symlink",
        LeafContent::BlockDevice(_) => "block device",
        LeafContent::CharacterDevice(_) => "character device",
        LeafContent::Fifo => "fifo",
        LeafContent::Socket => "socket",
    }
}

/// Applies `layers` (each the entries of one layer, bottom layer first)
/// to an empty tree, as described in the module documentation.
///
/// The root's metadata is whatever a root entry last set (mode 0755,
/// root-owned, mtime 0 without one); `transform_for_oci`, which the
/// caller applies next, replaces it with `/usr`'s anyway.
///
/// # Errors
/// [`MergeError`] on the first entry that cannot be read or applied.
pub fn merge_layers<H, L, E>(layers: L) -> Result<Merged<H>, MergeError>
where
    H: FsVerityDigest,
    L: IntoIterator<Item = E>,
    E: IntoIterator<Item = Result<TarEntry<H>, TarError>>,
{
    let mut merger = Merger {
        fs: FileSystem::new(created_dir_stat()),
        departures: Vec::new(),
        layer: 0,
        touched: HashSet::new(),
    };
    for (layer, entries) in layers.into_iter().enumerate() {
        merger.layer = layer;
        merger.touched.clear();
        for entry in entries {
            let entry = entry.map_err(|source| MergeError::Tar {
                layer,
                source: Box::new(source),
            })?;
            merger.apply(entry)?;
        }
    }
    let mut fs = merger.fs;
    fs.compact();
    Ok(Merged {
        fs,
        departures: merger.departures,
    })
}

#[cfg(test)]
mod tests {
    use cfs_erofs::digest::Sha256Digest;
    use cfs_erofs::dumpfile;
    use cfs_erofs::tree::{LeafContent, Mtime, RegularFile};

    use super::*;

    type Entry = Result<TarEntry<Sha256Digest>, TarError>;

    fn stat(mode: u32, sec: i64) -> Stat {
        Stat {
            mode: Mode::new(mode),
            mtime: Mtime { sec, nsec: 0 },
            ..Stat::default()
        }
    }

    fn dir(path: &str) -> Entry {
        Ok(TarEntry {
            path: path.as_bytes().to_vec(),
            stat: stat(0o755, 1),
            item: TarItem::Directory,
        })
    }

    fn file(path: &str, data: &str) -> Entry {
        Ok(TarEntry {
            path: path.as_bytes().to_vec(),
            stat: stat(0o644, 2),
            item: TarItem::Leaf(LeafContent::Regular(RegularFile::Inline(
                data.as_bytes().into(),
            ))),
        })
    }

    fn link(path: &str, target: &str) -> Entry {
        Ok(TarEntry {
            path: path.as_bytes().to_vec(),
            stat: Stat::default(),
            item: TarItem::Hardlink(target.as_bytes().to_vec()),
        })
    }

    fn merge(layers: Vec<Vec<Entry>>) -> Result<(Vec<String>, Vec<Departure>), MergeError> {
        let merged = merge_layers(layers)?;
        merged.fs.check().unwrap();
        let text = dumpfile::to_string(&merged.fs);
        let paths = text
            .lines()
            .map(|l| l.split(' ').next().unwrap().to_owned())
            .collect();
        Ok((paths, merged.departures))
    }

    #[test]
    fn whiteouts_and_replacements() {
        let lower = vec![
            dir("/a"),
            file("/a/gone", "x"),
            file("/a/kept", "x"),
            dir("/b"),
            file("/b/lower", "x"),
            dir("/c"),
            file("/c/inner", "x"),
            file("/d", "x"),
        ];
        let upper = vec![
            file("/a/.wh.gone", ""),
            file("/a/.wh.never-there", ""),
            dir("/b"),
            file("/b/.wh..wh..opq", ""),
            file("/b/upper", "y"),
            file("/c", "now a file"),
            dir("/d"),
            link("/a/kept2", "/a/kept"),
        ];
        let (paths, departures) = merge(vec![lower, upper]).unwrap();
        assert_eq!(
            paths,
            ["/", "/a", "/a/kept", "/a/kept2", "/b", "/b/upper", "/c", "/d"]
        );
        assert!(departures.is_empty());
    }

    #[test]
    fn parents_and_opaque_departures() {
        let layer = vec![
            file("/x/y/z", "z"),
            file("/x/y/.wh..wh..opq", ""),
            file("/x/other/.wh.q", ""),
        ];
        let (paths, departures) = merge(vec![layer]).unwrap();
        assert_eq!(paths, ["/", "/x", "/x/other", "/x/y", "/x/y/z"]);
        let kinds: Vec<_> = departures
            .iter()
            .map(|d| (String::from_utf8_lossy(&d.path).into_owned(), d.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("/x".to_owned(), DepartureKind::CreatedParent),
                ("/x/y".to_owned(), DepartureKind::CreatedParent),
                ("/x/y".to_owned(), DepartureKind::OpaqueKeptLayerEntries),
                ("/x/other".to_owned(), DepartureKind::CreatedParent),
            ]
        );
        // An opaque marker in the root, after a same-layer entry.
        let lower = vec![file("/old", "o")];
        let upper = vec![file("/new", "n"), file("/.wh..wh..opq", "")];
        let (paths, departures) = merge(vec![lower, upper]).unwrap();
        assert_eq!(paths, ["/", "/new"]);
        assert_eq!(departures[0].path, b"/");
        assert_eq!(
            departures[0].to_string(),
            "layer 1: opaque marker in / kept entries of its own layer archived before it \
             (the reference tool drops them)"
        );
    }

    #[test]
    fn refusals() {
        let err = |layers: Vec<Vec<Entry>>| merge(layers).unwrap_err().to_string();
        assert_eq!(
            err(vec![vec![file("/", "x")]]),
            "layer 0: the root entry is a regular file, not a directory"
        );
        assert_eq!(
            err(vec![vec![file("/f", "x"), file("/f/g", "x")]]),
            "layer 0: cannot add /f/g: /f is a regular file, not a directory"
        );
        // A write through a symlink, to a directory of a lower layer.
        let symlink = Ok(TarEntry {
            path: b"/d".to_vec(),
            stat: stat(0o777, 1),
            item: TarItem::Leaf(LeafContent::Symlink(Box::from(&b"/etc"[..]))),
        });
        assert_eq!(
            err(vec![
                vec![dir("/etc"), symlink],
                vec![file("/d/passwd", "x")]
            ]),
            "layer 1: cannot add /d/passwd: /d is a symlink, not a directory"
        );
        assert_eq!(
            err(vec![vec![], vec![link("/l", "/nowhere")]]),
            "layer 1: hard link /l points to /nowhere, which does not exist"
        );
        assert_eq!(
            err(vec![vec![file("/f", "x"), link("/l", "/f/below")]]),
            "layer 0: hard link /l points to /f/below, which does not exist"
        );
        assert_eq!(
            err(vec![vec![dir("/d"), link("/l", "/d")]]),
            "layer 0: hard link /l points to /d, which is a directory"
        );
        assert_eq!(
            err(vec![vec![link("/l", "/")]]),
            "layer 0: hard link /l points to /, which is a directory"
        );
        for bad in ["relative", "/trailing/", "/a//b", "/a/../b"] {
            assert!(
                err(vec![vec![file(bad, "x")]]).contains("is not canonical"),
                "{bad}"
            );
        }
        let failing: Entry = Err(TarError::EmptyPath { offset: 512 });
        assert_eq!(
            err(vec![vec![dir("/a")], vec![failing]]),
            "layer 1: tar entry at byte 512 has an empty path"
        );
    }
}
