//! Getting an image's manifest, config and layer blobs from any transport.
//!
//! [`Source::open`] takes an image reference as skopeo writes it
//! (`docker://`, `oci:`, `oci-archive:`, `docker-archive:`,
//! `containers-storage:`, `dir:`), resolves an image index to one manifest
//! for a platform (the host's unless [`FetchOptions::platform`] names
//! another), and fetches and verifies the manifest. The config is fetched
//! when first asked for, so that a caller which already has the image
//! fetches nothing but the manifest. Layers are
//! then streamed with [`Source::open_layer`] (the compressed blob) or
//! [`Source::open_layer_tar`] (the uncompressed tar, checked against its
//! `diff_id` as well).
//!
//! Two backends sit behind [`Source`]:
//! - `oci:DIR[:TAG]` layouts are read directly, fd-relative, without
//!   starting any process: they are the local, common case.
//! - Everything else goes through skopeo's image proxy, which knows every
//!   transport and the system's registry configuration.
//!
//! The API is blocking. The skopeo backend is async inside (its client
//! crate is tokio-based) and owns a small runtime, so these calls must
//! come from plain threads, not from inside an async runtime (use
//! `spawn_blocking` there). [`Source`] is `Sync`: open several layers from
//! several threads at once. With skopeo, each concurrently streaming layer
//! uses its own proxy process, up to [`FetchOptions::max_parallel`];
//! opening more waits until a stream ends, so a thread should finish or
//! drop one layer stream before opening the next.
//!
//! [`Source::stats`] counts what was fetched, so that "fetched nothing
//! again" can be shown rather than assumed.
//!
//! Trust: every blob is checked against the digest that names it.
//! Manifests and configs are checked whole before they are returned;
//! layer streams check at end of file, so a consumer that stops early
//! must call [`VerifyingReader::finish`]. One exception: when the source's
//! manifest is not OCI (Docker schema 2, `docker-archive:`), skopeo hands
//! us its OCI translation (and the config's), which cannot hash to the
//! original digests; [`FetchedManifest::converted`] says so, and for those
//! two documents we rely on skopeo.

pub mod decompress;
mod ocidir;
pub mod platform;
mod proxy;
pub mod reference;
mod storage;
pub mod verify;

use std::io::Read;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use oci_spec::image::{Descriptor, Digest, ImageIndex, ImageManifest, MediaType};

/// The OCI types this API speaks (the version skopeo's proxy client uses).
pub use oci_spec;

pub use decompress::{decompress, Compression, DecompressError};
pub use ocidir::MAX_METADATA_SIZE;
pub use platform::Platform;
pub use reference::{ImageReference, Transport};
pub use verify::{VerifyError, VerifyingReader};

