//! The GVariant formats of ostree objects: parsing commits, dirtrees,
//! dirmetas and file headers, and rebuilding the header a content
//! checksum is computed over.
//!
//! Integers inside these variants are big-endian on disk whatever the
//! host (ostree byte-swaps before serializing), so every number read is
//! passed through `from_be`. Parsing is lenient in the GVariant way (bad
//! framing reads as empty values), which is safe because every object is
//! hashed before it is parsed and the values are validated after.

use cfs_erofs::tree::FileName;
use gvariant::aligned_bytes::{AlignedBuf, AsAligned};
use gvariant::{gv, Marker, Structure};

use crate::checksum::Checksum;

/// `S_IFMT` and the two file types ostree content objects can have.
const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// An extended attribute as ostree stores it: the name with its trailing
/// NUL, and the raw value.
pub type OstreeXattr = (Vec<u8>, Vec<u8>);

/// The parts of a commit needed to check it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// The parent commit, if any.
    pub parent: Option<Checksum>,
    /// The one-line subject.
    pub subject: String,
    /// Seconds since the epoch.
    pub timestamp: u64,
    /// The root directory's listing.
    pub root_tree: Checksum,
    /// The root directory's metadata.
    pub root_meta: Checksum,
}

/// A directory listing: files by content checksum, subdirectories by
/// listing and metadata checksums, each sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DirTree {
    /// Files and symlinks.
    pub files: Vec<(FileName, Checksum)>,
    /// Subdirectories: name, dirtree, dirmeta.
    pub dirs: Vec<(FileName, Checksum, Checksum)>,
}

/// Ownership, permissions and xattrs of a directory or a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Full mode, file type included.
    pub mode: u32,
    /// Xattrs in ostree's form (names NUL-terminated).
    pub xattrs: Vec<OstreeXattr>,
}

/// The header of a content object: its metadata and, for a symlink, the
/// target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHeader {
    /// Ownership, mode and xattrs.
    pub meta: Meta,
    /// The symlink target; empty for a regular file.
    pub symlink_target: String,
}

impl FileHeader {
    /// Whether this is a symlink (otherwise a regular file).
    pub fn is_symlink(&self) -> bool {
        self.meta.mode & S_IFMT == S_IFLNK
    }

    /// The header a content checksum is computed over: `u32` BE length,
    /// four zero bytes, then `(uuuusa(ayay))` with xattrs sorted by name
    /// (ostree sorts them before hashing; archive headers may not be).
    pub fn checksum_header(&self) -> Vec<u8> {
        let mut xattrs: Vec<(&[u8], &[u8])> = self
            .meta
            .xattrs
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        xattrs.sort();
        let variant = gv!("(uuuusa(ayay))").serialize_to_vec(&(
            self.meta.uid.to_be(),
            self.meta.gid.to_be(),
            self.meta.mode.to_be(),
            0u32,
            self.symlink_target.as_str(),
            &xattrs,
        ));
        framed(variant)
    }

    /// A header from parts found outside a content object (a static
    /// delta's mode and xattr tables), checked as a parsed one is.
    pub(crate) fn from_parts(meta: Meta, symlink_target: String) -> Result<Self, String> {
        let header = Self {
            meta,
            symlink_target,
        };
        header.validate(0)?;
        Ok(header)
    }

    /// The header of an archive `.filez` object declaring `size` bytes of
    /// content: `u32` BE length, four zero bytes, `(tuuuusa(ayay))`.
    /// [`parse_archive_header`] reads it back.
    pub fn archive_header(&self, size: u64) -> Vec<u8> {
        let xattrs: Vec<(&[u8], &[u8])> = self
            .meta
            .xattrs
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        let variant = gv!("(tuuuusa(ayay))").serialize_to_vec(&(
            size.to_be(),
            self.meta.uid.to_be(),
            self.meta.gid.to_be(),
            self.meta.mode.to_be(),
            0u32,
            self.symlink_target.as_str(),
            &xattrs,
        ));
        framed(variant)
    }

