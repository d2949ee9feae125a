//! Checking OpenPGP (GPG) signatures with `gpgv`, the verifier apt uses
//! on hostile repository metadata.
//!
//! ostree itself goes through gpgme to `gpg`; we run `gpgv` instead: it
//! only verifies, treats every key of the keyring it is given as trusted
//! (the keyring *is* the trust decision), and has no key database to
//! set up. Each signature gets its own run, in a private temporary
//! directory holding only the configured keyring, the signed bytes and
//! that signature, with `--homedir` there so that no user or system
//! keyring is ever consulted.
//!
//! The exit code is not trusted. A signature counts only when gpgv's
//! status output (`--status-fd`, the protocol of GnuPG's `doc/DETAILS`)
//! has a `GOODSIG` line (a good signature, not expired, by a key neither
//! expired nor revoked: for those gpgv says `EXPSIG`, `EXPKEYSIG` or
//! `REVKEYSIG` instead) and a `VALIDSIG` line whose fingerprint is that
//! key's. gpgv knows no key but the keyring's, so that key is one of the
//! configured ones.

use std::process::{Command, Stdio};

use crate::error::OstreeError;

/// The most GPG signatures of one commit or summary that are tried:
/// each costs a process, and ostree's own signers add one or two.
pub const MAX_GPG_SIGNATURES: usize = 32;

/// Public keys as `gpgv --keyring` reads them: binary OpenPGP
/// transferable public keys (what `gpg --export` writes), one after
/// the other.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Keyring {
    packets: Vec<u8>,
}

impl Keyring {
    /// Whether no key was added.
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// The keyring's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.packets
    }

    /// Adds the keys of an exported keyring, binary or ASCII-armored
    /// (`gpg --export [--armor]`, what `ostree remote add --gpg-import`
    /// takes). gpgv reads neither armor nor GnuPG's keybox
    /// (`pubring.kbx`), so armor is removed here and anything that does
    /// not start with a public key packet is refused.
    pub fn add(&mut self, data: &[u8]) -> Result<(), OstreeError> {
        let binary = match std::str::from_utf8(data) {
            Ok(text) if text.contains("-----BEGIN PGP PUBLIC KEY BLOCK-----") => dearmor(text)?,
            _ => data.to_vec(),
        };
        if !starts_with_public_key(&binary) {
            return Err(OstreeError::BadKey(
                "a GPG keyring must hold exported public keys (gpg --export KEYID), \
                 not a keybox or other data"
                    .into(),
            ));
        }
        self.packets.extend_from_slice(&binary);
        Ok(())
    }
}

/// Whether `data` opens with an OpenPGP public key packet (tag 6), in
/// the old or the new packet header format (RFC 9580, 4.2).
fn starts_with_public_key(data: &[u8]) -> bool {
    const PUBLIC_KEY: u8 = 6;
    match data.first() {
        Some(&b) if b & 0xC0 == 0xC0 => b & 0x3F == PUBLIC_KEY,
        Some(&b) if b & 0xC0 == 0x80 => (b >> 2) & 0x0F == PUBLIC_KEY,
        _ => false,
    }
}

/// The binary packets of every public key block in ASCII armor (RFC
/// 9580, 6.2): header lines (`Name: value`) are skipped, the optional
/// CRC-24 line (`=XXXX`) ignored, as the RFC allows.
fn dearmor(text: &str) -> Result<Vec<u8>, OstreeError> {
    let bad = |why: &str| OstreeError::BadKey(format!("armored GPG keyring: {why}"));
    let mut out = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if line != "-----BEGIN PGP PUBLIC KEY BLOCK-----" {
            continue;
        }
        let mut body = String::new();
        let mut ended = false;
        for line in lines.by_ref() {
            if line == "-----END PGP PUBLIC KEY BLOCK-----" {
                ended = true;
                break;
            }
            if body.is_empty() && (line.is_empty() || line.contains(':')) {
                continue;
            }
            if !line.starts_with('=') {
                body.push_str(line);
            }
        }
        if !ended {
            return Err(bad("a key block has no END line"));
        }
        out.extend(openssl::base64::decode_block(&body).map_err(|_| bad("not base64"))?);
    }
    Ok(out)
}

/// What gpgv made of one signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A good signature by the key with this (primary key) fingerprint.
    Good(String),
    /// Not accepted, and why.
    Refused(String),
}

/// A private directory with the keyring and the signed bytes, in which
/// each signature is checked by its own `gpgv` run.
#[derive(Debug)]
pub struct Gpgv {
    dir: tempfile::TempDir,
}