/// Everything that can go wrong opening an image or a layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The image reference cannot be used.
    #[error(transparent)]
    InvalidReference(#[from] reference::InvalidReference),
    /// A file of an `oci:` layout could not be read.
    #[error("reading {file} in OCI layout {}: {source}", layout.display())]
    Layout {
        /// The layout directory.
        layout: PathBuf,
        /// The file inside it.
        file: String,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The tag is not in the layout's `index.json`.
    #[error("no image tagged {tag:?} in OCI layout {}", layout.display())]
    TagNotFound {
        /// The layout directory.
        layout: PathBuf,
        /// The tag asked for.
        tag: String,
    },
    /// No tag was given and the layout does not hold exactly one image.
    #[error("OCI layout {} holds {count} images: name one with oci:DIR:TAG", layout.display())]
    AmbiguousLayout {
        /// The layout directory.
        layout: PathBuf,
        /// How many entries `index.json` has.
        count: usize,
    },
    /// A metadata blob is larger than we read into memory.
    #[error("{what} of {size} bytes is larger than the limit of {MAX_METADATA_SIZE}")]
    TooLarge {
        /// Which blob.
        what: &'static str,
        /// Its size.
        size: u64,
    },
    /// A JSON document did not parse.
    #[error("parsing {what}: {source}")]
    Json {
        /// The document, with its digest when known.
        what: String,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A digest that is malformed or cannot name a file.
    #[error("unusable digest {digest:?}")]
    BadDigest {
        /// The digest text.
        digest: String,
    },
    /// Content does not match its digest or size.
    #[error("checking the {what}: {source}")]
    Verify {
        /// The manifest, config or blob checked.
        what: &'static str,
        /// The mismatch.
        #[source]
        source: VerifyError,
    },
    /// A blob has a media type we cannot handle where it is used.
    #[error("unsupported media type {media_type} for the {what}")]
    UnsupportedMediaType {
        /// What the blob is used as.
        what: &'static str,
        /// Its media type.
        media_type: MediaType,
    },
    /// The index has no image for the requested platform.
    #[error(transparent)]
    NoMatchingPlatform(#[from] platform::NoMatchingPlatform),
    /// skopeo could not be started.
    #[error("running skopeo (is it installed?): {source}")]
    SkopeoSpawn {
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// `skopeo inspect --raw` failed.
    #[error("skopeo inspect --raw {reference} failed ({status}): {stderr}")]
    SkopeoInspect {
        /// The image reference.
        reference: String,
        /// skopeo's exit status.
        status: std::process::ExitStatus,
        /// What skopeo printed on standard error.
        stderr: String,
    },
    /// The skopeo image proxy reported an error.
    #[error("skopeo image proxy: {operation} {reference}: {source}")]
    Proxy {
        /// What we were doing.
        operation: &'static str,
        /// The image reference.
        reference: String,
        /// The proxy client's error.
        #[source]
        source: containers_image_proxy::Error,
    },
    /// skopeo served another manifest than the index entry we chose.
    #[error(
        "skopeo served manifest {actual} for {reference}, expected {expected}: \
         did the image change while we opened it?"
    )]
    ManifestChanged {
        /// The image reference.
        reference: String,
        /// The digest we chose from the index (or hashed from the manifest).
        expected: Digest,
        /// The digest skopeo reported.
        actual: Digest,
    },
    /// skopeo's list of a `containers-storage:` image's layers is unusable.
    #[error("listing the layers of {reference}: {reason}")]
    LayerInfo {
        /// The image reference.
        reference: String,
        /// What is wrong.
        reason: String,
    },
    /// Reading a blob's data from skopeo failed.
    #[error("reading a blob of {reference} from skopeo: {source}")]
    ProxyRead {
        /// The image reference.
        reference: String,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The async runtime for skopeo could not be started.
    #[error("starting the async runtime for skopeo: {source}")]
    Runtime {
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// Reading an image from a containers-storage store.
    #[error(transparent)]
    Store(#[from] crate::cstor::CstorError),
    /// The task streaming a blob from skopeo ended without a word.
    #[error("the task fetching a blob from skopeo ended unexpectedly")]
    ProxyTaskLost,
}

/// How to open an image.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FetchOptions {
    /// Skip TLS certificate verification for registries, and allow plain
    /// HTTP (skopeo's `--tls-verify=false`).
    pub insecure_tls: bool,
    /// The platform to choose from an image index; the host's if `None`.
    /// Ignored for images that are not an index.
    pub platform: Option<Platform>,
    /// How many layers may stream from skopeo at once (one proxy process
    /// each). Defaults to the number of CPUs.
    pub max_parallel: NonZeroUsize,
    /// The containers-storage graphroot for `containers-storage:`
    /// references that name none; `storage.conf`'s if `None`.
    pub storage_root: Option<PathBuf>,
    /// Read `containers-storage:` through skopeo rather than straight
    /// from the store.
    pub via_skopeo: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            insecure_tls: false,
            platform: None,
            max_parallel: std::thread::available_parallelism()
                .unwrap_or(NonZeroUsize::MIN)
                .saturating_mul(NonZeroUsize::new(3).unwrap()),
            storage_root: None,
            via_skopeo: false,
        }
    }
}

/// The image's manifest.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// The digest naming the manifest at its source (the index entry's
    /// digest for a multi-platform image).
    pub digest: Digest,
    /// The manifest's JSON, as stored at the source unless `converted`.
    pub raw: Vec<u8>,
    /// The parsed manifest.
    pub manifest: ImageManifest,
    /// Whether `raw` is skopeo's OCI translation of a manifest in another
    /// format, so that it does not hash to `digest`.
    pub converted: bool,
}

/// A small blob (index, config) with its digest, already verified.
#[derive(Debug, Clone)]
pub struct RawBlob {
    /// The digest of `raw`.
    pub digest: Digest,
    /// The blob's bytes.
    pub raw: Vec<u8>,
}

/// A compressed layer blob stream; it fails at end of file unless the blob
/// matched its descriptor's digest and size.
pub type Layer = VerifyingReader<Box<dyn Read + Send>>;

/// An uncompressed layer tar stream; it fails at end of file unless both
/// the blob and the tar matched their digests (descriptor and `diff_id`).
pub type LayerTar<'a> = VerifyingReader<Box<dyn Read + Send + 'a>>;

#[derive(Debug)]
enum Backend {
    Layout(ocidir::Layout),
    Skopeo(proxy::ProxySource),
    Store(storage::StoreSource),
}

/// An opened image: manifest and index fetched and verified; config and
/// layers on demand.
#[derive(Debug)]
pub struct Source {
    reference: ImageReference,
    backend: Backend,
    manifest: FetchedManifest,
    index: Option<RawBlob>,
    config: OnceLock<RawBlob>,
    counters: Arc<Counters>,
}

/// What a [`Source`] has fetched so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FetchStats {
    /// Manifests, indexes and configs fetched.
    pub documents: u64,
    /// Layer blobs opened.
    pub layers: u64,
    /// Bytes of layer blobs read, as the source stores them.
    pub layer_bytes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    documents: AtomicU64,
    layers: AtomicU64,
    layer_bytes: AtomicU64,
}

