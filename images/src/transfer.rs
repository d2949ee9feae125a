//! Moving streams and images between repositories without streaming
//! their content: the *transfer form*.
//!
//! A split stream already names each piece of external content by its
//! digest. Add a directory that holds those objects, and the pair
//!
//! ```text
//! (split stream bytes, directory descriptor)
//! ```
//!
//! is a complete, self-checking description of the stream: the receiver
//! derives each object's file name from its digest, opens it *below* the
//! directory (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, so a
//! name can never leave it), stores it by reflink when both sides share a
//! filesystem (a copy otherwise), and hashes what it stored: an object
//! whose content is not its name is refused. A layer therefore moves with
//! two descriptors however many files it has, which is what lets a
//! process hand layers to another over a Unix socket (`SCM_RIGHTS`).
//!
//! Two directory layouts are understood ([`ObjectNames`]):
//! - [`ObjectNames::Repository`]: a repository's `objects/`, names
//!   `XX/<rest of the hex digest>`; for copies between repositories that
//!   one process can open both of ([`Repository::copy_ref_from`]).
//! - [`ObjectNames::Flat`]: a directory holding only the objects of one
//!   stream, each named by its full hex digest; what a sender builds
//!   (with reflinks or hardlinks of its objects) to hand out a single
//!   layer without exposing the rest of its repository.
//!
//! Nothing in the directory is trusted: the receiver checks every object
//! against its digest before anything names it, and writes names in the
//! repository's crash-safe order (objects, sync, stream and image links,
//! the ref last).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use cfs_erofs::digest::FsVerityDigest;
use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::error::{Error, IoContext, Result};
use crate::objects::{object_path, ImportMethod};
use crate::refs::check_ref_name;
use crate::repo::Repository;
use crate::splitstream::SplitStream;

/// How the files of an object directory are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectNames {
    /// `XX/<rest>`, as in a repository's `objects/`.
    Repository,
    /// `<hex digest>`, one flat directory.
    Flat,
}

/// A directory objects can be taken from, by digest.
#[derive(Debug, Clone, Copy)]
pub struct ObjectDir<'a> {
    /// The directory.
    pub dir: BorrowedFd<'a>,
    /// How its files are named.
    pub names: ObjectNames,
}

/// How the objects of a transfer got into the repository.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TransferStats {
    /// Objects sharing the source's extents.
    pub reflinked: u64,
    /// Objects copied.
    pub copied: u64,
    /// Objects the repository had already.
    pub present: u64,
    /// Bytes of the reflinked and copied objects.
    pub bytes: u64,
}

impl TransferStats {
    /// Adds `other`'s counts.
    pub fn add(&mut self, other: &TransferStats) {
        self.reflinked += other.reflinked;
        self.copied += other.copied;
        self.present += other.present;
        self.bytes += other.bytes;
    }
}

impl ObjectDir<'_> {
    fn name<H: FsVerityDigest>(&self, digest: &H) -> String {
        match self.names {
            ObjectNames::Repository => digest.object_pathname(),
            ObjectNames::Flat => digest.to_hex(),
        }
    }
}

impl<H: FsVerityDigest> Repository<H> {
    /// The repository's `objects/` directory as an `O_PATH` descriptor:
    /// the [`ObjectNames::Repository`] source for another repository or
    /// process. It carries no access of its own (no reading, listing,
    /// writing or `fchmod` through it): a holder can only look names up
    /// below it, each step checked against the holder's own credentials
    /// (only the search permission of the directories above is skipped),
    /// so without listing it opens just the objects whose digests it
    /// knows.
    pub fn objects_dir(&self) -> Result<OwnedFd> {
        rustix::fs::openat(
            self.dir(),
            "objects",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .io("opening", self.path().join("objects"))
    }

    /// Stores the objects `digests` from `from`, each checked against its
    /// digest; objects already present are not read.
    pub fn import_objects<'d>(
        &self,
        digests: impl IntoIterator<Item = &'d H>,
        from: ObjectDir<'_>,
    ) -> Result<TransferStats>
    where
        H: 'd,
    {
        let mut stats = TransferStats::default();
        for digest in digests {
            if self.has_object(digest)? {
                stats.present += 1;
                continue;
            }
            let name = from.name(digest);
            let fd = rustix::fs::openat2(
                from.dir,
                &name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
            )
            .map_err(|e| match e {
                rustix::io::Errno::NOENT => Error::NotFound {
                    kind: "object in the source directory",
                    name: name.clone(),
                },
                e => Error::Io {
                    op: "opening source object",
                    path: name.clone().into(),
                    source: e.into(),
                },
            })?;
            let file = File::from(fd);
            let stat = rustix::fs::fstat(&file).io("examining source object", &name)?;
            if rustix::fs::FileType::from_raw_mode(stat.st_mode)
                != rustix::fs::FileType::RegularFile
            {
                return Err(Error::Io {
                    op: "importing",
                    path: name.into(),
                    source: std::io::Error::other("not a regular file"),
                });
            }
            let (found, method) = self.import_object(&file, None, &mut |_| ())?;
            if found != *digest {
                return Err(Error::CorruptObject {
                    name: digest.to_hex(),
                    found: found.to_hex(),
                });
            }
            match method {
                ImportMethod::Reflinked => stats.reflinked += 1,
                ImportMethod::Copied => stats.copied += 1,
                ImportMethod::Existing => stats.present += 1,
            }
            if method != ImportMethod::Existing {
                stats.bytes += stat.st_size as u64;
            }
        }
        Ok(stats)
    }

