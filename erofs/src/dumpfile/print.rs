//! Printing a tree as a dumpfile.
//!
//! The output is what composefs-rs 0.9.4's `write_dumpfile` prints, byte
//! for byte, because other tools diff dumpfiles and tests compare them
//! verbatim. Every byte outside `!`..`~` is escaped, so the output is
//! always ASCII.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{self, BufWriter, Write};

use crate::digest::FsVerityDigest;
use crate::tree::{Directory, FileSystem, Inode, LeafContent, LeafId, RegularFile, Stat};

/// `S_IFDIR`, added to a directory's permission bits.
const S_IFDIR: u32 = 0o040000;

/// Appends `bytes` with the dumpfile's escapes but without the `-`
/// sentinel: backslash and the three control characters get their
/// letter escapes, every other byte outside `!`..`~` (and `=` where it
/// would split an xattr) becomes `\xHH` in lowercase hex.
pub(super) fn escape_raw(out: &mut Vec<u8>, bytes: &[u8], escape_equals: bool) {
    for &byte in bytes {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'=' if escape_equals => out.extend_from_slice(b"\\x3d"),
            b'!'..=b'~' => out.push(byte),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[
                    b'\\',
                    b'x',
                    HEX[usize::from(byte >> 4)],
                    HEX[usize::from(byte & 0xf)],
                ]);
            }
        }
    }
}

/// Appends a space-delimited field: empty is written `-` (the "none"
/// sentinel) and a lone `-` is written `\x2d` so it is not mistaken for
/// it.
pub(super) fn escape_field(out: &mut Vec<u8>, bytes: &[u8]) {
    match bytes {
        b"" => out.push(b'-'),
        b"-" => out.extend_from_slice(b"\\x2d"),
        _ => escape_raw(out, bytes, false),
    }
}

/// The fields of one full (non-hardlink) line after the path.
struct Fields<'a> {
    type_bits: u32,
    size: u64,
    nlink: usize,
    rdev: u64,
    payload: Cow<'a, [u8]>,
    content: &'a [u8],
    digest: Option<String>,
}

fn push_line(line: &mut Vec<u8>, path: &[u8], stat: &Stat, fields: Fields<'_>) {
    escape_field(line, path);
    let mode = u32::from(stat.mode.bits()) | fields.type_bits;
    // Writing into a Vec cannot fail.
    let _ = write!(
        line,
        " {} {mode:o} {} {} {} {} {}.{} ",
        fields.size, fields.nlink, stat.uid, stat.gid, fields.rdev, stat.mtime.sec, stat.mtime.nsec,
    );
    escape_field(line, &fields.payload);
    line.push(b' ');
    escape_field(line, fields.content);
    line.push(b' ');
    match &fields.digest {
        Some(hex) => line.extend_from_slice(hex.as_bytes()),
        None => line.push(b'-'),
    }
    for (name, value) in &stat.xattrs {
        line.push(b' ');
        escape_raw(line, name, true);
        line.push(b'=');
        escape_raw(line, value, true);
    }
    line.push(b'\n');
}

fn leaf_fields<H: FsVerityDigest>(content: &LeafContent<H>, nlink: usize) -> Fields<'_> {
    let mut fields = Fields {
        type_bits: content.type_bits(),
        size: 0,
        nlink,
        rdev: 0,
        payload: Cow::Borrowed(b""),
        content: b"",
        digest: None,
    };
    match content {
        LeafContent::Regular(RegularFile::Inline(data)) => {
            fields.size = data.len() as u64;
            fields.content = data;
        }
        LeafContent::Regular(RegularFile::External { digest, size }) => {
            fields.size = *size;
            fields.payload = Cow::Owned(digest.object_pathname().into_bytes());
            fields.digest = Some(digest.to_hex());
        }
        LeafContent::Symlink(target) => {
            fields.size = target.len() as u64;
            fields.payload = Cow::Borrowed(target);
        }
        LeafContent::BlockDevice(rdev) | LeafContent::CharacterDevice(rdev) => {
            fields.rdev = *rdev;
        }
        LeafContent::Fifo | LeafContent::Socket => {}
    }
    fields
}

