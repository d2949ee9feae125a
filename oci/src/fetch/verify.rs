//! Checking content against the digest that names it.
//!
//! Every blob we fetch is named by a digest in a manifest (or, for an
//! uncompressed layer, by a `diff_id` in the config), and nothing read from
//! a transport is trusted until it hashes to that name. Small blobs
//! (manifests, configs) are checked whole with [`check_bytes`]; layers are
//! streamed, so [`VerifyingReader`] hashes as it goes and turns the end of
//! the stream into an error when the digest or the length is wrong. A
//! reader that stops early has verified nothing: only reaching end of file
//! proves the content.

use std::fmt;
use std::io::{self, Read};

use oci_spec::image::{Digest, DigestAlgorithm};
use sha2::Digest as _;

/// Why content did not match its name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The content hashes to another digest.
    #[error("content of {expected} hashes to {actual}")]
    DigestMismatch {
        /// The digest the content should have.
        expected: Digest,
        /// What the content hashes to, as `algorithm:hex`.
        actual: String,
    },
    /// The content is longer or shorter than its descriptor says.
    #[error("blob {digest} is {actual} bytes long, its descriptor says {expected}")]
    SizeMismatch {
        /// The blob's digest.
        digest: Digest,
        /// The size in the descriptor.
        expected: u64,
        /// The bytes actually read (for a too long blob: at least this many).
        actual: u64,
    },
    /// We cannot compute this kind of digest.
    #[error("digest {digest} uses an unsupported algorithm")]
    UnsupportedAlgorithm {
        /// The digest with the unknown algorithm.
        digest: Digest,
    },
}

/// A running hash of one of the algorithms OCI digests use.
#[derive(Clone)]
enum Hasher {
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hasher::Sha256(_) => "Hasher::Sha256",
            Hasher::Sha384(_) => "Hasher::Sha384",
            Hasher::Sha512(_) => "Hasher::Sha512",
        })
    }
}

impl Hasher {
    fn for_digest(digest: &Digest) -> Result<Self, VerifyError> {
        match digest.algorithm() {
            DigestAlgorithm::Sha256 => Ok(Hasher::Sha256(sha2::Sha256::new())),
            DigestAlgorithm::Sha384 => Ok(Hasher::Sha384(sha2::Sha384::new())),
            DigestAlgorithm::Sha512 => Ok(Hasher::Sha512(sha2::Sha512::new())),
            _ => Err(VerifyError::UnsupportedAlgorithm {
                digest: digest.clone(),
            }),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha384(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// The hex digest, without the algorithm prefix.
    fn finish_hex(self) -> String {
        match self {
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha384(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
        }
    }
}

/// Compares a finished hash with the expected digest.
fn compare(expected: &Digest, hasher: Hasher) -> Result<(), VerifyError> {
    let actual = hasher.finish_hex();
    if actual == expected.digest() {
        Ok(())
    } else {
        Err(VerifyError::DigestMismatch {
            expected: expected.clone(),
            actual: format!("{}:{actual}", expected.algorithm()),
        })
    }
}

/// Checks a whole blob in memory against its digest and, if known, its size.
pub fn check_bytes(data: &[u8], digest: &Digest, size: Option<u64>) -> Result<(), VerifyError> {
    if let Some(expected) = size {
        let actual = data.len() as u64;
        if actual != expected {
            return Err(VerifyError::SizeMismatch {
                digest: digest.clone(),
                expected,
                actual,
            });
        }
    }
    let mut hasher = Hasher::for_digest(digest)?;
    hasher.update(data);
    compare(digest, hasher)
}

/// The `sha256:` digest of some bytes.
pub fn sha256_digest(data: &[u8]) -> Digest {
    let hex = hex::encode(sha2::Sha256::digest(data));
    Digest::try_from(format!("sha256:{hex}")).expect("a sha256 hex string is a valid digest")
}

/// A reader that hashes what passes through it and fails at end of file
/// unless the content matched its digest (and its size, when one is given).
///
/// Errors are `io::Error`s of kind `InvalidData` wrapping a
/// [`VerifyError`]; [`VerifyError::from_io`] gets it back. Once the check
/// has passed, further reads return end of file.
#[derive(Debug)]
pub struct VerifyingReader<R> {
    inner: R,
    digest: Digest,
    size: Option<u64>,
    read: u64,
    /// `None` once the end was reached and checked.
    hasher: Option<Hasher>,
}

impl<R: Read> VerifyingReader<R> {
    /// Wraps `inner`, which must yield exactly the content named by
    /// `digest` (and `size` bytes, if given).
    pub fn new(inner: R, digest: Digest, size: Option<u64>) -> Result<Self, VerifyError> {
        let hasher = Some(Hasher::for_digest(&digest)?);
        Ok(Self {
            inner,
            digest,
            size,
            read: 0,
            hasher,
        })
    }

    /// The digest being checked.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// Reads whatever the consumer left unread and reports whether the
    /// whole content matched. A consumer that stops before end of file (a
    /// tar reader at the end-of-archive marker, say) must call this, or
    /// nothing was verified.
    pub fn finish(mut self) -> io::Result<()> {
        io::copy(&mut self, &mut io::sink()).map(|_| ())
    }

    fn fail(&self, error: VerifyError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, error)
    }

    fn size_error(&self, actual: u64, expected: u64) -> io::Error {
        self.fail(VerifyError::SizeMismatch {
            digest: self.digest.clone(),
            expected,
            actual,
        })
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.hasher.is_none() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            if let Some(expected) = self.size.filter(|&s| s != self.read) {
                return Err(self.size_error(self.read, expected));
            }
            let hasher = self.hasher.take().expect("checked just above");
            return match compare(&self.digest, hasher) {
                Ok(()) => Ok(0),
                Err(e) => Err(self.fail(e)),
            };
        }
        let chunk = buf.get(..n).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "reader returned more than asked",
            )
        })?;
        self.read += n as u64;
        if let Some(expected) = self.size.filter(|&s| self.read > s) {
            return Err(self.size_error(self.read, expected));
        }
        self.hasher
            .as_mut()
            .expect("checked at the start")
            .update(chunk);
        Ok(n)
    }
}