impl Gpgv {
    /// Prepares to check signatures over `signed` against `keyring`.
    pub fn new(keyring: &Keyring, signed: &[u8]) -> Result<Self, OstreeError> {
        let io = |what: &str| {
            let what = what.to_owned();
            move |e| OstreeError::io(what, e)
        };
        // tempfile makes the directory 0700: nobody else can swap a file.
        let dir = tempfile::Builder::new()
            .prefix("cfs-gpgv-")
            .tempdir()
            .map_err(io("creating a directory for gpgv"))?;
        std::fs::write(dir.path().join("keyring.gpg"), keyring.as_bytes())
            .map_err(io("writing the keyring for gpgv"))?;
        std::fs::write(dir.path().join("signed"), signed)
            .map_err(io("writing the signed data for gpgv"))?;
        Ok(Self { dir })
    }

    /// Runs gpgv on one detached `signature`.
    pub fn check(&self, signature: &[u8]) -> Result<Verdict, OstreeError> {
        let dir = self.dir.path();
        let signature_path = dir.join("signature");
        std::fs::write(&signature_path, signature)
            .map_err(|e| OstreeError::io("writing a signature for gpgv", e))?;
        let output = Command::new("gpgv")
            .arg("--homedir")
            .arg(dir)
            .arg("--keyring")
            .arg(dir.join("keyring.gpg"))
            .args(["--status-fd", "1"])
            .arg(&signature_path)
            .arg(dir.join("signed"))
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                OstreeError::io("running gpgv (from GnuPG) to check a GPG signature", e)
            })?;
        let status = String::from_utf8_lossy(&output.stdout);
        Ok(verdict(&status).unwrap_or_else(|| {
            let said = String::from_utf8_lossy(&output.stderr);
            Verdict::Refused(last_line(&said))
        }))
    }
}

/// Reads gpgv's status lines; `None` if they say nothing about a
/// signature (gpgv found none to check).
fn verdict(status: &str) -> Option<Verdict> {
    let mut good = Vec::new();
    let mut valid = Vec::new();
    let mut problems = Vec::new();
    for line in status.lines() {
        let Some(line) = line.strip_prefix("[GNUPG:] ") else {
            continue;
        };
        let fields: Vec<&str> = line.split(' ').collect();
        let key = fields.get(1).copied().unwrap_or("?");
        match fields[0] {
            "GOODSIG" => good.push(key),
            // The tenth field, when present, is the primary key's.
            "VALIDSIG" => valid.push((key, fields.get(10).copied().unwrap_or(key))),
            "BADSIG" => problems.push(format!("bad signature by key {key}")),
            "EXPSIG" => problems.push(format!("expired signature by key {key}")),
            "EXPKEYSIG" => problems.push(format!("signature by key {key}, which has expired")),
            "REVKEYSIG" => problems.push(format!("signature by key {key}, which is revoked")),
            "ERRSIG" => problems.push(match fields.get(6) {
                Some(&"9") => format!("signature by key {key}, which is not in the keyring"),
                Some(&"4") => format!("signature by key {key} with an unsupported algorithm"),
                _ => format!("signature by key {key} cannot be checked"),
            }),
            _ => {}
        }
    }
    let upper = |s: &str| s.to_ascii_uppercase();
    for id in good {
        if let Some((_, primary)) = valid
            .iter()
            .find(|(fpr, _)| upper(fpr).ends_with(&upper(id)))
        {
            return Some(Verdict::Good(upper(primary)));
        }
    }
    if problems.is_empty() {
        None
    } else {
        Some(Verdict::Refused(problems.join(", ")))
    }
}

