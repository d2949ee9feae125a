//! Pulling a commit through a static delta into the object index, as
//! `ostree pull` does when the remote has one.
//!
//! Choosing a delta follows libostree (`get_best_static_delta_start_for`
//! and the legacy path): when the remote lists deltas to the commit (its
//! `delta-indexes/` file), the one from the newest listed base commit we
//! hold complete; else, if the tag being pulled is new here, the one
//! from scratch; without a delta index, the delta from the commit the
//! tag now names is tried by its path, then (for a new tag) the one
//! from scratch. "Held complete" means pulled to the end: its images
//! stream exists and the index has its commit.
//!
//! It happens in two steps, so that the commit can be checked (its
//! signatures too) before any tree object is fetched: [`find_delta`]
//! fetches the superblock and writes the commit it carries into the
//! index; [`apply_delta`] then writes every object the parts build
//! into the index (contents too large to inline into the composefs
//! repository first), each checked against its name. Base files come
//! from the index. Parts whose objects the index already holds are not
//! fetched, so an interrupted delta pull resumes part by part. Fallback
//! objects are not fetched here: the loose walk that follows finds them
//! missing and fetches them, and with them anything else the index
//! lacks (a base file collected since, say), so a delta can make a pull
//! cheaper but never incomplete.

use cfs_erofs::digest::FsVerityDigest;
use cfs_images::Repository;

use super::apply::{apply_parts, fetch_superblock, ApplyStats};
use super::discovery::{parse_delta_index, ListedDelta};
use super::execute::{ObjectSink, ReadSource};
use super::naming;
use super::superblock::{ObjectType, PartHeader, Superblock};
use crate::checksum::Checksum;
use crate::convert::inline_max;
use crate::error::OstreeError;
use crate::fetch::{DeltaFile, Fetcher};
use crate::index::{IndexedContent, IndexedFile, ObjectIndex};
use crate::object::{self, FileHeader};
use crate::pull::commit_stream_id;

/// The largest delta index read.
const MAX_INDEX_SIZE: u64 = 16 << 20;

/// A delta chosen for a pull: its superblock fetched and checked, its
/// commit in the index, its parts not fetched yet.
#[derive(Debug, Clone)]
pub struct ChosenDelta {
    superblock: Superblock,
}

impl ChosenDelta {
    /// The base commit; `None` for a delta from scratch.
    pub fn from(&self) -> Option<&Checksum> {
        self.superblock.from.as_ref()
    }
}

/// What a pull through a delta did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaPull {
    /// The base commit; `None` for a delta from scratch.
    pub from: Option<Checksum>,
    /// Content objects the delta leaves to be fetched loose.
    pub fallbacks: usize,
    /// What applying it fetched and ran.
    pub applied: ApplyStats,
}

/// Finds the best delta to commit `to` the fetcher's source offers and
/// fetches its superblock, whose commit goes into the index (so the
/// commit is not fetched again, and can be checked, signatures and all,
/// before any part is fetched); `None` when it offers none we can use.
/// `current` is the commit the tag being pulled names now, if any.
pub fn find_delta<H: FsVerityDigest>(
    fetcher: &Fetcher<'_, H>,
    index: &ObjectIndex,
    repo: &Repository<H>,
    to: &Checksum,
    current: Option<&Checksum>,
) -> Result<Option<ChosenDelta>, OstreeError> {
    let index_file =
        fetcher.fetch_delta_file(&naming::index_path(to), MAX_INDEX_SIZE, DeltaFile::Index)?;
    // (from, superblock digest) to try, in order.
    let candidates: Vec<(Option<Checksum>, Option<Checksum>)> = match index_file {
        Some(bytes) => {
            let listed: Vec<_> = parse_delta_index(&bytes)?
                .into_iter()
                .filter(|d| d.to == *to)
                .collect();
            let mut newest: Option<(u64, &ListedDelta)> = None;
            for delta in &listed {
                let Some(from) = &delta.from else { continue };
                if let Some(timestamp) = held_complete(index, repo, from)? {
                    if newest.is_none_or(|(t, _)| timestamp > t) {
                        newest = Some((timestamp, delta));
                    }
                }
            }
            let scratch = || {
                listed
                    .iter()
                    .find(|d| d.from.is_none() && current.is_none())
            };
            newest
                .map(|(_, delta)| delta)
                .or_else(scratch)
                .map(|d| (d.from, Some(d.superblock_digest)))
                .into_iter()
                .collect()
        }
        // No index: guess by path, as libostree's legacy path does.
        None => match current {
            Some(current) if current != to && held_complete(index, repo, current)?.is_some() => {
                vec![(Some(*current), None)]
            }
            Some(_) => Vec::new(),
            None => vec![(None, None)],
        },
    };
    let mut superblock_fetch =
        |path: &str, limit: u64| fetcher.fetch_delta_file(path, limit, DeltaFile::Superblock);
    for (from, digest) in candidates {
        let Some((superblock, _)) =
            fetch_superblock(&mut superblock_fetch, from.as_ref(), to, digest.as_ref())?
        else {
            continue;
        };
        index.put_metadata(to, "commit", &superblock.commit)?;
        return Ok(Some(ChosenDelta { superblock }));
    }
    Ok(None)
}

