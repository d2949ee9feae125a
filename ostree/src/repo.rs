//! A local ostree repository, read without libostree.
//!
//! Every object is checked against its name before anything in it is
//! believed: metadata objects hash as their file bytes; content objects
//! hash as the rebuilt checksum header followed by their content, which
//! [`ContentReader`] verifies as the content streams past, failing the
//! read at its end if the bytes were not what the name promised.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use flate2::read::DeflateDecoder;
use rustix::fs::{Mode as FileMode, OFlags};
use sha2::{Digest, Sha256};

use crate::checksum::Checksum;
use crate::error::OstreeError;
use crate::object::{self, Commit, DirTree, FileHeader, Meta};

/// The largest metadata object read, as libostree's
/// `OSTREE_MAX_METADATA_SIZE`: anything bigger is not a real commit,
/// dirtree or dirmeta.
pub const MAX_METADATA_SIZE: u64 = 128 << 20;

/// The largest content header (it holds the xattrs) read.
const MAX_HEADER_SIZE: usize = 16 << 20;

/// How a repository stores its objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoMode {
    /// `archive` (`archive-z2`): content as `.filez`, header + raw deflate.
    Archive,
    /// `bare-user`: content as plain `.file`s, real metadata in the
    /// `user.ostreemeta` xattr.
    BareUser,
}

/// An ostree repository on a local filesystem.
#[derive(Debug)]
pub struct LocalRepo {
    dir: OwnedFd,
    path: PathBuf,
    mode: RepoMode,
}

impl LocalRepo {
    /// Opens the repository at `path` and reads its mode from `config`.
    pub fn open(path: &Path) -> Result<Self, OstreeError> {
        let mut repo = Self {
            dir: crate::source::open_dir(path)?,
            path: path.to_owned(),
            mode: RepoMode::Archive,
        };
        let config = repo.read_small("config", 1 << 20)?;
        let config =
            String::from_utf8(config).map_err(|_| OstreeError::Config("not UTF-8".into()))?;
        repo.mode = match config_value(&config, "core", "mode").unwrap_or("bare") {
            "archive" | "archive-z2" => RepoMode::Archive,
            "bare-user" => RepoMode::BareUser,
            other => return Err(OstreeError::UnsupportedMode(other.to_owned())),
        };
        Ok(repo)
    }

    /// How this repository stores objects.
    pub fn mode(&self) -> RepoMode {
        self.mode
    }

    /// Resolves a commit checksum (64 hex digits) or a ref: a local branch
    /// `refs/heads/REF`, or `REMOTE:REF` from `refs/remotes/REMOTE/REF`.
    pub fn resolve(&self, rev: &str) -> Result<Checksum, OstreeError> {
        if let Ok(checksum) = Checksum::from_hex(rev) {
            return Ok(checksum);
        }
        let path = match rev.split_once(':') {
            Some((remote, name)) => {
                check_ref_name(remote, rev)?;
                check_ref_name(name, rev)?;
                format!("refs/remotes/{remote}/{name}")
            }
            None => {
                check_ref_name(rev, rev)?;
                format!("refs/heads/{rev}")
            }
        };
        let text = match self.read_small(&path, 4096) {
            Err(OstreeError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Err(OstreeError::NoSuchRef(rev.to_owned()))
            }
            other => other?,
        };
        let text = String::from_utf8_lossy(&text);
        Checksum::from_hex(text.trim_end_matches('\n'))
    }

    /// Reads and verifies a commit; returns it parsed and its bytes.
    pub fn read_commit(&self, checksum: &Checksum) -> Result<(Commit, Vec<u8>), OstreeError> {
        let data = self.read_metadata(checksum, "commit")?;
        let commit =
            object::parse_commit(&data).map_err(|reason| malformed(checksum, "commit", reason))?;
        Ok((commit, data))
    }

    /// Reads and verifies a directory listing.
    pub fn read_dirtree(&self, checksum: &Checksum) -> Result<DirTree, OstreeError> {
        let data = self.read_metadata(checksum, "dirtree")?;
        object::parse_dirtree(&data).map_err(|reason| malformed(checksum, "dirtree", reason))
    }

    /// Reads and verifies a directory's metadata.
    pub fn read_dirmeta(&self, checksum: &Checksum) -> Result<Meta, OstreeError> {
        let data = self.read_metadata(checksum, "dirmeta")?;
        object::parse_dirmeta(&data).map_err(|reason| malformed(checksum, "dirmeta", reason))
    }

