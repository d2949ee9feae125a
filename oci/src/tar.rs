//! OCI tar layers as split streams, and their entries read back.
//!
//! A layer is stored once, as the split stream `oci-layer-<diff_id>`:
//! every header, every padding block and every file body up to
//! [`INLINE_CONTENT_MAX`] bytes is kept inline, every larger body becomes
//! a repository object. The stream gives back the original tar bit for
//! bit (so the diff_id can be checked again), shares its objects with the
//! EROFS images built from it, and is byte-identical to the one
//! composefs-rs 0.9.4 writes for the same tar, so both tools dedup the
//! same layers and name them by the same digests.
//!
//! Layers come from registries, so every header is hostile until checked.
//! [`split_layer`] already refuses what [`layer_entries`] would refuse
//! when reading back (each with its own [`TarError`]): a layer is either
//! stored whole and readable, or not at all. Objects written before a
//! failure are merely unreferenced, and garbage collection takes them.
//!
//! Paths are made absolute and canonical (a leading `./` is dropped, `.`
//! and empty components vanish), but a path or hard link target that is
//! already absolute, or has a `..` component, is refused rather than
//! clamped: docker, podman, buildah and umoci write neither, and a path
//! that means different things to different readers (`tar -P` extracts
//! `/etc/x` outside the tree) is an attack.

mod header;
mod read;
mod split;

use std::collections::BTreeMap;
use std::io;

use cfs_erofs::tree::{LeafContent, Mode, Mtime, Stat, NAME_MAX, SYMLINK_MAX};
use cfs_images::splitstream::{ContentType, SplitStreamError};

use header::{Header, Kind};
pub use read::{layer_entries, LayerEntries};
pub(crate) use split::{split_input, BodyFailure, BodyFailureKind, TarInput};
pub use split::{split_layer, SplitLayer};

/// Regular files up to this size are kept inside the split stream.
pub use cfs_erofs::tree::INLINE_CONTENT_MAX;

/// Longest absolute path accepted, in bytes (Linux's `PATH_MAX`).
pub const PATH_MAX: usize = 4096;

/// Longest extended attribute value accepted (what EROFS can store).
pub const XATTR_VALUE_MAX: usize = 65535;

