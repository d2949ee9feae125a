//! Our dumpfile parser and printer against the reference crate (composefs
//! 0.9.4): every input is parsed and printed by both; the printed texts
//! must be byte-identical, and an input one side refuses the other must
//! refuse too, apart from the differences `cfs_erofs::dumpfile` documents.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use cfs_erofs::digest::Sha256Digest;
use cfs_erofs::dumpfile::{self, DumpfileError, LineError};
use cfs_erofs::fsverity::FsVerityHasher;
use cfs_erofs::tree::{FileNameError, LeafContent, RegularFile};
use cfs_tests::{random_tree, TreeParams};
use composefs::fsverity::Sha256HashValue;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How the two implementations treated one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Both accepted it and printed the same bytes.
    Same,
    /// Both refused it.
    BothRefused,
    /// The reference accepted it and we refused it for a documented reason.
    Divergent,
    /// The reference's debug check of its own tree failed (a replaced
    /// entry left an unreferenced leaf; a release build accepts it), and
    /// we accepted it.
    TheirsPanicked,
}

/// The reference's `debug_assert!` message after a parse.
const REFERENCE_FSCK: &str = "dumpfile parsing produced invalid filesystem";

fn quiet_reference_fsck_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let message = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("");
            if !message.contains(REFERENCE_FSCK) {
                default(info);
            }
        }));
    });
}

/// `Ok(Some(text))`, `Ok(None)` if it panicked, or `Err(message)`.
fn theirs(text: &str) -> Result<Option<Vec<u8>>, String> {
    let parsed = panic::catch_unwind(AssertUnwindSafe(|| {
        composefs::dumpfile::dumpfile_to_filesystem::<Sha256HashValue>(text)
    }));
    match parsed {
        Err(_) => Ok(None),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Ok(Ok(fs)) => {
            let mut out = Vec::new();
            composefs::dumpfile::write_dumpfile(&mut out, &fs).map_err(|e| format!("{e:#}"))?;
            Ok(Some(out))
        }
    }
}

fn ours(text: &str) -> Result<Vec<u8>, DumpfileError> {
    let fs = dumpfile::parse_dumpfile::<Sha256Digest>(text.as_bytes())?;
    let mut out = Vec::new();
    dumpfile::write_dumpfile(&mut out, &fs).expect("writing to a Vec");
    Ok(out)
}

/// The refusals `cfs_erofs::dumpfile` documents as stricter than the
/// reference.
fn documented_divergence(e: &DumpfileError) -> bool {
    matches!(
        e,
        DumpfileError::Line {
            error: LineError::NoDigest
                | LineError::Sparse(_)
                | LineError::Name(FileNameError::TooLong(_))
                | LineError::MtimeSeconds(_)
                | LineError::LinkedWhiteout(_)
                | LineError::TooLong {
                    field: "content",
                    ..
                },
            ..
        }
    )
}

fn compare(text: &str) -> Result<Verdict, String> {
    let show = |s: &[u8]| String::from_utf8_lossy(s).into_owned();
    match (theirs(text), ours(text)) {
        (Ok(Some(t)), Ok(o)) if t == o => {
            // Our output must also be a fixed point of the reference.
            match theirs(&show(&o)) {
                Ok(Some(again)) if again == o => Ok(Verdict::Same),
                other => Err(format!(
                    "the reference does not reproduce our output: {other:?}\n{}",
                    show(&o)
                )),
            }
        }
        (Ok(Some(t)), Ok(o)) => Err(format!(
            "outputs differ\n--- theirs\n{}--- ours\n{}",
            show(&t),
            show(&o)
        )),
        (Err(_), Err(_)) => Ok(Verdict::BothRefused),
        (Err(t), Ok(_)) => Err(format!("we accepted what the reference refused: {t}")),
        (Ok(Some(_)), Err(e)) if documented_divergence(&e) => Ok(Verdict::Divergent),
        (Ok(Some(_)), Err(e)) => Err(format!("we refused what the reference accepted: {e}")),
        (Ok(None), Ok(_)) => Ok(Verdict::TheirsPanicked),
        (Ok(None), Err(e)) if documented_divergence(&e) => Ok(Verdict::Divergent),
        (Ok(None), Err(e)) => Err(format!(
            "we refused what a release build of the reference accepts: {e}"
        )),
    }
}