    /// Opens a content object: its header now, its content as a reader
    /// that fails at the end unless header and content hash to `checksum`.
    pub fn open_content(&self, checksum: &Checksum) -> Result<ContentReader, OstreeError> {
        match self.mode {
            RepoMode::Archive => self.open_archive_content(checksum),
            RepoMode::BareUser => self.open_bare_user_content(checksum),
        }
    }

    fn open_archive_content(&self, checksum: &Checksum) -> Result<ContentReader, OstreeError> {
        let file = self.open_object(checksum, "filez")?;
        open_archive_stream(checksum, BufReader::new(file))
    }

    fn open_bare_user_content(&self, checksum: &Checksum) -> Result<ContentReader, OstreeError> {
        const KIND: &str = "file";
        let file = self.open_object(checksum, KIND)?;
        let io_err = |e: io::Error| OstreeError::io(format!("reading {checksum}.{KIND}"), e);
        let stat = rustix::fs::fstat(&file).map_err(|e| io_err(e.into()))?;
        if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(malformed(
                checksum,
                KIND,
                "not a regular file (bare-user stores every object as one)".into(),
            ));
        }
        // Most are tens of bytes; only a huge one gets the limit's buffer.
        let xattr_error = |e: rustix::io::Errno| {
            if e == rustix::io::Errno::NODATA {
                malformed(checksum, KIND, "no user.ostreemeta xattr".into())
            } else {
                io_err(e.into())
            }
        };
        let mut meta = vec![0u8; 4096];
        let len = match rustix::fs::fgetxattr(&file, "user.ostreemeta", &mut meta[..]) {
            Err(rustix::io::Errno::RANGE) => {
                meta = vec![0u8; MAX_HEADER_SIZE];
                rustix::fs::fgetxattr(&file, "user.ostreemeta", &mut meta[..])
                    .map_err(xattr_error)?
            }
            other => other.map_err(xattr_error)?,
        };
        meta.truncate(len);
        let size = stat.st_size as u64;
        let mut file = file;
        if object::bare_user_is_symlink(&meta) {
            if size > cfs_erofs::tree::SYMLINK_MAX as u64 + 1 {
                return Err(malformed(
                    checksum,
                    KIND,
                    format!("symlink object of {size} bytes"),
                ));
            }
            let mut target = Vec::new();
            file.read_to_end(&mut target).map_err(io_err)?;
            let header = object::parse_bare_user_meta(&meta, Some(&target))
                .map_err(|reason| malformed(checksum, KIND, reason))?;
            return Ok(ContentReader::new(
                *checksum,
                header,
                0,
                Box::new(io::empty()),
            ));
        }
        let header = object::parse_bare_user_meta(&meta, None)
            .map_err(|reason| malformed(checksum, KIND, reason))?;
        Ok(ContentReader::new(
            *checksum,
            header,
            size,
            Box::new(BufReader::new(file)),
        ))
    }

    /// Reads a metadata object whole and checks it hashes to its name.
    fn read_metadata(
        &self,
        checksum: &Checksum,
        kind: &'static str,
    ) -> Result<Vec<u8>, OstreeError> {
        let file = self.open_object(checksum, kind)?;
        let io_err = |e: io::Error| OstreeError::io(format!("reading {checksum}.{kind}"), e);
        let size = file.metadata().map_err(io_err)?.len();
        if size > MAX_METADATA_SIZE {
            return Err(OstreeError::TooLarge {
                checksum: *checksum,
                kind,
                size,
                limit: MAX_METADATA_SIZE,
            });
        }
        let mut data = Vec::with_capacity(size as usize);
        file.take(MAX_METADATA_SIZE + 1)
            .read_to_end(&mut data)
            .map_err(io_err)?;
        let actual = Checksum::of(&[&data]);
        if actual != *checksum {
            return Err(OstreeError::ChecksumMismatch {
                kind,
                expected: *checksum,
                actual,
            });
        }
        Ok(data)
    }

    /// Opens `objects/XX/REST.kind` without following a symlink there.
    fn open_object(&self, checksum: &Checksum, kind: &'static str) -> Result<File, OstreeError> {
        let hex = checksum.to_hex();
        let path = format!("objects/{}/{}.{kind}", &hex[..2], &hex[2..]);
        match self.open_file(&path) {
            Err(OstreeError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Err(OstreeError::Missing {
                    checksum: *checksum,
                    kind,
                })
            }
            other => other,
        }
    }

    fn open_file(&self, relative: &str) -> Result<File, OstreeError> {
        rustix::fs::openat(
            &self.dir,
            relative,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            FileMode::empty(),
        )
        .map(File::from)
        .map_err(|e| {
            OstreeError::io(
                format!("opening {}/{relative}", self.path.display()),
                e.into(),
            )
        })
    }

    /// Reads a small file of the repository, refusing one over `limit`.
    fn read_small(&self, relative: &str, limit: u64) -> Result<Vec<u8>, OstreeError> {
        let file = self.open_file(relative)?;
        let mut data = Vec::new();
        file.take(limit + 1)
            .read_to_end(&mut data)
            .map_err(|e| OstreeError::io(format!("reading {relative}"), e))?;
        if data.len() as u64 > limit {
            return Err(OstreeError::Config(format!(
                "{relative} is over {limit} bytes"
            )));
        }
        Ok(data)
    }
}

