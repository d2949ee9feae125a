//! Which deltas a repository offers: the `ostree.static-deltas`
//! dictionary of a delta index (`delta-indexes/…/TO.index`) or a
//! summary's metadata.
//!
//! The dictionary is `a{sv}`: a delta name (`FROM-TO` in hex, or `TO` for
//! one from scratch) maps to a `v` holding the `ay` SHA-256 of the whole
//! superblock file (`_ostree_repo_static_delta_superblock_digest`).

use gvariant::aligned_bytes::{AlignedBuf, AsAligned};
use gvariant::{gv, Marker, Structure};

use super::bytes_within;
use super::error::DeltaError;
use crate::checksum::Checksum;

/// The key of the deltas dictionary in an index or a summary.
const STATIC_DELTAS_KEY: &str = "ostree.static-deltas";

/// A delta a repository lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListedDelta {
    /// Its base commit; `None` for one from scratch.
    pub from: Option<Checksum>,
    /// The commit it leads to.
    pub to: Checksum,
    /// The SHA-256 of its superblock file.
    pub superblock_digest: Checksum,
}

fn bad(reason: String) -> DeltaError {
    DeltaError::Index(reason)
}

/// Parses a delta name: `FROM-TO` or `TO`, in hex.
fn parse_name(name: &str) -> Result<(Option<Checksum>, Checksum), DeltaError> {
    let hex = |text: &str| {
        Checksum::from_hex(text).map_err(|_| bad(format!("{name:?} is not a delta name")))
    };
    match name.split_once('-') {
        Some((from, to)) => Ok((Some(hex(from)?), hex(to)?)),
        None => Ok((None, hex(name)?)),
    }
}

/// The deltas listed in an `a{sv}` holding `ostree.static-deltas` (a
/// delta index file, or a summary's metadata dictionary).
pub fn parse_delta_index(data: &[u8]) -> Result<Vec<ListedDelta>, DeltaError> {
    let buf: AlignedBuf = data.to_vec().into();
    let mut out = Vec::new();
    for entry in gv!("a{sv}").cast(buf.as_aligned()) {
        let (key, value) = entry.to_tuple();
        if key.to_str() != STATIC_DELTAS_KEY {
            continue;
        }
        let (kind, deltas) = value.split();
        if kind != b"a{sv}" {
            return Err(bad(format!(
                "{STATIC_DELTAS_KEY} is of type {}, not a{{sv}}",
                String::from_utf8_lossy(kind)
            )));
        }
        for delta in gv!("a{sv}").cast(deltas) {
            let (name, digest) = delta.to_tuple();
            let (from, to) = parse_name(name.to_str())?;
            let (kind, digest) = digest.split();
            let digest = match (kind, Checksum::from_bytes(digest)) {
                (b"ay", Some(digest)) => digest,
                _ => {
                    return Err(bad(format!(
                        "the digest of {} is not 32 bytes",
                        name.to_str()
                    )))
                }
            };
            out.push(ListedDelta {
                from,
                to,
                superblock_digest: digest,
            });
        }
    }
    Ok(out)
}

/// The deltas a `summary` file lists in its metadata.
pub fn parse_summary_deltas(summary: &[u8]) -> Result<Vec<ListedDelta>, DeltaError> {
    let buf: AlignedBuf = summary.to_vec().into();
    let (_refs, metadata) = gv!("(a(s(taya{sv}))a{sv})")
        .cast(buf.as_aligned())
        .to_tuple();
    parse_delta_index(bytes_within(&buf, metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let (from, to) = parse_name(&format!("{a}-{b}")).unwrap();
        assert_eq!(from.unwrap().to_hex(), a);
        assert_eq!(to.to_hex(), b);
        assert_eq!(parse_name(&b).unwrap(), (None, to));
        for bad in ["", "-", &format!("{a}-"), &format!("{a}-{b}-{b}"), "../x"] {
            assert!(parse_name(bad).is_err(), "{bad}");
        }
    }
}
