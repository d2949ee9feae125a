//! The keys configured for a remote, kept in the composefs repository so
//! that a later pull of the same location (an `upgrade`, or a pull
//! without key options) verifies as the first one did.
//!
//! Each remote is one small text file, `ostree-remotes/<sha256 of the
//! location>` under the repository:
//!
//! ```text
//! location = http://example.test/repo
//! ed25519 = <base64 of a 32-byte public key>
//! gpg-keyring = <base64 of a binary keyring>
//! ```
//!
//! one `ed25519` line per key, at most one `gpg-keyring`. It is written
//! whole to a temporary file, synced and renamed over the old one, so a
//! crash leaves either the old keys or the new ones. A file we cannot
//! read is an error, never "no keys": that would turn verification off.

use std::io::Write;
use std::path::PathBuf;

use cfs_erofs::digest::FsVerityDigest;
use cfs_images::Repository;
use sha2::{Digest, Sha256};

use crate::error::OstreeError;
use crate::sign::{TrustedKeys, MAX_SIGNATURES_SIZE};

/// The directory of remote files, under the repository.
const REMOTES_DIR: &str = "ostree-remotes";

/// A location as remotes are keyed: trailing `/`s do not make another
/// remote.
fn normalize(location: &str) -> &str {
    let trimmed = location.trim_end_matches('/');
    if trimmed.is_empty() {
        location
    } else {
        trimmed
    }
}

fn remote_file<H: FsVerityDigest>(repo: &Repository<H>, location: &str) -> PathBuf {
    let name = hex::encode(Sha256::digest(normalize(location).as_bytes()));
    repo.path().join(REMOTES_DIR).join(name)
}

/// The keys stored for `location`; empty if none are.
pub fn load_keys<H: FsVerityDigest>(
    repo: &Repository<H>,
    location: &str,
) -> Result<TrustedKeys, OstreeError> {
    let path = remote_file(repo, location);
    let what = || format!("reading the keys of remote {location} ({})", path.display());
    let text = match std::fs::read(&path) {
        Ok(data) if data.len() as u64 <= 2 * MAX_SIGNATURES_SIZE => String::from_utf8(data)
            .map_err(|_| OstreeError::Config(format!("{}: not UTF-8", what())))?,
        Ok(_) => return Err(OstreeError::Config(format!("{}: too large", what()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(TrustedKeys::default()),
        Err(e) => return Err(OstreeError::io(what(), e)),
    };
    parse(&text, location).map_err(|why| OstreeError::Config(format!("{}: {why}", what())))
}

fn parse(text: &str, location: &str) -> Result<TrustedKeys, String> {
    let mut keys = TrustedKeys::default();
    let mut named = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (key, value) = line
            .split_once(" = ")
            .ok_or_else(|| format!("bad line {line:?}"))?;
        match key {
            "location" => named = Some(value),
            "ed25519" => keys.add_ed25519(value).map_err(|e| e.to_string())?,
            "gpg-keyring" => {
                let data = openssl::base64::decode_block(value)
                    .map_err(|_| "gpg-keyring is not base64".to_owned())?;
                keys.add_gpg_keyring(&data).map_err(|e| e.to_string())?;
            }
            other => return Err(format!("unknown key {other:?}")),
        }
    }
    if named != Some(normalize(location)) {
        return Err(format!("it is for location {named:?}"));
    }
    if keys.is_empty() {
        return Err("it names no key".into());
    }
    Ok(keys)
}

fn to_text(location: &str, keys: &TrustedKeys) -> String {
    let mut text = format!("location = {}\n", normalize(location));
    for key in keys.ed25519_keys() {
        text.push_str(&format!("ed25519 = {key}\n"));
    }
    let keyring = keys.gpg_keyring();
    if !keyring.is_empty() {
        let encoded = openssl::base64::encode_block(keyring.as_bytes());
        // encode_block wraps lines; the file keeps one value a line.
        text.push_str(&format!("gpg-keyring = {}\n", encoded.replace('\n', "")));
    }
    text
}

/// Stores `keys` as those of `location`, replacing any stored before.
pub fn save_keys<H: FsVerityDigest>(
    repo: &Repository<H>,
    location: &str,
    keys: &TrustedKeys,
) -> Result<(), OstreeError> {
    if location.contains(['\n', '\r']) {
        return Err(OstreeError::BadUrl(location.escape_debug().to_string()));
    }
    let path = remote_file(repo, location);
    let dir = path.parent().unwrap_or(repo.path());
    let what = format!("storing the keys of remote {location} ({})", path.display());
    let io = |e| OstreeError::io(what.clone(), e);
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut file = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io)?;
    file.write_all(to_text(location, keys).as_bytes())
        .map_err(io)?;
    file.as_file().sync_all().map_err(io)?;
    file.persist(&path).map_err(|e| io(e.error))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_bad_files_are_errors() {
        let mut keys = TrustedKeys::default();
        let ed = openssl::base64::encode_block(&[7u8; 32]);
        keys.add_ed25519(&ed).unwrap();
        keys.add_gpg_keyring(&[0x99, 0, 1, 4]).unwrap();
        let text = to_text("http://h/repo/", &keys);
        let back = parse(&text, "http://h/repo").unwrap();
        assert_eq!(back.ed25519_keys(), vec![ed]);
        assert_eq!(back.gpg_keyring(), keys.gpg_keyring());
        assert!(parse(&text, "http://h/other").is_err());
        assert!(parse("location = http://h/repo\n", "http://h/repo").is_err());
        assert!(parse(&format!("{text}verify = no\n"), "http://h/repo").is_err());
    }
}
