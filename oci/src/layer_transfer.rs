//! Single layers in the transfer form of [`cfs_images::transfer`]: a
//! layer's split stream plus a directory holding its objects, which is
//! how a layer moves between repositories of different processes
//! (`serve --varlink` hands both over as descriptors).
//!
//! The receiver trusts neither part. [`import_layer`] stores each object
//! only after hashing its own copy, then reads the layer back from those
//! copies: the tar must hash to the diff_id it arrives under, every entry
//! must pass the checks a pull applies, and what is stored is the stream
//! this repository writes for that tar (never the sender's bytes, which
//! could encode the same chunks differently). Only then are the stream and
//! its ref named, so a refused or interrupted import leaves at most
//! unreferenced objects, which garbage collection removes.

use std::io::Read;
use std::os::fd::OwnedFd;

use cfs_erofs::digest::FsVerityDigest;
use cfs_images::splitstream::{
    Chunk, ContentType, SplitStream, SplitStreamError, SplitStreamWriter,
};
use cfs_images::transfer::{ObjectDir, TransferStats};
use cfs_images::Repository;
use sha2::{Digest as _, Sha256};

use crate::pull::layer_id;
use crate::tar::{layer_entries, TarError};

/// The largest split stream accepted, in bytes. A stream holds a layer's
/// tar headers and small files (compressed), so this is far above any
/// real layer's; it bounds what a sender can make us hold in memory.
pub const STREAM_MAX: u64 = 256 << 20;

