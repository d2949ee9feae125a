//! Objects: content named by its fs-verity digest, written whole or not
//! at all.
//!
//! An object is written into an unnamed `O_TMPFILE` in the repository's
//! filesystem, given fs-verity (in a secure repository) and only then
//! linked to `objects/XX/<rest>`. A crash or a full disk therefore never
//! leaves a partial object under a real name. Objects are not synced one
//! by one: [`Repository::sync`] runs before anything links to them.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use cfs_erofs::digest::FsVerityDigest;
use cfs_erofs::fsverity::FsVerityHasher;
use rustix::fs::{AtFlags, Mode, OFlags, CWD};
use rustix::io::Errno;

use crate::error::{Error, IoContext, Result};
use crate::repo::{proc_fd, Repository};
use crate::verity::{self, VerityState};

/// How an imported file's content got into the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportMethod {
    /// The object was already there.
    Existing,
    /// Shared extents with the source (`FICLONE`): no bytes copied.
    Reflinked,
    /// Copied.
    Copied,
}

/// Buffer size for streaming copies and hashing: large enough for few
/// system calls.
const CHUNK: usize = 128 << 10;

/// `objects/XX/<rest>` of a digest.
pub(crate) fn object_path<H: FsVerityDigest>(digest: &H) -> String {
    format!("objects/{}", digest.object_pathname())
}

impl<H: FsVerityDigest> Repository<H> {
    /// Whether the object is present.
    pub fn has_object(&self, digest: &H) -> Result<bool> {
        let path = object_path(digest);
        match rustix::fs::statat(self.dir(), &path, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(e).io("checking", path),
        }
    }

    /// Stores `data` as an object and returns its digest.
    pub fn ensure_object(&self, data: &[u8]) -> Result<H> {
        let digest = FsVerityHasher::<H>::digest(data);
        if self.has_object(&digest)? {
            return Ok(digest);
        }
        let mut tmp = self.tmpfile()?;
        tmp.write_all(data).io("writing object", "objects")?;
        self.finish_object(tmp, &digest)?;
        Ok(digest)
    }

    /// Stores everything `reader` yields as an object, streaming.
    pub fn ensure_object_from_reader(&self, reader: impl Read) -> Result<H> {
        self.ensure_object_from_buf_read(BufReader::with_capacity(CHUNK, reader))
    }

