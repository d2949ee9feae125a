//! Parsing a dumpfile into a tree.
//!
//! Two steps, as in the reference: [`parse_line`] turns one line into an
//! [`Entry`], checking everything a line can be checked for on its own;
//! [`Builder`] then links entries into the tree, which is where parents,
//! hardlink targets and digests are resolved. The split matters for the
//! root line, which only contributes its metadata: the reference never
//! resolves its payload or digest, so neither do we.

use std::collections::HashMap;
use std::str::FromStr;

use super::{DumpfileError, LineError};
use crate::digest::FsVerityDigest;
use crate::tree::{
    Directory, FileName, FileSystem, Inode, Leaf, LeafContent, LeafId, Mode, Mtime, RegularFile,
    Stat, Xattrs, SYMLINK_MAX,
};

/// Longest path, and payload, a line may carry (Linux `PATH_MAX`).
pub const PATH_MAX: usize = 4096;
/// Longest inline file content (the reference's `MAX_INLINE_CONTENT`).
pub const INLINE_MAX: usize = 512;
/// Longest xattr name (Linux `XATTR_NAME_MAX`).
pub const XATTR_NAME_MAX: usize = 255;
/// Longest xattr value (Linux `XATTR_SIZE_MAX`).
pub const XATTR_VALUE_MAX: usize = 65535;
/// Longest total length of one entry's xattr names (Linux `XATTR_LIST_MAX`).
pub const XATTR_NAMES_MAX: usize = 65535;

const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;
const S_IFBLK: u32 = 0o060000;
const S_IFCHR: u32 = 0o020000;
const S_IFIFO: u32 = 0o010000;
const S_IFSOCK: u32 = 0o140000;

/// What a line describes, before it is linked into the tree.
#[derive(Debug)]
enum Body<'a> {
    /// A hardlink line: only its path and target mean anything.
    Hardlink {
        target: Vec<u8>,
    },
    Directory,
    Leaf(LeafBody<'a>),
}

/// A line that makes a new leaf.
#[derive(Debug)]
enum LeafBody<'a> {
    Inline {
        size: u64,
        content: Vec<u8>,
    },
    /// The digest is kept as text: the reference only decodes it when the
    /// entry becomes a leaf, so a bad digest on the root line is accepted.
    External {
        size: u64,
        digest: Option<&'a str>,
    },
    Symlink(Vec<u8>),
    Device {
        block: bool,
        rdev: u64,
        nlink: u32,
    },
    Fifo,
    Socket,
}

/// One parsed line.
#[derive(Debug)]
struct Entry<'a> {
    path: Vec<u8>,
    /// Zero for hardlink lines, whose metadata fields are ignored.
    stat: Stat,
    body: Body<'a>,
}

/// Undoes the dumpfile escapes of one field. Fails once the result would
/// exceed `max` bytes, so hostile input never makes us allocate more than
/// that.
fn unescape(field: &'static str, text: &str, max: usize) -> Result<Vec<u8>, LineError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len().min(max));
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        if out.len() == max {
            return Err(LineError::TooLong { field, max });
        }
        i += 1;
        if byte != b'\\' {
            out.push(byte);
            continue;
        }
        let bad = |len: usize| LineError::Escape {
            field,
            text: String::from_utf8_lossy(&bytes[i - 1..(i + len).min(bytes.len())]).into_owned(),
        };
        let decoded = match bytes.get(i) {
            Some(b'\\') => b'\\',
            Some(b'n') => b'\n',
            Some(b'r') => b'\r',
            Some(b't') => b'\t',
            Some(b'x') => {
                // The reference reads the two characters with Rust's
                // integer parser, which also takes a leading `+`.
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .ok_or_else(|| bad(3))?;
                let value = u8::from_str_radix(hex, 16).map_err(|_| bad(3))?;
                i += 2;
                value
            }
            _ => return Err(bad(1)),
        };
        i += 1;
        out.push(decoded);
    }
    Ok(out)
}

/// Unescapes a path or payload: not empty, no NUL, at most [`PATH_MAX`].
fn unescape_path(field: &'static str, text: &str) -> Result<Vec<u8>, LineError> {
    let path = unescape(field, text, PATH_MAX)?;
    if path.contains(&0) {
        return Err(LineError::Nul { field });
    }
    if path.is_empty() {
        return Err(LineError::EmptyPath { field });
    }
    Ok(path)
}