/// Whether a descriptor with this media type points at an image manifest
/// (OCI or Docker schema 2).
pub(crate) fn is_image_manifest(media_type: &MediaType) -> bool {
    match media_type {
        MediaType::ImageManifest => true,
        MediaType::Other(other) => other == "application/vnd.docker.distribution.manifest.v2+json",
        _ => false,
    }
}

/// Whether this media type is an image index (OCI or Docker list).
fn is_index(media_type: &str) -> bool {
    media_type == "application/vnd.oci.image.index.v1+json"
        || media_type == "application/vnd.docker.distribution.manifest.list.v2+json"
}

fn parse_json<T: serde::de::DeserializeOwned>(
    raw: &[u8],
    what: &str,
    digest: &Digest,
) -> Result<T, FetchError> {
    serde_json::from_slice(raw).map_err(|source| FetchError::Json {
        what: format!("{what} {digest}"),
        source,
    })
}

/// What the top-level document of a skopeo source is.
enum TopLevel {
    /// An image index.
    Index(Box<ImageIndex>),
    /// A manifest; not OCI if `translated` (skopeo will translate it).
    Manifest { translated: bool },
}

/// Classifies the top-level document by its media type, or failing that
/// (the field is optional in OCI) by having `manifests`.
fn parse_top_level(raw: &[u8], digest: &Digest) -> Result<TopLevel, FetchError> {
    let value: serde_json::Value = parse_json(raw, "top-level manifest", digest)?;
    let media_type = value.get("mediaType").and_then(|m| m.as_str());
    let index = match media_type {
        Some(media_type) => is_index(media_type),
        None => value.get("manifests").is_some(),
    };
    if index {
        return parse_json(raw, "image index", digest).map(|i| TopLevel::Index(Box::new(i)));
    }
    let translated = media_type.is_some_and(|m| m != MediaType::ImageManifest.as_ref());
    Ok(TopLevel::Manifest { translated })
}

impl Source {
    /// Opens the image named by `reference` (`TRANSPORT:DETAILS`).
    pub fn open(reference: &str, options: &FetchOptions) -> Result<Source, FetchError> {
        Source::open_reference(reference.parse()?, options)
    }

