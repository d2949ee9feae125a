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

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::path::Path;

    use cfs_erofs::digest::Sha256Digest;
    use cfs_erofs::fsverity::FsVerityHasher;
    use cfs_images::transfer::ObjectNames;
    use cfs_images::InitOptions;

    use super::*;
    use crate::tar::split_layer;

    type Repo = Repository<Sha256Digest>;

    fn repo(path: &Path) -> Repo {
        let options = InitOptions {
            insecure: true,
            ..Default::default()
        };
        Repository::init(path, &options).unwrap()
    }

    /// A tar with one inline file and two object-sized ones, its diff_id,
    /// and a repository holding it as a layer.
    fn source(dir: &Path) -> (Repo, String) {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, len) in [("small", 10), ("a", 1000), ("b", 5000)] {
            let mut header = tar::Header::new_ustar();
            header.set_size(len as u64);
            header.set_mode(0o644);
            header.set_cksum();
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            builder.append_data(&mut header, name, &data[..]).unwrap();
        }
        let tar = builder.into_inner().unwrap();
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
        let repo = repo(&dir.join("a"));
        let layer = split_layer(&repo, &tar[..]).unwrap();
        repo.write_stream(&layer_id(&diff_id), &layer.stream_bytes, None)
            .unwrap();
        (repo, diff_id)
    }

    fn import(
        to: &Repo,
        diff_id: &str,
        stream: Vec<u8>,
        from: &LayerExport,
    ) -> Result<LayerImport<Sha256Digest>, LayerTransferError> {
        let objects = ObjectDir {
            dir: from.objects.as_fd(),
            names: ObjectNames::Repository,
        };
        import_layer(to, diff_id, stream, objects, "layer")
    }

    #[test]
    fn a_layer_moves_whole_and_is_named_last() {
        let dir = tempfile::tempdir().unwrap();
        let (a, diff_id) = source(dir.path());
        let b = repo(&dir.path().join("b"));
        let export = export_layer(&a, &diff_id).unwrap();
        let stream = export.stream.clone();
        let stored = import(&b, &diff_id, stream.clone(), &export).unwrap();
        assert_eq!(
            stored.stream,
            FsVerityHasher::<Sha256Digest>::digest(&stream)
        );
        assert_eq!(stored.stats.copied + stored.stats.reflinked, 2);
        assert_eq!(
            b.has_stream(&layer_id(&diff_id)).unwrap(),
            Some(stored.stream)
        );
        assert!(b.fsck(false).unwrap().is_clean());
        // Again: already there, only named; nothing sent is read.
        let again = import(&b, &diff_id, Vec::new(), &export).unwrap();
        assert_eq!(again.stats, TransferStats::default());
    }

    #[test]
    fn the_stored_stream_is_ours_not_the_senders() {
        let dir = tempfile::tempdir().unwrap();
        let (a, diff_id) = source(dir.path());
        let b = repo(&dir.path().join("b"));
        let export = export_layer(&a, &diff_id).unwrap();
        // The same chunks, but a stream size 512 bytes too large: another
        // encoding of the same tar.
        let sent = SplitStream::<Sha256Digest>::parse(export.stream.clone()).unwrap();
        let mut writer = SplitStreamWriter::<Sha256Digest>::new(ContentType::OCI_LAYER);
        let mut first = true;
        for chunk in sent.chunks() {
            match chunk.unwrap() {
                Chunk::Inline(bytes) => writer.write_inline(&bytes),
                Chunk::External(digest) => {
                    let size = a.read_object(digest).unwrap().len() as u64;
                    writer.write_external(*digest, if first { size + 512 } else { size });
                    first = false;
                }
            }
        }
        let other = writer.finish();
        assert_ne!(other, export.stream);
        let stored = import(&b, &diff_id, other, &export).unwrap();
        assert_eq!(
            stored.stream,
            FsVerityHasher::<Sha256Digest>::digest(&export.stream)
        );
    }

    #[test]
    fn refusals_name_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (a, diff_id) = source(dir.path());
        let b = repo(&dir.path().join("b"));
        let export = export_layer(&a, &diff_id).unwrap();
        let other = format!("sha256:{}", "0".repeat(64));
        let digest = *SplitStream::<Sha256Digest>::parse(export.stream.clone())
            .unwrap()
            .object_refs()
            .first()
            .unwrap();

        let mismatch = import(&b, &other, export.stream.clone(), &export).unwrap_err();
        assert!(matches!(
            mismatch,
            LayerTransferError::DiffIdMismatch { .. }
        ));

        let mut config = SplitStreamWriter::<Sha256Digest>::new(ContentType::OCI_CONFIG);
        config.write_inline(b"{}");
        let error = import(&b, &diff_id, config.finish(), &export).unwrap_err();
        assert!(matches!(
            error,
            LayerTransferError::Tar {
                source: TarError::NotALayer(_),
                ..
            }
        ));

        let mut refs = SplitStreamWriter::<Sha256Digest>::new(ContentType::OCI_LAYER);
        refs.add_stream_ref("x", digest).unwrap();
        let error = import(&b, &diff_id, refs.finish(), &export).unwrap_err();
        assert!(matches!(error, LayerTransferError::HasStreamRefs(1)));

        let error = import(&b, &diff_id, b"junk".to_vec(), &export).unwrap_err();
        assert!(matches!(error, LayerTransferError::SplitStream(_)));

        for error in [mismatch, error] {
            assert!(error.is_refusal(), "{error}");
        }
        assert_eq!(b.has_stream(&layer_id(&diff_id)).unwrap(), None);
        assert_eq!(b.has_stream(&layer_id(&other)).unwrap(), None);
        assert!(b.fsck(false).unwrap().is_clean());
    }

    #[test]
    fn diff_ids_are_sha256_lowercase_hex() {
        let hex = "ab".repeat(32);
        assert!(check_diff_id(&format!("sha256:{hex}")).is_ok());
        for bad in [
            hex.clone(),
            format!("sha256:{}", hex.to_uppercase()),
            format!("sha512:{hex}"),
            format!("sha256:{}", &hex[1..]),
            format!("sha256:../{}", &hex[3..]),
        ] {
            assert!(check_diff_id(&bad).is_err(), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let a = repo(&dir.path().join("a"));
        assert!(matches!(
            export_layer(&a, &format!("sha256:{hex}")),
            Err(LayerTransferError::NoSuchLayer(_))
        ));
    }
}
