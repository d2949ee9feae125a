//! Reading images straight out of a containers-storage store (the
//! on-disk store of podman, buildah and CRI-O), without skopeo.
//!
//! A store is a directory (its *graphroot*) with, for a driver `D`:
//!
//! ```text
//! D-images/images.json            images: id, names, top layer, big-data keys
//! D-images/<image id>/<key>       an image's big data: `manifest`, its config
//!                                 under the config digest (keys outside
//!                                 [a-z0-9.] are stored as `=` + base64)
//! D-layers/layers.json            layers: id, parent, diff-digest, diff-size
//! D-layers/<layer id>.tar-split.gz  the layer's tar headers (see `tarsplit`)
//! overlay/<layer id>/diff/        the layer's files (driver `overlay`)
//! vfs/dir/<layer id>/             the same, for driver `vfs`
//! ```
//!
//! A layer's tar is rebuilt from its tar-split and its directory
//! ([`RebuiltLayer`]) and must hash to the layer's diff_id, so what we
//! store is exactly what skopeo would have served: the split streams, and
//! so the EROFS images, are the same bytes either way. The store is read
//! without its lock files: an image changed or removed meanwhile makes
//! the import fail its digest checks, never succeed with other content.
//! Run-root-only (volatile) layers are not read.

mod rebuild;
mod store;
mod tarsplit;

use std::path::{Path, PathBuf};

pub use rebuild::RebuiltLayer;
pub use store::{Store, StoredImage, StoredLayer};
pub use tarsplit::TarSplitError;

/// What can go wrong reading a containers-storage store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CstorError {
    /// A `containers-storage:` reference we cannot use.
    #[error("containers-storage reference {reference:?}: {reason}")]
    BadReference {
        /// The reference after the transport.
        reference: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A file of the store could not be read.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The file, below the store's root.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// A metadata file that does not parse.
    #[error("parsing {}: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// `storage.conf` does not parse.
    #[error("parsing {}: {source}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// The store uses a driver whose layout we do not read.
    #[error("store {}: driver {driver:?} is not supported (overlay and vfs are)", root.display())]
    UnsupportedDriver {
        /// The graphroot.
        root: PathBuf,
        /// The driver named.
        driver: String,
    },
    /// No image by that name or id.
    #[error("no image {name:?} in the store at {}", root.display())]
    ImageNotFound {
        /// The name asked for.
        name: String,
        /// The graphroot.
        root: PathBuf,
    },
    /// A short id that several images start with.
    #[error("{name:?} matches several images in the store; give more of the id")]
    AmbiguousImage {
        /// The name asked for.
        name: String,
    },
    /// Something in the store's metadata that cannot be right.
    #[error("image {image}: {reason}")]
    BadMetadata {
        /// The image id.
        image: String,
        /// What is wrong.
        reason: String,
    },
    /// A layer's tar-split is unusable.
    #[error("layer {layer}: tar-split {source}")]
    TarSplit {
        /// The layer id.
        layer: String,
        /// What is wrong.
        #[source]
        source: TarSplitError,
    },
    /// A tar-split entry whose file cannot be used.
    #[error("layer {layer}: tar-split entry {name:?} {reason}")]
    Entry {
        /// The layer id.
        layer: String,
        /// The entry's name, as text.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The rebuilt tar is not the layer's.
    #[error("layer {layer}: the rebuilt tar has digest {found}, not the diff_id {expected}")]
    DiffId {
        /// The layer id.
        layer: String,
        /// The diff_id.
        expected: String,
        /// What the rebuilt tar hashes to.
        found: String,
    },
}

/// How the files of imported layers got into the repository.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ImportStats {
    /// Files stored as objects sharing the store's extents (no data
    /// written).
    pub reflinked_files: u64,
    /// Their bytes.
    pub reflinked_bytes: u64,
    /// Files copied into new objects (another filesystem, or one that
    /// cannot share extents).
    pub copied_files: u64,
    /// Their bytes.
    pub copied_bytes: u64,
    /// Files whose object the repository already had.
    pub existing_files: u64,
    /// Their bytes.
    pub existing_bytes: u64,
    /// Bytes of small files kept inside the split stream.
    pub inline_bytes: u64,
    /// Bytes of the rebuilt tars.
    pub tar_bytes: u64,
}

impl ImportStats {
    /// Adds `other`'s counts.
    pub fn add(&mut self, other: &ImportStats) {
        self.reflinked_files += other.reflinked_files;
        self.reflinked_bytes += other.reflinked_bytes;
        self.copied_files += other.copied_files;
        self.copied_bytes += other.copied_bytes;
        self.existing_files += other.existing_files;
        self.existing_bytes += other.existing_bytes;
        self.inline_bytes += other.inline_bytes;
        self.tar_bytes += other.tar_bytes;
    }
}

/// The parts of `containers-storage:[DRIVER@GRAPHROOT+RUNROOT:OPTIONS]IMAGE`
/// (the syntax of containers/image; everything in brackets optional).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreReference {
    /// The driver, if named.
    pub driver: Option<String>,
    /// The graphroot, if named.
    pub graphroot: Option<PathBuf>,
    /// The image: a name, a full id or a unique prefix of one.
    pub image: String,
}