    /// Opens an already parsed image reference.
    pub fn open_reference(
        reference: ImageReference,
        options: &FetchOptions,
    ) -> Result<Source, FetchError> {
        let wanted = options.platform.clone().unwrap_or_else(Platform::host);
        let (backend, manifest, index) = match &reference {
            ImageReference::OciDir { path, tag } => open_layout(path, tag.as_deref(), &wanted)?,
            ImageReference::Skopeo {
                transport: Transport::ContainersStorage,
                reference,
            } if !options.via_skopeo => {
                let details = &reference[Transport::ContainersStorage.prefix().len()..];
                let (store, manifest) = storage::StoreSource::open(details, options)?;
                (Backend::Store(store), manifest, None)
            }
            ImageReference::Skopeo { reference, .. } => open_skopeo(reference, options, &wanted)?,
        };
        let documents = 1 + u64::from(index.is_some());
        Ok(Source {
            reference,
            backend,
            manifest,
            index,
            config: OnceLock::new(),
            counters: Arc::new(Counters {
                documents: documents.into(),
                ..Counters::default()
            }),
        })
    }

    /// The reference this image was opened from.
    pub fn reference(&self) -> &ImageReference {
        &self.reference
    }

    /// The image's manifest (for an index: the chosen platform's).
    pub fn manifest(&self) -> &FetchedManifest {
        &self.manifest
    }

    /// The image index the manifest was chosen from, if the image has one.
    pub fn index(&self) -> Option<&RawBlob> {
        self.index.as_ref()
    }

    /// The image's config blob, verified against the manifest; fetched on
    /// the first call.
    pub fn config(&self) -> Result<&RawBlob, FetchError> {
        if let Some(config) = self.config.get() {
            return Ok(config);
        }
        let manifest = &self.manifest.manifest;
        let raw = match &self.backend {
            Backend::Layout(layout) => layout.read_blob(manifest.config())?,
            Backend::Skopeo(proxy) => proxy.fetch_config(manifest, self.manifest.converted)?,
            Backend::Store(store) => store.config(manifest)?,
        };
        self.counters.documents.fetch_add(1, Ordering::Relaxed);
        let config = checked_config(manifest, raw)?;
        if let (Backend::Skopeo(proxy), ImageReference::Skopeo { transport, .. }) =
            (&self.backend, &self.reference)
        {
            if *transport == Transport::ContainersStorage {
                proxy.serve_diff_ids(manifest, &config.raw)?;
            }
        }
        // Threads racing here fetched the same verified bytes.
        Ok(self.config.get_or_init(|| config))
    }

