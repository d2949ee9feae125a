//! Fetching a commit from an archive repository behind a [`RepoSource`]
//! (a directory or an HTTP(S) server) into the [`ObjectIndex`], the way
//! `ostree pull` does: `config` (the mode must be archive), the ref from
//! `summary` or `refs/heads/`, the `.commitmeta` (optional), the commit,
//! then the dirtree/dirmeta graph level by level and the `.filez`
//! content objects, each checked against its checksum before it is used
//! or kept.
//!
//! Whatever the index already holds is not fetched again, so a second
//! commit costs only its changed objects and an interrupted pull resumes
//! where it stopped. Fetches of one level, and of all content, run on a
//! bounded number of threads. Every request is counted ([`FetchStats`]).

use std::collections::HashSet;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cfs_erofs::digest::FsVerityDigest;
use cfs_erofs::tree::Leaf;
use cfs_images::Repository;

use crate::checksum::Checksum;
use crate::convert::{inline_max, leaf_of, CommitObjects};
use crate::error::OstreeError;
use crate::index::{IndexedContent, IndexedFile, ObjectIndex};
use crate::object::{self, Commit, DirTree, Meta};
use crate::repo::{check_ref_name, config_value, open_archive_stream, MAX_METADATA_SIZE};
use crate::sign::{TrustedKeys, MAX_SIGNATURES_SIZE};
use crate::source::RepoSource;

/// The default number of concurrent fetches: enough to hide the latency
/// of small objects, few enough not to flood a server.
pub const DEFAULT_FETCH_JOBS: usize = 8;

/// The largest `config`, `summary` or ref file read.
const MAX_CONFIG_SIZE: u64 = 1 << 20;
const MAX_SUMMARY_SIZE: u64 = 64 << 20;
const MAX_REF_SIZE: u64 = 4096;

/// What a pull fetched from its source.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FetchStats {
    /// Repository files other than objects: `config`, `summary`,
    /// `summary.sig`, refs, `.commitmeta`.
    pub files: u64,
    /// Metadata objects fetched: commits, dirtrees, dirmetas.
    pub metadata_objects: u64,
    /// Content objects (`.filez`) fetched.
    pub content_objects: u64,
    /// Bytes read from the source, all requests together.
    pub bytes: u64,
    /// Objects needed but found in the index, so not fetched.
    pub held: u64,
    /// Static delta superblocks requested.
    pub delta_superblocks: u64,
    /// Static delta part files fetched.
    pub delta_parts: u64,
}

/// Which file of a static delta is fetched, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaFile {
    /// `delta-indexes/…`: counted with the other repository files.
    Index,
    /// `deltas/…/superblock`.
    Superblock,
    /// `deltas/…/N`.
    Part,
}

#[derive(Debug, Default)]
struct Counters {
    files: AtomicU64,
    metadata_objects: AtomicU64,
    content_objects: AtomicU64,
    bytes: AtomicU64,
    held: AtomicU64,
    delta_superblocks: AtomicU64,
    delta_parts: AtomicU64,
}

/// Counts the bytes read through it.
struct CountingReader {
    inner: Box<dyn Read + Send>,
    counters: Arc<Counters>,
}

impl Read for CountingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Fetches commits from one source into one composefs repository.
#[derive(Debug)]
pub struct Fetcher<'a, H: FsVerityDigest> {
    source: &'a dyn RepoSource,
    index: &'a ObjectIndex,
    repo: &'a Repository<H>,
    jobs: usize,
    counters: Arc<Counters>,
}

impl<'a, H: FsVerityDigest> Fetcher<'a, H> {
    /// A fetcher running up to `jobs` fetches at a time (at least one).
    pub fn new(
        source: &'a dyn RepoSource,
        index: &'a ObjectIndex,
        repo: &'a Repository<H>,
        jobs: usize,
    ) -> Self {
        Self {
            source,
            index,
            repo,
            jobs: jobs.max(1),
            counters: Arc::default(),
        }
    }