/// Unescapes a path and checks it is canonical: absolute, and no empty,
/// `.` or `..` component (so no `//` and no trailing `/` either).
fn canonical_path(field: &'static str, text: &str) -> Result<Vec<u8>, LineError> {
    let path = unescape_path(field, text)?;
    if path != b"/" {
        let reason = match path.strip_prefix(b"/") {
            None => Some("not absolute"),
            Some(rest) => rest.split(|&b| b == b'/').find_map(|c| match c {
                b"" => Some("empty component"),
                b"." => Some("'.' component"),
                b".." => Some("'..' component"),
                _ => None,
            }),
        };
        if let Some(reason) = reason {
            return Err(LineError::NotCanonical {
                field,
                path: super::shown(&path),
                reason,
            });
        }
    }
    Ok(path)
}

/// `-` means "none".
fn optional(field: &str) -> Option<&str> {
    (field != "-").then_some(field)
}

/// Parses a decimal number as the reference does (Rust's `FromStr`,
/// which allows a leading `+`).
fn number<T: FromStr>(field: &'static str, text: &str) -> Result<T, LineError> {
    text.parse().map_err(|_| LineError::Number {
        field,
        text: super::clip(text),
    })
}

fn mtime(text: &str) -> Result<Mtime, LineError> {
    let bad = || LineError::Number {
        field: "mtime",
        text: super::clip(text),
    };
    let (sec, nsec) = text.split_once('.').ok_or_else(bad)?;
    let sec: u64 = number("mtime", sec)?;
    let nsec: u64 = number("mtime", nsec)?;
    // The reference reads seconds as u64 but keeps them as i64, so a value
    // past i64::MAX would come back negative and fail to parse again.
    let sec = i64::try_from(sec).map_err(|_| LineError::MtimeSeconds(sec))?;
    let nsec = u32::try_from(nsec)
        .ok()
        .filter(|&n| n < 1_000_000_000)
        .ok_or(LineError::Nanoseconds(nsec))?;
    Ok(Mtime { sec, nsec })
}

fn xattrs<'a>(fields: impl Iterator<Item = &'a str>) -> Result<Xattrs, LineError> {
    let mut xattrs = Xattrs::new();
    let mut names_len = 0usize;
    for field in fields {
        let (name, value) = field
            .split_once('=')
            .ok_or_else(|| LineError::XattrSyntax {
                text: super::clip(field),
            })?;
        let name = unescape("xattr name", name, XATTR_NAME_MAX)?;
        if name.contains(&0) {
            return Err(LineError::Nul {
                field: "xattr name",
            });
        }
        let value = unescape("xattr value", value, XATTR_VALUE_MAX)?;
        names_len = names_len.saturating_add(name.len());
        if names_len > XATTR_NAMES_MAX {
            return Err(LineError::XattrNamesTooLong);
        }
        // The reference sorts (name, value) pairs and inserts them in that
        // order, so of two values for one name the greater one stays.
        let value: Box<[u8]> = value.into();
        match xattrs.get_mut(name.as_slice()) {
            Some(old) if *old < value => *old = value,
            Some(_) => {}
            None => {
                xattrs.insert(name.into(), value);
            }
        }
    }
    Ok(xattrs)
}

fn no_content(
    kind: &'static str,
    content: Option<&str>,
    digest: Option<&str>,
) -> Result<(), LineError> {
    if content.is_some() {
        return Err(LineError::Unexpected {
            kind,
            what: "content",
        });
    }
    if digest.is_some() {
        return Err(LineError::Unexpected {
            kind,
            what: "digest",
        });
    }
    Ok(())
}

fn no_rdev(kind: &'static str, rdev: u64) -> Result<(), LineError> {
    if rdev != 0 {
        return Err(LineError::Rdev { kind, rdev });
    }
    Ok(())
}

