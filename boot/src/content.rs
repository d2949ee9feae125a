//! Where the bytes of a tree's files come from.
//!
//! A tree read from an image or a layer holds small files inline and names
//! large ones by their object digest; whoever reads file contents (SELinux
//! policy, kernels, os-release) gets the large ones from a
//! [`ContentSource`]: a repository, objects held in memory, or the on-disk
//! directory the tree was scanned from.

use std::collections::HashMap;
use std::io;
use std::path::Path;

use cfs_erofs::digest::FsVerityDigest;
use cfs_erofs::tree::RegularFile;

/// Supplies the bytes of external regular files (those stored as objects
/// rather than inline in the tree) that labelling needs to read.
pub trait ContentSource<H: FsVerityDigest> {
    /// Reads the whole content of the external file at `path` (absolute,
    /// inside the image) whose object is `digest`, `size` bytes long.
    fn read_external(&self, path: &Path, digest: &H, size: u64) -> io::Result<Vec<u8>>;
}

/// Objects held in memory, by digest: for trees built in memory, and for
/// tests.
impl<H: FsVerityDigest> ContentSource<H> for HashMap<H, Vec<u8>> {
    fn read_external(&self, path: &Path, digest: &H, _size: u64) -> io::Result<Vec<u8>> {
        self.get(digest).cloned().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no object {} for {}", digest.to_hex(), path.display()),
            )
        })
    }
}

/// The directory a tree was scanned from, with no repository: a file is
/// read again from the same path below it (as `cfsctl compute-id
/// --bootable DIR` does). Paths are resolved inside the directory and
/// cannot escape it.
#[derive(Debug)]
pub struct DirectorySource {
    root: cap_std::fs::Dir,
}

impl DirectorySource {
    /// Reads files below `root`, the directory the tree was scanned from.
    pub fn new(root: cap_std::fs::Dir) -> Self {
        Self { root }
    }
}

impl<H: FsVerityDigest> ContentSource<H> for DirectorySource {
    fn read_external(&self, path: &Path, _digest: &H, _size: u64) -> io::Result<Vec<u8>> {
        let relative = path.strip_prefix("/").unwrap_or(path);
        self.root.read(relative)
    }
}

/// The whole content of the regular file at `path` (absolute, in the
/// tree), inline or from `source`.
pub fn read_regular<H: FsVerityDigest>(
    source: &impl ContentSource<H>,
    path: &Path,
    file: &RegularFile<H>,
) -> io::Result<Vec<u8>> {
    match file {
        RegularFile::Inline(bytes) => Ok(bytes.to_vec()),
        RegularFile::External { digest, size } => source.read_external(path, digest, *size),
    }
}
