//! A store's images and layers: finding an image, its big data, and the
//! chain of layers under it.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use base64::Engine;
use rustix::fs::{Mode, OFlags, ResolveFlags, CWD};
use sha2::{Digest as _, Sha256};

use super::{CstorError, RebuiltLayer};

/// Largest metadata file read into memory (images.json, layers.json,
/// manifests, configs).
const METADATA_MAX: u64 = 256 << 20;

/// Most layers followed from an image down to its base.
const CHAIN_MAX: usize = 4096;

/// The layouts we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Driver {
    Overlay,
    Vfs,
}

impl Driver {
    fn name(self) -> &'static str {
        match self {
            Driver::Overlay => "overlay",
            Driver::Vfs => "vfs",
        }
    }

    /// A layer's directory of files, below the graphroot.
    fn layer_dir(self, id: &str) -> String {
        match self {
            Driver::Overlay => format!("overlay/{id}/diff"),
            Driver::Vfs => format!("vfs/dir/{id}"),
        }
    }
}

/// An open containers-storage store.
#[derive(Debug)]
pub struct Store {
    root: OwnedFd,
    root_path: PathBuf,
    driver: Driver,
}

/// One layer of an image, bottom first.
#[derive(Debug, Clone)]
pub struct StoredLayer {
    /// The store's id of the layer.
    pub id: String,
    /// `sha256:...` of its uncompressed tar, as the store records it.
    pub diff_digest: String,
    /// Length of that tar, if recorded.
    pub diff_size: Option<u64>,
}

/// An image found in a store.
#[derive(Debug)]
pub struct StoredImage {
    store: Store,
    /// The store's id of the image.
    pub id: String,
    /// The image's manifest, as stored.
    pub manifest: Vec<u8>,
    /// Its layers, bottom first.
    pub layers: Vec<StoredLayer>,
}

#[derive(serde::Deserialize)]
struct ImageRecord {
    id: String,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    layer: Option<String>,
    #[serde(default, rename = "big-data-digests")]
    big_data_digests: HashMap<String, String>,
}

#[derive(serde::Deserialize)]
struct LayerRecord {
    id: String,
    #[serde(default)]
    parent: Option<String>,
    #[serde(default, rename = "diff-digest")]
    diff_digest: Option<String>,
    #[serde(default, rename = "diff-size")]
    diff_size: Option<i64>,
}