/// Parses one line on its own:
/// `PATH SIZE MODE NLINK UID GID RDEV MTIME PAYLOAD CONTENT DIGEST XATTR...`
/// separated by single spaces.
fn parse_line(line: &str) -> Result<Entry<'_>, LineError> {
    let mut fields = line.split(' ');
    let mut next = |name: &'static str| fields.next().ok_or(LineError::MissingField(name));
    let path = canonical_path("path", next("path")?)?;
    let size: u64 = number("size", next("size")?)?;
    let mode_text = next("mode")?;
    // Anything up to an `@` is ignored, as in the reference.
    let (hardlink, mode_digits) = match mode_text.split_once('@') {
        Some((_, rest)) => (true, rest),
        None => (false, mode_text),
    };
    let mode = u32::from_str_radix(mode_digits, 8).map_err(|_| LineError::Number {
        field: "mode",
        text: super::clip(mode_text),
    })?;

    if hardlink {
        if mode & S_IFMT == S_IFDIR {
            return Err(LineError::HardlinkedDirectory);
        }
        for name in ["nlink", "uid", "gid", "rdev", "mtime"] {
            next(name)?;
        }
        let target = optional(next("payload")?).ok_or(LineError::MissingPayload("hardlink"))?;
        let target = canonical_path("hardlink target", target)?;
        return Ok(Entry {
            path,
            stat: Stat::default(),
            body: Body::Hardlink { target },
        });
    }

    let nlink: u32 = number("nlink", next("nlink")?)?;
    let uid: u32 = number("uid", next("uid")?)?;
    let gid: u32 = number("gid", next("gid")?)?;
    let rdev: u64 = number("rdev", next("rdev")?)?;
    let mtime = mtime(next("mtime")?)?;
    let payload = optional(next("payload")?);
    let content = optional(next("content")?);
    let digest = optional(next("digest")?);
    let xattrs = xattrs(fields)?;

    let body = match mode & S_IFMT {
        S_IFREG => {
            no_rdev("regular file", rdev)?;
            match payload {
                // The content field of an external file is not looked at.
                Some(payload) => {
                    unescape_path("payload", payload)?;
                    Body::Leaf(LeafBody::External { size, digest })
                }
                None => {
                    let content = unescape("content", content.unwrap_or(""), INLINE_MAX)?;
                    if digest.is_some() {
                        return Err(LineError::Unexpected {
                            kind: "inline file",
                            what: "digest",
                        });
                    }
                    Body::Leaf(LeafBody::Inline { size, content })
                }
            }
        }
        S_IFLNK => {
            no_content("symlink", content, digest)?;
            no_rdev("symlink", rdev)?;
            let target = payload.ok_or(LineError::MissingPayload("symlink"))?;
            let target = unescape_path("symlink target", target)?;
            if target.len() > SYMLINK_MAX {
                return Err(LineError::TooLong {
                    field: "symlink target",
                    max: SYMLINK_MAX,
                });
            }
            Body::Leaf(LeafBody::Symlink(target))
        }
        S_IFIFO => {
            no_content("fifo", content, digest)?;
            no_rdev("fifo", rdev)?;
            Body::Leaf(LeafBody::Fifo)
        }
        S_IFCHR | S_IFBLK => {
            no_content("device", content, digest)?;
            Body::Leaf(LeafBody::Device {
                block: mode & S_IFMT == S_IFBLK,
                rdev,
                nlink,
            })
        }
        S_IFDIR => {
            no_content("directory", content, digest)?;
            no_rdev("directory", rdev)?;
            Body::Directory
        }
        S_IFSOCK => {
            no_content("socket", content, digest)?;
            no_rdev("socket", rdev)?;
            Body::Leaf(LeafBody::Socket)
        }
        _ => return Err(LineError::UnknownType(mode)),
    };
    Ok(Entry {
        path,
        stat: Stat {
            mode: Mode::new(mode),
            uid,
            gid,
            mtime,
            xattrs,
        },
        body,
    })
}

/// Links entries into a tree the way the reference does: a later line for
/// an existing path replaces the earlier entry, a later `/` line replaces
/// the root's metadata, and hardlinks resolve against every leaf path seen
/// so far (even one replaced since).
struct Builder<H> {
    fs: FileSystem<H>,
    /// Every path a leaf was created or linked at.
    leaf_paths: HashMap<Vec<u8>, LeafId>,
    /// For whiteouts that a hardlink line named: the first such line.
    whiteout_links: HashMap<LeafId, usize>,
}

impl<H: FsVerityDigest> Builder<H> {
    fn add(&mut self, entry: Entry<'_>, line: usize) -> Result<(), LineError> {
        let Entry { path, stat, body } = entry;
        if path == b"/" {
            self.fs.root.stat = stat;
            return Ok(());
        }
        let slash = path
            .iter()
            .rposition(|&b| b == b'/')
            .expect("a canonical path starts with /");
        let (parent, name) = (&path[..slash], &path[slash + 1..]);
        let name = FileName::new(name).map_err(LineError::Name)?;
        let inode = match body {
            Body::Directory => Inode::Directory(Box::new(Directory::new(stat))),
            Body::Hardlink { target } => {
                let id = *self
                    .leaf_paths
                    .get(&target)
                    .ok_or_else(|| LineError::HardlinkTarget(super::shown(&target)))?;
                if self
                    .fs
                    .leaves
                    .get(id.0)
                    .is_some_and(|l| l.content.is_whiteout())
                {
                    self.whiteout_links.entry(id).or_insert(line);
                }
                Inode::Leaf(id)
            }
            Body::Leaf(body) => {
                let content = leaf_content::<H>(body)?;
                Inode::Leaf(self.fs.push_leaf(Leaf { stat, content }))
            }
        };
        if let Inode::Leaf(id) = inode {
            self.leaf_paths.insert(path.clone(), id);
        }
        let mut dir = &mut self.fs.root;
        for component in parent.split(|&b| b == b'/').skip(1) {
            dir = match FileName::new(component)
                .ok()
                .and_then(|c| dir.entries.get_mut(&c))
            {
                Some(Inode::Directory(sub)) => sub,
                Some(Inode::Leaf(_)) => {
                    return Err(LineError::ParentNotDirectory(super::shown(parent)))
                }
                None => return Err(LineError::ParentMissing(super::shown(parent))),
            };
        }
        dir.entries.insert(name, inode);
        Ok(())
    }

