//! Kernel arguments an image asks for: `/usr/lib/bootc/kargs.d/*.toml`,
//! as bootc defines them, so images built for bootc boot the same here.

use serde::Deserialize;

/// Where an image keeps its kernel argument files.
pub const KARGS_DIR: &str = "/usr/lib/bootc/kargs.d";

/// One `kargs.d` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct KargsFile {
    kargs: Vec<String>,
    match_architectures: Option<Vec<String>>,
}

/// A `kargs.d` file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{name}: {source}")]
pub struct KargsError {
    /// The file name.
    pub name: String,
    /// What is wrong.
    #[source]
    pub source: toml::de::Error,
}

/// The arguments of `files` (name, content), in file name order, keeping
/// those whose `match-architectures` (if any) names `architecture` (Rust's
/// name: `x86_64`, `aarch64`).
pub fn kargs_from_files(
    files: &mut [(String, String)],
    architecture: &str,
) -> Result<Vec<String>, KargsError> {
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut kargs = Vec::new();
    for (name, text) in files.iter() {
        if !name.ends_with(".toml") {
            continue;
        }
        let file: KargsFile = toml::from_str(text).map_err(|source| KargsError {
            name: name.clone(),
            source,
        })?;
        let applies = file
            .match_architectures
            .is_none_or(|archs| archs.iter().any(|a| a == architecture));
        if applies {
            kargs.extend(file.kargs);
        }
    }
    Ok(kargs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_apply_in_name_order_by_architecture() {
        let mut files = vec![
            (
                "20-arm.toml".into(),
                "kargs = [\"arm=1\"]\nmatch-architectures = [\"aarch64\"]".into(),
            ),
            (
                "10-all.toml".into(),
                "kargs = [\"quiet\", \"a=b c\"]".into(),
            ),
            (
                "30-x86.toml".into(),
                "kargs = [\"x86=1\"]\nmatch-architectures = [\"x86_64\", \"aarch64\"]".into(),
            ),
            ("README".into(), "not toml".into()),
        ];
        let kargs = kargs_from_files(&mut files, "x86_64").unwrap();
        assert_eq!(kargs, ["quiet", "a=b c", "x86=1"]);
        let kargs = kargs_from_files(&mut files, "aarch64").unwrap();
        assert_eq!(kargs, ["quiet", "a=b c", "arm=1", "x86=1"]);
        let mut bad = vec![("x.toml".into(), "kargs = [\"a\"]\nbogus = 1".into())];
        let error = kargs_from_files(&mut bad, "x86_64").unwrap_err();
        assert!(error.to_string().starts_with("x.toml: "), "{error}");
        let mut missing = vec![("y.toml".into(), "match-architectures = []".into())];
        assert!(kargs_from_files(&mut missing, "x86_64").is_err());
    }
}