const D: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const ROOT: &str = "/ 0 40755 2 0 0 0 0.0 - - -\n";

/// Inputs both sides accept, covering every feature of the format.
fn accepted_cases() -> Vec<String> {
    let ext = format!("{}/{}", &D[..2], &D[2..]);
    vec![
        format!(
            "/ 0 40555 2 0 0 0 1633950376.0 - - - trusted.foo1=bar-1 user.foo2=bar-2\n\
             /blockdev 0 60777 1 0 0 107690 1633950376.0 - - - trusted.bar=bar-2\n\
             /chardev 0 20777 1 0 0 10769 1633950376.0 - - - trusted.foo=bar-2\n\
             /escaped-xattr 0 100777 1 0 0 0 1633950376.0 - - - trusted.overlay.redirect=/foo\\n user.foo=bar-2\n\
             /external 42 100755 1 0 0 0 1731497312.0 {ext} - {D}\n\
             /fifo 0 10777 1 0 0 0 1633950376.0 - - - trusted.bar=bar-2\n\
             /inline 15 100777 1 0 0 0 1633950376.0 - FOOBAR\\nINAFILE\\n - user.foo=bar-2\n\
             /sock 0 140777 1 0 0 0 1633950376.0 - - -\n\
             /whiteout 0 20777 1 0 0 0 1633950376.0 - - - trusted.foo=bar-2\n"
        ),
        // Unsorted input, hardlinks (chained, across directories, with
        // junk in the ignored fields), nested directories.
        format!(
            "/ 0 40755 2 0 0 0 0.0 - - -\n\
             /z 0 40700 2 1 2 0 5.6 - - -\n\
             /z/f 3 100644 1 0 0 0 0.0 - abc - user.a=1\n\
             /a 0 40755 2 0 0 0 0.0 - - -\n\
             /a/h 0 @120000 - - - - 0.0 /z/f - -\n\
             /b 99 junk@100644 x y z w v /a/h trailing fields\n\
             /z/e 0 100600 1 0 0 0 0.0 {ext} - {D}\n\
             /y 0 @0 - - - - - /z/e\n"
        ),
        // Canonicalisation: sizes, declared links, numbers with `+` and
        // leading zeros, high mode bits, duplicate xattrs, CRLF, blank
        // lines, escapes in any case and with `+`.
        "\n \t\r\n/ 4096 +1040755 9 +0 007 0 +12.+034 - - - user.z=1 user.a=2 user.a=3 user.a=1\r\n\
         /l 999 120777 5 0 0 0 0.0 \\x2D - -\r\n\n\
         /f 999 100644 7 0 0 0 0.0 - \\xAB\\x+a\\x5C\\\\ -\n"
            .to_owned(),
        // Payloads of non-files and contents of external files are not
        // read; the root may be any type and a later `/` line replaces it.
        format!(
            "/ 0 100600 3 1 2 0 3.4 payload \\q nothex\n\
             /d 0 40755 2 0 0 0 0.0 \\q - -\n\
             /e 3 100644 1 0 0 0 0.0 any/path \\q {D}\n\
             / 0 40711 9 7 8 0 1.2 - - - user.root=yes\n"
        ),
        format!("{ROOT}/ 0 @0 - - - - - /nowhere\n"),
        // Escapes of every kind, names with spaces, `-`, `=` and UTF-8.
        format!(
            "{ROOT}/\\x20-\\x20= 0 40755 2 0 0 0 0.0 - - -\n\
             /\\x20-\\x20=/- 1 100644 1 0 0 0 0.0 - \\x2d - =empty-name user.\\x3d=\\x3d= user.v=\n\
             /\\x20-\\x20=/é€ 1 120777 1 0 0 0 0.0 é//./../x - -\n\
             /\\x20-\\x20=/\\t\\n\\r\\\\ 0 10644 1 0 0 0 0.0 - - -\n\
             /\\x20-\\x20=\\x2fsub 0 40755 2 0 0 0 0.0 - - -\n"
        ),
        // Limits, at the limit.
        format!(
            "/ 0 40755 2 0 0 0 9223372036854775807.999999999 - - - {}={}\n\
             /{} 0 100644 1 4294967295 4294967295 0 0.0 - {} -\n\
             /s 0 120777 1 0 0 0 0.0 {} - -\n\
             /b 0 60644 1 0 0 18446744073709551615 0.0 - - -\n\
             /x 18446744073709551615 100644 1 0 0 0 0.0 {ext} - {}\n",
            "k".repeat(255),
            "v".repeat(65535),
            "n".repeat(255),
            "c".repeat(512),
            "t".repeat(1024),
            D.to_uppercase(),
        ),
        // A replacement that orphans nothing: the old leaf is still
        // linked elsewhere; a replaced empty directory.
        "/ 0 40755 2 0 0 0 0.0 - - -\n\
         /a 0 100644 1 0 0 0 0.0 - first -\n\
         /b 0 @0 - - - - - /a\n\
         /a 0 100644 1 0 0 0 0.0 - second -\n\
         /d 0 40755 2 0 0 0 0.0 - - -\n\
         /d 0 40700 2 0 0 0 0.0 - - -\n"
            .to_owned(),
        // Whiteouts: a single link, and a second name after the first is
        // gone.
        "/ 0 40755 2 0 0 0 0.0 - - -\n\
         /w 0 20000 1 0 0 0 0.0 - - -\n\
         /x 0 @0 - - - - - /w\n\
         /x 0 10644 1 0 0 0 0.0 - - -\n"
            .to_owned(),
    ]
}

