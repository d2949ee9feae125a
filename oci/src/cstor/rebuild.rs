//! A layer's tar, rebuilt from its tar-split and its directory.
//!
//! The tar-split gives the header bytes; the layer's directory gives each
//! member's content. Neither is trusted: a member's name must stay below
//! the directory (no `..`, no symlink on the way, no absolute escape), it
//! must name a regular file of exactly the size the tar-split says, and
//! the SHA-256 of the whole rebuilt tar must equal the layer's diff_id,
//! checked by [`RebuiltLayer::finish`] before anything may refer to what
//! was stored.
//!
//! Read as bytes ([`Read`]), the layer streams like any other tar. Split
//! into a repository ([`TarInput`]), each large file body is handed over
//! as the file itself, so its content is reflinked into an object when the
//! store and the repository share a filesystem, and copied otherwise.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::fd::{AsRawFd, OwnedFd};

use cfs_erofs::digest::FsVerityDigest;
use cfs_images::{ImportMethod, Repository};
use flate2::read::GzDecoder;
use rustix::fs::{FileType, Mode, OFlags, ResolveFlags, CWD};
use sha2::{Digest as _, Sha256};

use super::tarsplit::{Segment, TarSplit};
use super::{CstorError, ImportStats};
use crate::tar::{BodyFailure, BodyFailureKind, TarInput};

/// What is being served now.
enum Current {
    /// Raw tar bytes from the tar-split, from `pos` on.
    Raw { bytes: Vec<u8>, pos: usize },
    /// A member's content: `left` bytes of `file` still to come.
    File {
        file: File,
        name: Vec<u8>,
        left: u64,
        fresh: bool,
    },
    /// Nothing: take the next segment.
    Spent,
    /// The tar-split has ended.
    Done,
}

/// The tar of one stored layer, rebuilt and hashed as it is read.
pub struct RebuiltLayer {
    layer: String,
    diff: OwnedFd,
    segments: TarSplit<BufReader<GzDecoder<BufReader<File>>>>,
    current: Current,
    hasher: Sha256,
    size: u64,
    stats: ImportStats,
}

impl std::fmt::Debug for RebuiltLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RebuiltLayer")
            .field("layer", &self.layer)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl RebuiltLayer {
    /// Rebuilds layer `layer` from its tar-split file and its directory.
    pub(super) fn new(layer: String, tar_split: File, diff: OwnedFd) -> Self {
        let gzip = GzDecoder::new(BufReader::with_capacity(64 << 10, tar_split));
        RebuiltLayer {
            layer,
            diff,
            segments: TarSplit::new(BufReader::with_capacity(64 << 10, gzip)),
            current: Current::Spent,
            hasher: Sha256::new(),
            size: 0,
            stats: ImportStats::default(),
        }
    }

    /// Checks that the whole tar was read and that it hashes to
    /// `diff_id` (`sha256:<hex>`); returns how its files were stored.
    pub fn finish(mut self, diff_id: &str) -> Result<ImportStats, CstorError> {
        // The splitter reads to the end; a Read user may not have.
        let mut rest = [0u8; 8192];
        while self.read_bytes(&mut rest)? > 0 {}
        let found = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        if found != diff_id {
            return Err(CstorError::DiffId {
                layer: self.layer,
                expected: diff_id.to_owned(),
                found,
            });
        }
        self.stats.tar_bytes = self.size;
        Ok(self.stats)
    }

    fn entry_error(&self, name: &[u8], reason: impl Into<String>) -> CstorError {
        CstorError::Entry {
            layer: self.layer.clone(),
            name: String::from_utf8_lossy(name).into_owned(),
            reason: reason.into(),
        }
    }

    /// Moves to the next segment that has something to serve.
    fn advance(&mut self) -> Result<(), CstorError> {
        let next = self
            .segments
            .next_segment()
            .map_err(|source| CstorError::TarSplit {
                layer: self.layer.clone(),
                source,
            })?;
        self.current = match next {
            None => Current::Done,
            Some(Segment::Raw(bytes)) => Current::Raw { bytes, pos: 0 },
            Some(Segment::File { size: 0, .. }) => Current::Spent,
            Some(Segment::File { name, size }) => Current::File {
                file: self.open_member(&name, size)?,
                name,
                left: size,
                fresh: true,
            },
        };
        Ok(())
    }

    /// Opens the regular file `name` of exactly `size` bytes below the
    /// layer's directory, refusing anything that leaves it.
    fn open_member(&self, name: &[u8], size: u64) -> Result<File, CstorError> {
        let relative = match name.iter().position(|&b| b != b'/') {
            Some(start) => &name[start..],
            None => return Err(self.entry_error(name, "names no file")),
        };
        if relative.split(|&b| b == b'/').any(|part| part == b"..") {
            return Err(self.entry_error(name, "names a path outside the layer (`..`)"));
        }
        let path = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(relative);
        // O_PATH first: opening a FIFO or a device for reading could block
        // or act; only a regular file is then opened for its content.
        let pinned = rustix::fs::openat2(
            &self.diff,
            path,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|e| {
            let reason = match e {
                rustix::io::Errno::LOOP => "is a symbolic link or lies below one".to_owned(),
                rustix::io::Errno::XDEV => "names a path outside the layer".to_owned(),
                rustix::io::Errno::NOENT => "is missing from the layer's directory".to_owned(),
                e => format!("cannot be opened: {e}"),
            };
            self.entry_error(name, reason)
        })?;
        let stat = rustix::fs::fstat(&pinned)
            .map_err(|e| self.entry_error(name, format!("cannot be examined: {e}")))?;
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => {}
            FileType::Symlink => return Err(self.entry_error(name, "is a symbolic link")),
            _ => {
                return Err(self.entry_error(name, "is not a regular file in the layer's directory"))
            }
        }
        if stat.st_size as u64 != size {
            return Err(self.entry_error(
                name,
                format!(
                    "has {} bytes in the layer's directory, but tar-split says {size}",
                    stat.st_size
                ),
            ));
        }
        let reopened = rustix::fs::openat(
            CWD,
            format!("/proc/self/fd/{}", pinned.as_raw_fd()),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.entry_error(name, format!("cannot be opened for reading: {e}")))?;
        Ok(File::from(reopened))
    }

    /// Serves the next bytes of the tar, hashing them.
    fn read_bytes(&mut self, buf: &mut [u8]) -> Result<usize, CstorError> {
        loop {
            match &mut self.current {
                Current::Raw { bytes, pos } if *pos < bytes.len() => {
                    let n = buf.len().min(bytes.len() - *pos);
                    buf[..n].copy_from_slice(&bytes[*pos..*pos + n]);
                    *pos += n;
                    return Ok(self.served(&buf[..n]));
                }
                Current::File {
                    file,
                    name,
                    left,
                    fresh,
                } if *left > 0 => {
                    let want = usize::try_from(*left).map_or(buf.len(), |l| l.min(buf.len()));
                    let n = match file.read(&mut buf[..want]) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            let name = name.clone();
                            return Err(self.entry_error(&name, format!("reading: {e}")));
                        }
                    };
                    if n == 0 {
                        let name = name.clone();
                        return Err(self.entry_error(&name, "ended early while being read"));
                    }
                    *left -= n as u64;
                    *fresh = false;
                    self.stats.inline_bytes += n as u64;
                    return Ok(self.served(&buf[..n]));
                }
                Current::Done => return Ok(0),
                _ => self.advance()?,
            }
        }
    }

    fn served(&mut self, bytes: &[u8]) -> usize {
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
        bytes.len()
    }

    /// Moves past spent segments; the file whose whole content comes
    /// next, if it is `size` bytes.
    fn next_file(&mut self, size: u64) -> Result<Option<File>, CstorError> {
        loop {
            match &self.current {
                Current::Raw { bytes, pos } if *pos < bytes.len() => return Ok(None),
                Current::File { left, fresh, .. } if *left > 0 => {
                    if !*fresh || *left != size {
                        return Ok(None);
                    }
                    let taken = std::mem::replace(&mut self.current, Current::Spent);
                    return Ok(match taken {
                        Current::File { file, .. } => Some(file),
                        _ => None,
                    });
                }
                Current::Done => return Ok(None),
                _ => self.advance()?,
            }
        }
    }
}