    /// What was fetched so far.
    pub fn stats(&self) -> FetchStats {
        let c = &self.counters;
        FetchStats {
            files: c.files.load(Ordering::Relaxed),
            metadata_objects: c.metadata_objects.load(Ordering::Relaxed),
            content_objects: c.content_objects.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            held: c.held.load(Ordering::Relaxed),
            delta_superblocks: c.delta_superblocks.load(Ordering::Relaxed),
            delta_parts: c.delta_parts.load(Ordering::Relaxed),
        }
    }

    /// Reads a file of a static delta whole, counted by its kind.
    pub fn fetch_delta_file(
        &self,
        path: &str,
        limit: u64,
        kind: DeltaFile,
    ) -> Result<Option<Vec<u8>>, OstreeError> {
        let counter = match kind {
            DeltaFile::Index => &self.counters.files,
            DeltaFile::Superblock => &self.counters.delta_superblocks,
            DeltaFile::Part => &self.counters.delta_parts,
        };
        let data = self.source.fetch(path, limit)?;
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(data) = &data {
            self.counters
                .bytes
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        Ok(data)
    }

    /// Reads a repository file (not an object) whole, counted.
    pub fn fetch_file(&self, path: &str, limit: u64) -> Result<Option<Vec<u8>>, OstreeError> {
        let data = self.source.fetch(path, limit)?;
        self.counters.files.fetch_add(1, Ordering::Relaxed);
        if let Some(data) = &data {
            self.counters
                .bytes
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        Ok(data)
    }

    /// Checks the source is an archive repository: the only mode ostree
    /// serves, since only it stores what a client needs (the header with
    /// ownership and xattrs) inside each object.
    pub fn check_config(&self) -> Result<(), OstreeError> {
        let config = self.fetch_file("config", MAX_CONFIG_SIZE)?.ok_or_else(|| {
            OstreeError::Config(format!("{} has no config", self.source.location()))
        })?;
        let config =
            String::from_utf8(config).map_err(|_| OstreeError::Config("not UTF-8".into()))?;
        match config_value(&config, "core", "mode").unwrap_or("bare") {
            "archive" | "archive-z2" => Ok(()),
            other => Err(OstreeError::NotArchive(other.to_owned())),
        }
    }

    /// Resolves `rev`: a commit checksum as is, a ref through the
    /// `summary` if the source has one listing it, else `refs/heads/REF`.
    /// With `keys` configured, a summary is used only if `summary.sig`
    /// verifies; a ref read from `refs/heads/` carries no signature, but
    /// the commit it names is verified in turn.
    pub fn resolve(&self, rev: &str, keys: &TrustedKeys) -> Result<Checksum, OstreeError> {
        if let Ok(checksum) = Checksum::from_hex(rev) {
            return Ok(checksum);
        }
        check_ref_name(rev, rev)?;
        if let Some(summary) = self.fetch_file("summary", MAX_SUMMARY_SIZE)? {
            if !keys.is_empty() {
                let signatures = self.fetch_file("summary.sig", MAX_SIGNATURES_SIZE)?;
                keys.verify("summary", &summary, signatures.as_deref())?;
            }
            let refs = object::parse_summary_refs(&summary).map_err(OstreeError::Summary)?;
            if let Some((_, checksum)) = refs.iter().find(|(name, _)| name == rev) {
                return Ok(*checksum);
            }
        }
        let text = self
            .fetch_file(&format!("refs/heads/{rev}"), MAX_REF_SIZE)?
            .ok_or_else(|| OstreeError::NoSuchRef(rev.to_owned()))?;
        Checksum::from_hex(String::from_utf8_lossy(&text).trim_end())
    }

    /// The commit's detached metadata (signatures), if the source has
    /// one. Fetched every time, as ostree does: signatures can be added
    /// to a commit after it was first pulled.
    pub fn commitmeta(&self, commit: &Checksum) -> Result<Option<Vec<u8>>, OstreeError> {
        self.fetch_file(&object_path(commit, "commitmeta"), MAX_METADATA_SIZE)
    }

    /// The commit, verified, parsed and kept in the index.
    pub fn commit(&self, checksum: &Checksum) -> Result<(Commit, Vec<u8>), OstreeError> {
        let data = self.metadata(checksum, "commit")?;
        let commit =
            object::parse_commit(&data).map_err(|reason| malformed(checksum, "commit", reason))?;
        Ok((commit, data))
    }

    /// Fetches every dirtree, dirmeta and content object of `commit` the
    /// index does not hold yet.
    pub fn fetch_tree(&self, commit: &Commit) -> Result<(), OstreeError> {
        let mut level = vec![(commit.root_tree, commit.root_meta)];
        let mut trees_seen = HashSet::new();
        let mut metas_seen = HashSet::new();
        let mut files_seen = HashSet::new();
        let mut files = Vec::new();
        let mut depth = 0;
        while !level.is_empty() {
            depth += 1;
            if depth > crate::convert::MAX_DEPTH {
                return Err(OstreeError::TooDeep(crate::convert::MAX_DEPTH));
            }
            let metas: Vec<Checksum> = level
                .iter()
                .map(|(_, meta)| *meta)
                .filter(|meta| metas_seen.insert(*meta))
                .collect();
            let trees: Vec<Checksum> = level
                .iter()
                .map(|(tree, _)| *tree)
                .filter(|tree| trees_seen.insert(*tree))
                .collect();
            parallel(&metas, self.jobs, |meta| self.dirmeta(meta).map(drop))?;
            let listings = parallel(&trees, self.jobs, |tree| self.dirtree(tree))?;
            level = Vec::new();
            for listing in listings {
                for (_, file) in listing.files {
                    if files_seen.insert(file) {
                        files.push(file);
                    }
                }
                level.extend(listing.dirs.into_iter().map(|(_, tree, meta)| (tree, meta)));
            }
        }
        parallel(&files, self.jobs, |file| self.file(file).map(drop))?;
        Ok(())
    }

    fn dirtree(&self, checksum: &Checksum) -> Result<DirTree, OstreeError> {
        let data = self.metadata(checksum, "dirtree")?;
        object::parse_dirtree(&data).map_err(|reason| malformed(checksum, "dirtree", reason))
    }

    fn dirmeta(&self, checksum: &Checksum) -> Result<Meta, OstreeError> {
        let data = self.metadata(checksum, "dirmeta")?;
        object::parse_dirmeta(&data).map_err(|reason| malformed(checksum, "dirmeta", reason))
    }

    /// A metadata object from the index, or fetched, verified and kept.
    fn metadata(&self, checksum: &Checksum, kind: &'static str) -> Result<Vec<u8>, OstreeError> {
        if let Some(data) = self.index.metadata(checksum, kind)? {
            self.counters.held.fetch_add(1, Ordering::Relaxed);
            return Ok(data);
        }
        let data = self
            .source
            .fetch(&object_path(checksum, kind), MAX_METADATA_SIZE)?
            .ok_or(OstreeError::Missing {
                checksum: *checksum,
                kind,
            })?;
        self.counters
            .metadata_objects
            .fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let actual = Checksum::of(&[&data]);
        if actual != *checksum {
            return Err(OstreeError::ChecksumMismatch {
                kind,
                expected: *checksum,
                actual,
            });
        }
        self.index.put_metadata(checksum, kind, &data)?;
        Ok(data)
    }

    /// A content object from the index, or fetched, verified, its
    /// content stored, and recorded.
    fn file(&self, checksum: &Checksum) -> Result<IndexedFile<H>, OstreeError> {
        if let Some(file) = self.index.file(checksum, self.repo)? {
            self.counters.held.fetch_add(1, Ordering::Relaxed);
            return Ok(file);
        }
        let stream =
            self.source
                .open(&object_path(checksum, "filez"))?
                .ok_or(OstreeError::Missing {
                    checksum: *checksum,
                    kind: "filez",
                })?;
        self.counters
            .content_objects
            .fetch_add(1, Ordering::Relaxed);
        let stream = CountingReader {
            inner: stream,
            counters: Arc::clone(&self.counters),
        };
        let mut reader = open_archive_stream(checksum, stream)?;
        let size = reader.size();
        let file = if reader.header().is_symlink() || size <= inline_max::<H>() as u64 {
            let (header, data) = reader.read_verified()?;
            IndexedFile {
                header,
                size,
                content: IndexedContent::Inline(data),
            }
        } else {
            let stored = self.repo.ensure_object_from_reader(&mut reader);
            let digest = reader.check(stored)?;
            IndexedFile {
                header: reader.header().clone(),
                size,
                content: IndexedContent::External(digest),
            }
        };
        self.index.put_file(checksum, &file)?;
        Ok(file)
    }
}

/// A fetched commit's objects, read back from the index to build its
/// tree.
#[derive(Debug)]
pub struct IndexedObjects<'a> {
    index: &'a ObjectIndex,
}

impl<'a> IndexedObjects<'a> {
    /// Reads objects from `index`.
    pub fn new(index: &'a ObjectIndex) -> Self {
        Self { index }
    }