    /// Stores everything `reader` yields as an object, hashing and
    /// writing each piece straight from the reader's buffer: for sources
    /// that already hold the bytes in memory (a decompressor's output),
    /// so that they are not copied once more on the way to the kernel.
    pub fn ensure_object_from_buf_read(&self, mut reader: impl BufRead) -> Result<H> {
        let mut tmp = self.tmpfile()?;
        let mut hasher = FsVerityHasher::<H>::new();
        loop {
            let piece = match reader.fill_buf() {
                Ok([]) => break,
                Ok(piece) => piece,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).io("reading object source", "objects"),
            };
            hasher.update(piece);
            tmp.write_all(piece).io("writing object", "objects")?;
            let n = piece.len();
            reader.consume(n);
        }
        let digest = hasher.finish();
        if !self.has_object(&digest)? {
            self.finish_object(tmp, &digest)?;
        }
        Ok(digest)
    }

    /// Stores the content of `source` as an object, sharing its extents
    /// when both are on a filesystem that can (`FICLONE`), else copying.
    pub fn ensure_object_from_file(&self, source: &File) -> Result<(H, ImportMethod)> {
        self.import_object(source, None, &mut |_| ())
    }

    /// Stores the content of `source`, which must be `size` bytes long,
    /// as an object: by reflink (`FICLONE`) when both are on a filesystem
    /// that shares extents, else by copying. `observe` sees the content
    /// as stored, in order, so a caller can hash it too (a tar's diff_id)
    /// without reading it a second time.
    ///
    /// The digest and `observe` are computed from our private copy, not
    /// from `source`: whoever can write `source` cannot make the object
    /// differ from what was hashed. Never a hardlink, for the same reason:
    /// without fs-verity the owner of the linked inode could rewrite an
    /// object that the repository treats as immutable.
    pub fn import_object(
        &self,
        source: &File,
        size: Option<u64>,
        observe: &mut dyn FnMut(&[u8]),
    ) -> Result<(H, ImportMethod)> {
        let tmp = self.tmpfile()?;
        let method = match rustix::fs::ioctl_ficlone(&tmp, source) {
            Ok(()) => ImportMethod::Reflinked,
            Err(_) => {
                let mut from = source;
                let mut to = &tmp;
                std::io::copy(&mut from, &mut to).io("copying into", "objects")?;
                ImportMethod::Copied
            }
        };
        let mut hasher = FsVerityHasher::<H>::new();
        let mut reader = File::from(
            rustix::fs::open(
                proc_fd(&tmp),
                OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .io("reopening", "objects")?,
        );
        let mut buffer = vec![0u8; CHUNK];
        let mut stored = 0u64;
        loop {
            let n = match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).io("hashing", "objects"),
            };
            stored += n as u64;
            if size.is_some_and(|size| stored > size) {
                break;
            }
            hasher.update(&buffer[..n]);
            observe(&buffer[..n]);
        }
        if let Some(expected) = size.filter(|&size| size != stored) {
            return Err(Error::SourceSize {
                expected,
                found: stored,
            });
        }
        let digest = hasher.finish();
        if self.has_object(&digest)? {
            return Ok((digest, ImportMethod::Existing));
        }
        self.finish_object(tmp, &digest)?;
        Ok((digest, method))
    }

    /// Opens an object for reading. In a secure repository the kernel's
    /// measurement must equal the name.
    pub fn open_object(&self, digest: &H) -> Result<File> {
        let path = object_path(digest);
        let fd = rustix::fs::openat(
            self.dir(),
            &path,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::NOENT => Error::NotFound {
                kind: "object",
                name: digest.to_hex(),
            },
            e => Error::Io {
                op: "opening",
                path: PathBuf::from(&path),
                source: e.into(),
            },
        })?;
        if !self.is_insecure() {
            self.check_verity(&fd, digest)?;
        }
        Ok(File::from(fd))
    }

    /// Reads a whole object, checking its digest (in userspace when the
    /// repository is insecure): for the metadata objects (streams,
    /// images) whose content we act on.
    pub fn read_object(&self, digest: &H) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        self.open_object(digest)?
            .read_to_end(&mut data)
            .io("reading", object_path(digest))?;
        if self.is_insecure() {
            let found = FsVerityHasher::<H>::digest(&data);
            if found != *digest {
                return Err(Error::CorruptObject {
                    name: digest.to_hex(),
                    found: found.to_hex(),
                });
            }
        }
        Ok(data)
    }

    /// The object's digest as measured: by the kernel when it has
    /// fs-verity, else computed from the content.
    pub fn measure_object(&self, file: &File) -> Result<H> {
        if let VerityState::Enabled(found) =
            verity::measure::<H>(file).io("measuring", "objects")?
        {
            return Ok(found);
        }
        let mut hasher = FsVerityHasher::<H>::new();
        let mut reader = file;
        std::io::copy(&mut reader, &mut hasher).io("hashing", "objects")?;
        Ok(hasher.finish())
    }

    fn check_verity(&self, fd: &OwnedFd, digest: &H) -> Result<()> {
        match verity::measure::<H>(fd).io("measuring", object_path(digest))? {
            VerityState::Enabled(found) if found == *digest => Ok(()),
            VerityState::Enabled(found) => Err(Error::CorruptObject {
                name: digest.to_hex(),
                found: found.to_hex(),
            }),
            _ => Err(Error::VerityMissing(digest.to_hex())),
        }
    }

    /// An unnamed file in `objects/`, which vanishes if never linked.
    fn tmpfile(&self) -> Result<File> {
        self.check_writable()?;
        let fd = rustix::fs::openat(
            self.dir(),
            "objects",
            OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .io("creating a temporary file in", "objects")?;
        Ok(File::from(fd))
    }

    /// Gives the complete temporary file its name (after fs-verity, in a
    /// secure repository). An object that appeared meanwhile wins.
    fn finish_object(&self, tmp: File, digest: &H) -> Result<()> {
        let path = object_path(digest);
        let readonly = rustix::fs::open(
            proc_fd(&tmp),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .io("reopening", &path)?;
        drop(tmp);
        if !self.is_insecure() {
            if !verity::enable::<H>(&readonly).io("enabling fs-verity on", &path)? {
                return Err(Error::NoVerity(self.path().to_owned()));
            }
            self.check_verity(&readonly, digest)?;
        }
        let (subdir, _) = path
            .rsplit_once('/')
            .expect("object paths have a directory");
        match rustix::fs::mkdirat(self.dir(), subdir, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e).io("creating", subdir),
        }
        match rustix::fs::linkat(
            CWD,
            proc_fd(&readonly),
            self.dir(),
            &path,
            AtFlags::SYMLINK_FOLLOW,
        ) {
            Ok(()) | Err(Errno::EXIST) => Ok(()),
            Err(e) => Err(e).io("linking", path),
        }
    }
}

/// A repository stores the large files of a scanned directory: shared
/// extents when the directory is on the same filesystem, else copies.
impl<H: FsVerityDigest> cfs_erofs::scan::ContentSink<H> for Repository<H> {
    fn store(&self, file: File, _size: u64) -> std::io::Result<H> {
        self.ensure_object_from_file(&file)
            .map(|(digest, _)| digest)
            .map_err(std::io::Error::other)
    }
}