/// Inputs both sides refuse.
fn refused_cases() -> Vec<String> {
    let bad_lines = [
        "/a/ 0 40755 2 0 0 0 0.0 - - -",
        "//a 0 40755 2 0 0 0 0.0 - - -",
        "/a/. 0 40755 2 0 0 0 0.0 - - -",
        "/a/../b 0 40755 2 0 0 0 0.0 - - -",
        "a 0 40755 2 0 0 0 0.0 - - -",
        "/a\\x00 0 40755 2 0 0 0 0.0 - - -",
        "/a 0 40755 2 0 0 0 0.0 - -",
        "/a 0 @100644 - - - - 0.0",
        "/a 0 @100644 - - - -",
        "/a x 40755 2 0 0 0 0.0 - - -",
        "/a 0 40755 2 -1 0 0 0.0 - - -",
        "/a 0 40759 2 0 0 0 0.0 - - -",
        "/a 0 40755 4294967296 0 0 0 0.0 - - -",
        "/a 0 40755 2 0 0 0 12 - - -",
        "/a 0 40755 2 0 0 0 -1.0 - - -",
        "/a 0 40755 2 0 0 0 1.1000000000 - - -",
        "/a 0 0644 1 0 0 0 0.0 - - -",
        "/a 0 @40755 - - - - 0.0 /b - -",
        "/a 0 @100644 - - - - 0.0 - - -",
        "/a 0 @100644 - - - - 0.0 b - -",
        "/a 0 @100644 - - - - 0.0 /b - -",
        "/a 0 @100644 - - - - 0.0 / - -",
        "/a 0 10644 1 0 0 0 0.0 - foo -",
        "/a 0 120644 1 0 0 0 0.0 /t abc -",
        "/a 0 100644 1 0 0 0 0.0 - abc 00",
        "/a 0 40755 2 0 0 1 0.0 - - -",
        "/a 0 100644 1 0 0 1 0.0 - - -",
        "/a 0 140644 1 0 0 1 0.0 - - -",
        "/a 0 120644 1 0 0 0 0.0 - - -",
        "/a 0 120644 1 0 0 0 0.0 a\\x00 - -",
        "/a 0 100644 1 0 0 0 0.0 - a\\q -",
        "/a 0 100644 1 0 0 0 0.0 - a\\x4 -",
        "/a 0 100644 1 0 0 0 0.0 - a\\x-4 -",
        "/a 0 100644 1 0 0 0 0.0 - a\\ -",
        "/a 0 100644 1 0 0 0 0.0 - - - ",
        "/a 0 100644 1 0 0 0 0.0 - - - user.a",
        "/a 0 100644 1 0 0 0 0.0 - - - user\\x00a=b",
        "/a 1 100644 1 0 0 0 0.0 ab/cd - abcd",
        "/a 1 100644 1 0 0 0 0.0 ab/cd - -",
        "/w 0 20000 2 0 0 0 0.0 - - -",
        "/a/b 0 100644 1 0 0 0 0.0 - - -",
        "/a  0 40755 2 0 0 0 0.0 - - -",
    ];
    let mut cases: Vec<String> = bad_lines.iter().map(|l| format!("{ROOT}{l}\n")).collect();
    cases.extend([
        String::new(),
        "\n\n".to_owned(),
        "/a 0 40755 2 0 0 0 0.0 - - -\n".to_owned(),
        format!("/ 0 40755 2 0 0 0 0.0 - - {D}\n"),
        format!("{ROOT}/a 0 100644 1 0 0 0 0.0 - - -\n/a/b 0 40755 2 0 0 0 0.0 - - -\n"),
        format!("{ROOT}/a 0 100644 1 0 0 0 0.0 - {} -\n", "c".repeat(513)),
        format!("{ROOT}/a 0 120777 1 0 0 0 0.0 {} - -\n", "t".repeat(1025)),
        format!("{ROOT}/{} 0 40755 2 0 0 0 0.0 - - -\n", "p".repeat(4096)),
        format!("{ROOT}/a 0 100644 1 0 0 0 0.0 - - - {}=\n", "k".repeat(256)),
        format!(
            "{ROOT}/a 0 100644 1 0 0 0 0.0 - - - k={}\n",
            "v".repeat(65536)
        ),
        format!(
            "/ 0 40755 2 0 0 0 0.0 - - -{}\n",
            (0..258)
                .map(|i| format!(" {}{i:08}=", "k".repeat(247)))
                .collect::<String>()
        ),
    ]);
    cases
}