    /// What this source has fetched so far.
    pub fn stats(&self) -> FetchStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        FetchStats {
            documents: load(&self.counters.documents),
            layers: load(&self.counters.layers),
            layer_bytes: load(&self.counters.layer_bytes),
        }
    }

    /// What the source serves for a layer of the manifest, and whether
    /// its size is known: the layer itself, except for
    /// `containers-storage:`, which holds layers only uncompressed and
    /// serves the tar named by its diff_id, of unknown size (known once
    /// the config is).
    fn served_layer<'a>(
        &'a self,
        descriptor: &'a Descriptor,
    ) -> Result<(&'a Descriptor, bool), FetchError> {
        self.config()?;
        Ok(match &self.backend {
            Backend::Layout(_) => (descriptor, true),
            Backend::Skopeo(proxy) => proxy.served(descriptor),
            Backend::Store(store) => store.served(&self.manifest.manifest, descriptor),
        })
    }

    /// Streams a layer blob as the source stores it, checked against its
    /// digest and size: the compressed blob the manifest names, except for
    /// `containers-storage:`, which holds layers only uncompressed and
    /// serves the tar, checked against its diff_id
    /// ([`VerifyingReader::digest`] tells which). Call
    /// [`VerifyingReader::finish`] if you stop reading before end of file.
    pub fn open_layer(&self, descriptor: &Descriptor) -> Result<Layer, FetchError> {
        let (served, size_known) = self.served_layer(descriptor)?;
        let inner = match &self.backend {
            Backend::Layout(layout) => layout.open_blob(served)?,
            Backend::Skopeo(proxy) => Box::new(proxy.open_blob(served, size_known)?),
            Backend::Store(store) => {
                Box::new(store.open_layer(&self.manifest.manifest, descriptor)?)
            }
        };
        self.counters.layers.fetch_add(1, Ordering::Relaxed);
        let counters = Arc::clone(&self.counters);
        let counted: Box<dyn Read + Send> = Box::new(Observed {
            inner,
            observe: move |n| {
                counters.layer_bytes.fetch_add(n, Ordering::Relaxed);
            },
        });
        let size = size_known.then_some(served.size());
        VerifyingReader::new(counted, served.digest().clone(), size).map_err(|source| {
            FetchError::Verify {
                what: "layer",
                source,
            }
        })
    }

    /// For an image read straight from a containers-storage store: the
    /// layer's tar, rebuilt so that its files can be reflinked rather
    /// than read as bytes. The caller must check it with
    /// [`RebuiltLayer::finish`] against the diff_id before using what it
    /// stored. `None` for every other source.
    ///
    /// [`RebuiltLayer::finish`]: crate::cstor::RebuiltLayer::finish
    pub fn open_store_layer(
        &self,
        descriptor: &Descriptor,
    ) -> Result<Option<crate::cstor::RebuiltLayer>, FetchError> {
        let Backend::Store(store) = &self.backend else {
            return Ok(None);
        };
        let layer = store.open_layer(&self.manifest.manifest, descriptor)?;
        self.counters.layers.fetch_add(1, Ordering::Relaxed);
        Ok(Some(layer))
    }

    /// Counts `bytes` of layers read outside [`Source::open_layer`].
    pub fn count_layer_bytes(&self, bytes: u64) {
        self.counters
            .layer_bytes
            .fetch_add(bytes, Ordering::Relaxed);
    }

    /// Streams a layer as its uncompressed tar, checked against `diff_id`
    /// (from the config's `rootfs.diff_ids`) as well as the blob digest.
    pub fn open_layer_tar(
        &self,
        descriptor: &Descriptor,
        diff_id: &Digest,
    ) -> Result<LayerTar<'static>, FetchError> {
        self.open_layer_tar_observed(descriptor, diff_id, |_| ())
    }

    /// [`Source::open_layer_tar`], calling `observe` with the number of
    /// blob bytes (as the source stores them) each read consumed: for
    /// progress displays.
    pub fn open_layer_tar_observed<'a>(
        &self,
        descriptor: &Descriptor,
        diff_id: &Digest,
        observe: impl FnMut(u64) + Send + 'a,
    ) -> Result<LayerTar<'a>, FetchError> {
        // A blob that hashes to its diff_id is the tar itself, whatever its
        // media type says: `docker-archive:` stores layers uncompressed,
        // and skopeo's translation of its manifest still calls them gzip.
        let (served, _) = self.served_layer(descriptor)?;
        let compression = if served.digest() == diff_id {
            Compression::None
        } else {
            Compression::from_media_type(served.media_type()).ok_or_else(|| {
                FetchError::UnsupportedMediaType {
                    what: "layer",
                    media_type: served.media_type().clone(),
                }
            })?
        };
        let blob = Observed {
            inner: self.open_layer(descriptor)?,
            observe,
        };
        let tar = decompress::decompress_as(compression, blob);
        VerifyingReader::new(tar, diff_id.clone(), None).map_err(|source| FetchError::Verify {
            what: "layer diff_id",
            source,
        })
    }
}

/// Tells an observer how many bytes each read returned.
struct Observed<R, F> {
    inner: R,
    observe: F,
}

impl<R: Read, F: FnMut(u64)> Read for Observed<R, F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.observe)(n as u64);
        Ok(n)
    }
}

type Opened = (Backend, FetchedManifest, Option<RawBlob>);

/// The config blob named by the manifest, verified.
fn checked_config(manifest: &ImageManifest, raw: Vec<u8>) -> Result<RawBlob, FetchError> {
    let descriptor = manifest.config();
    verify::check_bytes(&raw, descriptor.digest(), Some(descriptor.size())).map_err(|source| {
        FetchError::Verify {
            what: "config",
            source,
        }
    })?;
    Ok(RawBlob {
        digest: descriptor.digest().clone(),
        raw,
    })
}