impl VerifyError {
    /// The verification failure inside an I/O error from a
    /// [`VerifyingReader`] (possibly under other readers), if that is what
    /// it is.
    pub fn from_io(error: &io::Error) -> Option<&VerifyError> {
        let mut source: Option<&(dyn std::error::Error + 'static)> = error
            .get_ref()
            .map(|e| e as &(dyn std::error::Error + 'static));
        while let Some(e) = source {
            if let Some(v) = e.downcast_ref::<VerifyError>() {
                return Some(v);
            }
            if let Some(io) = e.downcast_ref::<io::Error>() {
                source = io
                    .get_ref()
                    .map(|e| e as &(dyn std::error::Error + 'static));
                continue;
            }
            source = e.source();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(r: impl Read) -> io::Result<Vec<u8>> {
        let mut r = r;
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn good_content_passes() {
        let data = b"hello layer".repeat(10_000);
        let digest = sha256_digest(&data);
        let r = VerifyingReader::new(&data[..], digest.clone(), Some(data.len() as u64))
            .expect("sha256");
        assert_eq!(read_all(r).expect("verifies"), data);
        check_bytes(&data, &digest, Some(data.len() as u64)).expect("verifies");
    }

    #[test]
    fn flipped_byte_is_a_digest_mismatch() {
        let data = b"hello layer".repeat(100);
        let digest = sha256_digest(&data);
        let mut bad = data.clone();
        bad[500] ^= 1;
        let r = VerifyingReader::new(&bad[..], digest.clone(), Some(data.len() as u64))
            .expect("sha256");
        let err = read_all(r).expect_err("must fail");
        assert!(matches!(
            VerifyError::from_io(&err),
            Some(VerifyError::DigestMismatch { expected, .. }) if *expected == digest
        ));
        assert!(err.to_string().contains(digest.digest()), "{err}");
        assert!(check_bytes(&bad, &digest, None).is_err());
    }

    #[test]
    fn wrong_length_is_a_size_mismatch() {
        let data = b"0123456789".to_vec();
        let digest = sha256_digest(&data);
        for (content, size) in [(&data[..9], 10), (&data[..], 9), (&data[..], 11)] {
            let r = VerifyingReader::new(content, digest.clone(), Some(size)).expect("sha256");
            let err = read_all(r).expect_err("must fail");
            assert!(
                matches!(
                    VerifyError::from_io(&err),
                    Some(VerifyError::SizeMismatch { expected, .. }) if *expected == size
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn sha512_and_unknown_algorithms() {
        let data = b"abc";
        let hex = hex::encode(sha2::Sha512::digest(data));
        let digest = Digest::try_from(format!("sha512:{hex}")).expect("valid");
        check_bytes(data, &digest, Some(3)).expect("sha512 verifies");
        let odd = Digest::try_from("blake3:abcdef").expect("syntactically valid");
        assert!(matches!(
            check_bytes(data, &odd, None),
            Err(VerifyError::UnsupportedAlgorithm { .. })
        ));
    }

    #[test]
    fn stops_after_a_successful_check() {
        let data = b"x".to_vec();
        let mut r = VerifyingReader::new(&data[..], sha256_digest(&data), None).expect("sha256");
        let mut buf = [0u8; 4];
        assert_eq!(r.read(&mut buf).expect("data"), 1);
        assert_eq!(r.read(&mut buf).expect("verified"), 0);
        assert_eq!(r.read(&mut buf).expect("still eof"), 0);
        assert_eq!(r.bytes_read(), 1);
    }

    #[test]
    fn finish_checks_what_was_left_unread() {
        let data = b"abcdef".to_vec();
        let mut r = VerifyingReader::new(&data[..], sha256_digest(&data), Some(6)).expect("ok");
        let mut two = [0u8; 2];
        r.read_exact(&mut two).expect("data");
        r.finish().expect("the rest verifies");
        let mut bad = VerifyingReader::new(&data[..], sha256_digest(b"other"), None).expect("ok");
        bad.read_exact(&mut two).expect("data");
        assert!(bad.finish().is_err());
    }
}
