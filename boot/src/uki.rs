//! Unified kernel images: what a UKI says about itself, read from its PE
//! sections without running anything.

use object::{Object, ObjectSection};

use crate::os_release::OsRelease;

/// Why a file is not a usable UKI.
#[derive(Debug, thiserror::Error)]
pub enum UkiError {
    /// Not a PE executable.
    #[error("not a PE executable: {0}")]
    NotPe(#[from] object::Error),
    /// A PE file without a kernel.
    #[error("a PE executable without a .linux section is not a UKI")]
    NoKernel,
    /// A text section that is not UTF-8.
    #[error("the {section} section is not UTF-8")]
    NotText {
        /// Which section.
        section: &'static str,
    },
}

/// What a UKI carries besides the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uki {
    /// The sealed kernel command line (`.cmdline`), if any.
    pub cmdline: Option<String>,
    /// The OS it boots (`.osrel`).
    pub os_release: OsRelease,
}

impl Uki {
    /// Reads the sections of the PE image `bytes`.
    pub fn inspect(bytes: &[u8]) -> Result<Uki, UkiError> {
        let file = object::File::parse(bytes)?;
        if file.section_by_name(".linux").is_none() {
            return Err(UkiError::NoKernel);
        }
        let text = |section: &'static str| -> Result<Option<String>, UkiError> {
            let Some(found) = file.section_by_name(section) else {
                return Ok(None);
            };
            let data = found.data()?;
            // Sections are padded to the file alignment with NULs.
            let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
            let text =
                std::str::from_utf8(&data[..end]).map_err(|_| UkiError::NotText { section })?;
            Ok(Some(text.trim().to_owned()))
        };
        Ok(Uki {
            cmdline: text(".cmdline")?,
            os_release: OsRelease::parse(&text(".osrel")?.unwrap_or_default()),
        })
    }

    /// The `composefs=` argument of the sealed command line.
    pub fn composefs(&self) -> Option<ComposefsArg> {
        self.cmdline.as_deref().and_then(ComposefsArg::find)
    }
}

/// A `composefs=[?]DIGEST` kernel argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposefsArg {
    /// The boot image's digest, hex.
    pub digest: String,
    /// `?`: fs-verity is not required (an insecure repository).
    pub insecure: bool,
}

impl ComposefsArg {
    /// The last `composefs=` argument of `cmdline` (the kernel's rule:
    /// a later argument wins).
    pub fn find(cmdline: &str) -> Option<ComposefsArg> {
        cmdline
            .split_ascii_whitespace()
            .filter_map(|arg| arg.strip_prefix("composefs="))
            .next_back()
            .map(|value| match value.strip_prefix('?') {
                Some(digest) => ComposefsArg {
                    digest: digest.to_owned(),
                    insecure: true,
                },
                None => ComposefsArg {
                    digest: value.to_owned(),
                    insecure: false,
                },
            })
    }
}

impl std::fmt::Display for ComposefsArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mark = if self.insecure { "?" } else { "" };
        write!(f, "composefs={mark}{}", self.digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composefs_argument_is_found_and_printed() {
        let arg = ComposefsArg::find("quiet composefs=?ab12 rw composefs=cd34").unwrap();
        assert_eq!(
            arg,
            ComposefsArg {
                digest: "cd34".into(),
                insecure: false
            }
        );
        let arg = ComposefsArg::find("composefs=?ab12 ro").unwrap();
        assert!(arg.insecure);
        assert_eq!(arg.to_string(), "composefs=?ab12");
        assert_eq!(ComposefsArg::find("root=/dev/sda"), None);
    }

    #[test]
    fn non_pe_files_are_refused() {
        assert!(matches!(
            Uki::inspect(b"MZ not really"),
            Err(UkiError::NotPe(_))
        ));
    }
}
