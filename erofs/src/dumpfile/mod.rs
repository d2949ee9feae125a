//! The composefs dumpfile: a text form of a tree, one line per entry.
//!
//! Dumpfiles are how trees are compared, diffed and written by hand in
//! tests, and other composefs tools read and write them, so we print
//! exactly what composefs-rs 0.9.4 prints and accept exactly what it
//! accepts, with the few exceptions listed at the end.
//!
//! # Format
//!
//! ```text
//! PATH SIZE MODE NLINK UID GID RDEV MTIME PAYLOAD CONTENT DIGEST [NAME=VALUE...]
//! ```
//!
//! Fields are separated by single spaces. MODE is octal with the file type
//! bits; MTIME is `seconds.nanoseconds`. Lines come depth first from `/`,
//! each directory followed by its entries in byte order of their names.
//! A directory's SIZE is 0 and its NLINK 2 plus its subdirectories. A
//! regular file is either inline (PAYLOAD `-`, its bytes in CONTENT) or
//! external (PAYLOAD the object path `XX/REST`, CONTENT `-`, DIGEST the
//! fs-verity digest in hex). A symlink's PAYLOAD is its target. A leaf
//! linked from several entries is printed in full once; later paths are
//! `PATH 0 @120000 - - - - 0.0 FIRSTPATH - -`.
//!
//! PATH, PAYLOAD and CONTENT are escaped: `\\`, `\n`, `\r`, `\t`, every
//! other byte outside `!`..`~` as `\xHH`; empty is `-` and a lone `-` is
//! `\x2d`. Xattr names and values are escaped the same way plus `=`, but
//! without the `-` sentinel.
//!
//! # Canonicalisation on input
//!
//! - Paths must be absolute and canonical (no `.`, `..`, `//` or trailing
//!   `/`), without NUL, at most 4096 bytes; the first line must be `/`.
//! - A hardlink line (an `@` anywhere in MODE) keeps only its target: its
//!   other fields must be present but are not read, and it may not have a
//!   directory's type. Its target is any earlier leaf path.
//! - A parent must exist before its entries. A later line for the same path
//!   replaces the earlier entry; a later `/` line replaces the root's
//!   metadata (a hardlink line there zeroes it).
//! - Only the permission bits of MODE are kept; the type comes from
//!   `S_IFMT`. Directory, symlink and device SIZE and every NLINK are
//!   ignored, except that a character device numbered 0 (a whiteout) may
//!   not claim more than one link.
//! - RDEV must be 0 except for devices; CONTENT and DIGEST must be `-`
//!   except for regular files. An inline file's SIZE is ignored; its
//!   content is at most 512 bytes. An external file's CONTENT is not read.
//! - Symlink targets are at most 1024 bytes and kept as they are.
//! - Xattrs are sorted by name; names at most 255 bytes without NUL, 65535
//!   bytes of names in all, values at most 65535 bytes; of two values for
//!   one name the greater (in byte order) stays. Nothing is filtered out.
//! - Numbers follow Rust's integer syntax, which allows a leading `+`; so
//!   does `\xHH`. Nanoseconds must be below 10⁹. Lines blank but for
//!   whitespace are skipped, and `\r\n` ends a line like `\n`.
//!
//! # Where we differ from the reference
//!
//! Each exception is an input the reference accepts and we refuse:
//! - an external file without DIGEST, or an inline file with SIZE > 0 but
//!   no content: our tree has no "external without fs-verity" or "sparse"
//!   regular file;
//! - file names longer than 255 bytes, which our tree cannot hold;
//! - seconds past `i64::MAX`, which the reference stores wrapped and then
//!   prints as a negative number it cannot read back;
//! - a whiteout linked from several paths through hardlink lines, which
//!   would print as a line with NLINK > 1 that no parser takes back;
//! - inline content over 512 bytes where the reference's limit check is
//!   skipped because a multi-byte character straddles it;
//! - input that is not UTF-8, which the reference cannot be given.
//!
//! After parsing, leaves are numbered in the order they are printed and
//! leaves no entry links to (after a replacement) are dropped, so
//! printing and parsing again gives an equal tree.

mod parse;
mod print;

pub use parse::{
    parse_dumpfile, INLINE_MAX, PATH_MAX, XATTR_NAMES_MAX, XATTR_NAME_MAX, XATTR_VALUE_MAX,
};
pub use print::{to_string, write_dumpfile};

use crate::digest::ParseDigestError;
use crate::tree::FileNameError;

/// Why a dumpfile was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DumpfileError {
    /// No line other than blank ones.
    #[error("empty dumpfile: expected the root directory line")]
    Empty,
    /// A line that is wrong on its own or does not fit the tree so far.
    #[error("dumpfile line {line}: {error}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        error: LineError,
    },
}