/// Inputs only the reference accepts, each for a documented reason.
fn divergent_cases() -> Vec<String> {
    vec![
        // External file without a digest (ExternalNoVerity).
        format!(
            "{ROOT}/a 5 100644 1 0 0 0 0.0 {}/{} - -\n",
            &D[..2],
            &D[2..]
        ),
        // Size without content (Sparse).
        format!("{ROOT}/a 5 100644 1 0 0 0 0.0 - - -\n"),
        // A 256-byte name.
        format!("{ROOT}/{} 0 10644 1 0 0 0 0.0 - - -\n", "n".repeat(256)),
        // Seconds past i64::MAX.
        format!("{ROOT}/a 0 10644 1 0 0 0 9223372036854775808.0 - - -\n"),
        // A whiteout hardlinked by a hardlink line.
        format!("{ROOT}/w 0 20000 1 0 0 0 0.0 - - -\n/x 0 @0 - - - - - /w\n"),
        // 511 bytes, then a two-byte character straddling the 512 limit.
        format!("{ROOT}/a 0 100644 1 0 0 0 0.0 - {}éé -\n", "c".repeat(511)),
    ]
}

#[test]
fn handwritten_cases() {
    quiet_reference_fsck_panics();
    let groups = [
        (accepted_cases(), Verdict::Same),
        (refused_cases(), Verdict::BothRefused),
        (divergent_cases(), Verdict::Divergent),
    ];
    let mut failures = Vec::new();
    for (cases, expected) in &groups {
        for text in cases {
            match compare(text) {
                Ok(verdict) if verdict == *expected => {}
                Ok(verdict) => {
                    failures.push(format!("expected {expected:?}, got {verdict:?}:\n{text}"))
                }
                Err(e) => failures.push(format!("{e}\ninput:\n{text}")),
            }
        }
    }
    // The reference's debug build panics when a replacement orphans a
    // leaf; we accept and drop it.
    let orphaning = format!("{ROOT}/a 0 100644 1 0 0 0 0.0 - x -\n/a 0 10644 1 0 0 0 0.0 - - -\n");
    assert_eq!(compare(&orphaning), Ok(Verdict::TheirsPanicked));
    for f in &failures {
        eprintln!("{f}\n");
    }
    assert!(
        failures.is_empty(),
        "{} handwritten cases failed",
        failures.len()
    );
}