fn open_layout(path: &Path, tag: Option<&str>, wanted: &Platform) -> Result<Opened, FetchError> {
    let layout = ocidir::Layout::open(path)?;
    let (_, top) = layout.top_index()?;
    let entry = layout.find(&top, tag)?;
    let (index, chosen) = if is_index(entry.media_type().as_ref()) {
        let raw = layout.read_blob(entry)?;
        let parsed: ImageIndex = parse_json(&raw, "image index", entry.digest())?;
        let chosen = platform::choose(&parsed, wanted)?.clone();
        let index = RawBlob {
            digest: entry.digest().clone(),
            raw,
        };
        (Some(index), chosen)
    } else if is_image_manifest(entry.media_type()) {
        (None, entry.clone())
    } else {
        return Err(FetchError::UnsupportedMediaType {
            what: "image in index.json",
            media_type: entry.media_type().clone(),
        });
    };
    let raw = layout.read_blob(&chosen)?;
    let parsed: ImageManifest = parse_json(&raw, "manifest", chosen.digest())?;
    let manifest = FetchedManifest {
        digest: chosen.digest().clone(),
        raw,
        manifest: parsed,
        converted: false,
    };
    Ok((Backend::Layout(layout), manifest, index))
}

fn open_skopeo(
    reference: &str,
    options: &FetchOptions,
    wanted: &Platform,
) -> Result<Opened, FetchError> {
    let top_raw = proxy::inspect_raw(reference, options.insecure_tls)?;
    let top_digest = verify::sha256_digest(&top_raw);
    let (index, platform, expected) = match parse_top_level(&top_raw, &top_digest)? {
        TopLevel::Index(parsed) => {
            let entry = platform::choose(&parsed, wanted)?;
            let expected = proxy::Expected {
                digest: entry.digest().clone(),
                translated: *entry.media_type() != MediaType::ImageManifest,
            };
            let index = RawBlob {
                digest: top_digest,
                raw: top_raw,
            };
            (Some(index), Platform::of_descriptor(entry), expected)
        }
        TopLevel::Manifest { translated } => {
            let expected = proxy::Expected {
                digest: top_digest,
                translated,
            };
            (None, None, expected)
        }
    };
    let (source, opened) = proxy::ProxySource::open(
        reference,
        options.insecure_tls,
        platform,
        options.max_parallel.get(),
        &expected,
    )?;
    let manifest = FetchedManifest {
        digest: opened.digest,
        raw: opened.raw_manifest,
        manifest: opened.manifest,
        converted: opened.converted,
    };
    Ok((Backend::Skopeo(source), manifest, index))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(json: &str) -> TopLevel {
        let raw = json.as_bytes();
        parse_top_level(raw, &verify::sha256_digest(raw)).expect("valid JSON")
    }

    const ENTRY: &str = r#"{"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "size": 1, "platform": {"os": "linux", "architecture": "amd64"},
        "digest": "sha256:1111111111111111111111111111111111111111111111111111111111111111"}"#;

    #[test]
    fn top_level_documents_are_classified() {
        for media_type in [
            r#""mediaType": "application/vnd.oci.image.index.v1+json","#,
            r#""mediaType": "application/vnd.docker.distribution.manifest.list.v2+json","#,
            "",
        ] {
            let json = format!(r#"{{"schemaVersion": 2, {media_type} "manifests": [{ENTRY}]}}"#);
            assert!(
                matches!(classify(&json), TopLevel::Index(i) if i.manifests().len() == 1),
                "{json}"
            );
        }
        let config = r#""config": {"mediaType": "application/vnd.oci.image.config.v1+json",
            "size": 2, "digest": "sha256:2222222222222222222222222222222222222222222222222222222222222222"},
            "layers": []"#;
        for (media_type, translated) in [
            (
                r#""mediaType": "application/vnd.oci.image.manifest.v1+json","#,
                false,
            ),
            ("", false),
            (
                r#""mediaType": "application/vnd.docker.distribution.manifest.v2+json","#,
                true,
            ),
        ] {
            let json = format!(r#"{{"schemaVersion": 2, {media_type} {config}}}"#);
            assert!(
                matches!(classify(&json), TopLevel::Manifest { translated: t } if t == translated),
                "{json}"
            );
        }
        let raw = b"not json";
        assert!(parse_top_level(raw, &verify::sha256_digest(raw)).is_err());
    }

    #[test]
    fn manifest_media_types() {
        assert!(is_image_manifest(&MediaType::ImageManifest));
        assert!(is_image_manifest(&MediaType::Other(
            "application/vnd.docker.distribution.manifest.v2+json".into()
        )));
        assert!(!is_image_manifest(&MediaType::ImageIndex));
        assert!(!is_image_manifest(&MediaType::ImageConfig));
    }
}