impl DumpfileError {
    /// The 1-based number of the offending line, if there is one.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Empty => None,
            Self::Line { line, .. } => Some(*line),
        }
    }
}

/// What is wrong with one dumpfile line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LineError {
    /// Bytes that are not UTF-8 on this line.
    #[error("not UTF-8 text")]
    NotUtf8,
    /// The line ends before a required field.
    #[error("missing {0} field")]
    MissingField(&'static str),
    /// A field that should be a number, or an mtime `sec.nsec`.
    #[error("invalid {field} {text:?}")]
    Number {
        /// Which field.
        field: &'static str,
        /// Its text (clipped).
        text: String,
    },
    /// An mtime in seconds beyond `i64::MAX`.
    #[error("mtime seconds {0} out of range")]
    MtimeSeconds(u64),
    /// Nanoseconds of 10⁹ or more.
    #[error("mtime nanoseconds {0} not below 1000000000")]
    Nanoseconds(u64),
    /// A backslash escape that is not one of `\\ \n \r \t \xHH`.
    #[error("invalid escape {text:?} in {field}")]
    Escape {
        /// Which field.
        field: &'static str,
        /// The escape as written.
        text: String,
    },
    /// A field longer than its limit once unescaped.
    #[error("{field} longer than {max} bytes")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// Its limit.
        max: usize,
    },
    /// A NUL byte in a path or an xattr name.
    #[error("NUL byte in {field}")]
    Nul {
        /// Which field.
        field: &'static str,
    },
    /// An empty path, payload or symlink target.
    #[error("empty {field}")]
    EmptyPath {
        /// Which field.
        field: &'static str,
    },
    /// A path that is not absolute and canonical.
    #[error("{field} {path} is not canonical: {reason}")]
    NotCanonical {
        /// Which field.
        field: &'static str,
        /// The path, escaped.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A file name the tree cannot hold (longer than 255 bytes).
    #[error("{0}")]
    Name(FileNameError),
    /// MODE with no file type we know.
    #[error("unknown file type in mode {0:o}")]
    UnknownType(u32),
    /// A hardlink line with a directory's mode.
    #[error("a directory cannot be a hardlink")]
    HardlinkedDirectory,
    /// A hardlink or symlink whose PAYLOAD is `-`.
    #[error("{0} without a target")]
    MissingPayload(&'static str),
    /// CONTENT or DIGEST on an entry that cannot have it.
    #[error("a {kind} cannot have {what}")]
    Unexpected {
        /// The kind of entry.
        kind: &'static str,
        /// `content` or `digest`.
        what: &'static str,
    },
    /// A device number on an entry that is not a device.
    #[error("a {kind} cannot have device number {rdev}")]
    Rdev {
        /// The kind of entry.
        kind: &'static str,
        /// The number given.
        rdev: u64,
    },
    /// An xattr field without `=`.
    #[error("xattr {text:?} has no '='")]
    XattrSyntax {
        /// The field (clipped).
        text: String,
    },
    /// The entry's xattr names add up to more than 65535 bytes.
    #[error("xattr names longer than {XATTR_NAMES_MAX} bytes in all")]
    XattrNamesTooLong,
    /// An external file's digest that is not hex of the right length.
    #[error("{0}")]
    Digest(ParseDigestError),
    /// An external file without a digest (the reference's
    /// `ExternalNoVerity`, which our tree does not have).
    #[error("external file without an fs-verity digest is not supported")]
    NoDigest,
    /// An inline file with SIZE > 0 but no content (the reference's
    /// `Sparse`, which our tree does not have).
    #[error("file of size {0} without content or digest (sparse files are not supported)")]
    Sparse(u64),
    /// An overlay whiteout with more than one link.
    #[error("whiteout with {0} links; a whiteout cannot be hardlinked")]
    LinkedWhiteout(u32),
    /// A hardlink to a path that is not an earlier leaf.
    #[error("hardlink target {0} is not an earlier non-directory entry")]
    HardlinkTarget(String),
    /// An entry whose parent has not been listed.
    #[error("parent directory {0} does not exist")]
    ParentMissing(String),
    /// An entry whose parent path names a non-directory.
    #[error("parent {0} is not a directory")]
    ParentNotDirectory(String),
    /// A first line that is not `/`.
    #[error("first entry is {0}, expected the root directory /")]
    RootNotFirst(String),
}

/// Longest text from the input quoted in an error.
const SHOWN_MAX: usize = 200;

/// `bytes` escaped as in a dumpfile, clipped for an error message.
fn shown(bytes: &[u8]) -> String {
    let mut out = Vec::new();
    print::escape_field(&mut out, bytes);
    clip(&String::from_utf8_lossy(&out))
}

/// At most [`SHOWN_MAX`] characters of `text`.
fn clip(text: &str) -> String {
    match text.char_indices().nth(SHOWN_MAX) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests;