/// Builds random dumpfile text line by line: parents before children but
/// otherwise unordered, every type, odd names written with every valid
/// escape spelling, hardlinks with junk in their ignored fields, xattrs
/// with duplicates, and now and then a broken line.
struct TextGen {
    rng: StdRng,
    out: String,
    /// Escaped spellings of the directories created so far.
    dirs: Vec<String>,
    /// Escaped spellings of leaf paths, for hardlink targets.
    leaves: Vec<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Field {
    Name,
    Optional,
    XattrName,
    XattrValue,
}

impl TextGen {
    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    /// `bytes` in one of its valid spellings.
    fn escape(&mut self, bytes: &[u8], field: Field) -> String {
        if field == Field::Optional {
            if bytes.is_empty() {
                return "-".into();
            }
            if bytes == b"-" {
                return if self.chance(0.5) { "\\x2d" } else { "\\x2D" }.into();
            }
        }
        let mut out = String::new();
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            // A literal multi-byte UTF-8 character, sometimes.
            if b >= 0xc0 {
                let len = if b >= 0xf0 {
                    4
                } else if b >= 0xe0 {
                    3
                } else {
                    2
                };
                if let Some(Ok(c)) = bytes.get(i..i + len).map(std::str::from_utf8) {
                    if self.chance(0.5) {
                        out.push_str(c);
                        i += len;
                        continue;
                    }
                }
            }
            let must_escape = !(0x21..=0x7e).contains(&b)
                || b == b'\\'
                || (b == b'=' && field == Field::XattrName);
            let named = match b {
                b'\\' => Some("\\\\"),
                b'\n' => Some("\\n"),
                b'\r' => Some("\\r"),
                b'\t' => Some("\\t"),
                _ => None,
            };
            match (named, must_escape, self.rng.random_range(0..4)) {
                (Some(n), _, 0..=2) => out.push_str(n),
                (_, false, 0..=2) => out.push(char::from(b)),
                (_, _, 3) if b < 16 => out.push_str(&format!("\\x+{b:x}")),
                (_, _, r) if r % 2 == 0 => out.push_str(&format!("\\x{b:02X}")),
                _ => out.push_str(&format!("\\x{b:02x}")),
            }
            i += 1;
        }
        out
    }

    fn random_bytes(&mut self, max: usize) -> Vec<u8> {
        const ATOMS: &[&str] = &[
            "a", "b", "-", "=", " ", "\\", "\n", "\t", "@", ".", "é", "€", "x",
        ];
        let len = self.rng.random_range(0..=max);
        let mut out = Vec::new();
        while out.len() < len {
            if self.chance(0.2) {
                out.push(self.rng.random());
            } else {
                let atom = ATOMS[self.rng.random_range(0..ATOMS.len())];
                out.extend_from_slice(atom.as_bytes());
            }
        }
        out
    }

    fn name(&mut self) -> Vec<u8> {
        loop {
            let mut name = self.random_bytes(12);
            name.retain(|&b| b != 0 && b != b'/');
            if !name.is_empty() && name != b"." && name != b".." {
                return name;
            }
        }
    }

    /// A number, sometimes spelled with `+` or leading zeros.
    fn number(&mut self, n: u64) -> String {
        match self.rng.random_range(0..10) {
            0 => format!("+{n}"),
            1 => format!("00{n}"),
            _ => n.to_string(),
        }
    }

    fn mtime(&mut self) -> String {
        let sec = match self.rng.random_range(0..4) {
            0 => 0,
            1 => self.rng.random_range(0..=i64::MAX as u64),
            _ => self.rng.random_range(0..2_000_000_000),
        };
        let nsec = match self.rng.random_range(0..3) {
            0 => 0,
            _ => self.rng.random_range(0..1_000_000_000),
        };
        format!("{}.{}", self.number(sec), self.number(nsec))
    }

    fn xattrs(&mut self) -> String {
        const PREFIXES: &[&[u8]] = &[
            b"user.",
            b"trusted.",
            b"security.",
            b"",
            b"trusted.overlay.",
        ];
        let mut out = String::new();
        let mut names: Vec<Vec<u8>> = Vec::new();
        for _ in 0..self.rng.random_range(0..4) {
            let name = if !names.is_empty() && self.chance(0.2) {
                names[self.rng.random_range(0..names.len())].clone()
            } else {
                let mut name = PREFIXES[self.rng.random_range(0..PREFIXES.len())].to_vec();
                let mut suffix = self.random_bytes(10);
                suffix.retain(|&b| b != 0);
                name.extend(suffix);
                name
            };
            names.push(name.clone());
            let value = if self.chance(0.1) {
                b"x".to_vec()
            } else {
                self.random_bytes(20)
            };
            let name = self.escape(&name, Field::XattrName);
            let value = self.escape(&value, Field::XattrValue);
            out.push_str(&format!(" {name}={value}"));
        }
        out
    }