impl std::str::FromStr for StoreReference {
    type Err = CstorError;

    /// Parses what follows `containers-storage:`.
    fn from_str(text: &str) -> Result<Self, CstorError> {
        let bad = |reason| CstorError::BadReference {
            reference: text.to_owned(),
            reason,
        };
        let (spec, image) = match text.strip_prefix('[') {
            Some(rest) => {
                let (spec, image) = rest
                    .split_once(']')
                    .ok_or_else(|| bad("the store specification has no closing `]`"))?;
                (Some(spec), image)
            }
            None => (None, text),
        };
        if image.is_empty() {
            return Err(bad("no image named"));
        }
        let (mut driver, mut graphroot) = (None, None);
        if let Some(spec) = spec {
            let (named_driver, rest) = match spec.split_once('@') {
                Some((driver, rest)) => (Some(driver), rest),
                None => (None, spec),
            };
            let rest = rest.split_once(':').map_or(rest, |(root, _options)| root);
            let root = rest.split_once('+').map_or(rest, |(root, _runroot)| root);
            if !root.is_empty() {
                if !root.starts_with('/') {
                    return Err(bad("the graphroot must be an absolute path"));
                }
                graphroot = Some(PathBuf::from(root));
            }
            driver = named_driver.filter(|d| !d.is_empty()).map(str::to_owned);
        }
        Ok(StoreReference {
            driver,
            graphroot,
            image: image.strip_prefix('@').unwrap_or(image).to_owned(),
        })
    }
}

/// The store podman would use: `storage.conf`'s `graphroot` and `driver`
/// (`$CONTAINERS_STORAGE_CONF`, else the system's files), else the
/// built-in default for root or for this user. Inside the user namespace
/// of `podman unshare` we are root but the store is still the user's:
/// podman says so in `_CONTAINERS_ROOTLESS_UID`, as containers-storage
/// reads it.
pub fn default_store() -> Result<(PathBuf, Option<String>), CstorError> {
    let rootless = !rustix::process::geteuid().is_root()
        || std::env::var_os("_CONTAINERS_ROOTLESS_UID").is_some();
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(conf) = std::env::var_os("CONTAINERS_STORAGE_CONF") {
        candidates.push(conf.into());
    } else if rootless {
        if let Some(config) = xdg_dir("XDG_CONFIG_HOME", ".config") {
            candidates.push(config.join("containers/storage.conf"));
        }
    } else {
        candidates.push("/etc/containers/storage.conf".into());
        candidates.push("/usr/share/containers/storage.conf".into());
    }
    let mut driver = None;
    for path in candidates {
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(CstorError::Io {
                    op: "reading",
                    path,
                    source,
                })
            }
        };
        let conf: StorageConf = toml::from_str(&text).map_err(|source| CstorError::Config {
            path: path.clone(),
            source: Box::new(source),
        })?;
        driver = conf.storage.driver.filter(|d| !d.is_empty());
        let root = if rootless {
            conf.storage.rootless_storage_path
        } else {
            conf.storage.graphroot
        };
        if let Some(root) = root.filter(|r| !r.as_os_str().is_empty()) {
            return Ok((root, driver));
        }
        break;
    }
    let root = if rootless {
        xdg_dir("XDG_DATA_HOME", ".local/share")
            .map(|data| data.join("containers/storage"))
            .ok_or_else(|| CstorError::BadReference {
                reference: String::new(),
                reason: "no store named, and neither XDG_DATA_HOME nor HOME is set",
            })?
    } else {
        PathBuf::from("/var/lib/containers/storage")
    };
    Ok((root, driver))
}

fn xdg_dir(variable: &str, below_home: &str) -> Option<PathBuf> {
    std::env::var_os(variable)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(below_home)))
}

#[derive(serde::Deserialize, Default)]
struct StorageConf {
    #[serde(default)]
    storage: StorageSection,
}

#[derive(serde::Deserialize, Default)]
struct StorageSection {
    driver: Option<String>,
    graphroot: Option<PathBuf>,
    rootless_storage_path: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<StoreReference, CstorError> {
        text.parse()
    }

    #[test]
    fn references() {
        assert_eq!(
            parse("localhost/x:1").expect("valid"),
            StoreReference {
                driver: None,
                graphroot: None,
                image: "localhost/x:1".into()
            }
        );
        assert_eq!(
            parse("[overlay@/s/root+/s/run:opt=1]x").expect("valid"),
            StoreReference {
                driver: Some("overlay".into()),
                graphroot: Some("/s/root".into()),
                image: "x".into()
            }
        );
        assert_eq!(
            parse("[/s/root]@abc").expect("valid"),
            StoreReference {
                driver: None,
                graphroot: Some("/s/root".into()),
                image: "abc".into()
            }
        );
        for bad in ["", "[/s/root", "[/s]", "[vfs@rel]x"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