    fn metadata(&self, checksum: &Checksum, kind: &'static str) -> Result<Vec<u8>, OstreeError> {
        self.index
            .metadata(checksum, kind)?
            .ok_or(OstreeError::Missing {
                checksum: *checksum,
                kind,
            })
    }
}

impl<H: FsVerityDigest> CommitObjects<H> for IndexedObjects<'_> {
    fn dirtree(&self, checksum: &Checksum) -> Result<DirTree, OstreeError> {
        let data = self.metadata(checksum, "dirtree")?;
        object::parse_dirtree(&data).map_err(|reason| malformed(checksum, "dirtree", reason))
    }

    fn dirmeta(&self, checksum: &Checksum) -> Result<Meta, OstreeError> {
        let data = self.metadata(checksum, "dirmeta")?;
        object::parse_dirmeta(&data).map_err(|reason| malformed(checksum, "dirmeta", reason))
    }

    fn file(
        &self,
        checksum: &Checksum,
        repo: &Repository<H>,
    ) -> Result<(Leaf<H>, u64), OstreeError> {
        let file = self
            .index
            .file(checksum, repo)?
            .ok_or(OstreeError::Missing {
                checksum: *checksum,
                kind: "file",
            })?;
        Ok(match file.content {
            IndexedContent::Inline(data) => (leaf_of(&file.header, data, None), 0),
            IndexedContent::External(digest) => (
                leaf_of(&file.header, Vec::new(), Some((digest, file.size))),
                file.size,
            ),
        })
    }
}