/// Fetches and runs the parts of `delta` whose objects the index lacks,
/// keeping every object they build.
pub fn apply_delta<H: FsVerityDigest>(
    fetcher: &Fetcher<'_, H>,
    index: &ObjectIndex,
    repo: &Repository<H>,
    delta: &ChosenDelta,
) -> Result<DeltaPull, OstreeError> {
    let held = |header: &PartHeader| {
        header
            .objects
            .iter()
            .all(|(kind, checksum)| is_held(index, repo, *kind, checksum))
    };
    let mut part_fetch =
        |path: &str, limit: u64| fetcher.fetch_delta_file(path, limit, DeltaFile::Part);
    let applied = apply_parts(
        &delta.superblock,
        &mut part_fetch,
        &held,
        &IndexFiles { index, repo },
        &mut IndexSink { index, repo },
    )?;
    Ok(DeltaPull {
        from: delta.superblock.from,
        fallbacks: delta.superblock.fallbacks.len(),
        applied,
    })
}

/// The timestamp of `commit` if it was pulled complete: its images
/// stream exists and the index has the commit.
fn held_complete<H: FsVerityDigest>(
    index: &ObjectIndex,
    repo: &Repository<H>,
    commit: &Checksum,
) -> Result<Option<u64>, OstreeError> {
    if repo.has_stream(&commit_stream_id(commit))?.is_none() {
        return Ok(None);
    }
    let Some(bytes) = index.metadata(commit, "commit")? else {
        return Ok(None);
    };
    Ok(object::parse_commit(&bytes).ok().map(|c| c.timestamp))
}

/// Whether the index holds an object; unreadable counts as absent.
fn is_held<H: FsVerityDigest>(
    index: &ObjectIndex,
    repo: &Repository<H>,
    kind: ObjectType,
    checksum: &Checksum,
) -> bool {
    match kind {
        ObjectType::File => matches!(index.file(checksum, repo), Ok(Some(_))),
        ObjectType::DirTree | ObjectType::DirMeta => {
            matches!(index.metadata(checksum, kind.extension()), Ok(Some(_)))
        }
    }
}

/// Base-commit files, read from the index and the composefs repository.
struct IndexFiles<'a, H: FsVerityDigest> {
    index: &'a ObjectIndex,
    repo: &'a Repository<H>,
}

impl<H: FsVerityDigest> ReadSource for IndexFiles<'_, H> {
    fn read_content(&self, checksum: &Checksum) -> Result<Vec<u8>, OstreeError> {
        let file = self
            .index
            .file(checksum, self.repo)?
            .ok_or(OstreeError::Missing {
                checksum: *checksum,
                kind: "file",
            })?;
        match file.content {
            IndexedContent::Inline(data) => Ok(data),
            IndexedContent::External(digest) => Ok(self.repo.read_object(&digest)?),
        }
    }
}

/// Keeps what a part builds: metadata in the index, content in the
/// composefs repository (or inline) and its record in the index.
struct IndexSink<'a, H: FsVerityDigest> {
    index: &'a ObjectIndex,
    repo: &'a Repository<H>,
}

impl<H: FsVerityDigest> ObjectSink for IndexSink<'_, H> {
    fn metadata(
        &mut self,
        kind: ObjectType,
        checksum: &Checksum,
        bytes: &[u8],
    ) -> Result<(), OstreeError> {
        self.index.put_metadata(checksum, kind.extension(), bytes)
    }

    fn content(
        &mut self,
        checksum: &Checksum,
        header: &FileHeader,
        content: &[u8],
    ) -> Result<(), OstreeError> {
        let size = content.len() as u64;
        let content = if header.is_symlink() || content.len() <= inline_max::<H>() {
            IndexedContent::Inline(content.to_vec())
        } else {
            IndexedContent::External(self.repo.ensure_object(content)?)
        };
        let file = IndexedFile {
            header: header.clone(),
            size,
            content,
        };
        self.index.put_file(checksum, &file)
    }
}
