//! Writing small OCI image layouts by hand, for tests that fetch or pull
//! images without any registry or network.
//!
//! [`write_layout`] takes in-memory layers (tar bytes plus how to compress
//! them) for one or more platforms and writes `oci-layout`, `index.json`
//! and `blobs/sha256/*` exactly as the OCI image layout spec describes; it
//! returns every digest and every byte it wrote, so a test can compare
//! what a fetcher reads with what is on disk. With several images the
//! tagged `index.json` entry points at an image index, as `skopeo copy
//! --all` writes it. [`tar_archive`] builds the layer tars.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use sha2::{Digest as _, Sha256};

/// The annotation that names an image in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The media type of an OCI image manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The media type of an OCI image index.
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// The media type of an OCI image config.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";

/// How a layer's tar is stored as a blob.
#[derive(Debug, Clone)]
pub enum LayerBlob {
    /// The tar as is (`...tar`).
    Plain,
    /// gzip, one member (`...tar+gzip`).
    Gzip,
    /// gzip, the tar split into two concatenated members, as parallel
    /// compressors write (`...tar+gzip`).
    GzipTwoMembers,
    /// zstd (`...tar+zstd`).
    Zstd,
    /// These exact bytes with this media type, whatever the tar is: for
    /// broken layers (truncated streams, content that does not match the
    /// diff_id computed from the tar).
    Custom {
        /// The media type to write in the manifest.
        media_type: String,
        /// The blob.
        blob: Vec<u8>,
    },
}

/// One layer to write.
#[derive(Debug, Clone)]
pub struct LayerSpec {
    /// The uncompressed tar; its sha256 is the diff_id in the config.
    pub tar: Vec<u8>,
    /// How it is stored.
    pub blob: LayerBlob,
}

/// One image (one platform) to write.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// `os` in the config and index.
    pub os: String,
    /// `architecture` in the config and index (Go's name: `amd64`).
    pub architecture: String,
    /// `variant`, if any.
    pub variant: Option<String>,
    /// The layers, bottom first.
    pub layers: Vec<LayerSpec>,
}

impl ImageSpec {
    /// A `linux/ARCH` image with these layers.
    pub fn linux(architecture: &str, layers: Vec<LayerSpec>) -> Self {
        ImageSpec {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
            layers,
        }
    }
}

/// A blob as written: its `sha256:` digest and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// `sha256:<hex>`.
    pub digest: String,
    /// The bytes in `blobs/sha256/<hex>`.
    pub bytes: Vec<u8>,
}

/// A layer as written.
#[derive(Debug, Clone)]
pub struct WrittenLayer {
    /// The stored blob (compressed unless `Plain`).
    pub blob: Blob,
    /// The media type in the manifest.
    pub media_type: String,
    /// `sha256:` of the uncompressed tar, as in the config's diff_ids.
    pub diff_id: String,
    /// The uncompressed tar.
    pub tar: Vec<u8>,
}

/// An image as written.
#[derive(Debug, Clone)]
pub struct WrittenImage {
    /// `os/architecture[/variant]`.
    pub platform: String,
    /// The manifest blob.
    pub manifest: Blob,
    /// The config blob.
    pub config: Blob,
    /// The layers, bottom first.
    pub layers: Vec<WrittenLayer>,
}

/// A layout as written.
#[derive(Debug, Clone)]
pub struct WrittenLayout {
    /// The tag in `index.json`.
    pub tag: String,
    /// The image index blob, when more than one image was written.
    pub index: Option<Blob>,
    /// The images, in the order given.
    pub images: Vec<WrittenImage>,
}

impl WrittenLayout {
    /// The image written for `platform` (`os/arch[/variant]`).
    pub fn image(&self, platform: &str) -> Option<&WrittenImage> {
        self.images.iter().find(|i| i.platform == platform)
    }
}

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn gzip(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data)?;
    encoder.finish()
}

fn write_blob(dir: &Path, bytes: Vec<u8>) -> io::Result<Blob> {
    let digest = sha256_digest(&bytes);
    let hex = digest.trim_start_matches("sha256:");
    fs::write(dir.join("blobs/sha256").join(hex), &bytes)?;
    Ok(Blob { digest, bytes })
}

fn descriptor(media_type: &str, blob: &Blob) -> serde_json::Value {
    serde_json::json!({
        "mediaType": media_type,
        "digest": blob.digest,
        "size": blob.bytes.len(),
    })
}

