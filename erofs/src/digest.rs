//! fs-verity digest types.
//!
//! Every object in a composefs repository is named by its fs-verity digest,
//! and the EROFS image embeds those digests in overlay `metacopy` xattrs. The
//! hash algorithm is a type parameter rather than a runtime value so that a
//! tree, an image and a repository can never mix SHA-256 and SHA-512 names.

use std::fmt;
use std::hash::Hash;

/// The hash algorithms fs-verity supports, with the kernel's numeric ids
/// (`FS_VERITY_HASH_ALG_*`), which also appear in overlay metacopy xattrs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `FS_VERITY_HASH_ALG_SHA256`
    Sha256,
    /// `FS_VERITY_HASH_ALG_SHA512`
    Sha512,
}

impl Algorithm {
    /// The kernel's id for this algorithm.
    pub const fn kernel_id(self) -> u8 {
        match self {
            Self::Sha256 => 1,
            Self::Sha512 => 2,
        }
    }

    /// Length of a digest in bytes.
    pub const fn digest_len(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha512 => 64,
        }
    }

    /// The lowercase name used in repository metadata and kernel arguments.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A digest string that is not valid hex of the right length.
#[derive(Debug, thiserror::Error)]
#[error("invalid {algorithm} digest {text:?}: expected {expected} lowercase hex characters")]
pub struct ParseDigestError {
    algorithm: Algorithm,
    expected: usize,
    text: String,
}

/// An fs-verity digest of one hash algorithm.
pub trait FsVerityDigest:
    Clone + Copy + Eq + Ord + Hash + fmt::Debug + Send + Sync + AsRef<[u8]> + 'static
{
    /// The algorithm that produced this digest.
    const ALGORITHM: Algorithm;
    /// Builds a digest from exactly [`Algorithm::digest_len`] bytes.
    fn from_slice(bytes: &[u8]) -> Option<Self>;

    /// The hash of `parts`, concatenated. OpenSSL's: its SHA-512 is about
    /// 40% faster than the `sha2` crate's here, and fs-verity hashing is
    /// most of the CPU time of a pull.
    fn hash_parts(parts: &[&[u8]]) -> Self;

    /// Lowercase hex, as used in object names and kernel arguments.
    fn to_hex(&self) -> String {
        hex::encode(self.as_ref())
    }

    /// Parses lowercase or uppercase hex of the right length.
    fn from_hex(text: &str) -> Result<Self, ParseDigestError> {
        let error = || ParseDigestError {
            algorithm: Self::ALGORITHM,
            expected: Self::ALGORITHM.digest_len() * 2,
            text: text.chars().take(140).collect(),
        };
        let bytes = hex::decode(text).map_err(|_| error())?;
        Self::from_slice(&bytes).ok_or_else(error)
    }

    /// The object's path below `objects/` in a repository: `XX/<rest>`,
    /// also the target of the overlay `redirect` xattr (with a leading `/`).
    fn object_pathname(&self) -> String {
        let hex = self.to_hex();
        format!("{}/{}", &hex[..2], &hex[2..])
    }
}

macro_rules! digest_type {
    ($(#[$doc:meta])* $name:ident, $len:literal, $alg:expr, $hasher:ty) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; $len]);

        impl FsVerityDigest for $name {
            const ALGORITHM: Algorithm = $alg;
            fn from_slice(bytes: &[u8]) -> Option<Self> {
                bytes.try_into().ok().map(Self)
            }

            fn hash_parts(parts: &[&[u8]]) -> Self {
                let mut hasher = <$hasher>::new();
                for part in parts {
                    hasher.update(part);
                }
                Self(hasher.finish())
            }
        }

        impl AsRef<[u8]> for $name {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}:{}", Self::ALGORITHM, self.to_hex())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
    };
}

digest_type!(
    /// A SHA-256 fs-verity digest.
    Sha256Digest,
    32,
    Algorithm::Sha256,
    openssl::sha::Sha256
);
digest_type!(
    /// A SHA-512 fs-verity digest.
    Sha512Digest,
    64,
    Algorithm::Sha512,
    openssl::sha::Sha512
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_pathname() {
        let d = Sha256Digest([0xab; 32]);
        assert_eq!(Sha256Digest::from_hex(&d.to_hex()).unwrap(), d);
        assert_eq!(d.object_pathname(), format!("ab/{}", "ab".repeat(31)));
        assert!(Sha256Digest::from_hex("abcd").is_err());
        assert!(Sha512Digest::from_hex(&d.to_hex()).is_err());
        assert!(Sha256Digest::from_hex(&"zz".repeat(32)).is_err());
    }
}