/// Walks the tree depth-first in name order, one line per entry.
struct Printer<'a, H, W> {
    fs: &'a FileSystem<H>,
    nlinks: Vec<u32>,
    /// The path each multiply-linked leaf was first printed at.
    first_paths: HashMap<LeafId, Vec<u8>>,
    out: W,
    line: Vec<u8>,
}

impl<H: FsVerityDigest, W: Write> Printer<'_, H, W> {
    fn flush_line(&mut self) -> io::Result<()> {
        self.out.write_all(&self.line)?;
        self.line.clear();
        Ok(())
    }

    fn directory(&mut self, path: &mut Vec<u8>, dir: &Directory) -> io::Result<()> {
        let fields = Fields {
            type_bits: S_IFDIR,
            size: 0,
            nlink: 2 + dir.subdir_count(),
            rdev: 0,
            payload: Cow::Borrowed(b""),
            content: b"",
            digest: None,
        };
        push_line(&mut self.line, path, &dir.stat, fields);
        self.flush_line()?;
        for (name, inode) in &dir.entries {
            let parent_len = path.len();
            if parent_len > 1 {
                path.push(b'/');
            }
            path.extend_from_slice(name.as_bytes());
            match inode {
                Inode::Directory(sub) => self.directory(path, sub)?,
                Inode::Leaf(id) => self.leaf(path, *id)?,
            }
            path.truncate(parent_len);
        }
        Ok(())
    }

    fn leaf(&mut self, path: &[u8], id: LeafId) -> io::Result<()> {
        let fs = self.fs;
        let (Some(leaf), Some(&nlink)) = (fs.leaves.get(id.0), self.nlinks.get(id.0)) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "directory entry refers to leaf {} but the tree has only {} leaves",
                    id.0,
                    fs.leaves.len()
                ),
            ));
        };
        if nlink > 1 {
            if let Some(target) = self.first_paths.get(&id) {
                escape_field(&mut self.line, path);
                self.line.extend_from_slice(b" 0 @120000 - - - - 0.0 ");
                escape_field(&mut self.line, target);
                self.line.extend_from_slice(b" - -\n");
                return self.flush_line();
            }
            self.first_paths.insert(id, path.to_vec());
        }
        let fields = leaf_fields(&leaf.content, nlink as usize);
        push_line(&mut self.line, path, &leaf.stat, fields);
        self.flush_line()
    }
}

/// Writes `fs` as a dumpfile: one line per entry, depth first from `/`,
/// each directory followed by its entries in byte order of their names.
///
/// A leaf linked from several entries is printed in full at the first of
/// its paths in that order; every later path is a hardlink line naming
/// the first. Fails only if `out` fails, or with
/// [`io::ErrorKind::InvalidInput`] if an entry names a leaf the tree does
/// not have.
pub fn write_dumpfile<H: FsVerityDigest>(
    out: &mut impl Write,
    fs: &FileSystem<H>,
) -> io::Result<()> {
    let mut printer = Printer {
        fs,
        nlinks: fs.nlinks(),
        first_paths: HashMap::new(),
        out: BufWriter::with_capacity(32 * 1024, out),
        line: Vec::with_capacity(256),
    };
    printer.directory(&mut b"/".to_vec(), &fs.root)?;
    printer.out.flush()
}

/// The dumpfile of `fs` as a string (see [`write_dumpfile`]).
///
/// # Panics
/// If an entry names a leaf the tree does not have, which
/// [`FileSystem::check`] rules out.
pub fn to_string<H: FsVerityDigest>(fs: &FileSystem<H>) -> String {
    let mut out = Vec::new();
    write_dumpfile(&mut out, fs).expect("the tree's leaf references are valid");
    String::from_utf8(out).expect("every byte outside printable ASCII is escaped")
}
