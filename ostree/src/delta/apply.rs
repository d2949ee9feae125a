//! Fetching a delta's superblock and parts from a repository and
//! running them, part by part.
//!
//! Files are read through a `fetch(path, limit)` function with the shape
//! of a repository source's (`None` when the repository has no such
//! file), so the same code applies a delta from a local directory or
//! over HTTP. Each part is fetched with its header's size as the limit
//! and checked against its header's checksum before it is decompressed.

use super::error::DeltaError;
use super::execute::{execute, ObjectSink, OpCounts, ReadSource};
use super::naming;
use super::part::Part;
use super::superblock::{PartHeader, Superblock};
use crate::checksum::Checksum;
use crate::error::OstreeError;
use crate::repo::MAX_METADATA_SIZE;

/// Reads a file of the repository: its bytes, or `None` if it has none;
/// refuses one over `limit` bytes.
pub type Fetch<'a> = dyn FnMut(&str, u64) -> Result<Option<Vec<u8>>, OstreeError> + 'a;

/// What applying a delta fetched and ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Parts fetched as files of their own.
    pub parts_fetched: usize,
    /// Parts carried inside the superblock.
    pub parts_inline: usize,
    /// Parts skipped because every object they build was already there.
    pub parts_skipped: usize,
    /// Bytes of part files fetched.
    pub part_bytes: u64,
    /// Objects built.
    pub objects: usize,
    /// Operations run, by kind.
    pub ops: OpCounts,
}

/// Fetches the superblock of the delta from `from` (or from scratch) to
/// `to`; `None` if the repository has no such delta. `digest` is the
/// superblock's SHA-256 when a summary or delta index lists it.
pub fn fetch_superblock(
    fetch: &mut Fetch<'_>,
    from: Option<&Checksum>,
    to: &Checksum,
    digest: Option<&Checksum>,
) -> Result<Option<(Superblock, u64)>, OstreeError> {
    let path = naming::superblock_path(from, to);
    let Some(bytes) = fetch(&path, MAX_METADATA_SIZE)? else {
        return Ok(None);
    };
    if let Some(expected) = digest {
        let actual = Checksum::of(&[&bytes]);
        if actual != *expected {
            return Err(DeltaError::SuperblockChecksum {
                expected: *expected,
                actual,
            }
            .into());
        }
    }
    let superblock = Superblock::parse(&bytes)?;
    if superblock.from.as_ref() != from || superblock.to != *to {
        let name = |c: Option<&Checksum>| c.map_or("scratch".to_owned(), Checksum::to_hex);
        return Err(DeltaError::Superblock(format!(
            "found at the path of {} -> {to}, it leads from {} to {}",
            name(from),
            name(superblock.from.as_ref()),
            superblock.to
        ))
        .into());
    }
    Ok(Some((superblock, bytes.len() as u64)))
}

/// Fetches and runs every part of `superblock` whose objects are not all
/// there yet (`have_all`), handing the objects to `sink`. Fallback
/// objects are not fetched here: they are ordinary loose objects.
pub fn apply_parts(
    superblock: &Superblock,
    fetch: &mut Fetch<'_>,
    have_all: &dyn Fn(&PartHeader) -> bool,
    source: &dyn ReadSource,
    sink: &mut dyn ObjectSink,
) -> Result<ApplyStats, OstreeError> {
    let mut stats = ApplyStats::default();
    for (index, header) in superblock.parts.iter().enumerate() {
        if have_all(header) {
            stats.parts_skipped += 1;
            continue;
        }
        let part = match superblock.inline_part(index) {
            Some(bytes) => {
                stats.parts_inline += 1;
                Part::open(index, header, bytes)?
            }
            None => {
                let path = naming::part_path(superblock.from.as_ref(), &superblock.to, index);
                let bytes =
                    fetch(&path, header.compressed_size)?.ok_or_else(|| DeltaError::Part {
                        part: index,
                        reason: format!("{path} is missing from the repository"),
                    })?;
                stats.parts_fetched += 1;
                stats.part_bytes += bytes.len() as u64;
                if bytes.len() as u64 != header.compressed_size {
                    return Err(DeltaError::Part {
                        part: index,
                        reason: format!(
                            "{path} is {} bytes, its header says {} (truncated?)",
                            bytes.len(),
                            header.compressed_size
                        ),
                    }
                    .into());
                }
                Part::open(index, header, &bytes)?
            }
        };
        stats.ops += execute(index, header, &part, source, sink)?;
        stats.objects += header.objects.len();
    }
    Ok(stats)
}
