//! Pulling an image: layers to split streams, the merged tree to the plain
//! and boot EROFS images, then config, manifest and tag, in that order.
//!
//! The order is what makes a pull crash-safe: each step only names things
//! the previous steps stored and synced, and the tag, the only root GC
//! knows, moves last. A pull killed anywhere leaves the previous tag
//! intact and at worst unreferenced objects.

use std::path::Path;

use cfs_erofs::digest::FsVerityDigest;
use cfs_erofs::format::FormatVersion;
use cfs_erofs::transform::{transform_for_oci, XattrFilter};
use cfs_images::splitstream::{ContentType, SplitStream, SplitStreamWriter};
use cfs_images::Repository;
use oci_spec::image::ImageConfiguration;

use crate::fetch::{FetchError, FetchOptions, Source};
use crate::merge::{merge_layers, Departure, MergeError};
use crate::tar::{layer_entries, split_layer, TarError};

/// Named ref of a config stream to its plain EROFS image, by format epoch.
pub fn image_ref_key(format: FormatVersion) -> &'static str {
    if format.is_c_layout() {
        "composefs.image.v1"
    } else {
        "composefs.image"
    }
}

/// Named ref of a config stream to its boot EROFS image, by format epoch.
pub fn boot_image_ref_key(format: FormatVersion) -> &'static str {
    if format.is_c_layout() {
        "composefs.image.boot.v1"
    } else {
        "composefs.image.boot"
    }
}

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
    /// The layer's tar does not hash to the config's diff_id.
    #[error("layer tar hashes to {found}, but the config says {expected}")]
    DiffId {
        /// From the config.
        expected: String,
        /// What the bytes hash to.
        found: String,
    },
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
    /// Layers fetched now.
    pub layers_fetched: usize,
    /// Layers the repository already had (same diff_id).
    pub layers_present: usize,
    /// The plain EROFS image.
    pub image: H,
    /// The boot EROFS image, or why there is none.
    pub boot_image: Result<H, String>,
    /// Where merging followed container engines rather than composefs-rs.
    pub departures: Vec<Departure>,
    /// The tag set.
    pub tag: String,
}

/// Where a tag lives below `streams/refs/`: `oci/<tag>` with `%` and `/`
/// escaped, as composefs-rs names them.
pub fn tag_ref(tag: &str) -> String {
    format!("oci/{}", tag.replace('%', "%25").replace('/', "%2F"))
}

fn layer_id(diff_id: &str) -> String {
    format!("oci-layer-{diff_id}")
}

/// Reads policy files of the image from the repository, for SELinux
/// labelling of the boot image.
struct RepoPolicy<'a, H>(&'a Repository<H>);

impl<H: FsVerityDigest> cfs_boot::PolicySource<H> for RepoPolicy<'_, H> {
    fn read_external(&self, _path: &Path, digest: &H, _size: u64) -> std::io::Result<Vec<u8>> {
        self.0.read_object(digest).map_err(std::io::Error::other)
    }
}

/// Fetches one layer, splits it into the repository and stores its
/// stream under its diff_id.
fn import_layer<H: FsVerityDigest>(
    repo: &Repository<H>,
    source: &Source,
    descriptor: &oci_spec::image::Descriptor,
    diff_id: &str,
) -> Result<H, PullError> {
    let expected: oci_spec::image::Digest = diff_id
        .parse()
        .map_err(|e| PullError::Config(format!("diff_id {diff_id}: {e}")))?;
    let tar = source.open_layer_tar(descriptor, &expected)?;
    let split = split_layer(repo, tar).map_err(|source| PullError::Tar {
        diff_id: diff_id.to_owned(),
        source,
    })?;
    if split.diff_id != diff_id {
        return Err(PullError::DiffId {
            expected: diff_id.to_owned(),
            found: split.diff_id,
        });
    }
    Ok(repo.write_stream(&layer_id(diff_id), &split.stream_bytes, None)?)
}

/// Pulls `reference` into `repo` and tags it `tag` (default: the reference).
pub fn pull<H: FsVerityDigest>(
    repo: &Repository<H>,
    reference: &str,
    tag: Option<&str>,
    options: &FetchOptions,
) -> Result<PullReport<H>, PullError> {
    let source = Source::open(reference, options)?;
    let manifest = source.manifest();
    let config = source.config();
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

    let format = repo.format();
    let tag = tag.unwrap_or(reference).to_owned();
    let manifest_digest = manifest.digest.to_string();
    let config_digest = config.digest.to_string();
    let manifest_id = format!("oci-manifest-{manifest_digest}");

    // Already complete (its config names its image): only the tag moves.
    if repo.has_stream(&manifest_id)?.is_some() {
        if let Ok((_, stored)) = repo.open_stream(&format!("oci-config-{config_digest}")) {
            if let Some(image) = stored.named_ref(image_ref_key(format)).copied() {
                let boot_image = stored
                    .named_ref(boot_image_ref_key(format))
                    .copied()
                    .ok_or_else(|| "not generated when first pulled".to_owned());
                repo.name_stream(&manifest_id, &tag_ref(&tag))?;
                return Ok(PullReport {
                    manifest_digest,
                    config_digest,
                    layers_fetched: 0,
                    layers_present: diff_ids.len(),
                    image,
                    boot_image,
                    departures: Vec::new(),
                    tag,
                });
            }
        }
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
    let (fetched, present) = (missing.len(), diff_ids.len() - missing.len());
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
                let result = import_layer(repo, &source, &layers[index], &diff_ids[index]);
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
    for (index, result) in imported {
        layer_streams[index] = Some(result?);
    }
    let layer_streams: Vec<H> = layer_streams.into_iter().flatten().collect();
    if layer_streams.len() != diff_ids.len() {
        return Err(PullError::Image(
            "a layer import stopped without an error".into(),
        ));
    }

    // The merged tree and its two images.
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
    let boot_image = match cfs_boot::transform_for_boot(&mut fs, &RepoPolicy(repo)) {
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
    repo.write_stream(&manifest_id, &writer.finish(), None)?;

    // Last, the tag: the only root, so the image is complete before it.
    repo.name_stream(&manifest_id, &tag_ref(&tag))?;
    Ok(PullReport {
        manifest_digest,
        config_digest,
        layers_fetched: fetched,
        layers_present: present,
        image,
        boot_image,
        departures: merged.departures,
        tag,
    })
}