/// Reads the header of an archive `.filez` object from `stream` and
/// returns its content as a [`ContentReader`] that inflates the rest and
/// verifies the whole against `checksum`. Serves local archive
/// repositories and every remote one alike.
pub fn open_archive_stream(
    checksum: &Checksum,
    mut stream: impl Read + Send + 'static,
) -> Result<ContentReader, OstreeError> {
    const KIND: &str = "filez";
    let io_err = |e| OstreeError::io(format!("reading {checksum}.{KIND}"), e);
    let mut prefix = [0u8; 8];
    stream.read_exact(&mut prefix).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => malformed(checksum, KIND, "shorter than its header".into()),
        _ => io_err(e),
    })?;
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if len > MAX_HEADER_SIZE {
        return Err(OstreeError::TooLarge {
            checksum: *checksum,
            kind: KIND,
            size: len as u64,
            limit: MAX_HEADER_SIZE as u64,
        });
    }
    let mut head = prefix.to_vec();
    head.resize(8 + len, 0);
    stream
        .read_exact(&mut head[8..])
        .map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => malformed(
                checksum,
                KIND,
                format!("header length {len} runs past the end"),
            ),
            _ => io_err(e),
        })?;
    let (header, size, _) =
        object::parse_archive_header(&head).map_err(|reason| malformed(checksum, KIND, reason))?;
    // A symlink has no deflate data at all; anything else is inflated
    // (an empty regular file is the two bytes of an empty block).
    let content: Box<dyn Read + Send> = if header.is_symlink() {
        Box::new(io::empty())
    } else {
        Box::new(DeflateDecoder::new(stream))
    };
    Ok(ContentReader::new(*checksum, header, size, content))
}

fn malformed(checksum: &Checksum, kind: &'static str, reason: String) -> OstreeError {
    OstreeError::Malformed {
        checksum: *checksum,
        kind,
        reason,
    }
}

/// ostree's ref name rule: `/`-separated components of `[A-Za-z0-9_.-]`,
/// each starting with a letter, digit or `_` (so never `.` or `..`).
pub(crate) fn check_ref_name(name: &str, whole: &str) -> Result<(), OstreeError> {
    let component_ok = |c: &str| {
        let mut bytes = c.bytes();
        bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
            && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    };
    if name.len() > 1024 || !name.split('/').all(component_ok) {
        return Err(OstreeError::BadRefName(whole.to_owned()));
    }
    Ok(())
}

/// The value of `key` in `[section]` of a GKeyFile (INI) text.
pub(crate) fn config_value<'a>(text: &'a str, section: &str, key: &str) -> Option<&'a str> {
    let mut in_section = false;
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_section = name == section;
        } else if in_section {
            if let Some((k, v)) = line.split_once('=') {
                if k.trim() == key {
                    return Some(v.trim());
                }
            }
        }
    }
    None
}

/// A content object: its header, and its content as a reader that checks
/// the object's checksum and declared size when the content ends.
pub struct ContentReader {
    checksum: Checksum,
    header: FileHeader,
    size: u64,
    inner: Box<dyn Read + Send>,
    hasher: Sha256,
    read: u64,
    verdict: Option<Verdict>,
}