    fn line(&mut self, path: &str, size: u64, mode: u32, rdev: u64, rest: (&str, &str, &str)) {
        let mode = mode | self.rng.random_range(0..=0o7777);
        let nlink = self.rng.random_range(1..4);
        let uid: u32 = if self.chance(0.3) {
            self.rng.random()
        } else {
            0
        };
        let gid = self.rng.random_range(0..3u32);
        let line = format!(
            "{path} {} {mode:o} {} {} {} {} {} {} {} {}{}\n",
            self.number(size),
            self.number(nlink),
            self.number(uid.into()),
            self.number(gid.into()),
            self.number(rdev),
            self.mtime(),
            rest.0,
            rest.1,
            rest.2,
            self.xattrs()
        );
        self.out.push_str(&line);
    }

    fn entry(&mut self) {
        let parent = self.dirs[self.rng.random_range(0..self.dirs.len())].clone();
        let name = self.name();
        let sep = if self.chance(0.05) { "\\x2f" } else { "/" };
        let path = if parent == "/" {
            format!("/{}", self.escape(&name, Field::Name))
        } else {
            format!("{parent}{sep}{}", self.escape(&name, Field::Name))
        };
        let kind = self.rng.random_range(0..12);
        match kind {
            0 | 1 => {
                let size = self.rng.random_range(0..5000);
                self.line(&path, size, 0o040000, 0, ("-", "-", "-"));
                self.dirs.push(path);
                return;
            }
            2 if !self.leaves.is_empty() => {
                let target = self.leaves[self.rng.random_range(0..self.leaves.len())].clone();
                let prefix = if self.chance(0.2) { "junk@" } else { "@" };
                let mode = [0o120000, 0o100644, 0, 0o20000][self.rng.random_range(0..4)];
                let line = format!("{path} 0 {prefix}{mode:o} - - - - 0.0 {target} - -\n");
                self.out.push_str(&line);
            }
            3 => {
                let digest: [u8; 32] = self.rng.random();
                let hex = hex_string(&digest);
                let digest = if self.chance(0.1) {
                    hex.to_uppercase()
                } else {
                    hex.clone()
                };
                let payload = format!("{}/{}", &hex[..2], &hex[2..]);
                let size = self.rng.random();
                self.line(&path, size, 0o100000, 0, (&payload, "-", &digest));
            }
            4 => {
                let mut target = self.random_bytes(30);
                target.retain(|&b| b != 0);
                target.push(b'/');
                let target = self.escape(&target, Field::Optional);
                self.line(&path, 0, 0o120000, 0, (&target, "-", "-"));
            }
            5 => {
                let rdev = self.rng.random();
                self.line(&path, 0, 0o060000, rdev, ("-", "-", "-"));
            }
            6 => {
                let rdev = if self.chance(0.5) {
                    0
                } else {
                    self.rng.random()
                };
                // Whiteouts must declare a single link.
                let line_start = self.out.len();
                self.line(&path, 0, 0o020000, rdev, ("-", "-", "-"));
                if rdev == 0 {
                    let line = self.out.split_off(line_start);
                    let mut fields: Vec<&str> = line.split(' ').collect();
                    fields[3] = "1";
                    self.out.push_str(&fields.join(" "));
                    // Not a hardlink target: that would be refused.
                    return;
                }
            }
            7 => self.line(&path, 0, 0o010000, 0, ("-", "-", "-")),
            8 => self.line(&path, 0, 0o140000, 0, ("-", "-", "-")),
            _ => {
                let content = self.random_bytes(60);
                let size = if content.is_empty() {
                    0
                } else {
                    self.rng.random_range(0..100)
                };
                let content = self.escape(&content, Field::Optional);
                self.line(&path, size, 0o100000, 0, ("-", &content, "-"));
            }
        }
        self.leaves.push(path);
    }

