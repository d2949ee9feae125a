//! The `containers-storage:` backend read straight from the store (see
//! [`crate::cstor`]): the manifest and config from the image's big data,
//! each layer as the tar rebuilt from its tar-split and its files.

use oci_spec::image::{Descriptor, Digest, ImageManifest, MediaType};

use super::{parse_json, FetchError, FetchOptions, FetchedManifest};
use crate::cstor::{default_store, RebuiltLayer, Store, StoreReference, StoredImage};

/// An image opened in a store.
#[derive(Debug)]
pub(super) struct StoreSource {
    image: StoredImage,
    /// What each manifest layer is served as: its uncompressed tar,
    /// named by the diff digest the store recorded.
    served: Vec<Descriptor>,
}

impl StoreSource {
    /// Opens the image `details` (what follows `containers-storage:`)
    /// in the store it names, else in `options.storage_root`, else in
    /// the default store.
    pub(super) fn open(
        details: &str,
        options: &FetchOptions,
    ) -> Result<(StoreSource, FetchedManifest), FetchError> {
        let reference: StoreReference = details.parse()?;
        let (root, driver) = match (&reference.graphroot, &options.storage_root) {
            (Some(root), _) | (None, Some(root)) => (root.clone(), None),
            (None, None) => default_store()?,
        };
        let driver = reference.driver.as_deref().or(driver.as_deref());
        let image = Store::open(&root, driver)?.image(&reference.image)?;
        let digest = super::verify::sha256_digest(&image.manifest);
        let manifest: ImageManifest = parse_json(&image.manifest, "manifest", &digest)?;
        if manifest.layers().len() != image.layers.len() {
            return Err(FetchError::Store(crate::cstor::CstorError::BadMetadata {
                image: image.id.clone(),
                reason: format!(
                    "the manifest lists {} layers, the store {}",
                    manifest.layers().len(),
                    image.layers.len()
                ),
            }));
        }
        let served = image
            .layers
            .iter()
            .map(|layer| {
                let digest = Digest::try_from(layer.diff_digest.as_str()).map_err(|_| {
                    FetchError::BadDigest {
                        digest: layer.diff_digest.clone(),
                    }
                })?;
                Ok(Descriptor::new(
                    MediaType::ImageLayer,
                    layer.diff_size.unwrap_or(0),
                    digest,
                ))
            })
            .collect::<Result<Vec<_>, FetchError>>()?;
        let fetched = FetchedManifest {
            digest,
            raw: image.manifest.clone(),
            manifest,
            converted: false,
        };
        Ok((StoreSource { image, served }, fetched))
    }

    /// The config blob, unverified (the caller checks it).
    pub(super) fn config(&self, manifest: &ImageManifest) -> Result<Vec<u8>, FetchError> {
        Ok(self.image.big_data(manifest.config().digest().as_ref())?)
    }

    fn index(&self, manifest: &ImageManifest, descriptor: &Descriptor) -> Option<usize> {
        manifest
            .layers()
            .iter()
            .position(|layer| layer.digest() == descriptor.digest())
    }

    /// What a manifest layer is served as, and whether its size is known.
    pub(super) fn served<'a>(
        &'a self,
        manifest: &ImageManifest,
        descriptor: &'a Descriptor,
    ) -> (&'a Descriptor, bool) {
        match self.index(manifest, descriptor) {
            Some(index) => {
                let served = &self.served[index];
                let known = self.image.layers[index].diff_size.is_some();
                (served, known)
            }
            None => (descriptor, true),
        }
    }

    /// The layer's tar, rebuilt.
    pub(super) fn open_layer(
        &self,
        manifest: &ImageManifest,
        descriptor: &Descriptor,
    ) -> Result<RebuiltLayer, FetchError> {
        let index = self.index(manifest, descriptor).ok_or_else(|| {
            FetchError::Store(crate::cstor::CstorError::BadMetadata {
                image: self.image.id.clone(),
                reason: format!("no layer {} in the manifest", descriptor.digest()),
            })
        })?;
        Ok(self.image.open_layer(index)?)
    }
}
