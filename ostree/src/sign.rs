//! Verifying ostree signatures on commits and summaries against keys
//! configured for a remote.
//!
//! ostree keeps signatures beside what they sign, in an `a{sv}`: a
//! commit's `.commitmeta`, a repository's `summary.sig`. Two keys are
//! read there, each an `aay` list of signatures over the exact bytes of
//! the commit object or the summary file:
//! - `ostree.sign.ed25519`: 64-byte raw Ed25519 signatures, checked with
//!   OpenSSL against 32-byte public keys given in base64, as
//!   `ostree sign --keys-file` takes them;
//! - `ostree.gpgsigs`: binary OpenPGP detached signatures, checked by
//!   `gpgv` against a keyring of exported public keys ([`crate::gpg`]).
//!
//! When any key is configured, a commit or summary is accepted only if
//! at least one signature verifies with one of them (ostree's rule for a
//! remote with verification on); a missing `.commitmeta`, no signature
//! of a configured kind, or only bad ones, are refused. Signatures of a
//! kind no key is configured for are ignored.

use std::fmt;

use gvariant::aligned_bytes::{AlignedBuf, AsAligned};
use gvariant::{gv, Marker, Structure};
use openssl::pkey::{Id, PKey, Public};
use openssl::sign::Verifier;

use crate::error::OstreeError;
use crate::gpg::{Gpgv, Keyring, Verdict, MAX_GPG_SIGNATURES};

/// The `a{sv}` key of Ed25519 signatures.
const ED25519_KEY: &str = "ostree.sign.ed25519";
/// The `a{sv}` key of OpenPGP signatures.
const GPG_KEY: &str = "ostree.gpgsigs";
/// The largest detached metadata or key file read.
pub const MAX_SIGNATURES_SIZE: u64 = 16 << 20;

/// The keys a remote's commits and summaries must be signed with.
#[derive(Default, Clone)]
pub struct TrustedKeys {
    ed25519: Vec<PKey<Public>>,
    gpg: Keyring,
}

impl fmt::Debug for TrustedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustedKeys")
            .field("ed25519", &self.ed25519.len())
            .field("gpg_keyring_bytes", &self.gpg.as_bytes().len())
            .finish()
    }
}

/// The key a good signature was made with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signer {
    /// An Ed25519 key, base64 of its 32 bytes.
    Ed25519(String),
    /// A GPG key, by its primary key's fingerprint (hex).
    Gpg(String),
}

impl fmt::Display for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Signer::Ed25519(key) => write!(f, "ed25519 key {key}"),
            Signer::Gpg(fingerprint) => write!(f, "GPG key {fingerprint}"),
        }
    }
}

impl TrustedKeys {
    /// Whether any key is configured (then signatures are required).
    pub fn is_empty(&self) -> bool {
        self.ed25519.is_empty() && self.gpg.is_empty()
    }