    /// Breaks one line in one of many ways; some of them are harmless.
    fn break_a_line(&mut self) {
        let lines: Vec<&str> = self.out.split_inclusive('\n').collect();
        let which = self.rng.random_range(0..lines.len());
        let mut fields: Vec<String> = lines[which]
            .trim_end_matches('\n')
            .split(' ')
            .map(str::to_owned)
            .collect();
        const JUNK: &[&str] = &[
            "",
            "-",
            "x",
            "\\",
            "\\x",
            "\\xzz",
            "0",
            "+",
            "-1",
            "/",
            "//",
            "/a/",
            "/.",
            "@",
            "@40755",
            "99999999999999999999",
            "1.",
            ".1",
            "1.1000000000",
            "a=b",
            "=",
            "\\x00",
        ];
        match self.rng.random_range(0..4) {
            0 => {
                let at = self.rng.random_range(0..fields.len());
                fields[at] = JUNK[self.rng.random_range(0..JUNK.len())].to_owned();
            }
            1 => {
                let at = self.rng.random_range(0..fields.len());
                fields.remove(at);
            }
            2 => fields.push(JUNK[self.rng.random_range(0..JUNK.len())].to_owned()),
            _ => {
                let at = self.rng.random_range(0..fields.len());
                let junk = JUNK[self.rng.random_range(0..JUNK.len())];
                fields[at].push_str(junk);
            }
        }
        let mut out: String = lines[..which].concat();
        out.push_str(&fields.join(" "));
        out.push('\n');
        out.push_str(&lines[which + 1..].concat());
        self.out = out;
    }
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_dumpfile(seed: u64) -> String {
    let mut generator = TextGen {
        rng: StdRng::seed_from_u64(seed),
        out: String::new(),
        dirs: vec!["/".to_owned()],
        leaves: Vec::new(),
    };
    generator.line("/", 0, 0o040000, 0, ("-", "-", "-"));
    for _ in 0..generator.rng.random_range(0..60) {
        generator.entry();
    }
    if generator.chance(0.3) {
        generator.break_a_line();
    }
    generator.out
}

#[test]
fn random_text_dumpfiles() {
    quiet_reference_fsck_panics();
    let mut counts = [0usize; 4];
    let mut failures = Vec::new();
    for seed in 0..600 {
        let text = random_dumpfile(seed);
        match compare(&text) {
            Ok(verdict) => counts[verdict as usize] += 1,
            Err(e) => failures.push(format!("seed {seed}: {e}\ninput:\n{text}")),
        }
    }
    for f in failures.iter().take(5) {
        eprintln!("{f}\n");
    }
    eprintln!("same / both refused / divergent / reference panicked: {counts:?}");
    assert!(
        failures.is_empty(),
        "{} of 600 random dumpfiles failed",
        failures.len()
    );
    assert!(counts[Verdict::Same as usize] >= 300, "{counts:?}");
    assert!(counts[Verdict::BothRefused as usize] >= 50, "{counts:?}");
}

/// Dumpfiles of generated trees (the generator the image oracle uses),
/// printed by us, must be read and printed back identically by both.
#[test]
fn dumpfiles_of_random_trees() {
    let params = TreeParams::default();
    let mut failures = Vec::new();
    let mut counts = [0usize; 4];
    // The generator makes mtimes before 1970, which both print as
    // negative seconds and then refuse to read back.
    let seed0 = dumpfile::to_string(&random_tree::<Sha256Digest>(0, &params));
    assert!(seed0.contains(" -"));
    assert_eq!(compare(&seed0), Ok(Verdict::BothRefused));
    for seed in 0..200 {
        let mut fs = random_tree::<Sha256Digest>(seed, &params);
        fs.for_each_stat_mut(|stat| stat.mtime.sec = stat.mtime.sec.checked_abs().unwrap_or(0));
        // Dumpfiles carry at most 512 inline bytes; the generator makes
        // larger inline files for the image writer's sake.
        for leaf in &mut fs.leaves {
            if let LeafContent::Regular(RegularFile::Inline(data)) = &leaf.content {
                if data.len() > dumpfile::INLINE_MAX {
                    let file = RegularFile::External {
                        digest: FsVerityHasher::<Sha256Digest>::digest(data),
                        size: data.len() as u64,
                    };
                    leaf.content = LeafContent::Regular(file);
                }
            }
        }
        let text = dumpfile::to_string(&fs);
        match compare(&text) {
            Ok(verdict) => counts[verdict as usize] += 1,
            Err(e) => failures.push(format!("seed {seed}: {e}")),
        }
    }
    for f in failures.iter().take(3) {
        eprintln!("{f}\n");
    }
    eprintln!("same / both refused / divergent / reference panicked: {counts:?}");
    assert!(
        failures.is_empty(),
        "{} of 200 trees failed",
        failures.len()
    );
    assert_eq!(counts[Verdict::Same as usize], 200, "{counts:?}");
}