/// Why a tar layer could not be split, or its split stream not read.
///
/// `offset` is a byte offset in the tar; `path` is an entry's path as
/// stored, escaped and shortened for display.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    /// Reading the tar failed.
    #[error("reading the tar at byte {offset}: {source}")]
    Read {
        /// Bytes read before the failure.
        offset: u64,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The archive stops in the middle of something.
    #[error("the tar ends at byte {offset}, inside {what}")]
    Truncated {
        /// Where the data stops.
        offset: u64,
        /// What was being read.
        what: &'static str,
    },
    /// A header whose checksum does not match its bytes.
    #[error("tar header at byte {offset} has checksum {stored}, but its bytes sum to {computed}")]
    Checksum {
        /// The header's offset.
        offset: u64,
        /// The checksum field.
        stored: u64,
        /// The unsigned sum of the header bytes.
        computed: u64,
    },
    /// A numeric header field that is not octal or base-256, or does not
    /// fit what it counts.
    #[error("tar header at byte {offset}: {field} field \"{text}\" is not a valid number")]
    BadNumber {
        /// The header's offset.
        offset: u64,
        /// Which field.
        field: &'static str,
        /// The field's bytes, escaped.
        text: String,
    },
    /// An entry size so large that its padded length overflows.
    #[error("tar header at byte {offset} declares an impossible size of {size} bytes")]
    SizeTooLarge {
        /// The header's offset.
        offset: u64,
        /// The declared size.
        size: u64,
    },
    /// PAX extended header data that is not a list of records.
    #[error("PAX header for the entry at byte {offset} is malformed: {reason}")]
    BadPaxRecord {
        /// The entry's offset.
        offset: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// A PAX numeric record that does not parse.
    #[error("PAX record {key}=\"{value}\" for the entry at byte {offset} is not a valid number")]
    BadPaxValue {
        /// The entry's offset.
        offset: u64,
        /// The key.
        key: String,
        /// The value, escaped.
        value: String,
    },
    /// Two extensions of one kind for the same entry.
    #[error("tar header at byte {offset} is a second {kind} for the same entry")]
    DuplicateExtension {
        /// The header's offset.
        offset: u64,
        /// Which extension.
        kind: &'static str,
    },
    /// Too much extension data for one entry.
    #[error("tar header at byte {offset} brings the extension data of one entry to {size} bytes, more than {} allowed", header::METADATA_MAX)]
    MetadataTooLarge {
        /// The header's offset.
        offset: u64,
        /// Total extension bytes.
        size: u64,
    },
    /// Extension headers followed by the end of the archive.
    #[error("the tar ends at byte {offset} after extension headers that describe no entry")]
    OrphanedExtension {
        /// Where the end marker starts.
        offset: u64,
    },
    /// An entry without a path.
    #[error("tar entry at byte {offset} has an empty path")]
    EmptyPath {
        /// The entry's offset.
        offset: u64,
    },
    /// A sparse file (GNU or PAX sparse format).
    #[error("tar entry {path} at byte {offset} is a sparse file, which layers may not contain")]
    Sparse {
        /// The entry's offset.
        offset: u64,
        /// Its path.
        path: String,
    },
    /// An entry type a filesystem layer cannot hold.
    #[error("tar entry {path} at byte {offset} has unsupported type '{}'", type_flag.escape_ascii())]
    UnknownEntryType {
        /// The entry's offset.
        offset: u64,
        /// Its path.
        path: String,
        /// The type flag byte.
        type_flag: u8,
    },
    /// A non-file entry with content, which Go-based engines would read
    /// as the next header: the archive means different things to
    /// different readers.
    #[error("tar entry {path} is a {kind} with {size} bytes of content")]
    ContentOnNonFile {
        /// Its path.
        path: String,
        /// What it is.
        kind: &'static str,
        /// The declared size.
        size: u64,
    },
    /// A device entry in a header format without device numbers.
    #[error("tar entry {path} is a device without device numbers")]
    NoDeviceNumbers {
        /// Its path.
        path: String,
    },
    /// A path with a `..` component.
    #[error("tar entry path {path} contains a \"..\" component")]
    DotDot {
        /// The path.
        path: String,
    },
    /// An entry path that starts with `/`.
    #[error("tar entry path {path} is absolute: layer paths are relative to the image root")]
    AbsolutePath {
        /// The path.
        path: String,
    },
    /// A hard link whose target starts with `/`.
    #[error(
        "tar entry {path} is a hard link to the absolute path {target}: \
         link targets are relative to the image root"
    )]
    AbsoluteLinkTarget {
        /// The hard link's path.
        path: String,
        /// Its target.
        target: String,
    },
    /// A path or link target with a NUL byte.
    #[error("tar entry {path}: its {what} contains a NUL byte")]
    Nul {
        /// The entry's path.
        path: String,
        /// Path, link target or symlink target.
        what: &'static str,
    },
    /// A path longer than [`PATH_MAX`].
    #[error("tar entry path {path} is {len} bytes long, more than {PATH_MAX}")]
    PathTooLong {
        /// The path, shortened.
        path: String,
        /// Its canonical length.
        len: usize,
    },
    /// A path component longer than the 255 bytes a name may have.
    #[error("tar entry path {path} has a component of {len} bytes, more than {NAME_MAX}")]
    NameTooLong {
        /// The path, shortened.
        path: String,
        /// The component's length.
        len: usize,
    },
    /// A non-directory whose path ends in `/`, which some readers take
    /// for a directory.
    #[error("tar entry {path} is a {kind} but its path ends in '/'")]
    TrailingSlash {
        /// The path.
        path: String,
        /// What it is.
        kind: &'static str,
    },
    /// A symlink target longer than composefs allows.
    #[error("symlink {path} has a target of {len} bytes, more than {SYMLINK_MAX}")]
    SymlinkTooLong {
        /// The symlink's path.
        path: String,
        /// The target's length.
        len: usize,
    },
    /// A symlink with an empty target, which Linux cannot create.
    #[error("symlink {path} has an empty target")]
    EmptySymlink {
        /// The symlink's path.
        path: String,
    },
    /// A hard link that names no target.
    #[error("hard link {path} has no target")]
    NoLinkTarget {
        /// The link's path.
        path: String,
    },
    /// A uid or gid beyond 32 bits.
    #[error("tar entry {path} has {field} {value}, more than 32 bits")]
    IdTooLarge {
        /// The entry's path.
        path: String,
        /// `uid` or `gid`.
        field: &'static str,
        /// The value.
        value: u64,
    },
    /// A modification time beyond what a signed 64-bit count holds.
    #[error("tar entry {path} has modification time {value}, out of range")]
    MtimeOutOfRange {
        /// The entry's path.
        path: String,
        /// The value.
        value: i128,
    },
    /// An extended attribute that no filesystem can hold.
    #[error("tar entry {path} has extended attribute \"{name}\": {reason}")]
    BadXattr {
        /// The entry's path.
        path: String,
        /// The attribute name, escaped and shortened.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Too many bytes after the end-of-archive marker (tar writers pad to
    /// a record of at most a few KiB).
    #[error("more than {limit} bytes follow the tar's end-of-archive marker")]
    TrailingData {
        /// The limit.
        limit: u64,
    },
    /// Storing a file's content as an object failed.
    #[error("storing the content of {path}: {source}")]
    Store {
        /// The file's path.
        path: String,
        /// The repository's error.
        #[source]
        source: Box<cfs_images::Error>,
    },
    /// The split stream could not be decoded.
    #[error("reading the layer's split stream: {0}")]
    Stream(#[source] Box<SplitStreamError>),
    /// A split stream that holds something other than a tar layer.
    #[error("split stream has content type {0}, not a tar layer")]
    NotALayer(ContentType),
    /// An object reference where the tar has header bytes.
    #[error("split stream has an object where tar header bytes belong (tar byte {offset})")]
    UnexpectedObject {
        /// The tar offset of the header being read.
        offset: u64,
    },
    /// A file stored inline though large, or as an object though small.
    #[error("split stream stores the {size}-byte file {path} {found}, against the {INLINE_CONTENT_MAX}-byte rule")]
    ChunkMismatch {
        /// The file's path.
        path: String,
        /// Its size.
        size: u64,
        /// `"inline"` or `"as an object"`.
        found: &'static str,
    },
}

impl From<SplitStreamError> for TarError {
    fn from(error: SplitStreamError) -> Self {
        Self::Stream(Box::new(error))
    }
}

/// An entry path, escaped and cut to a readable length.
pub(crate) fn shown(path: &[u8]) -> String {
    const SHOWN_MAX: usize = 160;
    match path.get(..SHOWN_MAX) {
        Some(head) if path.len() > SHOWN_MAX => format!("{}...", head.escape_ascii()),
        _ => path.escape_ascii().to_string(),
    }
}

/// What an entry of a layer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TarItem<H> {
    /// A directory.
    Directory,
    /// A file, symlink, device or fifo, with its content.
    Leaf(LeafContent<H>),
    /// Another name for the entry at this absolute canonical path, which
    /// an earlier entry (of this layer or a lower one) created.
    Hardlink(Vec<u8>),
}

