//! `meta.json`: the repository's algorithm, format version and features,
//! in composefs-rs's schema (so both tools accept each other's).

use cfs_erofs::digest::Algorithm;
use cfs_erofs::format::FormatVersion;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The repository format version this code reads and writes.
pub const REPO_VERSION: u32 = 1;

/// The read-only-compatible feature of repositories that make V1 images.
pub const FEATURE_V1_EROFS: &str = "v1_erofs";

/// Feature flags, ext4 style: unknown `compatible` ones are ignored,
/// unknown `read-only-compatible` ones forbid writing, unknown
/// `incompatible` ones forbid opening.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Features {
    /// Safe to ignore.
    #[serde(default)]
    pub compatible: Vec<String>,
    /// Readable without understanding them.
    #[serde(default)]
    pub read_only_compatible: Vec<String>,
    /// Must be understood.
    #[serde(default)]
    pub incompatible: Vec<String>,
}

/// Which EROFS format versions the repository generates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErofsFormats {
    /// The format of named images.
    pub default: u32,
    /// Further formats generated alongside.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<u32>,
}

/// The content of `meta.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoMeta {
    /// [`REPO_VERSION`].
    pub version: u32,
    /// `fsverity-sha256-12` or `fsverity-sha512-12`.
    pub algorithm: String,
    /// Feature flags.
    #[serde(default)]
    pub features: Features,
    /// EROFS formats; absent in old repositories, which mean V2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erofs_formats: Option<ErofsFormats>,
}

/// How `meta.json` spells an algorithm.
pub fn algorithm_name(algorithm: Algorithm) -> String {
    format!("fsverity-{}-12", algorithm.name())
}

impl RepoMeta {
    /// Metadata of a new repository.
    pub fn new(algorithm: Algorithm, format: FormatVersion) -> Self {
        let read_only_compatible = if format == FormatVersion::V1 {
            vec![FEATURE_V1_EROFS.to_owned()]
        } else {
            Vec::new()
        };
        Self {
            version: REPO_VERSION,
            algorithm: algorithm_name(algorithm),
            features: Features {
                read_only_compatible,
                ..Features::default()
            },
            erofs_formats: Some(ErofsFormats {
                default: format.header_version(),
                extra: Vec::new(),
            }),
        }
    }

    /// Parses and checks `meta.json`; returns it and whether writing is
    /// allowed.
    pub fn parse(bytes: &[u8]) -> Result<(Self, bool)> {
        let meta: Self =
            serde_json::from_slice(bytes).map_err(|e| Error::BadMetadata(e.to_string()))?;
        if meta.version > REPO_VERSION {
            return Err(Error::BadMetadata(format!(
                "repository format version {} is newer than this tool's {REPO_VERSION}",
                meta.version
            )));
        }
        if !meta.features.incompatible.is_empty() {
            return Err(Error::IncompatibleFeatures(meta.features.incompatible));
        }
        let writable = meta
            .features
            .read_only_compatible
            .iter()
            .all(|f| f == FEATURE_V1_EROFS);
        meta.default_format()?;
        Ok((meta, writable))
    }

    /// The bytes written to disk: pretty JSON and a newline, as the
    /// reference writes them.
    pub fn to_json(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("metadata serializes");
        bytes.push(b'\n');
        bytes
    }

    /// The format of the images this repository names.
    pub fn default_format(&self) -> Result<FormatVersion> {
        let number = match &self.erofs_formats {
            Some(formats) => formats.default,
            // Old repositories: V1 if flagged, else V2.
            None if self
                .features
                .read_only_compatible
                .iter()
                .any(|f| f == FEATURE_V1_EROFS) =>
            {
                1
            }
            None => 2,
        };
        FormatVersion::from_number(number)
            .ok_or_else(|| Error::BadMetadata(format!("unknown EROFS format version {number}")))
    }
}

/// The hash algorithm of the repository at `path`, read from its
/// `meta.json` without opening it (to pick the digest type to open with).
pub fn repository_algorithm(path: &std::path::Path) -> Result<Algorithm> {
    let meta_path = path.join("meta.json");
    let bytes = match std::fs::read(&meta_path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotARepository(path.to_owned()))
        }
        Err(source) => {
            return Err(Error::Io {
                op: "reading",
                path: meta_path,
                source,
            })
        }
    };
    let (meta, _) = RepoMeta::parse(&bytes)?;
    [Algorithm::Sha256, Algorithm::Sha512]
        .into_iter()
        .find(|a| algorithm_name(*a) == meta.algorithm)
        .ok_or_else(|| Error::BadMetadata(format!("unknown algorithm {:?}", meta.algorithm)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_bytes() {
        // What `cfsctl init --insecure` writes (0.9.4), modulo whitespace:
        // pretty printing is serde_json's in both tools.
        let ours = RepoMeta::new(Algorithm::Sha512, FormatVersion::V1).to_json();
        let compact: serde_json::Value = serde_json::from_slice(&ours).unwrap();
        assert_eq!(
            compact.to_string(),
            r#"{"algorithm":"fsverity-sha512-12","erofs_formats":{"default":1},"features":{"compatible":[],"incompatible":[],"read-only-compatible":["v1_erofs"]},"version":1}"#
        );
        assert!(String::from_utf8(ours)
            .unwrap()
            .starts_with("{\n  \"version\": 1,"));
    }

    #[test]
    fn feature_rules() {
        let meta = |features: &str| {
            format!(r#"{{"version":1,"algorithm":"fsverity-sha256-12","features":{features}}}"#)
        };
        let (m, writable) = RepoMeta::parse(meta(r#"{"compatible":["x"]}"#).as_bytes()).unwrap();
        assert!(writable);
        assert_eq!(m.default_format().unwrap(), FormatVersion::V2);
        let (_, writable) =
            RepoMeta::parse(meta(r#"{"read-only-compatible":["x"]}"#).as_bytes()).unwrap();
        assert!(!writable);
        assert!(matches!(
            RepoMeta::parse(meta(r#"{"incompatible":["x"]}"#).as_bytes()),
            Err(Error::IncompatibleFeatures(_))
        ));
        assert!(RepoMeta::parse(b"{").is_err());
    }
}