impl Read for RebuiltLayer {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_bytes(buf).map_err(io::Error::other)
    }
}

/// Reads `left` bytes of the layer through [`RebuiltLayer::read_bytes`],
/// failing at an early end.
struct Body<'a> {
    layer: &'a mut RebuiltLayer,
    left: u64,
    failure: Option<BodyFailureKind>,
}

impl Read for Body<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = usize::try_from(self.left).map_or(buf.len(), |l| l.min(buf.len()));
        if want == 0 {
            return Ok(0);
        }
        match self.layer.read_bytes(&mut buf[..want]) {
            Ok(0) => {
                self.failure = Some(BodyFailureKind::Eof);
                Err(io::ErrorKind::UnexpectedEof.into())
            }
            Ok(n) => {
                self.left -= n as u64;
                Ok(n)
            }
            Err(e) => {
                self.failure = Some(BodyFailureKind::Read(io::Error::other(e)));
                Err(io::ErrorKind::Other.into())
            }
        }
    }
}

impl TarInput for RebuiltLayer {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Read::read(self, buf)
    }

    fn store_body<H: FsVerityDigest>(
        &mut self,
        repo: &Repository<H>,
        size: u64,
    ) -> Result<H, BodyFailure> {
        let file = self.next_file(size).map_err(|e| BodyFailure {
            read: 0,
            kind: BodyFailureKind::Read(io::Error::other(e)),
        })?;
        let Some(file) = file else {
            // The tar-split does not line this body up with one file:
            // take it as bytes, which the diff_id covers all the same.
            let inline_before = self.stats.inline_bytes;
            let mut body = Body {
                layer: self,
                left: size,
                failure: None,
            };
            let stored = repo.ensure_object_from_reader(&mut body);
            let (read, failure) = (size - body.left, body.failure);
            self.stats.inline_bytes = inline_before;
            if let Some(kind) = failure {
                return Err(BodyFailure { read, kind });
            }
            self.stats.copied_files += 1;
            self.stats.copied_bytes += size;
            return stored.map_err(|e| BodyFailure {
                read,
                kind: BodyFailureKind::Store(e),
            });
        };
        let hasher = &mut self.hasher;
        let (digest, method) = repo
            .import_object(&file, Some(size), &mut |bytes| hasher.update(bytes))
            .map_err(|e| BodyFailure {
                read: 0,
                kind: BodyFailureKind::Store(e),
            })?;
        self.size += size;
        match method {
            ImportMethod::Reflinked => {
                self.stats.reflinked_files += 1;
                self.stats.reflinked_bytes += size;
            }
            ImportMethod::Copied => {
                self.stats.copied_files += 1;
                self.stats.copied_bytes += size;
            }
            ImportMethod::Existing => {
                self.stats.existing_files += 1;
                self.stats.existing_bytes += size;
            }
        }
        Ok(digest)
    }
}
