//! Reading an OCI image layout directory directly, without skopeo.
//!
//! A layout is `oci-layout`, `index.json` and content-addressed
//! `blobs/<algorithm>/<hex>`. Local layouts are the common case for builds
//! and tests, and reading them needs no helper process. Everything is
//! opened relative to the layout's directory handle, and blob names are
//! checked to be plain hex, so neither a hostile `index.json` nor a
//! symlink inside the layout reaches outside it. Every blob is checked
//! against its digest and size before (small blobs) or while (layers) it is
//! used. Manifests, indexes and configs are read into memory only up to
//! [`MAX_METADATA_SIZE`].

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use cap_std::fs::Dir;
use oci_spec::image::{Descriptor, Digest, ImageIndex};

use super::verify::check_bytes;
use super::FetchError;

/// The largest manifest, index, config or `index.json` we read into memory.
pub const MAX_METADATA_SIZE: u64 = 16 << 20;

/// The annotation naming an image in a layout's `index.json`.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An open layout directory.
#[derive(Debug)]
pub(super) struct Layout {
    dir: Dir,
    path: PathBuf,
}

impl Layout {
    /// Opens the layout at `path`. This is the one place that resolves a
    /// path given by the user; everything else is relative to it.
    pub(super) fn open(path: &Path) -> Result<Self, FetchError> {
        let dir = Dir::open_ambient_dir(path, cap_std::ambient_authority()).map_err(|source| {
            FetchError::Layout {
                layout: path.to_owned(),
                file: ".".into(),
                source,
            }
        })?;
        Ok(Layout {
            dir,
            path: path.to_owned(),
        })
    }

    fn io_error(&self, file: &str, source: io::Error) -> FetchError {
        FetchError::Layout {
            layout: self.path.clone(),
            file: file.to_owned(),
            source,
        }
    }

    /// The top-level `index.json`: raw bytes and parsed.
    pub(super) fn top_index(&self) -> Result<(Vec<u8>, ImageIndex), FetchError> {
        const NAME: &str = "index.json";
        let file = self.dir.open(NAME).map_err(|e| self.io_error(NAME, e))?;
        let mut raw = Vec::new();
        file.take(MAX_METADATA_SIZE + 1)
            .read_to_end(&mut raw)
            .map_err(|e| self.io_error(NAME, e))?;
        if raw.len() as u64 > MAX_METADATA_SIZE {
            return Err(FetchError::TooLarge {
                what: "index.json",
                size: raw.len() as u64,
            });
        }
        let index = serde_json::from_slice(&raw).map_err(|source| FetchError::Json {
            what: "index.json".into(),
            source,
        })?;
        Ok((raw, index))
    }

    /// The `index.json` entry for `tag`, or the only entry when no tag is
    /// given.
    pub(super) fn find<'a>(
        &self,
        index: &'a ImageIndex,
        tag: Option<&str>,
    ) -> Result<&'a Descriptor, FetchError> {
        let entries = index.manifests();
        match tag {
            Some(tag) => entries
                .iter()
                .find(|d| {
                    d.annotations()
                        .as_ref()
                        .and_then(|a| a.get(REF_NAME))
                        .is_some_and(|name| name == tag)
                })
                .ok_or_else(|| FetchError::TagNotFound {
                    layout: self.path.clone(),
                    tag: tag.to_owned(),
                }),
            None => match entries.as_slice() {
                [only] => Ok(only),
                _ => Err(FetchError::AmbiguousLayout {
                    layout: self.path.clone(),
                    count: entries.len(),
                }),
            },
        }
    }

    /// The relative path of a blob, refusing names that are not plain
    /// lowercase hex under a known algorithm.
    fn blob_path(digest: &Digest) -> Result<String, FetchError> {
        let hex = digest.digest();
        let plain = !hex.is_empty()
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let algorithm = digest.algorithm().as_ref();
        if !plain || !matches!(algorithm, "sha256" | "sha384" | "sha512") {
            return Err(FetchError::BadDigest {
                digest: digest.to_string(),
            });
        }
        Ok(format!("blobs/{algorithm}/{hex}"))
    }

    /// A small blob (manifest, index, config), read whole and verified.
    pub(super) fn read_blob(&self, descriptor: &Descriptor) -> Result<Vec<u8>, FetchError> {
        let digest = descriptor.digest();
        let size = descriptor.size();
        if size > MAX_METADATA_SIZE {
            return Err(FetchError::TooLarge {
                what: "metadata blob",
                size,
            });
        }
        let path = Self::blob_path(digest)?;
        let file = self.dir.open(&path).map_err(|e| self.io_error(&path, e))?;
        let mut raw = Vec::new();
        file.take(size + 1)
            .read_to_end(&mut raw)
            .map_err(|e| self.io_error(&path, e))?;
        check_bytes(&raw, digest, Some(size)).map_err(|source| FetchError::Verify {
            what: "blob",
            source,
        })?;
        Ok(raw)
    }

    /// A layer blob as a stream, unverified (the caller verifies).
    pub(super) fn open_blob(
        &self,
        descriptor: &Descriptor,
    ) -> Result<Box<dyn Read + Send>, FetchError> {
        let path = Self::blob_path(descriptor.digest())?;
        let file = self.dir.open(&path).map_err(|e| self.io_error(&path, e))?;
        Ok(Box::new(io::BufReader::with_capacity(1 << 17, file)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_paths_are_confined() {
        let good = Digest::try_from(format!("sha256:{}", "ab".repeat(32))).expect("valid");
        assert_eq!(
            Layout::blob_path(&good).expect("plain hex"),
            format!("blobs/sha256/{}", "ab".repeat(32))
        );
        for bad in ["other:abc", "sha256x:00", "md5:00aa"] {
            let digest = Digest::try_from(bad).expect("syntactically valid");
            assert!(Layout::blob_path(&digest).is_err(), "{bad}");
        }
    }
}
