//! Pulling an image: layers to split streams, the merged tree to the plain
//! and boot EROFS images, then config, manifest and tag, in that order.
//!
//! The order is what makes a pull crash-safe: each step only names things
//! the previous steps stored and synced, and the tag, the only root GC
//! knows, moves last. A pull killed anywhere leaves the previous tag
//! intact and at worst unreferenced objects.

use std::path::Path;

use cfs_erofs::digest::FsVerityDigest;
use cfs_erofs::transform::{transform_for_oci, XattrFilter};
use cfs_images::splitstream::{
    boot_image_ref_key, image_ref_key, ContentType, SplitStream, SplitStreamWriter,
};
use cfs_images::Repository;
use oci_spec::image::ImageConfiguration;

use crate::cstor::{CstorError, ImportStats};
use crate::fetch::{FetchError, FetchOptions, FetchStats, Source};
use crate::merge::{merge_layers, Departure, MergeError};
use crate::read_ahead::read_ahead;
use crate::tar::{layer_entries, split_input, split_layer, TarError};

/// What can stop a pull.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PullError {
    /// Fetching from the source.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// A layer that is not a valid tar.
    #[error("layer {diff_id}: {source}")]
    Tar {
        /// The layer.
        diff_id: String,
        /// What is wrong.
        #[source]
        source: TarError,
    },
    /// A layer rebuilt from a containers-storage store that is not the
    /// layer its image names.
    #[error(transparent)]
    Store(#[from] CstorError),
    /// Layers that do not merge into a tree.
    #[error(transparent)]
    Merge(#[from] MergeError),
    /// The image config cannot be read.
    #[error("image config: {0}")]
    Config(String),
    /// The tree cannot become an image.
    #[error("building the image: {0}")]
    Image(String),
    /// The repository refused.
    #[error(transparent)]
    Repository(#[from] cfs_images::Error),
}

/// What a pull did.
#[derive(Debug)]
pub struct PullReport<H> {
    /// `sha256:...` of the manifest.
    pub manifest_digest: String,
    /// `sha256:...` of the config.
    pub config_digest: String,
    /// `sha256:...` of the image index the manifest was chosen from.
    pub index_digest: Option<String>,
    /// Layers fetched now.
    pub layers_fetched: usize,
    /// Layers the repository already had (same diff_id).
    pub layers_present: usize,
    /// Everything fetched from the source, counted.
    pub fetched: FetchStats,
    /// For an image read straight from a containers-storage store: how
    /// the files of its new layers got into the repository.
    pub store_import: Option<ImportStats>,
    /// The plain EROFS image.
    pub image: H,
    /// The boot EROFS image, or why there is none.
    pub boot_image: Result<H, String>,
    /// Where merging followed container engines rather than composefs-rs.
    pub departures: Vec<Departure>,
    /// The tag set.
    pub tag: String,
}

/// What a pull reports as it goes, for a progress display.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum PullEvent<'a> {
    /// The manifest is known: `fetch` of `total` layers are missing, with
    /// `bytes` in their blobs as the manifest gives them.
    Layers {
        /// Layers to fetch.
        fetch: usize,
        /// Layers in the image.
        total: usize,
        /// Bytes to fetch.
        bytes: u64,
    },
    /// A layer starts streaming.
    LayerStarted {
        /// Its diff_id.
        diff_id: &'a str,
        /// Its blob size from the manifest.
        size: u64,
    },
    /// More of a layer's blob was read.
    LayerRead {
        /// Its diff_id.
        diff_id: &'a str,
        /// Bytes read since the last event.
        bytes: u64,
    },
    /// A layer is stored.
    LayerDone {
        /// Its diff_id.
        diff_id: &'a str,
    },
    /// The layers are in; the EROFS images are being generated.
    GeneratingImages,
}

/// Receives [`PullEvent`]s, from several threads at once.
pub trait PullProgress: Sync {
    /// Called for each event.
    fn event(&self, event: PullEvent<'_>);
}

/// No display.
impl PullProgress for () {
    fn event(&self, _: PullEvent<'_>) {}
}

/// Where a tag lives below `streams/refs/`: `oci/<tag>` with `%` and `/`
/// escaped, as composefs-rs names them.
pub fn tag_ref(tag: &str) -> String {
    format!("oci/{}", escape_tag(tag))
}

/// Where the index a tag's manifest was chosen from lives below
/// `streams/refs/` (ours; the reference keeps no index).
pub fn index_ref(tag: &str) -> String {
    format!("oci-index/{}", escape_tag(tag))
}

fn escape_tag(tag: &str) -> String {
    tag.replace('%', "%25").replace('/', "%2F")
}

/// The stream name of a layer.
pub(crate) fn layer_id(diff_id: &str) -> String {
    format!("oci-layer-{diff_id}")
}

/// Reads policy files of the image from the repository, for SELinux
/// labelling of the boot image.
struct RepoContent<'a, H>(&'a Repository<H>);

impl<H: FsVerityDigest> cfs_boot::ContentSource<H> for RepoContent<'_, H> {
    fn read_external(&self, _path: &Path, digest: &H, _size: u64) -> std::io::Result<Vec<u8>> {
        self.0.read_object(digest).map_err(std::io::Error::other)
    }
}

/// Fetches one layer, splits it into the repository and stores its
/// stream under its diff_id; for a layer of a containers-storage store,
/// also says how its files were stored.
fn import_layer<H: FsVerityDigest>(
    repo: &Repository<H>,
    source: &Source,
    descriptor: &oci_spec::image::Descriptor,
    diff_id: &str,
    progress: &dyn PullProgress,
) -> Result<(H, Option<ImportStats>), PullError> {
    let expected: oci_spec::image::Digest = diff_id
        .parse()
        .map_err(|e| PullError::Config(format!("diff_id {diff_id}: {e}")))?;
    progress.event(PullEvent::LayerStarted {
        diff_id,
        size: descriptor.size(),
    });
    let tar_error = |source| PullError::Tar {
        diff_id: diff_id.to_owned(),
        source,
    };
    let (split, stats) = match source.open_store_layer(descriptor)? {
        Some(mut rebuilt) => {
            let split = split_input(repo, &mut rebuilt).map_err(tar_error)?;
            // Nothing names the objects until the stream is written, and
            // the stream is written only for the layer the diff_id names.
            let stats = rebuilt.finish(expected.as_ref())?;
            source.count_layer_bytes(stats.tar_bytes);
            progress.event(PullEvent::LayerRead {
                diff_id,
                bytes: stats.tar_bytes,
            });
            (split, Some(stats))
        }
        None => {
            let tar = source.open_layer_tar_observed(descriptor, &expected, |bytes| {
                progress.event(PullEvent::LayerRead { diff_id, bytes })
            })?;
            // Decompressing and checking on one thread, splitting and
            // hashing on this one.
            let split = std::thread::scope(|scope| split_layer(repo, read_ahead(scope, tar)))
                .map_err(tar_error)?;
            (split, None)
        }
    };
    let stream = repo.write_stream(&layer_id(diff_id), &split.stream_bytes, None)?;
    progress.event(PullEvent::LayerDone { diff_id });
    Ok((stream, stats))
}

/// The plain and boot images of an image whose manifest and config are
/// already stored complete, if they are (nothing fetched).
fn stored_images<H: FsVerityDigest>(
    repo: &Repository<H>,
    manifest_id: &str,
    config_digest: &str,
) -> Result<Option<Imported<H>>, PullError> {
    if repo.has_stream(manifest_id)?.is_none() {
        return Ok(None);
    }
    let Ok((_, stored)) = repo.open_stream(&format!("oci-config-{config_digest}")) else {
        return Ok(None);
    };
    let format = repo.format();
    Ok(stored
        .named_ref(image_ref_key(format))
        .map(|image| Imported {
            image: *image,
            boot_image: stored
                .named_ref(boot_image_ref_key(format))
                .copied()
                .ok_or_else(|| "not generated when first pulled".to_owned()),
            layers_fetched: 0,
            store_import: None,
            departures: Vec::new(),
        }))
}

/// Pulls `reference` into `repo` and tags it `tag` (default: the reference).
///
/// An image whose manifest is already stored complete costs one manifest
/// fetch: the config and layers are not fetched again.
pub fn pull<H: FsVerityDigest>(
    repo: &Repository<H>,
    reference: &str,
    tag: Option<&str>,
    options: &FetchOptions,
    progress: &dyn PullProgress,
) -> Result<PullReport<H>, PullError> {
    let source = Source::open(reference, options)?;
    let manifest = source.manifest();
    let tag = tag.unwrap_or(reference).to_owned();
    let manifest_digest = manifest.digest.to_string();
    let config_digest = manifest.manifest.config().digest().to_string();
    let manifest_id = format!("oci-manifest-{manifest_digest}");

    let layer_count = manifest.manifest.layers().len();
    let imported = match stored_images(repo, &manifest_id, &config_digest)? {
        Some(stored) => stored,
        None => import(repo, &source, &manifest_id, options, progress)?,
    };

    // The index, then the tag: both roots, each naming only complete
    // streams; `catalog::inspect` ignores an index that does not list the
    // tag's manifest (a pull stopped between the two).
    let index_digest = match source.index() {
        Some(index) => {
            let mut writer = SplitStreamWriter::<H>::new(ContentType::OCI_INDEX);
            let manifest_stream = repo
                .has_stream(&manifest_id)?
                .ok_or_else(|| PullError::Image("the manifest stream vanished".into()))?;
            writer
                .add_stream_ref(&format!("manifest:{manifest_digest}"), manifest_stream)
                .map_err(|e| PullError::Config(e.to_string()))?;
            writer.write_external(repo.ensure_object(&index.raw)?, index.raw.len() as u64);
            let index_id = format!("oci-index-{}", index.digest);
            repo.write_stream(&index_id, &writer.finish(), None)?;
            repo.name_stream(&index_id, &index_ref(&tag))?;
            Some(index.digest.to_string())
        }
        None => {
            repo.remove_stream_ref(&index_ref(&tag))?;
            None
        }
    };
    repo.name_stream(&manifest_id, &tag_ref(&tag))?;
    Ok(PullReport {
        manifest_digest,
        config_digest,
        index_digest,
        layers_fetched: imported.layers_fetched,
        layers_present: layer_count - imported.layers_fetched,
        fetched: source.stats(),
        store_import: imported.store_import,
        image: imported.image,
        boot_image: imported.boot_image,
        departures: imported.departures,
        tag,
    })
}

/// What [`import`] stored.
struct Imported<H> {
    image: H,
    boot_image: Result<H, String>,
    layers_fetched: usize,
    store_import: Option<ImportStats>,
    departures: Vec<Departure>,
}

/// Stores the missing layers, the two images, the config and the
/// manifest, in that order.
fn import<H: FsVerityDigest>(
    repo: &Repository<H>,
    source: &Source,
    manifest_id: &str,
    options: &FetchOptions,
    progress: &dyn PullProgress,
) -> Result<Imported<H>, PullError> {
    let manifest = source.manifest();
    let config = source.config()?;
    let config_digest = config.digest.to_string();
    let parsed = ImageConfiguration::from_reader(&config.raw[..])
        .map_err(|e| PullError::Config(e.to_string()))?;
    let diff_ids: Vec<String> = parsed.rootfs().diff_ids().to_vec();
    let layers = manifest.manifest.layers();
    if layers.len() != diff_ids.len() {
        return Err(PullError::Config(format!(
            "manifest has {} layers but config has {} diff_ids",
            layers.len(),
            diff_ids.len()
        )));
    }

    // Layers, skipping those already stored under their diff_id; the
    // missing ones are fetched and split in parallel.
    let mut layer_streams = Vec::with_capacity(layers.len());
    let mut missing = Vec::new();
    for (index, diff_id) in diff_ids.iter().enumerate() {
        let stored = repo.has_stream(&layer_id(diff_id))?;
        if stored.is_none() {
            missing.push(index);
        }
        layer_streams.push(stored);
    }
    progress.event(PullEvent::Layers {
        fetch: missing.len(),
        total: layers.len(),
        bytes: missing.iter().map(|&i| layers[i].size()).sum(),
    });
    let workers = options.max_parallel.get().min(missing.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let imported = std::sync::Mutex::new(Vec::with_capacity(missing.len()));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                use std::sync::atomic::Ordering::Relaxed;
                let Some(&index) = missing.get(next.fetch_add(1, Relaxed)) else {
                    break;
                };
                if failed.load(Relaxed) {
                    break;
                }
                let result = import_layer(repo, source, &layers[index], &diff_ids[index], progress);
                failed.fetch_or(result.is_err(), Relaxed);
                imported
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .push((index, result));
            });
        }
    });
    let mut imported = imported
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // The first failing layer in image order is the one reported.
    imported.sort_by_key(|(index, _)| *index);
    let mut store_import: Option<ImportStats> = None;
    for (index, result) in imported {
        let (stream, stats) = result?;
        if let Some(stats) = stats {
            store_import.get_or_insert_default().add(&stats);
        }
        layer_streams[index] = Some(stream);
    }
    let layer_streams: Vec<H> = layer_streams.into_iter().flatten().collect();
    if layer_streams.len() != diff_ids.len() {
        return Err(PullError::Image(
            "a layer import stopped without an error".into(),
        ));
    }

    // The merged tree and its two images.
    progress.event(PullEvent::GeneratingImages);
    let streams = diff_ids
        .iter()
        .map(|d| repo.open_stream(&layer_id(d)).map(|(_, s)| s))
        .collect::<Result<Vec<SplitStream<H>>, _>>()?;
    let merged = merge_layers(streams.iter().map(layer_entries))?;
    let mut fs = merged.fs;
    transform_for_oci(&mut fs, XattrFilter::AllowlistOnly)
        .map_err(|e| PullError::Image(e.to_string()))?;
    let format = repo.format();
    let plain =
        cfs_erofs::writer::mkfs(&fs, format).map_err(|e| PullError::Image(e.to_string()))?;
    let image = repo.write_image(&plain, None)?;
    let boot_image = match cfs_boot::transform_for_boot(&mut fs, &RepoContent(repo)) {
        Ok(()) => {
            let bytes = cfs_erofs::writer::mkfs(&fs, format)
                .map_err(|e| PullError::Image(e.to_string()))?;
            Ok(repo.write_image(&bytes, None)?)
        }
        // An image without /boot or /sysroot is not bootable; say so and
        // keep the plain image.
        Err(e) => Err(e.to_string()),
    };

    // Config: the original bytes, refs to its layers and its images.
    let mut writer = SplitStreamWriter::<H>::new(ContentType::OCI_CONFIG);
    let stream_ref = |w: &mut SplitStreamWriter<H>, name: &str, digest: H| {
        w.add_stream_ref(name, digest)
            .map_err(|e| PullError::Config(e.to_string()))
    };
    for (diff_id, digest) in diff_ids.iter().zip(&layer_streams) {
        stream_ref(&mut writer, diff_id, *digest)?;
    }
    stream_ref(&mut writer, image_ref_key(format), image)?;
    if let Ok(boot) = &boot_image {
        stream_ref(&mut writer, boot_image_ref_key(format), *boot)?;
    }
    writer.write_external(repo.ensure_object(&config.raw)?, config.raw.len() as u64);
    let config_stream = repo.write_stream(
        &format!("oci-config-{config_digest}"),
        &writer.finish(),
        None,
    )?;

    // Manifest: refs to the config and the layers.
    let mut writer = SplitStreamWriter::<H>::new(ContentType::OCI_MANIFEST);
    stream_ref(
        &mut writer,
        &format!("config:{config_digest}"),
        config_stream,
    )?;
    for (diff_id, digest) in diff_ids.iter().zip(&layer_streams) {
        stream_ref(&mut writer, diff_id, *digest)?;
    }
    writer.write_external(
        repo.ensure_object(&manifest.raw)?,
        manifest.raw.len() as u64,
    );
    repo.write_stream(manifest_id, &writer.finish(), None)?;
    Ok(Imported {
        image,
        boot_image,
        layers_fetched: missing.len(),
        store_import,
        departures: merged.departures,
    })
}