/// `objects/XX/REST.KIND`, as every ostree repository names objects.
pub fn object_path(checksum: &Checksum, kind: &str) -> String {
    let hex = checksum.to_hex();
    format!("objects/{}/{}.{kind}", &hex[..2], &hex[2..])
}

fn malformed(checksum: &Checksum, kind: &'static str, reason: String) -> OstreeError {
    OstreeError::Malformed {
        checksum: *checksum,
        kind,
        reason,
    }
}

/// Runs `work` on every item with up to `jobs` threads; results in the
/// items' order, or the first error (the rest of the work is dropped).
fn parallel<T: Sync, R: Send>(
    items: &[T],
    jobs: usize,
    work: impl Fn(&T) -> Result<R, OstreeError> + Sync,
) -> Result<Vec<R>, OstreeError> {
    let threads = jobs.min(items.len());
    if threads <= 1 {
        return items.iter().map(work).collect();
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error = Mutex::new(None);
    let results: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= items.len() || failed.load(Ordering::Relaxed) {
                    break;
                }
                match work(&items[i]) {
                    Ok(result) => *results[i].lock().expect("no panics hold it") = Some(result),
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        first_error
                            .lock()
                            .expect("no panics hold it")
                            .get_or_insert(e);
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().expect("no panics hold it") {
        return Err(e);
    }
    Ok(results
        .into_iter()
        .map(|r| {
            r.into_inner()
                .expect("no panics hold it")
                .expect("every item ran")
        })
        .collect())
}