    /// Checks what ostree itself requires of a content header.
    fn validate(&self, rdev: u32) -> Result<(), String> {
        if rdev != 0 {
            return Err(format!("rdev {rdev} on a file (ostree stores no devices)"));
        }
        match self.meta.mode & S_IFMT {
            S_IFREG if self.symlink_target.is_empty() => {}
            S_IFREG => return Err("a regular file with a symlink target".into()),
            S_IFLNK if self.symlink_target.is_empty() => {
                return Err("a symlink with an empty (or invalid UTF-8) target".into())
            }
            S_IFLNK if self.symlink_target.len() > cfs_erofs::tree::SYMLINK_MAX => {
                return Err(format!(
                    "symlink target of {} bytes",
                    self.symlink_target.len()
                ))
            }
            S_IFLNK => {}
            other => {
                return Err(format!(
                    "file type {other:o} is neither regular nor symlink"
                ))
            }
        }
        check_xattrs(&self.meta.xattrs)
    }
}

/// Aligned copy of `data`, as the GVariant reader needs.
fn aligned(data: &[u8]) -> AlignedBuf {
    data.to_vec().into()
}

/// Reads an `a(ayay)` xattr list (a macro: the element type is generated
/// by `gv!` and has no nameable path).
macro_rules! xattr_list {
    ($list:expr) => {
        $list
            .iter()
            .map(|x| {
                let (k, v) = x.to_tuple();
                (k.to_vec(), v.to_vec())
            })
            .collect::<Vec<OstreeXattr>>()
    };
}

/// Xattr names must be a non-empty name and one trailing NUL, each once.
fn check_xattrs(xattrs: &[OstreeXattr]) -> Result<(), String> {
    let mut names: Vec<&[u8]> = Vec::with_capacity(xattrs.len());
    for (name, _) in xattrs {
        match name.split_last() {
            Some((0, bare)) if !bare.is_empty() && !bare.contains(&0) => names.push(bare),
            _ => {
                return Err(format!(
                    "xattr name {:?} is not a NUL-terminated name",
                    String::from_utf8_lossy(name)
                ))
            }
        }
    }
    names.sort();
    if let Some(pair) = names.windows(2).find(|p| p[0] == p[1]) {
        return Err(format!(
            "xattr {:?} appears twice",
            String::from_utf8_lossy(pair[0])
        ));
    }
    Ok(())
}

/// Strips ostree's trailing NUL from an xattr name checked by
/// [`check_xattrs`]: composefs, like the kernel, names xattrs without it.
pub fn xattr_name(name: &[u8]) -> &[u8] {
    name.strip_suffix(&[0]).unwrap_or(name)
}

fn checksum_field(bytes: &[u8], what: &str) -> Result<Checksum, String> {
    Checksum::from_bytes(bytes).ok_or_else(|| format!("{what} is {} bytes, not 32", bytes.len()))
}

fn file_name(name: &gvariant::Str) -> Result<FileName, String> {
    let text = name.to_str();
    FileName::new(text.as_bytes()).map_err(|e| format!("entry {text:?}: {e}"))
}

/// Parses a `.commit` object.
pub fn parse_commit(data: &[u8]) -> Result<Commit, String> {
    let buf = aligned(data);
    let (_meta, parent, _related, subject, _body, timestamp, root_tree, root_meta) =
        gv!("(a{sv}aya(say)sstayay)")
            .cast(buf.as_aligned())
            .to_tuple();
    Ok(Commit {
        parent: match parent.len() {
            0 => None,
            _ => Some(checksum_field(parent, "parent checksum")?),
        },
        subject: subject.to_str().to_owned(),
        timestamp: u64::from_be(*timestamp),
        root_tree: checksum_field(root_tree, "root dirtree checksum")?,
        root_meta: checksum_field(root_meta, "root dirmeta checksum")?,
    })
}