/// One entry of a layer, as read back from its split stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry<H> {
    /// Absolute canonical path: starts with `/`, no empty, `.` or `..`
    /// components, no trailing `/`; the root is `/`.
    pub path: Vec<u8>,
    /// Permission bits, owner, mtime (with the nanoseconds of a PAX
    /// `mtime`) and the `SCHILY.xattr.*` attributes. Unused for hard
    /// links, whose metadata is their target's.
    pub stat: Stat,
    /// What it is.
    pub item: TarItem<H>,
}

/// An entry's validated metadata, before its content is attached.
#[derive(Debug)]
pub(crate) struct Checked {
    pub path: Vec<u8>,
    pub stat: Stat,
    pub shape: Shape,
    /// Content length (0 for everything but regular files).
    pub size: u64,
}

/// An entry's kind and everything its content is made of but file bodies.
#[derive(Debug)]
pub(crate) enum Shape {
    Directory,
    File,
    Symlink(Box<[u8]>),
    Hardlink(Vec<u8>),
    CharDevice(u64),
    BlockDevice(u64),
    Fifo,
}

/// Linux's `makedev`: the 64-bit device number of `major:minor`.
fn makedev(major: u32, minor: u32) -> u64 {
    let (major, minor) = (u64::from(major), u64::from(minor));
    ((major & 0xffff_f000) << 32)
        | ((major & 0x0fff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0xff)
}

/// Which header field a path comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathField {
    /// The entry's own path.
    Entry,
    /// A hard link's target.
    LinkTarget,
}