/// Why a layer could not be handed out or taken in.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayerTransferError {
    /// Not of the form `sha256:<64 lowercase hex digits>`.
    #[error("{0:?} is not a diff_id (sha256:<64 lowercase hex digits>)")]
    BadDiffId(String),
    /// The repository has no layer with that diff_id.
    #[error("no layer {0} in the repository")]
    NoSuchLayer(String),
    /// A split stream above [`STREAM_MAX`].
    #[error("the split stream has {size} bytes, more than the {max} accepted")]
    StreamTooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The split stream does not parse or read back.
    #[error("the split stream: {0}")]
    SplitStream(#[source] SplitStreamError),
    /// A layer's stream names no other streams; this one does.
    #[error("the split stream names {0} other streams; a layer names none")]
    HasStreamRefs(usize),
    /// An object of the sender's directory is missing, unreadable, or not
    /// what its name says.
    #[error("the sender's objects: {0}")]
    Objects(#[source] cfs_images::Error),
    /// The reassembled tar has another diff_id.
    #[error("the layer's tar has diff_id {found}, not {expected}")]
    DiffIdMismatch {
        /// The diff_id it was sent under.
        expected: String,
        /// What the tar hashes to.
        found: String,
    },
    /// An entry a pull would refuse.
    #[error("layer {diff_id}: {source}")]
    Tar {
        /// The layer.
        diff_id: String,
        /// What is wrong.
        #[source]
        source: TarError,
    },
    /// The repository failed.
    #[error(transparent)]
    Repository(#[from] cfs_images::Error),
}

impl LayerTransferError {
    /// Whether the error is in what was sent (as opposed to a missing
    /// layer or a failing repository): a service replies with a refusal.
    pub fn is_refusal(&self) -> bool {
        !matches!(self, Self::NoSuchLayer(_) | Self::Repository(_))
    }
}

/// A stored layer, ready to hand out.
#[derive(Debug)]
pub struct LayerExport {
    /// The split stream, as stored (checked against its digest).
    pub stream: Vec<u8>,
    /// The repository's `objects/`, as [`Repository::objects_dir`] opens
    /// it; the stream's objects are named as
    /// [`cfs_images::transfer::ObjectNames::Repository`].
    pub objects: OwnedFd,
}

/// What [`import_layer`] stored.
#[derive(Debug, Clone, Copy)]
pub struct LayerImport<H> {
    /// The digest of the stored stream.
    pub stream: H,
    /// How its objects got in; all zero when the layer was there already.
    pub stats: TransferStats,
}

/// Checks the form of a diff_id, which becomes part of a stream name.
pub fn check_diff_id(diff_id: &str) -> Result<(), LayerTransferError> {
    let hex = diff_id.strip_prefix("sha256:").unwrap_or_default();
    if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(LayerTransferError::BadDiffId(diff_id.to_owned()))
    }
}

/// The stored layer `diff_id`, in the transfer form.
pub fn export_layer<H: FsVerityDigest>(
    repo: &Repository<H>,
    diff_id: &str,
) -> Result<LayerExport, LayerTransferError> {
    check_diff_id(diff_id)?;
    let digest = repo
        .has_stream(&layer_id(diff_id))?
        .ok_or_else(|| LayerTransferError::NoSuchLayer(diff_id.to_owned()))?;
    Ok(LayerExport {
        stream: repo.read_object(&digest)?,
        objects: repo.objects_dir()?,
    })
}

/// Stores the layer `diff_id` given as split stream bytes and a directory
/// of its objects, and names it `streams/refs/<name>`, checked as the
/// module documentation says. A layer the repository has already is only
/// named; nothing sent is read.
pub fn import_layer<H: FsVerityDigest>(
    repo: &Repository<H>,
    diff_id: &str,
    stream: Vec<u8>,
    objects: ObjectDir<'_>,
    name: &str,
) -> Result<LayerImport<H>, LayerTransferError> {
    check_diff_id(diff_id)?;
    let content_id = layer_id(diff_id);
    if let Some(digest) = repo.has_stream(&content_id)? {
        repo.name_stream(&content_id, name)?;
        return Ok(LayerImport {
            stream: digest,
            stats: TransferStats::default(),
        });
    }
    let size = stream.len() as u64;
    if size > STREAM_MAX {
        return Err(LayerTransferError::StreamTooLarge {
            size,
            max: STREAM_MAX,
        });
    }
    let sent = SplitStream::<H>::parse(stream).map_err(LayerTransferError::SplitStream)?;
    if !sent.stream_refs().is_empty() {
        return Err(LayerTransferError::HasStreamRefs(sent.stream_refs().len()));
    }
    if sent.content_type() != ContentType::OCI_LAYER {
        return Err(LayerTransferError::Tar {
            diff_id: diff_id.to_owned(),
            source: TarError::NotALayer(sent.content_type()),
        });
    }
    let stats = repo
        .import_objects(sent.object_refs(), objects)
        .map_err(LayerTransferError::Objects)?;

    let (found, ours) = rewrite(repo, &sent)?;
    if found != diff_id {
        return Err(LayerTransferError::DiffIdMismatch {
            expected: diff_id.to_owned(),
            found,
        });
    }
    let stored =
        SplitStream::<H>::parse(ours.as_slice()).map_err(LayerTransferError::SplitStream)?;
    for entry in layer_entries(&stored) {
        entry.map_err(|source| LayerTransferError::Tar {
            diff_id: diff_id.to_owned(),
            source,
        })?;
    }
    let digest = repo.write_stream(&content_id, &ours, Some(name))?;
    Ok(LayerImport {
        stream: digest,
        stats,
    })
}

/// Reads `sent` back from the repository's own objects: the diff_id of
/// the tar it reassembles to, and the split stream this repository writes
/// for the same chunks.
fn rewrite<H: FsVerityDigest>(
    repo: &Repository<H>,
    sent: &SplitStream<H>,
) -> Result<(String, Vec<u8>), LayerTransferError> {
    let mut hasher = Sha256::new();
    let mut writer = SplitStreamWriter::<H>::new(ContentType::OCI_LAYER);
    let mut buf = vec![0u8; 128 << 10];
    for chunk in sent.chunks() {
        match chunk.map_err(LayerTransferError::SplitStream)? {
            Chunk::Inline(bytes) => {
                hasher.update(&bytes);
                writer.write_inline(&bytes);
            }
            Chunk::External(digest) => {
                let mut object = repo.open_object(digest)?;
                let mut size = 0u64;
                loop {
                    let n = match object.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            return Err(cfs_images::Error::Io {
                                op: "reading object",
                                path: digest.to_hex().into(),
                                source: e,
                            }
                            .into())
                        }
                    };
                    hasher.update(&buf[..n]);
                    size += n as u64;
                }
                writer.write_external(*digest, size);
            }
        }
    }
    let found = format!("sha256:{}", hex::encode(hasher.finalize()));
    Ok((found, writer.finish()))
}