fn write_layer(dir: &Path, layer: &LayerSpec) -> io::Result<WrittenLayer> {
    const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    let (media_type, bytes) = match &layer.blob {
        LayerBlob::Plain => (TAR.to_owned(), layer.tar.clone()),
        LayerBlob::Gzip => (format!("{TAR}+gzip"), gzip(&layer.tar)?),
        LayerBlob::GzipTwoMembers => {
            let (first, second) = layer.tar.split_at(layer.tar.len() / 2);
            let mut both = gzip(first)?;
            both.extend(gzip(second)?);
            (format!("{TAR}+gzip"), both)
        }
        LayerBlob::Zstd => (
            format!("{TAR}+zstd"),
            zstd::stream::encode_all(&layer.tar[..], 3)?,
        ),
        LayerBlob::Custom { media_type, blob } => (media_type.clone(), blob.clone()),
    };
    Ok(WrittenLayer {
        blob: write_blob(dir, bytes)?,
        media_type,
        diff_id: sha256_digest(&layer.tar),
        tar: layer.tar.clone(),
    })
}

fn platform_json(image: &ImageSpec) -> serde_json::Value {
    let mut platform = serde_json::json!({
        "architecture": image.architecture,
        "os": image.os,
    });
    if let Some(variant) = &image.variant {
        platform["variant"] = variant.clone().into();
    }
    platform
}

fn write_image(dir: &Path, image: &ImageSpec) -> io::Result<WrittenImage> {
    let layers = image
        .layers
        .iter()
        .map(|layer| write_layer(dir, layer))
        .collect::<io::Result<Vec<_>>>()?;
    let mut config = platform_json(image);
    config["created"] = "2024-01-01T00:00:00Z".into();
    config["config"] = serde_json::json!({"Env": ["PATH=/usr/bin:/bin"]});
    config["rootfs"] = serde_json::json!({
        "type": "layers",
        "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
    });
    let config = write_blob(dir, serde_json::to_vec_pretty(&config)?)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": descriptor(CONFIG_MEDIA_TYPE, &config),
        "layers": layers
            .iter()
            .map(|l| descriptor(&l.media_type, &l.blob))
            .collect::<Vec<_>>(),
    });
    let manifest = write_blob(dir, serde_json::to_vec_pretty(&manifest)?)?;
    let mut platform = format!("{}/{}", image.os, image.architecture);
    if let Some(variant) = &image.variant {
        platform = format!("{platform}/{variant}");
    }
    Ok(WrittenImage {
        platform,
        manifest,
        config,
        layers,
    })
}

/// Writes an OCI layout into `dir` (created if missing) holding `images`
/// under `tag`: one image is tagged directly, several go through an image
/// index with one platform entry each.
pub fn write_layout(dir: &Path, tag: &str, images: &[ImageSpec]) -> io::Result<WrittenLayout> {
    fs::create_dir_all(dir.join("blobs/sha256"))?;
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let written = images
        .iter()
        .map(|image| write_image(dir, image))
        .collect::<io::Result<Vec<_>>>()?;
    let (entry, index) = match written.as_slice() {
        [only] => (descriptor(MANIFEST_MEDIA_TYPE, &only.manifest), None),
        _ => {
            let manifests: Vec<_> = images
                .iter()
                .zip(&written)
                .map(|(spec, image)| {
                    let mut entry = descriptor(MANIFEST_MEDIA_TYPE, &image.manifest);
                    entry["platform"] = platform_json(spec);
                    entry
                })
                .collect();
            let index = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": INDEX_MEDIA_TYPE,
                "manifests": manifests,
            });
            let index = write_blob(dir, serde_json::to_vec_pretty(&index)?)?;
            (descriptor(INDEX_MEDIA_TYPE, &index), Some(index))
        }
    };
    let mut entry = entry;
    entry["annotations"] = serde_json::json!({ REF_NAME: tag });
    let top = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [entry],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec_pretty(&top)?)?;
    Ok(WrittenLayout {
        tag: tag.to_owned(),
        index,
        images: written,
    })
}

/// A tar archive of regular files (`path`, `content`), directories for
/// paths ending in `/`, all owned by root with a fixed mtime.
pub fn tar_archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, content) in entries {
        let mut header = tar::Header::new_ustar();
        header.set_mtime(1_700_000_000);
        header.set_uid(0);
        header.set_gid(0);
        if path.ends_with('/') {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            builder
                .append_data(&mut header, path, io::empty())
                .expect("writing a tar into memory");
        } else {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_size(content.len() as u64);
            builder
                .append_data(&mut header, path, *content)
                .expect("writing a tar into memory");
        }
    }
    builder.into_inner().expect("finishing a tar in memory")
}
