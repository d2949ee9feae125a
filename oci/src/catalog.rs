//! The pulled images a repository holds, by tag: listing, inspecting,
//! tagging and untagging.
//!
//! A tag is the only GC root of an OCI image (`streams/refs/oci/<tag>` →
//! manifest stream → config stream → layers and EROFS images), so
//! everything here is read back from those streams: nothing is cached
//! elsewhere that could disagree with what GC keeps.

use cfs_erofs::digest::FsVerityDigest;
use cfs_images::splitstream::SplitStream;
use cfs_images::Repository;
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use sha2::{Digest as _, Sha256};

use crate::merge::{merge_layers, Departure, MergeError};
use cfs_images::splitstream::{boot_image_ref_key, image_ref_key};
use cfs_images::transfer::TransferStats;

use crate::pull::{index_ref, layer_id, tag_ref};
use crate::tar::layer_entries;

/// Why an image could not be listed, inspected or (un)tagged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// No tag of that name.
    #[error("no image tagged {0:?}")]
    NoSuchTag(String),
    /// A stored manifest or config that does not parse.
    #[error("image {tag:?}: stored {what} is invalid: {reason}")]
    Corrupt {
        /// The tag.
        tag: String,
        /// `manifest` or `config`.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The stored layers no longer merge (they did when pulled).
    #[error("image {tag:?}: {source}")]
    Merge {
        /// The tag.
        tag: String,
        /// What failed.
        #[source]
        source: MergeError,
    },
    /// The repository refused.
    #[error(transparent)]
    Repository(#[from] cfs_images::Error),
}

/// The image index a tag's manifest was chosen from.
#[derive(Debug, Clone)]
pub struct IndexInfo {
    /// `sha256:...` of the index.
    pub digest: String,
    /// The platforms it offers, `OS/ARCH[/VARIANT]`, in its order.
    pub platforms: Vec<String>,
}

/// One layer of a stored image.
#[derive(Debug, Clone)]
pub struct LayerInfo {
    /// `sha256:...` of the blob as fetched.
    pub digest: String,
    /// `sha256:...` of the uncompressed tar.
    pub diff_id: String,
    /// Size of the blob as fetched, from the manifest.
    pub size: u64,
    /// Media type from the manifest.
    pub media_type: String,
}

/// A stored image as its tag names it.
#[derive(Debug, Clone)]
pub struct ImageInfo<H> {
    /// The tag.
    pub tag: String,
    /// `sha256:...` of the manifest.
    pub manifest_digest: String,
    /// `sha256:...` of the config.
    pub config_digest: String,
    /// `OS/ARCH` from the config.
    pub platform: String,
    /// Creation time from the config, if it has one.
    pub created: Option<String>,
    /// Layers in order, bottom first.
    pub layers: Vec<LayerInfo>,
    /// The index the manifest was chosen from, for a multi-platform image.
    pub index: Option<IndexInfo>,
    /// The plain EROFS image, if generated.
    pub image: Option<H>,
    /// The boot EROFS image, if the image is bootable.
    pub boot_image: Option<H>,
}

impl<H> ImageInfo<H> {
    /// Total size of the layer blobs as fetched.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// The tag a `streams/refs/` name stands for, if it is an OCI tag.
fn tag_of_ref(name: &str) -> Option<String> {
    let escaped = name.strip_prefix("oci/")?;
    Some(escaped.replace("%2F", "/").replace("%25", "%"))
}

/// Every tagged image, sorted by tag.
pub fn list<H: FsVerityDigest>(repo: &Repository<H>) -> Result<Vec<ImageInfo<H>>, CatalogError> {
    let mut images = Vec::new();
    for (name, _) in repo.list_refs("streams")? {
        if let Some(tag) = tag_of_ref(&name) {
            images.push(inspect(repo, &tag)?);
        }
    }
    images.sort_by(|a, b| a.tag.cmp(&b.tag));
    Ok(images)
}

/// The image tagged `tag`, read back from its manifest and config streams.
pub fn inspect<H: FsVerityDigest>(
    repo: &Repository<H>,
    tag: &str,
) -> Result<ImageInfo<H>, CatalogError> {
    let (_, manifest_stream) = open_tagged(repo, tag)?;
    let corrupt = |what, reason: String| CatalogError::Corrupt {
        tag: tag.to_owned(),
        what,
        reason,
    };
    let manifest_bytes = contents(repo, &manifest_stream)?;
    let manifest = ImageManifest::from_reader(&manifest_bytes[..])
        .map_err(|e| corrupt("manifest", e.to_string()))?;
    let config_digest = manifest.config().digest().to_string();
    let (_, config_stream) = repo.open_stream(&format!("oci-config-{config_digest}"))?;
    let config_bytes = contents(repo, &config_stream)?;
    let config = ImageConfiguration::from_reader(&config_bytes[..])
        .map_err(|e| corrupt("config", e.to_string()))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(corrupt(
            "config",
            format!(
                "{} diff_ids for {} layers",
                diff_ids.len(),
                manifest.layers().len()
            ),
        ));
    }
    let layers = manifest
        .layers()
        .iter()
        .zip(diff_ids)
        .map(|(layer, diff_id)| LayerInfo {
            digest: layer.digest().to_string(),
            diff_id: diff_id.clone(),
            size: layer.size(),
            media_type: layer.media_type().to_string(),
        })
        .collect();
    let manifest_digest = format!("sha256:{}", hex::encode(Sha256::digest(&manifest_bytes)));
    let index = stored_index(repo, tag, &manifest_digest)?;
    let format = repo.format();
    Ok(ImageInfo {
        tag: tag.to_owned(),
        manifest_digest,
        index,
        config_digest,
        platform: format!("{}/{}", config.os(), config.architecture()),
        created: config.created().clone(),
        layers,
        image: config_stream.named_ref(image_ref_key(format)).copied(),
        boot_image: config_stream.named_ref(boot_image_ref_key(format)).copied(),
    })
}

/// The index stored with the tag, if it lists the tag's manifest (a pull
/// stopped between writing the two leaves one that does not).
fn stored_index<H: FsVerityDigest>(
    repo: &Repository<H>,
    tag: &str,
    manifest_digest: &str,
) -> Result<Option<IndexInfo>, CatalogError> {
    let stream = match repo.open_stream(&format!("refs/{}", index_ref(tag))) {
        Ok((_, stream)) => stream,
        Err(cfs_images::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let bytes = contents(repo, &stream)?;
    let index = ImageIndex::from_reader(&bytes[..]).map_err(|e| CatalogError::Corrupt {
        tag: tag.to_owned(),
        what: "index",
        reason: e.to_string(),
    })?;
    let entries = index.manifests();
    if !entries
        .iter()
        .any(|m| m.digest().to_string() == manifest_digest)
    {
        return Ok(None);
    }
    let platforms = entries
        .iter()
        .filter_map(|m| m.platform().as_ref())
        .map(|p| {
            let mut name = format!("{}/{}", p.os(), p.architecture());
            if let Some(variant) = p.variant() {
                name = format!("{name}/{variant}");
            }
            name
        })
        .collect();
    Ok(Some(IndexInfo {
        digest: format!("sha256:{}", hex::encode(Sha256::digest(&bytes))),
        platforms,
    }))
}

/// Where merging the image's layers departs from the reference tool
/// (which then computes another digest, or fails): recomputed from the
/// stored layers, which is cheap (headers only, no file contents).
pub fn departures<H: FsVerityDigest>(
    repo: &Repository<H>,
    tag: &str,
) -> Result<Vec<Departure>, CatalogError> {
    let info = inspect(repo, tag)?;
    let streams = info
        .layers
        .iter()
        .map(|l| repo.open_stream(&layer_id(&l.diff_id)).map(|(_, s)| s))
        .collect::<Result<Vec<SplitStream<H>>, _>>()?;
    let merged =
        merge_layers(streams.iter().map(layer_entries)).map_err(|source| CatalogError::Merge {
            tag: tag.to_owned(),
            source,
        })?;
    Ok(merged.departures)
}

/// Gives the image tagged `source` the tag `new` too (replacing what
/// `new` named).
pub fn tag<H: FsVerityDigest>(
    repo: &Repository<H>,
    source: &str,
    new: &str,
) -> Result<(), CatalogError> {
    let refs = repo.list_refs("streams")?;
    // The stream a ref names, by its id (the link's last component).
    let target = |name: String, kind: &'static str| -> Result<Option<String>, CatalogError> {
        let Some((_, link)) = refs.iter().find(|(n, _)| *n == name) else {
            return Ok(None);
        };
        let id = link.rsplit('/').next().unwrap_or_default();
        if !id.starts_with(&format!("oci-{kind}-")) {
            return Err(CatalogError::Corrupt {
                tag: source.to_owned(),
                what: kind,
                reason: format!("{name} names {link:?}, not a {kind} stream"),
            });
        }
        Ok(Some(id.to_owned()))
    };
    let manifest_id = target(tag_ref(source), "manifest")?
        .ok_or_else(|| CatalogError::NoSuchTag(source.to_owned()))?;
    match target(index_ref(source), "index")? {
        Some(index_id) => repo.name_stream(&index_id, &index_ref(new))?,
        None => {
            repo.remove_stream_ref(&index_ref(new))?;
        }
    }
    repo.name_stream(&manifest_id, &tag_ref(new))?;
    Ok(())
}

/// Copies the image tagged `tag` in `from` into `to` under the same tag:
/// its manifest, config, layers, EROFS images and index, objects
/// reflinked when both repositories share a filesystem (see
/// [`cfs_images::transfer`]). The tag moves last.
pub fn copy<H: FsVerityDigest>(
    from: &Repository<H>,
    to: &Repository<H>,
    tag: &str,
) -> Result<TransferStats, CatalogError> {
    let no_tag = |e| match e {
        cfs_images::Error::NotFound { kind: "stream", .. } => {
            CatalogError::NoSuchTag(tag.to_owned())
        }
        e => e.into(),
    };
    from.open_stream(&format!("refs/{}", tag_ref(tag)))
        .map_err(no_tag)?;
    let mut stats = TransferStats::default();
    match from.open_stream(&format!("refs/{}", index_ref(tag))) {
        Ok(_) => stats.add(&to.copy_ref_from(from, &index_ref(tag))?),
        Err(cfs_images::Error::NotFound { .. }) => {
            to.remove_stream_ref(&index_ref(tag))?;
        }
        Err(e) => return Err(e.into()),
    }
    stats.add(&to.copy_ref_from(from, &tag_ref(tag))?);
    Ok(stats)
}

/// Removes the tag `name` (and its index); `repo gc` then reclaims what
/// only it kept.
pub fn untag<H: FsVerityDigest>(repo: &Repository<H>, name: &str) -> Result<(), CatalogError> {
    if repo.remove_stream_ref(&tag_ref(name))? {
        repo.remove_stream_ref(&index_ref(name))?;
        Ok(())
    } else {
        Err(CatalogError::NoSuchTag(name.to_owned()))
    }
}

fn open_tagged<H: FsVerityDigest>(
    repo: &Repository<H>,
    tag: &str,
) -> Result<(H, SplitStream<H>), CatalogError> {
    repo.open_stream(&format!("refs/{}", tag_ref(tag)))
        .map_err(|e| match e {
            cfs_images::Error::NotFound { .. } => CatalogError::NoSuchTag(tag.to_owned()),
            e => e.into(),
        })
}

/// The bytes a small stream (manifest, config) reassembles to.
fn contents<H: FsVerityDigest>(
    repo: &Repository<H>,
    stream: &SplitStream<H>,
) -> Result<Vec<u8>, CatalogError> {
    let mut out = Vec::new();
    stream
        .reassemble(
            |digest| repo.open_object(digest).map_err(std::io::Error::other),
            &mut out,
        )
        .map_err(|source| cfs_images::Error::SplitStream {
            name: "(image metadata)".to_owned(),
            source,
        })?;
    Ok(out)
}
