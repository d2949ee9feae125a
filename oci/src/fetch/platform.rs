//! Choosing one image from an image index by platform.
//!
//! A multi-platform image is an index listing one manifest per
//! `os/architecture[/variant]`. We pick the host's platform unless the
//! user names another one, with the rules the containers tools use where
//! they matter here: names are Go's `GOOS`/`GOARCH` values, a requested
//! variant must match (an `arm64` entry without a variant counts as `v8`),
//! no requested variant accepts any, and among equal candidates the first
//! listed wins. Both the direct `oci:` reader and the skopeo path choose
//! with this code, so every transport agrees on the answer.

use std::fmt;
use std::str::FromStr;

use oci_spec::image::{Descriptor, ImageIndex};

/// An `os/architecture[/variant]` triple as image indexes write it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    /// The operating system (`linux`).
    pub os: String,
    /// The CPU architecture, as Go names it (`amd64`, `arm64`).
    pub architecture: String,
    /// The CPU variant (`v7`, `v8`), if it matters.
    pub variant: Option<String>,
}

/// A platform string that is not `os/arch[/variant]`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid platform {text:?}: expected os/arch or os/arch/variant")]
pub struct InvalidPlatform {
    /// The text given.
    pub text: String,
}

impl FromStr for Platform {
    type Err = InvalidPlatform;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidPlatform {
            text: text.to_owned(),
        };
        let parts: Vec<&str> = text.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(invalid());
        }
        match parts.as_slice() {
            [os, arch] => Ok(Platform::new(os, arch, None)),
            [os, arch, variant] => Ok(Platform::new(os, arch, Some(variant))),
            _ => Err(invalid()),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// A platform from its parts.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        Platform {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
        }
    }

    /// The platform this program runs on, in Go's names.
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "powerpc64" => ("ppc64", None),
            "loongarch64" => ("loong64", None),
            "mips64" if cfg!(target_endian = "little") => ("mips64le", None),
            other => (other, None),
        };
        Platform::new(std::env::consts::OS, architecture, variant)
    }

    /// Whether an index entry's platform satisfies this request.
    fn accepts(&self, entry: &oci_spec::image::Platform) -> bool {
        if entry.os().to_string() != self.os
            || entry.architecture().to_string() != self.architecture
        {
            return false;
        }
        let Some(wanted) = &self.variant else {
            return true;
        };
        match entry.variant().as_deref() {
            Some(variant) => variant == wanted,
            None => self.architecture == "arm64" && wanted == "v8",
        }
    }

    /// The entry's platform in our form, if it has one.
    pub fn of_descriptor(descriptor: &Descriptor) -> Option<Platform> {
        descriptor.platform().as_ref().map(|p| {
            Platform::new(
                &p.os().to_string(),
                &p.architecture().to_string(),
                p.variant().as_deref(),
            )
        })
    }
}

/// No manifest in an index matches the requested platform.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no image for platform {wanted} in the index (it has: {available})")]
pub struct NoMatchingPlatform {
    /// The platform asked for.
    pub wanted: Platform,
    /// The platforms the index offers, comma separated.
    pub available: String,
}

/// The index entry for `wanted`: the first image manifest whose platform
/// matches. Entries without a platform, and entries that are not image
/// manifests (attestations, nested indexes), are never chosen.
pub fn choose<'a>(
    index: &'a ImageIndex,
    wanted: &Platform,
) -> Result<&'a Descriptor, NoMatchingPlatform> {
    let images = || {
        index
            .manifests()
            .iter()
            .filter(|d| super::is_image_manifest(d.media_type()) && d.platform().is_some())
    };
    images()
        .find(|d| d.platform().as_ref().is_some_and(|p| wanted.accepts(p)))
        .ok_or_else(|| NoMatchingPlatform {
            wanted: wanted.clone(),
            available: images()
                .filter_map(Platform::of_descriptor)
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(json: &str) -> ImageIndex {
        serde_json::from_str(json).expect("valid index")
    }

    const MULTI: &str = r#"{
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 1,
             "digest": "sha256:1111111111111111111111111111111111111111111111111111111111111111",
             "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 1,
             "digest": "sha256:2222222222222222222222222222222222222222222222222222222222222222",
             "platform": {"os": "linux", "architecture": "arm64"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 1,
             "digest": "sha256:3333333333333333333333333333333333333333333333333333333333333333",
             "platform": {"os": "linux", "architecture": "arm", "variant": "v6"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 1,
             "digest": "sha256:4444444444444444444444444444444444444444444444444444444444444444",
             "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}}
        ]
    }"#;

    fn chosen(wanted: &str) -> Result<char, NoMatchingPlatform> {
        let index = index(MULTI);
        let wanted: Platform = wanted.parse().expect("valid");
        let d = choose(&index, &wanted)?;
        Ok(d.digest().digest().chars().next().expect("non-empty"))
    }

    #[test]
    fn parse_and_print() {
        for text in ["linux/amd64", "linux/arm/v7"] {
            assert_eq!(text.parse::<Platform>().expect("valid").to_string(), text);
        }
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux//v7", ""] {
            assert!(bad.parse::<Platform>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn chooses_by_platform() {
        assert_eq!(chosen("linux/amd64").expect("present"), '1');
        assert_eq!(chosen("linux/arm64").expect("present"), '2');
        assert_eq!(chosen("linux/arm64/v8").expect("implicit v8"), '2');
        assert_eq!(chosen("linux/arm/v7").expect("present"), '4');
        assert_eq!(chosen("linux/arm").expect("first arm"), '3');
        let err = chosen("linux/s390x").expect_err("absent");
        assert!(err.to_string().contains("linux/arm/v6"), "{err}");
        assert!(chosen("linux/arm/v5").is_err());
        assert!(chosen("windows/amd64").is_err());
    }

    #[test]
    fn host_is_a_go_name() {
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        assert!(!host.architecture.contains('_'), "{host}");
    }
}