    /// Copies the stream ref `streams/refs/<name>` of `source` into this
    /// repository with everything it reaches: streams (and their names
    /// under `streams/`), EROFS images (`images/<hex>`), and every object
    /// they reference, reflinked when both repositories share a
    /// filesystem. The ref is written last, so a copy stopped anywhere
    /// leaves at worst unreferenced objects.
    pub fn copy_ref_from(&self, source: &Repository<H>, name: &str) -> Result<TransferStats> {
        check_ref_name("stream ref", name)?;
        if source.meta().algorithm != self.meta().algorithm || source.format() != self.format() {
            return Err(Error::AlgorithmMismatch {
                expected: format!("{} format {:?}", self.meta().algorithm, self.format()),
                found: format!("{} format {:?}", source.meta().algorithm, source.format()),
            });
        }
        let (root, _) = source.open_stream(&format!("refs/{name}"))?;
        // The stream the ref names, by its name under `streams/`.
        let root_id = source
            .read_link(&format!("streams/refs/{name}"))?
            .and_then(|target| target.rsplit('/').next().map(str::to_owned))
            .ok_or_else(|| Error::NotFound {
                kind: "stream ref",
                name: name.to_owned(),
            })?;
        let stream_names: HashMap<H, Vec<String>> = source.top_links("streams")?.into_iter().fold(
            HashMap::new(),
            |mut names, (name, digest)| {
                if let Some(digest) = digest {
                    names.entry(digest).or_default().push(name);
                }
                names
            },
        );
        let images: HashSet<H> = source
            .top_links("images")?
            .into_iter()
            .filter_map(|(_, digest)| digest)
            .collect();

        // Everything the ref reaches, as gc marks it.
        let mut objects: Vec<H> = Vec::new();
        let mut seen = HashSet::new();
        let mut streams = Vec::new();
        let mut reached_images = Vec::new();
        let mut work = vec![root];
        while let Some(digest) = work.pop() {
            if !seen.insert(digest) {
                continue;
            }
            objects.push(digest);
            let is_stream = stream_names.contains_key(&digest);
            if !is_stream && !images.contains(&digest) {
                // Neither stream nor image: a plain object, as gc sees it.
                continue;
            }
            let bytes = source.read_object(&digest)?;
            if images.contains(&digest) {
                reached_images.push(digest);
                let referenced =
                    cfs_erofs::reader::referenced_objects::<H>(&bytes).map_err(|source| {
                        Error::Image {
                            name: digest.to_hex(),
                            source,
                        }
                    })?;
                for object in referenced {
                    if seen.insert(object) {
                        objects.push(object);
                    }
                }
                continue;
            }
            let stream = SplitStream::<H>::parse(bytes).map_err(|source| Error::SplitStream {
                name: digest.to_hex(),
                source,
            })?;
            streams.push(digest);
            for object in stream.object_refs() {
                if seen.insert(*object) {
                    objects.push(*object);
                }
            }
            work.extend(stream.stream_refs().iter().copied());
        }

        let source_objects = source.objects_dir()?;
        let stats = self.import_objects(
            &objects,
            ObjectDir {
                dir: source_objects.as_fd(),
                names: ObjectNames::Repository,
            },
        )?;
        self.sync()?;
        for digest in &reached_images {
            self.set_link(&format!("images/{}", digest.to_hex()), &object_path(digest))?;
        }
        for digest in &streams {
            for content_id in stream_names.get(digest).into_iter().flatten() {
                self.set_link(&format!("streams/{content_id}"), &object_path(digest))?;
            }
        }
        self.name_stream(&root_id, name)?;
        Ok(stats)
    }
}
