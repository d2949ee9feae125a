//! Image references: `TRANSPORT:DETAILS`, as skopeo writes them.
//!
//! `oci:DIR[:TAG]` is read directly (see `ocidir`); every other transport
//! we accept is handed to skopeo's image proxy unchanged, so its syntax
//! (registry names, archive paths, storage specs) stays skopeo's business.
//! We only check that the transport is one we support, so a typo fails
//! here with a clear message instead of deep inside skopeo.

use std::fmt;
use std::path::PathBuf;

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageReference {
    /// An OCI image layout directory, read without skopeo.
    OciDir {
        /// The layout directory.
        path: PathBuf,
        /// The `org.opencontainers.image.ref.name` to pick, if given.
        tag: Option<String>,
    },
    /// Any other transport, fetched through skopeo.
    Skopeo {
        /// The transport.
        transport: Transport,
        /// The whole reference, transport prefix included, as skopeo takes it.
        reference: String,
    },
}

/// The transports fetched through skopeo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// `docker://REGISTRY/NAME[:TAG|@DIGEST]`
    Registry,
    /// `oci-archive:FILE[:TAG]`
    OciArchive,
    /// `docker-archive:FILE[:NAME:TAG]`
    DockerArchive,
    /// `containers-storage:[STORE]NAME`
    ContainersStorage,
    /// `dir:DIR`
    Dir,
}

impl Transport {
    const ALL: [(Transport, &'static str); 5] = [
        (Transport::Registry, "docker://"),
        (Transport::OciArchive, "oci-archive:"),
        (Transport::DockerArchive, "docker-archive:"),
        (Transport::ContainersStorage, "containers-storage:"),
        (Transport::Dir, "dir:"),
    ];

    /// The prefix that names this transport in a reference.
    pub fn prefix(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(t, _)| *t == self)
            .map(|(_, p)| *p)
            .expect("every transport is listed in ALL")
    }
}

/// A reference we cannot use.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct InvalidReference {
    /// The reference given.
    pub reference: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

const SUPPORTED: &str = "expected one of oci:, docker://, oci-archive:, docker-archive:, \
                         containers-storage:, dir:";

impl std::str::FromStr for ImageReference {
    type Err = InvalidReference;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| InvalidReference {
            reference: text.to_owned(),
            reason,
        };
        if let Some(rest) = text.strip_prefix("oci:") {
            // As skopeo does: the directory ends at the first colon.
            let (dir, tag) = match rest.split_once(':') {
                Some((dir, tag)) => (dir, Some(tag)),
                None => (rest, None),
            };
            if dir.is_empty() {
                return Err(invalid("the oci: layout directory is empty"));
            }
            if tag.is_some_and(str::is_empty) {
                return Err(invalid("the oci: tag after the colon is empty"));
            }
            return Ok(ImageReference::OciDir {
                path: PathBuf::from(dir),
                tag: tag.map(str::to_owned),
            });
        }
        let (transport, prefix) = Transport::ALL
            .iter()
            .find(|(_, prefix)| text.starts_with(prefix))
            .ok_or_else(|| invalid(SUPPORTED))?;
        if text.len() == prefix.len() {
            return Err(invalid("nothing after the transport"));
        }
        Ok(ImageReference::Skopeo {
            transport: *transport,
            reference: text.to_owned(),
        })
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageReference::OciDir { path, tag } => {
                write!(f, "oci:{}", path.display())?;
                if let Some(tag) = tag {
                    write!(f, ":{tag}")?;
                }
                Ok(())
            }
            ImageReference::Skopeo { reference, .. } => f.write_str(reference),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ImageReference, InvalidReference> {
        text.parse()
    }

    #[test]
    fn oci_layouts() {
        assert_eq!(
            parse("oci:/some/dir:v1").expect("valid"),
            ImageReference::OciDir {
                path: "/some/dir".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            parse("oci:rel").expect("valid"),
            ImageReference::OciDir {
                path: "rel".into(),
                tag: None
            }
        );
        assert_eq!(parse("oci:d:t").expect("valid").to_string(), "oci:d:t");
        assert!(parse("oci:").is_err());
        assert!(parse("oci::tag").is_err());
        assert!(parse("oci:dir:").is_err());
    }

    #[test]
    fn skopeo_transports() {
        for (text, transport) in [
            ("docker://127.0.0.1:5000/a/b:c", Transport::Registry),
            ("oci-archive:/x.tar:t", Transport::OciArchive),
            ("docker-archive:/x.tar", Transport::DockerArchive),
            (
                "containers-storage:localhost/x:y",
                Transport::ContainersStorage,
            ),
            ("dir:/some/dir", Transport::Dir),
        ] {
            let parsed = parse(text).expect("valid");
            assert_eq!(
                parsed,
                ImageReference::Skopeo {
                    transport,
                    reference: text.into()
                }
            );
            assert_eq!(parsed.to_string(), text);
            assert!(text.starts_with(transport.prefix()));
        }
    }

    #[test]
    fn refused() {
        for text in [
            "quay.io/x:y",
            "docker:x",
            "ostree:repo",
            "dir:",
            "docker://",
            "",
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.to_string().contains("invalid image reference"), "{err}");
        }
    }
}