/// Store ids are 64 lowercase hex digits; anything else never becomes
/// part of a path.
fn is_id(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The file name containers-storage gives a big-data key.
fn big_data_file(key: &str) -> String {
    if !key.is_empty()
        && key
            .bytes()
            .all(|b| b == b'.' || b.is_ascii_digit() || b.is_ascii_lowercase())
    {
        key.to_owned()
    } else {
        format!(
            "={}",
            base64::engine::general_purpose::STANDARD.encode(key.as_bytes())
        )
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The names an image reference may be stored under, as podman
/// normalizes short names.
fn name_candidates(name: &str) -> Vec<String> {
    let last = name.rsplit('/').next().unwrap_or(name);
    let tagged = if last.contains(':') || last.contains('@') {
        name.to_owned()
    } else {
        format!("{name}:latest")
    };
    let mut candidates = vec![name.to_owned(), tagged.clone()];
    let first = tagged.split('/').next().unwrap_or("");
    let has_domain = tagged.contains('/')
        && (first.contains('.') || first.contains(':') || first == "localhost");
    if !has_domain {
        candidates.push(format!("localhost/{tagged}"));
        if tagged.contains('/') {
            candidates.push(format!("docker.io/{tagged}"));
        } else {
            candidates.push(format!("docker.io/library/{tagged}"));
        }
    }
    candidates
}

impl Store {
    /// Opens the store at `graphroot`; `driver` is found from the files
    /// there when not given.
    pub fn open(graphroot: &Path, driver: Option<&str>) -> Result<Store, CstorError> {
        let root = rustix::fs::openat(
            CWD,
            graphroot,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| CstorError::Io {
            op: "opening the store",
            path: graphroot.to_owned(),
            source: e.into(),
        })?;
        let unsupported = |driver: &str| CstorError::UnsupportedDriver {
            root: graphroot.to_owned(),
            driver: driver.to_owned(),
        };
        let driver = match driver {
            Some("overlay" | "overlay2") => Driver::Overlay,
            Some("vfs") => Driver::Vfs,
            Some(other) => return Err(unsupported(other)),
            None => {
                let has = |dir: &str| {
                    rustix::fs::statat(&root, dir, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).is_ok()
                };
                if has("overlay-images") {
                    Driver::Overlay
                } else if has("vfs-images") {
                    Driver::Vfs
                } else {
                    return Err(unsupported("(none found: no overlay-images or vfs-images)"));
                }
            }
        };
        Ok(Store {
            root,
            root_path: graphroot.to_owned(),
            driver,
        })
    }

    fn io_error(&self, op: &'static str, path: &str, e: impl Into<std::io::Error>) -> CstorError {
        CstorError::Io {
            op,
            path: self.root_path.join(path),
            source: e.into(),
        }
    }

    /// Opens `path` below the root, never through a symlink or `..`.
    fn open_beneath(&self, path: &str, flags: OFlags) -> Result<OwnedFd, CstorError> {
        rustix::fs::openat2(
            &self.root,
            path,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|e| self.io_error("opening", path, e))
    }

    fn read_small(&self, path: &str) -> Result<Vec<u8>, CstorError> {
        let file = File::from(self.open_beneath(path, OFlags::RDONLY)?);
        let mut bytes = Vec::new();
        file.take(METADATA_MAX + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.io_error("reading", path, e))?;
        if bytes.len() as u64 > METADATA_MAX {
            return Err(self.io_error(
                "reading",
                path,
                std::io::Error::other(format!("larger than {METADATA_MAX} bytes")),
            ));
        }
        Ok(bytes)
    }

    fn read_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, CstorError> {
        serde_json::from_slice(&self.read_small(path)?).map_err(|source| CstorError::Json {
            path: self.root_path.join(path),
            source,
        })
    }

    /// Finds the image `name` (a name as podman takes it, a full id, or
    /// a unique prefix of one) and reads its manifest and layer chain.
    pub fn image(self, name: &str) -> Result<StoredImage, CstorError> {
        let driver = self.driver.name();
        let images: Vec<ImageRecord> = self.read_json(&format!("{driver}-images/images.json"))?;
        let candidates = name_candidates(name);
        let by_name = images
            .iter()
            .find(|image| image.names.iter().any(|n| candidates.contains(n)));
        let image = match by_name {
            Some(image) => image,
            None => {
                let id = name.strip_prefix("sha256:").unwrap_or(name);
                let hex = id.len() >= 3 && id.bytes().all(|b| b.is_ascii_hexdigit());
                let mut matching = images
                    .iter()
                    .filter(|image| hex && image.id.starts_with(&id.to_ascii_lowercase()));
                match (matching.next(), matching.next()) {
                    (Some(image), None) => image,
                    (Some(_), Some(_)) => {
                        return Err(CstorError::AmbiguousImage {
                            name: name.to_owned(),
                        })
                    }
                    _ => {
                        return Err(CstorError::ImageNotFound {
                            name: name.to_owned(),
                            root: self.root_path.clone(),
                        })
                    }
                }
            }
        };
        let bad = |reason: String| CstorError::BadMetadata {
            image: image.id.clone(),
            reason,
        };
        if !is_id(&image.id) {
            return Err(bad("the image id is not 64 hex digits".into()));
        }
        let manifest = self.big_data(image, "manifest")?;
        let top = image
            .layer
            .as_deref()
            .ok_or_else(|| bad("the image has no layers".into()))?;
        let layers = self.layer_chain(top, &bad)?;
        Ok(StoredImage {
            id: image.id.clone(),
            manifest,
            layers,
            store: self,
        })
    }

    /// Reads an image's big data `key`, checked against the digest the
    /// store recorded for it, if any.
    fn big_data(&self, image: &ImageRecord, key: &str) -> Result<Vec<u8>, CstorError> {
        let path = format!(
            "{}-images/{}/{}",
            self.driver.name(),
            image.id,
            big_data_file(key)
        );
        let bytes = self.read_small(&path)?;
        if let Some(recorded) = image.big_data_digests.get(key) {
            let found = sha256(&bytes);
            if *recorded != found {
                return Err(CstorError::BadMetadata {
                    image: image.id.clone(),
                    reason: format!(
                        "big data {key:?} has digest {found}, the store says {recorded}"
                    ),
                });
            }
        }
        Ok(bytes)
    }

    /// The layers from `top` down to the base, returned base first.
    fn layer_chain(
        &self,
        top: &str,
        bad: &dyn Fn(String) -> CstorError,
    ) -> Result<Vec<StoredLayer>, CstorError> {
        let records: Vec<LayerRecord> =
            self.read_json(&format!("{}-layers/layers.json", self.driver.name()))?;
        let by_id: HashMap<&str, &LayerRecord> =
            records.iter().map(|r| (r.id.as_str(), r)).collect();
        let mut chain = Vec::new();
        let mut next = Some(top);
        while let Some(id) = next {
            if chain.len() >= CHAIN_MAX {
                return Err(bad(format!("more than {CHAIN_MAX} layers, or a loop")));
            }
            let record = by_id
                .get(id)
                .ok_or_else(|| bad(format!("layer {id:?} is not in layers.json")))?;
            if !is_id(id) {
                return Err(bad(format!("layer id {id:?} is not 64 hex digits")));
            }
            let diff_digest = record
                .diff_digest
                .clone()
                .ok_or_else(|| bad(format!("layer {id} has no diff-digest")))?;
            chain.push(StoredLayer {
                id: id.to_owned(),
                diff_digest,
                diff_size: record.diff_size.and_then(|s| u64::try_from(s).ok()),
            });
            next = record.parent.as_deref().filter(|p| !p.is_empty());
        }
        chain.reverse();
        Ok(chain)
    }
}

impl StoredImage {
    /// The image's big data stored under `key` (its config is stored
    /// under the config's digest).
    pub fn big_data(&self, key: &str) -> Result<Vec<u8>, CstorError> {
        let path = format!(
            "{}-images/{}/{}",
            self.store.driver.name(),
            self.id,
            big_data_file(key)
        );
        self.store.read_small(&path)
    }

    /// Rebuilds the tar of layer `index` (base first).
    pub fn open_layer(&self, index: usize) -> Result<RebuiltLayer, CstorError> {
        let layer = self
            .layers
            .get(index)
            .ok_or_else(|| CstorError::BadMetadata {
                image: self.id.clone(),
                reason: format!("no layer {index}"),
            })?;
        let driver = self.store.driver;
        let tar_split = self.store.open_beneath(
            &format!("{}-layers/{}.tar-split.gz", driver.name(), layer.id),
            OFlags::RDONLY,
        )?;
        let diff = self.store.open_beneath(
            &driver.layer_dir(&layer.id),
            OFlags::RDONLY | OFlags::DIRECTORY,
        )?;
        Ok(RebuiltLayer::new(
            layer.id.clone(),
            File::from(tar_split),
            diff,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_data_names() {
        assert_eq!(big_data_file("manifest"), "manifest");
        assert_eq!(
            big_data_file("sha256:19"),
            format!(
                "={}",
                base64::engine::general_purpose::STANDARD.encode("sha256:19")
            )
        );
        assert_eq!(big_data_file("Manifest"), "=TWFuaWZlc3Q=");
    }

    #[test]
    fn short_names() {
        assert!(name_candidates("exp:1").contains(&"localhost/exp:1".to_owned()));
        assert!(name_candidates("exp").contains(&"localhost/exp:latest".to_owned()));
        assert!(name_candidates("fedora").contains(&"docker.io/library/fedora:latest".to_owned()));
        assert_eq!(name_candidates("quay.io/a/b:1"), vec!["quay.io/a/b:1"; 2]);
    }
}