/// Parses a `.dirtree` object, refusing names a directory cannot hold
/// and listings that are unsorted or name an entry twice.
pub fn parse_dirtree(data: &[u8]) -> Result<DirTree, String> {
    let buf = aligned(data);
    let (files, dirs) = gv!("(a(say)a(sayay))").cast(buf.as_aligned()).to_tuple();
    let mut tree = DirTree::default();
    for entry in files {
        let (name, checksum) = entry.to_tuple();
        tree.files
            .push((file_name(name)?, checksum_field(checksum, "file checksum")?));
    }
    for entry in dirs {
        let (name, tree_sum, meta_sum) = entry.to_tuple();
        tree.dirs.push((
            file_name(name)?,
            checksum_field(tree_sum, "dirtree checksum")?,
            checksum_field(meta_sum, "dirmeta checksum")?,
        ));
    }
    let sorted = |names: Vec<&FileName>| names.windows(2).all(|p| p[0] < p[1]);
    if !sorted(tree.files.iter().map(|f| &f.0).collect())
        || !sorted(tree.dirs.iter().map(|d| &d.0).collect())
    {
        return Err("entries are not strictly sorted by name".into());
    }
    if let Some((name, _)) = tree
        .files
        .iter()
        .find(|(name, _)| tree.dirs.binary_search_by(|d| d.0.cmp(name)).is_ok())
    {
        return Err(format!("{name:?} is both a file and a directory"));
    }
    Ok(tree)
}

/// Parses a `.dirmeta` object; it must describe a directory.
pub fn parse_dirmeta(data: &[u8]) -> Result<Meta, String> {
    let buf = aligned(data);
    let meta = parse_meta(&buf)?;
    if meta.mode & S_IFMT != S_IFDIR {
        return Err(format!("mode {:o} is not a directory", meta.mode));
    }
    Ok(meta)
}

/// Parses `(uuua(ayay))`: a dirmeta, or bare-user's `user.ostreemeta`.
fn parse_meta(buf: &AlignedBuf) -> Result<Meta, String> {
    let (uid, gid, mode, xattrs) = gv!("(uuua(ayay))").cast(buf.as_aligned()).to_tuple();
    let meta = Meta {
        uid: u32::from_be(*uid),
        gid: u32::from_be(*gid),
        mode: u32::from_be(*mode),
        xattrs: xattr_list!(xattrs),
    };
    check_xattrs(&meta.xattrs)?;
    Ok(meta)
}

/// Parses bare-user's `user.ostreemeta` xattr into a content header.
///
/// bare-user stores a symlink as a regular file holding its target, so
/// `content` (the object file's bytes, read only for symlinks) supplies it.
pub fn parse_bare_user_meta(
    data: &[u8],
    symlink_content: Option<&[u8]>,
) -> Result<FileHeader, String> {
    let meta = parse_meta(&aligned(data))?;
    let symlink_target = if meta.mode & S_IFMT == S_IFLNK {
        let target = symlink_content.unwrap_or_default();
        // Some ostree versions store the target NUL-terminated.
        let target = target.strip_suffix(&[0]).unwrap_or(target);
        std::str::from_utf8(target)
            .map_err(|_| "symlink target is not UTF-8".to_owned())?
            .to_owned()
    } else {
        String::new()
    };
    let header = FileHeader {
        meta,
        symlink_target,
    };
    header.validate(0)?;
    Ok(header)
}

/// Whether a bare-user meta xattr describes a symlink, so the caller
/// knows to read the object's bytes as its target.
pub fn bare_user_is_symlink(data: &[u8]) -> bool {
    let buf = aligned(data);
    let (_, _, mode, _) = gv!("(uuua(ayay))").cast(buf.as_aligned()).to_tuple();
    u32::from_be(*mode) & S_IFMT == S_IFLNK
}

/// Splits an archive `.filez` object into its header and the raw deflate
/// stream after it; returns the header and the declared content size.
pub fn parse_archive_header(data: &[u8]) -> Result<(FileHeader, u64, usize), String> {
    let len_bytes: [u8; 4] = data
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or("shorter than its header length")?;
    let len = u32::from_be_bytes(len_bytes) as usize;
    let end = 8usize
        .checked_add(len)
        .filter(|&end| end <= data.len())
        .ok_or_else(|| format!("header length {len} runs past the end of the object"))?;
    let buf = aligned(&data[8..end]);
    let (size, uid, gid, mode, rdev, target, xattrs) =
        gv!("(tuuuusa(ayay))").cast(buf.as_aligned()).to_tuple();
    let header = FileHeader {
        meta: Meta {
            uid: u32::from_be(*uid),
            gid: u32::from_be(*gid),
            mode: u32::from_be(*mode),
            xattrs: xattr_list!(xattrs),
        },
        symlink_target: target.to_str().to_owned(),
    };
    header.validate(u32::from_be(*rdev))?;
    let size = u64::from_be(*size);
    if header.is_symlink() && size != 0 {
        return Err(format!("symlink declares {size} bytes of content"));
    }
    Ok((header, size, end))
}

