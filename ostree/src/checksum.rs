//! ostree object names: SHA-256 digests, written as 64 lowercase hex digits.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::error::OstreeError;

/// The SHA-256 checksum that names an ostree object.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Checksum(pub [u8; 32]);

impl Checksum {
    /// Parses 64 lowercase hex digits (ostree never writes uppercase).
    pub fn from_hex(text: &str) -> Result<Self, OstreeError> {
        let bad = || OstreeError::BadChecksum(text.chars().take(80).collect());
        if text.len() != 64 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad());
        }
        let mut out = [0; 32];
        hex::decode_to_slice(text, &mut out).map_err(|_| bad())?;
        Ok(Self(out))
    }

    /// Takes a binary checksum as found inside metadata objects.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// The checksum of `parts`, concatenated.
    pub fn of(parts: &[&[u8]]) -> Self {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update(part);
        }
        Self(hasher.finalize().into())
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Checksum({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_refusals() {
        // The empty dirtree's checksum, as ostree-mutable-tree.c names it.
        let hex = "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d";
        let sum = Checksum::from_hex(hex).unwrap();
        assert_eq!(sum, Checksum::of(&[&[0]]));
        assert_eq!(sum.to_string(), hex);
        for bad in ["", &hex[1..], &hex.to_uppercase(), "../../etc/passwd"] {
            assert!(Checksum::from_hex(bad).is_err(), "{bad:?}");
        }
    }
}