    /// Adds Ed25519 public keys: base64 of the 32 raw bytes, one a line
    /// (blank lines ignored), as ostree's `--keys-file` holds them.
    pub fn add_ed25519(&mut self, text: &str) -> Result<(), OstreeError> {
        let mut added = 0;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let bad = |why: &str| OstreeError::BadKey(format!("ed25519 key {line:?}: {why}"));
            let raw = openssl::base64::decode_block(line).map_err(|_| bad("not base64"))?;
            if raw.len() != 32 {
                return Err(bad(&format!("{} bytes, not 32", raw.len())));
            }
            let key = PKey::public_key_from_raw_bytes(&raw, Id::ED25519)
                .map_err(|e| bad(&e.to_string()))?;
            self.ed25519.push(key);
            added += 1;
        }
        if added == 0 {
            return Err(OstreeError::BadKey("no ed25519 key given".into()));
        }
        Ok(())
    }

    /// Adds the GPG public keys of an exported keyring, binary or
    /// ASCII-armored (see [`Keyring::add`]).
    pub fn add_gpg_keyring(&mut self, data: &[u8]) -> Result<(), OstreeError> {
        self.gpg.add(data)
    }

    /// The Ed25519 keys, base64 of their 32 bytes each.
    pub fn ed25519_keys(&self) -> Vec<String> {
        self.ed25519.iter().map(ed25519_text).collect()
    }

    /// The GPG keyring (binary; empty if none is configured).
    pub fn gpg_keyring(&self) -> &Keyring {
        &self.gpg
    }

    /// Checks that `signatures` (an `a{sv}`, absent if `None`) holds a
    /// signature over `signed` by one of the keys, and says whose.
    /// `what` names the signed thing in errors.
    pub fn verify(
        &self,
        what: &str,
        signed: &[u8],
        signatures: Option<&[u8]>,
    ) -> Result<Signer, OstreeError> {
        let refused = |reason: String| OstreeError::Signature {
            what: what.to_owned(),
            reason,
        };
        let Some(signatures) = signatures else {
            return Err(refused("it is not signed (no detached signatures)".into()));
        };
        let mut tried = 0;
        let mut problems = Vec::new();
        if !self.ed25519.is_empty() {
            let found = signatures_of(signatures, ED25519_KEY);
            tried += found.len();
            for signature in &found {
                if let Some(key) = self
                    .ed25519
                    .iter()
                    .find(|key| ed25519_ok(key, signature, signed))
                {
                    return Ok(Signer::Ed25519(ed25519_text(key)));
                }
            }
            if !found.is_empty() {
                problems.push("ed25519: none by a configured key".to_owned());
            }
        }
        if !self.gpg.is_empty() {
            let found = signatures_of(signatures, GPG_KEY);
            if !found.is_empty() {
                let gpgv = Gpgv::new(&self.gpg, signed)?;
                for signature in found.iter().take(MAX_GPG_SIGNATURES) {
                    tried += 1;
                    match gpgv.check(signature)? {
                        Verdict::Good(fingerprint) => return Ok(Signer::Gpg(fingerprint)),
                        Verdict::Refused(why) => problems.push(format!("gpg: {why}")),
                    }
                }
            }
        }
        if tried == 0 {
            return Err(refused(
                "it has no signature of a kind a key is configured for".into(),
            ));
        }
        Err(refused(format!(
            "none of its {tried} signatures verifies with a configured key ({})",
            problems.join("; ")
        )))
    }
}

fn ed25519_text(key: &PKey<Public>) -> String {
    // A key built from raw bytes always gives them back.
    let raw = key.raw_public_key().unwrap_or_default();
    openssl::base64::encode_block(&raw)
}

/// The signatures under `name` (an `aay`) in an `a{sv}`.
fn signatures_of(data: &[u8], name: &str) -> Vec<Vec<u8>> {
    let buf: AlignedBuf = data.to_vec().into();
    let mut found = Vec::new();
    for entry in gv!("a{sv}").cast(buf.as_aligned()) {
        let (key, value) = entry.to_tuple();
        if key.to_str() == name {
            if let Some(items) = value.get(gv!("aay")) {
                found.extend(items.iter().map(|s| s.to_vec()));
            }
        }
    }
    found
}

fn ed25519_ok(key: &PKey<Public>, signature: &[u8], signed: &[u8]) -> bool {
    signature.len() == 64
        && Verifier::new_without_digest(key)
            .and_then(|mut v| v.verify_oneshot(signature, signed))
            .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_accepts_the_key_and_refuses_others() {
        let secret = PKey::generate_ed25519().unwrap();
        let mut signer = openssl::sign::Signer::new_without_digest(&secret).unwrap();
        let signature = signer.sign_oneshot_to_vec(b"commit bytes").unwrap();
        let mut keys = TrustedKeys::default();
        let raw = secret.raw_public_key().unwrap();
        keys.add_ed25519(&openssl::base64::encode_block(&raw))
            .unwrap();
        let key = &keys.ed25519[0];
        assert!(ed25519_ok(key, &signature, b"commit bytes"));
        assert!(!ed25519_ok(key, &signature, b"commit bytez"));
        assert!(!ed25519_ok(key, &signature[..63], b"commit bytes"));
        let other = PKey::generate_ed25519().unwrap();
        let other =
            PKey::public_key_from_raw_bytes(&other.raw_public_key().unwrap(), Id::ED25519).unwrap();
        assert!(!ed25519_ok(&other, &signature, b"commit bytes"));
        assert!(keys.verify("commit", b"commit bytes", None).is_err());
        for bad in ["not base64!", "AAAA", ""] {
            assert!(TrustedKeys::default().add_ed25519(bad).is_err(), "{bad:?}");
        }
    }
}