/// The last line gpgv wrote to stderr, as plain printable text: it may
/// quote the hostile signature.
fn last_line(stderr: &str) -> String {
    let line = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
    let clean: String = line.chars().filter(|c| !c.is_control()).take(200).collect();
    if clean.is_empty() {
        "gpgv found no signature".into()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn status_lines_decide_not_exit_codes() {
        let fpr = "B25DF436CA883F8C24373E2D5BAC38F5E3198314";
        let good = format!(
            "[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG 5BAC38F5E3198314 A <a@x>\n\
             [GNUPG:] VALIDSIG {fpr} 2026-12-04 1796375658 0 4 0 1 10 00 {fpr}\n"
        );
        assert_eq!(verdict(&good), Some(Verdict::Good(fpr.into())));
        // VALIDSIG alone (as for an expired signature) is not enough.
        let expired = format!(
            "[GNUPG:] EXPSIG 5BAC38F5E3198314 A\n[GNUPG:] VALIDSIG {fpr} x 1 2 4 0 1 10 00 {fpr}\n"
        );
        assert!(matches!(verdict(&expired), Some(Verdict::Refused(_))));
        // GOODSIG for a key no VALIDSIG names is not enough either.
        let unmatched = format!("[GNUPG:] GOODSIG 0000000000000000 A\n[GNUPG:] VALIDSIG {fpr}\n");
        assert_eq!(verdict(&unmatched), None);
        // Only lines of the status protocol count.
        assert_eq!(verdict(&good.replace("[GNUPG:] ", "gpgv: ")), None);
        let missing = "[GNUPG:] ERRSIG F6F1DA1DA2A7E9C7 22 8 00 1796375658 9 -\n";
        assert_eq!(
            verdict(missing),
            Some(Verdict::Refused(
                "signature by key F6F1DA1DA2A7E9C7, which is not in the keyring".into()
            ))
        );
    }

    #[test]
    fn keyrings_must_start_with_a_public_key() {
        let mut keyring = Keyring::default();
        // Old format tag 6 with a two-byte length; new format tag 6.
        keyring.add(&[0x99, 0, 1, 4]).unwrap();
        keyring.add(&[0xC6, 1, 4]).unwrap();
        for bad in [&b""[..], b"KBXf", &[0x89, 0, 1, 4], &[0xC2, 1, 4]] {
            assert!(Keyring::default().add(bad).is_err(), "{bad:?}");
        }
        let armored = "-----BEGIN PGP PUBLIC KEY BLOCK-----\nComment: x\n\nmQAB\nBA==\n=abcd\n\
                       -----END PGP PUBLIC KEY BLOCK-----\n";
        let mut keyring = Keyring::default();
        keyring.add(armored.as_bytes()).unwrap();
        assert_eq!(keyring.as_bytes(), [0x99, 0, 1, 4]);
        let unended = armored.replace("-----END PGP PUBLIC KEY BLOCK-----", "");
        assert!(Keyring::default().add(unended.as_bytes()).is_err());
    }

    /// Runs `gpg` with a private home; `None` if gpg is not installed.
    fn gpg(home: &Path, args: &[&str]) -> Option<Vec<u8>> {
        let out = Command::new("gpg")
            .arg("--homedir")
            .arg(home)
            .args(["--batch", "--passphrase", ""])
            .args(args)
            .output()
            .ok()?;
        assert!(out.status.success(), "gpg {args:?}: {out:?}");
        Some(out.stdout)
    }

    #[test]
    fn gpgv_accepts_only_detached_signatures_by_keyring_keys() {
        let work = tempfile::tempdir().unwrap();
        let home = work.path().join("home");
        std::fs::create_dir(&home).unwrap();
        let uid = "Unit <unit@example.test>";
        if gpg(&home, &["--quick-gen-key", uid, "ed25519", "sign", "never"]).is_none()
            || Command::new("gpgv").arg("--version").output().is_err()
        {
            eprintln!("SKIPPED gpgv test: gpg or gpgv is not installed");
            return;
        }
        let data = work.path().join("data");
        std::fs::write(&data, b"commit bytes").unwrap();
        let data = data.to_str().unwrap();
        let detached = gpg(&home, &["--detach-sign", "-o", "-", data]).unwrap();
        let inline = gpg(&home, &["--sign", "-o", "-", data]).unwrap();
        let mut keyring = Keyring::default();
        keyring.add(&gpg(&home, &["--export"]).unwrap()).unwrap();
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(&home)
            .args(["--kill", "gpg-agent"])
            .output();

        let gpgv = Gpgv::new(&keyring, b"commit bytes").unwrap();
        assert!(matches!(gpgv.check(&detached).unwrap(), Verdict::Good(_)));
        // A signed message with the data inside is not a signature of
        // the commit, even though gpgv finds it good on its own.
        assert!(matches!(gpgv.check(&inline).unwrap(), Verdict::Refused(_)));
        assert!(matches!(gpgv.check(b"").unwrap(), Verdict::Refused(_)));
        let other = Gpgv::new(&keyring, b"commit bytez").unwrap();
        let verdict = other.check(&detached).unwrap();
        assert!(
            matches!(&verdict, Verdict::Refused(why) if why.starts_with("bad signature")),
            "{verdict:?}"
        );
    }
}