/// How reading a content object to its end turned out.
#[derive(Debug, Clone)]
enum Verdict {
    /// Header and content hash to the object's name.
    Good,
    /// They hash to this instead.
    Mismatch(Checksum),
    /// The content could not be read, or its size is not the declared one.
    Bad(String),
}

impl std::fmt::Debug for ContentReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentReader")
            .field("checksum", &self.checksum)
            .field("header", &self.header)
            .field("size", &self.size)
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

impl ContentReader {
    fn new(checksum: Checksum, header: FileHeader, size: u64, inner: Box<dyn Read + Send>) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(header.checksum_header());
        Self {
            checksum,
            header,
            size,
            inner,
            hasher,
            read: 0,
            verdict: None,
        }
    }

    /// The object's header (metadata, symlink target).
    pub fn header(&self) -> &FileHeader {
        &self.header
    }

    /// The content's size, as the object declares it.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Reads the whole content (for small files) and verifies it.
    pub fn read_verified(mut self) -> Result<(FileHeader, Vec<u8>), OstreeError> {
        let mut data = Vec::with_capacity(self.size.min(1 << 20) as usize);
        let result = self.read_to_end(&mut data);
        let what = format!("reading {}", self.checksum);
        self.check(result.map_err(|e| OstreeError::io(what, e)))?;
        Ok((self.header, data))
    }

    /// Turns the outcome of reading this content to its end into the
    /// object's verdict: the checksum error if the bytes were wrong.
    pub fn check<T, E: Into<OstreeError>>(&self, result: Result<T, E>) -> Result<T, OstreeError> {
        match &self.verdict {
            Some(Verdict::Mismatch(actual)) => Err(OstreeError::ChecksumMismatch {
                kind: "file",
                expected: self.checksum,
                actual: *actual,
            }),
            Some(Verdict::Bad(reason)) => Err(malformed(&self.checksum, "file", reason.clone())),
            Some(Verdict::Good) => result.map_err(Into::into),
            None => match result {
                Err(e) => Err(e.into()),
                Ok(_) => Err(malformed(
                    &self.checksum,
                    "file",
                    "content was not read to its end".into(),
                )),
            },
        }
    }

    fn fail(&mut self, verdict: Verdict) -> io::Error {
        let error = io::Error::new(
            io::ErrorKind::InvalidData,
            format!("object {} is corrupt: {verdict:?}", self.checksum),
        );
        self.verdict = Some(verdict);
        error
    }
}

impl Read for ContentReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.verdict {
            Some(Verdict::Good) => return Ok(0),
            Some(verdict) => {
                let verdict = verdict.clone();
                return Err(self.fail(verdict));
            }
            None => {}
        }
        // Never read more than one byte past the declared size.
        let room = (self.size - self.read).saturating_add(1);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = match self.inner.read(&mut buf[..want]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => return Err(self.fail(Verdict::Bad(format!("content cannot be read: {e}")))),
        };
        self.read += n as u64;
        if self.read > self.size {
            let reason = format!("content is longer than the declared {} bytes", self.size);
            return Err(self.fail(Verdict::Bad(reason)));
        }
        if n > 0 {
            self.hasher.update(&buf[..n]);
            return Ok(n);
        }
        if self.read != self.size {
            let reason = format!(
                "content is {} bytes, not the declared {}",
                self.read, self.size
            );
            return Err(self.fail(Verdict::Bad(reason)));
        }
        let actual = Checksum(std::mem::take(&mut self.hasher).finalize().into());
        if actual != self.checksum {
            return Err(self.fail(Verdict::Mismatch(actual)));
        }
        self.verdict = Some(Verdict::Good);
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_names() {
        for good in ["test/ref", "fedora/39/x86_64/silverblue", "a.b-c_d"] {
            assert!(check_ref_name(good, good).is_ok(), "{good}");
        }
        for bad in [
            "", "..", "../x", "a//b", "/a", "a/", ".hidden", "a/../b", "a b",
        ] {
            assert!(check_ref_name(bad, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_mode() {
        let text = "[core]\nrepo_version=1\nmode=archive-z2\n[remote \"x\"]\nmode=bare\n";
        assert_eq!(config_value(text, "core", "mode"), Some("archive-z2"));
        assert_eq!(config_value("[other]\nmode=x\n", "core", "mode"), None);
    }
}