    /// Checks what only the whole tree shows, and numbers the leaves in
    /// the order they are printed, dropping those no entry links to any
    /// more. Equal trees thus compare equal however the input was ordered.
    fn finish(mut self) -> Result<FileSystem<H>, DumpfileError> {
        let mut map = vec![None; self.fs.leaves.len()];
        let mut order = Vec::new();
        renumber(&mut self.fs.root, &mut map, &mut order);
        let mut old: Vec<Option<Leaf<H>>> = self.fs.leaves.drain(..).map(Some).collect();
        self.fs.leaves = order
            .iter()
            .map(|&i| old[i].take().expect("each old leaf is moved once"))
            .collect();
        // A whiteout with two links would print with nlink 2, which no
        // parser accepts back (the reference's writer refuses it too).
        let nlinks = self.fs.nlinks();
        for (old_id, first_line) in self.whiteout_links {
            if let Some(new_id) = map[old_id.0] {
                if nlinks[new_id.0] > 1 {
                    return Err(DumpfileError::Line {
                        line: first_line,
                        error: LineError::LinkedWhiteout(nlinks[new_id.0]),
                    });
                }
            }
        }
        Ok(self.fs)
    }
}

/// The leaf a line describes; the digest is decoded here.
fn leaf_content<H: FsVerityDigest>(body: LeafBody<'_>) -> Result<LeafContent<H>, LineError> {
    Ok(match body {
        LeafBody::Inline { size, content } => {
            if content.is_empty() && size > 0 {
                return Err(LineError::Sparse(size));
            }
            LeafContent::Regular(RegularFile::Inline(content.into()))
        }
        LeafBody::External { size, digest } => {
            let digest =
                H::from_hex(digest.ok_or(LineError::NoDigest)?).map_err(LineError::Digest)?;
            LeafContent::Regular(RegularFile::External { digest, size })
        }
        LeafBody::Symlink(target) => LeafContent::Symlink(target.into()),
        LeafBody::Device { block, rdev, nlink } => {
            let content = if block {
                LeafContent::BlockDevice(rdev)
            } else {
                LeafContent::CharacterDevice(rdev)
            };
            if content.is_whiteout() && nlink > 1 {
                return Err(LineError::LinkedWhiteout(nlink));
            }
            content
        }
        LeafBody::Fifo => LeafContent::Fifo,
        LeafBody::Socket => LeafContent::Socket,
    })
}

fn renumber(dir: &mut Directory, map: &mut [Option<LeafId>], order: &mut Vec<usize>) {
    for inode in dir.entries.values_mut() {
        match inode {
            Inode::Directory(sub) => renumber(sub, map, order),
            Inode::Leaf(id) => {
                *id = *map[id.0].get_or_insert_with(|| {
                    order.push(id.0);
                    LeafId(order.len() - 1)
                });
            }
        }
    }
}

/// Parses a dumpfile into a tree, applying the reference's
/// canonicalisation (see the [module documentation](super)).
pub fn parse_dumpfile<H: FsVerityDigest>(text: &[u8]) -> Result<FileSystem<H>, DumpfileError> {
    let text = std::str::from_utf8(text).map_err(|e| DumpfileError::Line {
        line: 1 + text[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count(),
        error: LineError::NotUtf8,
    })?;
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line))
        .filter(|(_, line)| !line.trim().is_empty());
    let at = |line| move |error| DumpfileError::Line { line, error };

    let (line, first) = lines.next().ok_or(DumpfileError::Empty)?;
    let root = parse_line(first).map_err(at(line))?;
    if root.path != b"/" {
        return Err(at(line)(LineError::RootNotFirst(super::shown(&root.path))));
    }
    let mut builder = Builder {
        fs: FileSystem::new(root.stat),
        leaf_paths: HashMap::new(),
        whiteout_links: HashMap::new(),
    };
    for (line, text) in lines {
        let entry = parse_line(text).map_err(at(line))?;
        builder.add(entry, line).map_err(at(line))?;
    }
    builder.finish()
}