/// The absolute canonical form of a relative path from a tar header;
/// `entry` is the path of the entry it belongs to, for errors.
fn canonical(raw: &[u8], entry: &[u8], field: PathField) -> Result<Vec<u8>, TarError> {
    if raw.contains(&0) {
        return Err(TarError::Nul {
            path: shown(entry),
            what: match field {
                PathField::Entry => "path",
                PathField::LinkTarget => "link target",
            },
        });
    }
    if raw.first() == Some(&b'/') {
        return Err(match field {
            PathField::Entry => TarError::AbsolutePath { path: shown(raw) },
            PathField::LinkTarget => TarError::AbsoluteLinkTarget {
                path: shown(entry),
                target: shown(raw),
            },
        });
    }
    let mut path = Vec::with_capacity(raw.len() + 1);
    for component in raw.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => return Err(TarError::DotDot { path: shown(raw) }),
            name if name.len() > NAME_MAX => {
                return Err(TarError::NameTooLong {
                    path: shown(raw),
                    len: name.len(),
                })
            }
            name => {
                path.push(b'/');
                path.extend_from_slice(name);
            }
        }
    }
    if path.is_empty() {
        path.push(b'/');
    }
    if path.len() > PATH_MAX {
        return Err(TarError::PathTooLong {
            path: shown(raw),
            len: path.len(),
        });
    }
    Ok(path)
}

