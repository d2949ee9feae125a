//! A deployment's origin file: what was deployed, from where, when.
//! An INI file like bootc's (`[origin]`, `[image]`, `[boot]`), with our
//! own keys beside theirs.

use std::path::Path;

use anyhow::{Context, Result};

/// File name of the origin, in the state directory.
pub const ORIGIN_FILE: &str = "origin";

/// What a deployment was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The image reference it was pulled from (`upgrade` pulls it again).
    pub source: String,
    /// What the source names the image by: `sha256:...` of an OCI
    /// manifest, or an ostree commit's checksum.
    pub manifest_digest: String,
    /// The repository stream that keeps the image alive (the OCI manifest's
    /// or the ostree commit's): a deployment's GC root names it.
    pub stream: String,
    /// The plain EROFS image, hex.
    pub image: String,
    /// The boot EROFS image, hex: the deployment's id.
    pub boot_image: String,
    /// When it was deployed, RFC 3339.
    pub deployed: String,
    /// Its place in the order of deployments, at creation.
    pub generation: u64,
}

impl Origin {
    /// The file's text.
    pub fn to_text(&self) -> String {
        format!(
            "[origin]\ncontainer-image-reference = {}\n\n[image]\nmanifest_digest = {}\n\
             stream = {}\nimage = {}\nboot_image = {}\n\n[deployment]\ndeployed = {}\n\
             generation = {}\n",
            self.source,
            self.manifest_digest,
            self.stream,
            self.image,
            self.boot_image,
            self.deployed,
            self.generation
        )
    }

    /// Parses the text written by [`Origin::to_text`].
    pub fn parse(text: &str) -> Result<Origin> {
        let get = |key: &str| -> Result<String> {
            text.lines()
                .filter_map(|line| line.split_once('='))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().to_owned())
                .with_context(|| format!("no {key} in the origin"))
        };
        Ok(Origin {
            source: get("container-image-reference")?,
            manifest_digest: get("manifest_digest")?,
            stream: get("stream")?,
            image: get("image")?,
            boot_image: get("boot_image")?,
            deployed: get("deployed")?,
            generation: get("generation")?.parse().context("generation")?,
        })
    }

    /// Reads `dir/origin`.
    pub fn read(dir: &Path) -> Result<Origin> {
        let path = dir.join(ORIGIN_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Origin::parse(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Writes `dir/origin` (the directory is renamed into place whole, so
    /// no temporary file is needed).
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::write(dir.join(ORIGIN_FILE), self.to_text())?;
        Ok(())
    }
}

/// Now, as RFC 3339 in UTC (`2026-12-04T05:00:00Z`).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_round_trips() {
        let origin = Origin {
            source: "oci:/x:v1".into(),
            manifest_digest: "sha256:ab".into(),
            stream: "oci-manifest-sha256:ab".into(),
            image: "11".into(),
            boot_image: "22".into(),
            deployed: now_rfc3339(),
            generation: 7,
        };
        assert_eq!(Origin::parse(&origin.to_text()).unwrap(), origin);
        assert_eq!(origin.deployed.len(), 20);
    }
}