/// Reads the refs of a `summary` file, `(a(s(taya{sv}))a{sv})`: each
/// ref name with the commit it points at.
pub fn parse_summary_refs(data: &[u8]) -> Result<Vec<(String, Checksum)>, String> {
    let buf = aligned(data);
    let (refs, _meta) = gv!("(a(s(taya{sv}))a{sv})")
        .cast(buf.as_aligned())
        .to_tuple();
    refs.iter()
        .map(|entry| {
            let (name, target) = entry.to_tuple();
            let (_size, checksum, _meta) = target.to_tuple();
            let name = name.to_str().to_owned();
            let checksum = checksum_field(checksum, &format!("ref {name:?}"))?;
            Ok((name, checksum))
        })
        .collect()
}

/// Frames a serialized header as content objects store it: its length as
/// a big-endian `u32`, four zero bytes of padding, then the variant.
fn framed(variant: Vec<u8>) -> Vec<u8> {
    let len = u32::try_from(variant.len()).expect("a header built from a parsed header fits");
    let mut out = Vec::with_capacity(8 + variant.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&variant);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(xattrs: Vec<OstreeXattr>) -> FileHeader {
        FileHeader {
            meta: Meta {
                uid: 0,
                gid: 0,
                mode: 0o100644,
                xattrs,
            },
            symlink_target: String::new(),
        }
    }

    #[test]
    fn checksum_header_sorts_xattrs() {
        let a = (b"user.a\0".to_vec(), b"1".to_vec());
        let b = (b"user.b\0".to_vec(), b"2".to_vec());
        let sorted = header(vec![a.clone(), b.clone()]).checksum_header();
        assert_eq!(sorted, header(vec![b, a]).checksum_header());
        let len = u32::from_be_bytes(sorted[..4].try_into().unwrap()) as usize;
        assert_eq!(len + 8, sorted.len());
        assert_eq!(&sorted[4..8], &[0; 4]);
    }

    #[test]
    fn xattr_names_must_be_nul_terminated_and_unique() {
        assert!(check_xattrs(&[(b"user.a".to_vec(), vec![])]).is_err());
        assert!(check_xattrs(&[(b"\0".to_vec(), vec![])]).is_err());
        assert!(check_xattrs(&[(b"us\0er\0".to_vec(), vec![])]).is_err());
        let twice = vec![
            (b"user.a\0".to_vec(), vec![]),
            (b"user.a\0".to_vec(), vec![1]),
        ];
        assert!(check_xattrs(&twice).is_err());
        assert_eq!(xattr_name(b"user.a\0"), b"user.a");
    }

    fn dirtree(files: &[&str], dirs: &[&str]) -> Vec<u8> {
        let sum = [7u8; 32];
        let files: Vec<(&str, &[u8])> = files.iter().map(|f| (*f, &sum[..])).collect();
        let dirs: Vec<(&str, &[u8], &[u8])> =
            dirs.iter().map(|d| (*d, &sum[..], &sum[..])).collect();
        gv!("(a(say)a(sayay))").serialize_to_vec(&(&files, &dirs))
    }

    #[test]
    fn dirtree_refuses_escaping_duplicate_and_unsorted_names() {
        assert_eq!(
            parse_dirtree(&dirtree(&["a", "b"], &["c"]))
                .unwrap()
                .files
                .len(),
            2
        );
        for (files, dirs) in [
            (&["..", "a"][..], &[][..]),
            (&["a/b"], &[]),
            (&[], &["."]),
            (&[""], &[]),
            (&["b", "a"], &[]),
            (&["a", "a"], &[]),
            (&["a"], &["a"]),
        ] {
            assert!(
                parse_dirtree(&dirtree(files, dirs)).is_err(),
                "{files:?} {dirs:?}"
            );
        }
        // The empty dirtree is one zero byte.
        assert_eq!(dirtree(&[], &[]), vec![0]);
    }
}