impl Header {
    /// Validates everything about the entry that does not need its
    /// content: paths, link targets, ids, time, xattrs, sizes.
    fn check(self) -> Result<Checked, TarError> {
        let entry = self.path.as_slice();
        let path = canonical(entry, entry, PathField::Entry)?;
        let shown_path = || shown(&path);
        if self.kind != Kind::Directory && entry.ends_with(b"/") {
            return Err(TarError::TrailingSlash {
                path: shown_path(),
                kind: self.kind.name(),
            });
        }
        if self.kind != Kind::File && self.size != 0 {
            return Err(TarError::ContentOnNonFile {
                path: shown_path(),
                kind: self.kind.name(),
                size: self.size,
            });
        }
        let id = |field, value: u64| {
            u32::try_from(value).map_err(|_| TarError::IdTooLarge {
                path: shown_path(),
                field,
                value,
            })
        };
        let uid = id("uid", self.uid)?;
        let gid = id("gid", self.gid)?;
        let sec = i64::try_from(self.mtime).map_err(|_| TarError::MtimeOutOfRange {
            path: shown_path(),
            value: self.mtime,
        })?;
        let mut xattrs = BTreeMap::new();
        for (name, value) in self.xattrs {
            let reason = if name.is_empty() {
                Some("the name is empty")
            } else if name.len() > NAME_MAX {
                Some("the name is longer than 255 bytes")
            } else if name.contains(&0) {
                Some("the name contains a NUL byte")
            } else if value.len() > XATTR_VALUE_MAX {
                Some("the value is longer than 65535 bytes")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(TarError::BadXattr {
                    path: shown_path(),
                    name: shown(&name),
                    reason,
                });
            }
            xattrs.insert(name.into_boxed_slice(), value.into_boxed_slice());
        }
        let device = || {
            self.device
                .map(|(major, minor)| makedev(major, minor))
                .ok_or_else(|| TarError::NoDeviceNumbers { path: shown_path() })
        };
        let shape = match self.kind {
            Kind::File => Shape::File,
            Kind::Directory => Shape::Directory,
            Kind::Fifo => Shape::Fifo,
            Kind::CharDevice => Shape::CharDevice(device()?),
            Kind::BlockDevice => Shape::BlockDevice(device()?),
            Kind::Hardlink => {
                if self.link.is_empty() {
                    return Err(TarError::NoLinkTarget { path: shown_path() });
                }
                Shape::Hardlink(canonical(&self.link, &path, PathField::LinkTarget)?)
            }
            Kind::Symlink => {
                let target = self.link;
                if target.is_empty() {
                    return Err(TarError::EmptySymlink { path: shown_path() });
                }
                if target.contains(&0) {
                    return Err(TarError::Nul {
                        path: shown_path(),
                        what: "symlink target",
                    });
                }
                if target.len() > SYMLINK_MAX {
                    return Err(TarError::SymlinkTooLong {
                        path: shown_path(),
                        len: target.len(),
                    });
                }
                Shape::Symlink(target.into_boxed_slice())
            }
        };
        Ok(Checked {
            stat: Stat {
                mode: Mode::new((self.mode & 0o7777) as u32),
                uid,
                gid,
                mtime: Mtime {
                    sec,
                    nsec: self.mtime_nsec,
                },
                xattrs,
            },
            size: self.size,
            path,
            shape,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_paths() {
        let path = |raw: &[u8]| canonical(raw, raw, PathField::Entry);
        let ok = |raw: &[u8]| path(raw).unwrap();
        assert_eq!(ok(b"usr/bin/sh"), b"/usr/bin/sh");
        assert_eq!(ok(b"usr/bin/"), b"/usr/bin");
        assert_eq!(ok(b"./usr//bin/./sh"), b"/usr/bin/sh");
        assert_eq!(ok(b".//a"), b"/a");
        assert_eq!(ok(b"./"), b"/");
        assert_eq!(ok(b"."), b"/");
        assert_eq!(ok(b"..."), b"/...");
        assert!(matches!(path(b"a/../b"), Err(TarError::DotDot { .. })));
        assert!(matches!(path(b"../b"), Err(TarError::DotDot { .. })));
        assert!(matches!(
            path(b"a\0b"),
            Err(TarError::Nul { what: "path", .. })
        ));
        let long = [b'x'; 256];
        assert!(matches!(
            path(&long),
            Err(TarError::NameTooLong { len: 256, .. })
        ));
        let deep = b"abcdefg/".repeat(512);
        assert_eq!(path(&deep).unwrap().len(), PATH_MAX);
        let deeper = b"abcdefg/".repeat(513);
        assert!(matches!(
            path(&deeper),
            Err(TarError::PathTooLong { len: 4104, .. })
        ));
    }

    #[test]
    fn absolute_paths_are_refused() {
        for raw in [&b"/etc/x"[..], b"/", b"//etc", b"/../etc"] {
            match canonical(raw, raw, PathField::Entry) {
                Err(TarError::AbsolutePath { path }) => assert_eq!(path.as_bytes(), raw),
                other => panic!("{}: {other:?}", raw.escape_ascii()),
            }
        }
        let err = canonical(b"/etc/passwd", b"/usr/link", PathField::LinkTarget)
            .expect_err("absolute link target");
        assert_eq!(
            err.to_string(),
            "tar entry /usr/link is a hard link to the absolute path /etc/passwd: \
             link targets are relative to the image root"
        );
        assert!(matches!(
            canonical(b"a\0", b"/usr/link", PathField::LinkTarget),
            Err(TarError::Nul {
                what: "link target",
                ..
            })
        ));
        assert_eq!(
            canonical(b"./etc/passwd", b"/usr/link", PathField::LinkTarget).unwrap(),
            b"/etc/passwd"
        );
    }

    #[test]
    fn error_is_small() {
        // Callers embed it in their own errors.
        assert!(size_of::<TarError>() <= 72, "{}", size_of::<TarError>());
    }

    #[test]
    fn device_numbers() {
        assert_eq!(makedev(8, 1), 0x801);
        assert_eq!(makedev(0, 0), 0);
        assert_eq!(makedev(0x1234, 0x56789), 0x1000_5672_3489);
    }

    #[test]
    fn shortened() {
        assert_eq!(shown(b"a\nb"), "a\\nb");
        let long = shown(&[b'x'; 500]);
        assert_eq!(long.len(), 163);
        assert!(long.ends_with("..."));
    }
}
