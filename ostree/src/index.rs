//! The local index of ostree objects a composefs repository already
//! holds, so that a pull fetches only what it lacks, without scanning.
//!
//! It lives in the composefs repository's `ostree/` directory, one file
//! per ostree object at `ostree/objects/XX/REST.KIND`:
//! - metadata objects (`commit`, `dirtree`, `dirmeta`) verbatim; they
//!   hash to their name, and are re-hashed whenever read;
//! - content objects (`file`) as a record: the archive header
//!   (`(tuuuusa(ayay))`, as in a `.filez`), then `0` and the content for a
//!   file small enough to inline or a symlink, or `1` and the fs-verity
//!   digest of the composefs object that holds the content.
//!
//! A record is written (temp file, rename) only after the object it
//! names is stored, so an interrupted pull leaves records only for what
//! was complete, and the next pull fetches the rest. Records are not
//! fsynced: a record lost or torn by a crash reads as absent or fails
//! its check, which costs a re-fetch and nothing else. A record whose
//! composefs object was since collected reads as absent too.

use std::io::{self, Write};
use std::path::PathBuf;

use cfs_erofs::digest::FsVerityDigest;
use cfs_images::Repository;

use crate::checksum::Checksum;
use crate::error::OstreeError;
use crate::object::{self, FileHeader};

/// Where the index lives, below the composefs repository.
const INDEX_DIR: &str = "ostree/objects";

/// The kinds of metadata object the index keeps verbatim.
const METADATA_KINDS: [&str; 3] = ["commit", "dirtree", "dirmeta"];

/// A content object as the index holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedFile<H> {
    /// Its header: metadata and symlink target.
    pub header: FileHeader,
    /// Its content size.
    pub size: u64,
    /// Where its content is.
    pub content: IndexedContent<H>,
}

/// Where an indexed file's content is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexedContent<H> {
    /// In the record itself (small files; empty for a symlink).
    Inline(Vec<u8>),
    /// In the composefs object with this digest.
    External(H),
}

/// The index of one composefs repository.
#[derive(Debug)]
pub struct ObjectIndex {
    root: PathBuf,
}

impl ObjectIndex {
    /// The index of `repo`, created empty if it has none.
    pub fn open<H: FsVerityDigest>(repo: &Repository<H>) -> Result<Self, OstreeError> {
        let root = repo.path().join(INDEX_DIR);
        std::fs::create_dir_all(&root)
            .map_err(|e| OstreeError::io(format!("creating {}", root.display()), e))?;
        Ok(Self { root })
    }

    fn path(&self, checksum: &Checksum, kind: &str) -> PathBuf {
        let hex = checksum.to_hex();
        self.root
            .join(&hex[..2])
            .join(format!("{}.{kind}", &hex[2..]))
    }

    /// Reads the record at `path`; `None` if there is none.
    fn read(&self, path: &PathBuf) -> Result<Option<Vec<u8>>, OstreeError> {
        match std::fs::read(path) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(OstreeError::io(format!("reading {}", path.display()), e)),
        }
    }

    /// Writes a record whole or not at all.
    fn write(&self, path: &PathBuf, parts: &[&[u8]]) -> Result<(), OstreeError> {
        let dir = path.parent().expect("index paths have a parent");
        let io_err = |e: io::Error| OstreeError::io(format!("writing {}", path.display()), e);
        std::fs::create_dir_all(dir).map_err(io_err)?;
        let mut file = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(dir)
            .map_err(io_err)?;
        for part in parts {
            file.write_all(part).map_err(io_err)?;
        }
        file.persist(path).map_err(|e| io_err(e.error))?;
        Ok(())
    }

    /// A metadata object, if held and intact.
    pub fn metadata(
        &self,
        checksum: &Checksum,
        kind: &'static str,
    ) -> Result<Option<Vec<u8>>, OstreeError> {
        debug_assert!(METADATA_KINDS.contains(&kind));
        let Some(data) = self.read(&self.path(checksum, kind))? else {
            return Ok(None);
        };
        Ok((Checksum::of(&[&data]) == *checksum).then_some(data))
    }

    /// Keeps a verified metadata object.
    pub fn put_metadata(
        &self,
        checksum: &Checksum,
        kind: &'static str,
        data: &[u8],
    ) -> Result<(), OstreeError> {
        debug_assert!(METADATA_KINDS.contains(&kind));
        self.write(&self.path(checksum, kind), &[data])
    }

    /// A content object, if held: its record parses, inline content
    /// hashes to its name, and an external object is still in `repo`.
    pub fn file<H: FsVerityDigest>(
        &self,
        checksum: &Checksum,
        repo: &Repository<H>,
    ) -> Result<Option<IndexedFile<H>>, OstreeError> {
        let Some(data) = self.read(&self.path(checksum, "file"))? else {
            return Ok(None);
        };
        let Ok((header, size, end)) = object::parse_archive_header(&data) else {
            return Ok(None);
        };
        let content = match (data.get(end), data.get(end + 1..)) {
            (Some(0), Some(inline)) if inline.len() as u64 == size => {
                if Checksum::of(&[&header.checksum_header(), inline]) != *checksum {
                    return Ok(None);
                }
                IndexedContent::Inline(inline.to_vec())
            }
            (Some(1), Some(digest)) => match H::from_slice(digest) {
                Some(digest) if repo.has_object(&digest)? => IndexedContent::External(digest),
                _ => return Ok(None),
            },
            _ => return Ok(None),
        };
        Ok(Some(IndexedFile {
            header,
            size,
            content,
        }))
    }

    /// Records a content object whose content is verified and, if
    /// external, already stored in the composefs repository.
    pub fn put_file<H: FsVerityDigest>(
        &self,
        checksum: &Checksum,
        file: &IndexedFile<H>,
    ) -> Result<(), OstreeError> {
        let header = file.header.archive_header(file.size);
        let path = self.path(checksum, "file");
        match &file.content {
            IndexedContent::Inline(data) => self.write(&path, &[&header, &[0], data]),
            IndexedContent::External(digest) => {
                self.write(&path, &[&header, &[1], digest.as_ref()])
            }
        }
    }
}
