use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::print::{escape_field, escape_raw};
use super::*;
use crate::digest::{FsVerityDigest, Sha256Digest, Sha512Digest};
use crate::tree::{
    Directory, FileName, FileSystem, Inode, Leaf, LeafContent, LeafId, Mode, Mtime, RegularFile,
    Stat,
};

type Fs = FileSystem<Sha256Digest>;

const D1: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn parse(text: &str) -> Fs {
    match parse_dumpfile(text.as_bytes()) {
        Ok(fs) => fs,
        Err(e) => panic!("{e}\n{text}"),
    }
}

fn error(text: &str) -> DumpfileError {
    match parse_dumpfile::<Sha256Digest>(text.as_bytes()) {
        Ok(fs) => panic!("accepted:\n{text}\nas:\n{}", to_string(&fs)),
        Err(e) => e,
    }
}

/// Parses, prints and parses again: the text must come back unchanged
/// and the two trees must be equal.
fn assert_canonical(text: &str) -> Fs {
    let fs = parse(text);
    let printed = to_string(&fs);
    assert_eq!(printed, text);
    assert_eq!(parse(&printed), fs);
    fs
}

fn stat(mode: u32) -> Stat {
    Stat {
        mode: Mode::new(mode),
        ..Stat::default()
    }
}

fn name(bytes: &[u8]) -> FileName {
    FileName::new(bytes).expect("valid test name")
}

#[test]
fn every_file_type_round_trips() {
    let text = format!(
        "/ 0 40755 4 0 0 0 1000.5 - - - security.selinux=system_u:object_r:root_t:s0\n\
         /blk 0 60640 1 0 6 2049 1.0 - - -\n\
         /chr 0 20666 1 0 0 259 1.0 - - -\n\
         /dir 0 41777 3 1000 1000 0 1633950376.999999999 - - - trusted.foo=bar user.x=\n\
         /dir/empty 0 100644 1 0 0 0 0.0 - - -\n\
         /dir/sub 0 40700 2 5 6 0 7.8 - - -\n\
         /dir/sub/link 12 120777 1 0 0 0 0.0 ../../target - -\n\
         /external 1234567 104755 1 0 0 0 5.0 {}/{} - {D1}\n\
         /fifo 0 10600 1 0 0 0 0.0 - - -\n\
         /inline 12 100644 1 0 0 0 0.0 - hello\\x20world\\n - user.a=1 user.b=2\n\
         /sock 0 140755 1 0 0 0 0.0 - - -\n\
         /usr 0 40755 2 0 0 0 0.0 - - -\n\
         /whiteout 0 20000 1 0 0 0 0.0 - - -\n",
        &D1[..2],
        &D1[2..]
    );
    let fs = assert_canonical(&text);
    assert_eq!(fs.leaves.len(), 9);
    assert_eq!(fs.root.stat.mtime, Mtime { sec: 1000, nsec: 5 });
    let dir = fs.root.subdir(b"dir").unwrap();
    assert_eq!(dir.stat.mode.bits(), 0o1777);
    assert_eq!(
        dir.stat.xattrs.get(&b"user.x"[..]).map(|v| &v[..]),
        Some(&b""[..])
    );
    let Some(Inode::Leaf(id)) = fs.root.entries.get(&name(b"external")) else {
        panic!("external is a leaf");
    };
    let leaf = fs.leaf(*id);
    assert_eq!(leaf.stat.mode.bits(), 0o4755);
    assert_eq!(
        leaf.content,
        LeafContent::Regular(RegularFile::External {
            digest: Sha256Digest::from_hex(D1).unwrap(),
            size: 1234567
        })
    );
    let Some(Inode::Leaf(id)) = fs.root.entries.get(&name(b"inline")) else {
        panic!("inline is a leaf");
    };
    assert_eq!(
        fs.leaf(*id).content,
        LeafContent::Regular(RegularFile::Inline(b"hello world\n"[..].into()))
    );
}

#[test]
fn sha512_digests() {
    let d = "ab".repeat(64);
    let text = format!(
        "/ 0 40755 2 0 0 0 0.0 - - -\n/f 5 100644 1 0 0 0 0.0 ab/{} - {d}\n",
        &d[2..]
    );
    let fs = parse_dumpfile::<Sha512Digest>(text.as_bytes()).unwrap();
    assert_eq!(to_string(&fs), text);
    assert!(matches!(
        error(&text),
        DumpfileError::Line {
            line: 2,
            error: LineError::Digest(_)
        }
    ));
}

/// One leaf linked from `/b/x`, `/a/y` and `/z`: it is printed in full at
/// `/a/y`, the first path depth first, whatever the input order was.
#[test]
fn hardlinks_across_directories() {
    let mut fs = Fs::new(stat(0o755));
    let mut leaf_stat = stat(0o600);
    leaf_stat.uid = 42;
    leaf_stat
        .xattrs
        .insert(b"user.k"[..].into(), b"v"[..].into());
    let id = fs.push_leaf(Leaf {
        stat: leaf_stat,
        content: LeafContent::Regular(RegularFile::Inline(b"data"[..].into())),
    });
    let other = fs.push_leaf(Leaf {
        stat: stat(0o644),
        content: LeafContent::Symlink(b"/x"[..].into()),
    });
    let mut a = Directory::new(stat(0o755));
    a.entries.insert(name(b"y"), Inode::Leaf(id));
    let mut b = Directory::new(stat(0o755));
    b.entries.insert(name(b"x"), Inode::Leaf(id));
    b.entries.insert(name(b"s"), Inode::Leaf(other));
    fs.root
        .entries
        .insert(name(b"b"), Inode::Directory(b.into()));
    fs.root
        .entries
        .insert(name(b"a"), Inode::Directory(a.into()));
    fs.root.entries.insert(name(b"z"), Inode::Leaf(id));
    let text = to_string(&fs);
    assert_eq!(
        text,
        "/ 0 40755 4 0 0 0 0.0 - - -\n\
         /a 0 40755 2 0 0 0 0.0 - - -\n\
         /a/y 4 100600 3 42 0 0 0.0 - data - user.k=v\n\
         /b 0 40755 2 0 0 0 0.0 - - -\n\
         /b/s 2 120644 1 0 0 0 0.0 /x - -\n\
         /b/x 0 @120000 - - - - 0.0 /a/y - -\n\
         /z 0 @120000 - - - - 0.0 /a/y - -\n"
    );
    let parsed = assert_canonical(&text);
    assert_eq!(parsed.nlinks(), vec![3, 1]);
    // The input may list the leaf first anywhere and chain hardlinks;
    // every other field of a hardlink line is ignored.
    let shuffled = "/ 0 40755 4 0 0 0 0.0 - - -\n\
                    /z 0 100600 9 42 0 0 0.0 - data - user.k=v\n\
                    /b 0 40755 2 0 0 0 0.0 - - -\n\
                    /b/s 2 120644 1 0 0 0 0.0 /x - -\n\
                    /b/x 77 x@100644 a b c d e /z junk junk bad=\\q\n\
                    /a 0 40755 2 0 0 0 0.0 - - -\n\
                    /a/y 0 @0 - - - - - /b/x\n";
    let fs2 = parse(shuffled);
    assert_eq!(fs2, parsed);
    assert_eq!(to_string(&fs2), text);
}

#[test]
fn names_with_every_byte() {
    let mut fs = Fs::new(stat(0o755));
    let mut dir = Directory::new(stat(0o700));
    for byte in 1..=255u8 {
        if byte == b'/' {
            continue;
        }
        let id = fs.push_leaf(Leaf {
            stat: stat(0o644),
            content: LeafContent::Regular(RegularFile::Inline([byte][..].into())),
        });
        let file_name = match byte {
            b'.' => vec![b'.', b'.', b'.'],
            _ => vec![byte],
        };
        dir.entries.insert(name(&file_name), Inode::Leaf(id));
    }
    let all: Vec<u8> = (1..=255u8).filter(|&b| b != b'/').collect();
    for chunk in all.chunks(200) {
        let id = fs.push_leaf(Leaf {
            stat: stat(0o644),
            content: LeafContent::Symlink(chunk.into()),
        });
        dir.entries.insert(name(chunk), Inode::Leaf(id));
    }
    fs.root
        .entries
        .insert(name(b" - \\="), Inode::Directory(dir.into()));
    let text = to_string(&fs);
    assert!(text.is_ascii());
    assert!(text.starts_with("/ 0 40755 3 0 0 0 0.0 - - -\n/\\x20-\\x20\\\\= 0 40700 2 "));
    assert!(text.contains("\n/\\x20-\\x20\\\\=/\\t 1 100644 1 0 0 0 0.0 - \\t -\n"));
    assert!(text.contains("\n/\\x20-\\x20\\\\=/- 1 100644 1 0 0 0 0.0 - \\x2d -\n"));
    let parsed = assert_canonical(&text);
    assert_eq!(to_string(&parsed), text);
    assert_eq!(parsed.leaves.len(), fs.leaves.len());
}

#[test]
fn xattr_names_and_values() {
    let mut fs = Fs::new(stat(0o755));
    let xattrs = &mut fs.root.stat.xattrs;
    let binary: Vec<u8> = (0..=255u8).collect();
    xattrs.insert(b"user.empty"[..].into(), b""[..].into());
    xattrs.insert(b"user.dash"[..].into(), b"-"[..].into());
    xattrs.insert(b"user.a=b"[..].into(), b"x=y"[..].into());
    xattrs.insert(b"user.bin"[..].into(), binary.clone().into());
    xattrs.insert(b""[..].into(), b"no name"[..].into());
    xattrs.insert(b"user.sp ace"[..].into(), b"\\"[..].into());
    let text = to_string(&fs);
    let hex: String = (0..=255u8)
        .map(|b| match b {
            b'\\' => "\\\\".to_owned(),
            b'\n' => "\\n".to_owned(),
            b'\r' => "\\r".to_owned(),
            b'\t' => "\\t".to_owned(),
            b'=' => "\\x3d".to_owned(),
            b'!'..=b'~' => char::from(b).to_string(),
            _ => format!("\\x{b:02x}"),
        })
        .collect();
    assert_eq!(
        text,
        format!(
            "/ 0 40755 2 0 0 0 0.0 - - - =no\\x20name user.a\\x3db=x\\x3dy user.bin={hex} \
             user.dash=- user.empty= user.sp\\x20ace=\\\\\n"
        )
    );
    let parsed = assert_canonical(&text);
    assert_eq!(
        parsed.root.stat.xattrs.get(&b"user.bin"[..]).unwrap()[..],
        binary[..]
    );
}

#[test]
fn escaping() {
    let field = |bytes: &[u8]| {
        let mut out = Vec::new();
        escape_field(&mut out, bytes);
        String::from_utf8(out).unwrap()
    };
    let raw = |bytes: &[u8], eq| {
        let mut out = Vec::new();
        escape_raw(&mut out, bytes, eq);
        String::from_utf8(out).unwrap()
    };
    assert_eq!(field(b""), "-");
    assert_eq!(field(b"-"), "\\x2d");
    assert_eq!(field(b"--"), "--");
    assert_eq!(field(b"a-b=c"), "a-b=c");
    assert_eq!(field(b"\\\n\r\t"), "\\\\\\n\\r\\t");
    assert_eq!(
        field(b" \x00\x1f\x7f\x80\xff!~"),
        "\\x20\\x00\\x1f\\x7f\\x80\\xff!~"
    );
    assert_eq!(raw(b"", true), "");
    assert_eq!(raw(b"-", true), "-");
    assert_eq!(raw(b"a=b", true), "a\\x3db");
    assert_eq!(raw(b"a=b", false), "a=b");

    // Unescaping takes any case of hex digit, and (as Rust's integer
    // parser does) a `+` before one digit; literal UTF-8 is kept as is.
    let fs = parse(
        "/ 0 40755 2 0 0 0 0.0 - - - user.x=\\xAB\\x+9\\x0a\\\\ user.u=é\n\
         /\\x66\\x6F\\x6f 0 100644 1 0 0 0 0.0 - \\x2d -\n",
    );
    let value = fs.root.stat.xattrs.get(&b"user.x"[..]).unwrap();
    assert_eq!(&value[..], b"\xab\x09\x0a\\");
    let value = fs.root.stat.xattrs.get(&b"user.u"[..]).unwrap();
    assert_eq!(&value[..], "é".as_bytes());
    let Some(Inode::Leaf(id)) = fs.root.entries.get(&name(b"foo")) else {
        panic!("/foo is a leaf");
    };
    assert_eq!(
        fs.leaf(*id).content,
        LeafContent::Regular(RegularFile::Inline(b"-"[..].into()))
    );
}

#[test]
fn canonicalisation() {
    // Directory sizes, declared link counts, a symlink's size and an
    // inline file's size are ignored; modes keep their permission bits;
    // numbers may have `+` and leading zeros; xattrs are sorted and the
    // greater of two values for a name stays; CRLF and blank lines are
    // fine.
    let fs = parse(
        "\n  \t\r\n/ 4096 1040755 9 +0 00 0 +1.+2 - - - user.z=1 user.a=2 user.a=3 user.a=1\r\n\
         /l 999 120777 5 0 0 0 0.0 t - -\r\n\
         \n\
         /f 999 100644 7 0 0 0 0.0 - x -\n",
    );
    assert_eq!(
        to_string(&fs),
        "/ 0 40755 2 0 0 0 1.2 - - - user.a=3 user.z=1\n\
         /f 1 100644 1 0 0 0 0.0 - x -\n\
         /l 1 120777 1 0 0 0 0.0 t - -\n"
    );

    // Payloads of non-files and the content of external files are not
    // read at all.
    let fs = parse(&format!(
        "/ 0 40755 2 0 0 0 0.0 \\q - -\n\
         /e 3 100644 1 0 0 0 0.0 any/path \\q {D1}\n\
         /p 0 10644 1 0 0 0 0.0 \\q - -\n"
    ));
    assert_eq!(
        to_string(&fs),
        format!(
            "/ 0 40755 2 0 0 0 0.0 - - -\n\
             /e 3 100644 1 0 0 0 0.0 {}/{} - {D1}\n\
             /p 0 10644 1 0 0 0 0.0 - - -\n",
            &D1[..2],
            &D1[2..]
        )
    );

    // The root line may have any type: only its metadata is used, its
    // digest is not decoded, and a later `/` line replaces it (a hardlink
    // line with zeros).
    let fs = parse("/ 0 100600 3 1 2 0 3.4 payload - nothex\n");
    assert_eq!(to_string(&fs), "/ 0 40600 2 1 2 0 3.4 - - -\n");
    let fs = parse(
        "/ 0 40755 2 1 2 0 3.0 - - - user.a=b\n\
         /a 0 40700 2 0 0 0 0.0 - - -\n\
         / 0 @0 - - - - - /nowhere\n",
    );
    assert_eq!(
        to_string(&fs),
        "/ 0 40000 3 0 0 0 0.0 - - -\n/a 0 40700 2 0 0 0 0.0 - - -\n"
    );
}

#[test]
fn later_lines_replace_earlier_ones() {
    // A replaced leaf is dropped, unless a hardlink line names its old
    // path later; a replaced directory loses its entries.
    let fs = parse(
        "/ 0 40755 2 0 0 0 0.0 - - -\n\
         /a 0 100644 1 0 0 0 0.0 - first -\n\
         /d 0 40755 2 0 0 0 0.0 - - -\n\
         /d/x 0 100644 1 0 0 0 0.0 - x -\n\
         /a 0 100644 1 0 0 0 0.0 - second -\n\
         /d 0 40711 2 0 0 0 0.0 - - -\n\
         /d/y 0 @0 - - - - - /d/x\n\
         /b 0 100644 1 0 0 0 0.0 - gone -\n\
         /b 0 40755 2 0 0 0 0.0 - - -\n",
    );
    assert_eq!(
        to_string(&fs),
        "/ 0 40755 4 0 0 0 0.0 - - -\n\
         /a 6 100644 1 0 0 0 0.0 - second -\n\
         /b 0 40755 2 0 0 0 0.0 - - -\n\
         /d 0 40711 2 0 0 0 0.0 - - -\n\
         /d/y 1 100644 1 0 0 0 0.0 - x -\n"
    );
    assert_eq!(fs.leaves.len(), 2);
    assert_eq!(fs.check(), Ok(()));
}

#[test]
fn deep_tree() {
    let mut text = String::from("/ 0 40755 2 0 0 0 0.0 - - -\n");
    let mut path = String::new();
    while path.len() + 2 <= PATH_MAX {
        path.push_str("/a");
        text.push_str(&format!("{path} 0 40755 2 0 0 0 0.0 - - -\n"));
    }
    let fs = parse(&text);
    let printed = to_string(&fs);
    assert_eq!(parse(&printed), fs);
    let too_deep = format!("{text}{path}/a 0 40755 2 0 0 0 0.0 - - -\n");
    assert!(matches!(
        error(&too_deep),
        DumpfileError::Line {
            error: LineError::TooLong { field: "path", .. },
            ..
        }
    ));
}

/// A refused input, the line blamed, and a check of the error.
type Case = (String, usize, fn(&LineError) -> bool);

const ROOT: &str = "/ 0 40755 2 0 0 0 0.0 - - -\n";

/// Each refused input, the line blamed, and the error expected.
#[test]
fn rejections() {
    let long_name = "n".repeat(256);
    let long_path = format!("/{}", "p".repeat(PATH_MAX));
    let inline_513 = "c".repeat(513);
    let target_1025 = "t".repeat(1025);
    let value_65536 = "v".repeat(65536);
    let xattr_name_256 = "k".repeat(256);
    let many_names: String = (0..258)
        .map(|i| format!(" {}{i:08}=", "k".repeat(247)))
        .collect();
    let ok_names: String = (0..257)
        .map(|i| format!(" {}{i:08}=", "k".repeat(247)))
        .collect();
    parse(&format!("/ 0 40755 2 0 0 0 0.0 - - -{ok_names}\n"));
    parse(&format!(
        "{ROOT}/f 0 100644 1 0 0 0 0.0 - {} -\n",
        "c".repeat(512)
    ));
    parse(&format!(
        "{ROOT}/{} 0 100644 1 0 0 0 0.0 - - -\n",
        "n".repeat(255)
    ));

    let cases: Vec<Case> = vec![
        ("/a 0 40755 2 0 0 0 0.0 - - -\n".into(), 1, |e| {
            matches!(e, LineError::RootNotFirst(_))
        }),
        ("a 0 40755 2 0 0 0 0.0 - - -\n".into(), 1, |e| {
            matches!(e, LineError::NotCanonical { .. })
        }),
        (format!("{ROOT}/a/ 0 40755 2 0 0 0 0.0 - - -\n"), 2, |e| {
            matches!(
                e,
                LineError::NotCanonical {
                    reason: "empty component",
                    ..
                }
            )
        }),
        (format!("{ROOT}//a 0 40755 2 0 0 0 0.0 - - -\n"), 2, |e| {
            matches!(e, LineError::NotCanonical { .. })
        }),
        (format!("{ROOT}/. 0 40755 2 0 0 0 0.0 - - -\n"), 2, |e| {
            matches!(
                e,
                LineError::NotCanonical {
                    reason: "'.' component",
                    ..
                }
            )
        }),
        (
            format!("{ROOT}/a/../b 0 40755 2 0 0 0 0.0 - - -\n"),
            2,
            |e| {
                matches!(
                    e,
                    LineError::NotCanonical {
                        reason: "'..' component",
                        ..
                    }
                )
            },
        ),
        (
            format!("{ROOT}/a\\x00 0 40755 2 0 0 0 0.0 - - -\n"),
            2,
            |e| matches!(e, LineError::Nul { field: "path" }),
        ),
        (format!("{ROOT}- 0 40755 2 0 0 0 0.0 - - -\n"), 2, |e| {
            matches!(e, LineError::NotCanonical { .. })
        }),
        (
            format!("{ROOT}{long_path} 0 40755 2 0 0 0 0.0 - - -\n"),
            2,
            |e| matches!(e, LineError::TooLong { field: "path", .. }),
        ),
        (
            format!("{ROOT}/{long_name} 0 40755 2 0 0 0 0.0 - - -\n"),
            2,
            |e| matches!(e, LineError::Name(_)),
        ),
        (format!("{ROOT}/a 0 40755 2 0 0 0 0.0 - -\n"), 2, |e| {
            matches!(e, LineError::MissingField("digest"))
        }),
        (format!("{ROOT}/a 0 @100644 - - - -\n"), 2, |e| {
            matches!(e, LineError::MissingField("mtime"))
        }),
        (format!("{ROOT}/a 0 @100644 - - - - 0.0\n"), 2, |e| {
            matches!(e, LineError::MissingField("payload"))
        }),
        (format!("{ROOT}/a x 40755 2 0 0 0 0.0 - - -\n"), 2, |e| {
            matches!(e, LineError::Number { field: "size", .. })
        }),
        (format!("{ROOT}/a 0 40755 2 -1 0 0 0.0 - - -\n"), 2, |e| {
            matches!(e, LineError::Number { field: "uid", .. })
        }),
        (format!("{ROOT}/a 0 40759 2 0 0 0 0.0 - - -\n"), 2, |e| {
            matches!(e, LineError::Number { field: "mode", .. })
        }),
        (
            format!("{ROOT}/a 0 40755 4294967296 0 0 0 0.0 - - -\n"),
            2,
            |e| matches!(e, LineError::Number { field: "nlink", .. }),
        ),
        (format!("{ROOT}/a 0 40755 2 0 0 0 12 - - -\n"), 2, |e| {
            matches!(e, LineError::Number { field: "mtime", .. })
        }),
        (
            format!("{ROOT}/a 0 40755 2 0 0 0 1.1000000000 - - -\n"),
            2,
            |e| matches!(e, LineError::Nanoseconds(1_000_000_000)),
        ),
        (
            format!("{ROOT}/a 0 40755 2 0 0 0 9223372036854775808.0 - - -\n"),
            2,
            |e| matches!(e, LineError::MtimeSeconds(_)),
        ),
        (format!("{ROOT}/a 0 0644 1 0 0 0 0.0 - - -\n"), 2, |e| {
            matches!(e, LineError::UnknownType(0o644))
        }),
        (format!("{ROOT}/a 0 170644 1 0 0 0 0.0 - - -\n"), 2, |e| {
            matches!(e, LineError::UnknownType(_))
        }),
        (format!("{ROOT}/a 0 @40755 - - - - 0.0 /b - -\n"), 2, |e| {
            matches!(e, LineError::HardlinkedDirectory)
        }),
        (format!("{ROOT}/a 0 @100644 - - - - 0.0 - - -\n"), 2, |e| {
            matches!(e, LineError::MissingPayload("hardlink"))
        }),
        (format!("{ROOT}/a 0 @100644 - - - - 0.0 b - -\n"), 2, |e| {
            matches!(
                e,
                LineError::NotCanonical {
                    field: "hardlink target",
                    ..
                }
            )
        }),
        (format!("{ROOT}/a 0 @100644 - - - - 0.0 /b - -\n"), 2, |e| {
            matches!(e, LineError::HardlinkTarget(_))
        }),
        (
            format!("{ROOT}/d 0 40755 2 0 0 0 0.0 - - -\n/a 0 @100644 - - - - 0.0 /d - -\n"),
            3,
            |e| matches!(e, LineError::HardlinkTarget(_)),
        ),
        (format!("{ROOT}/a 0 @100644 - - - - 0.0 / - -\n"), 2, |e| {
            matches!(e, LineError::HardlinkTarget(_))
        }),
        (format!("{ROOT}/a 0 10644 1 0 0 0 0.0 - foo -\n"), 2, |e| {
            matches!(
                e,
                LineError::Unexpected {
                    kind: "fifo",
                    what: "content"
                }
            )
        }),
        (
            format!("{ROOT}/a 0 120644 1 0 0 0 0.0 /t - {D1}\n"),
            2,
            |e| {
                matches!(
                    e,
                    LineError::Unexpected {
                        kind: "symlink",
                        what: "digest"
                    }
                )
            },
        ),
        (
            format!("{ROOT}/a 0 100644 1 0 0 0 0.0 - abc {D1}\n"),
            2,
            |e| {
                matches!(
                    e,
                    LineError::Unexpected {
                        kind: "inline file",
                        what: "digest"
                    }
                )
            },
        ),
        ("/ 0 40755 2 0 0 42 0.0 - - -\n".into(), 1, |e| {
            matches!(e, LineError::Rdev { rdev: 42, .. })
        }),
        (format!("/ 0 40755 2 0 0 0 0.0 - - {D1}\n"), 1, |e| {
            matches!(e, LineError::Unexpected { what: "digest", .. })
        }),
        (format!("{ROOT}/a 0 100644 1 0 0 1 0.0 - - -\n"), 2, |e| {
            matches!(e, LineError::Rdev { .. })
        }),
        (format!("{ROOT}/a 0 140644 1 0 0 1 0.0 - - -\n"), 2, |e| {
            matches!(e, LineError::Rdev { kind: "socket", .. })
        }),
        (format!("{ROOT}/a 0 120644 1 0 0 0 0.0 - - -\n"), 2, |e| {
            matches!(e, LineError::MissingPayload("symlink"))
        }),
        (
            format!("{ROOT}/a 0 120644 1 0 0 0 0.0 {target_1025} - -\n"),
            2,
            |e| {
                matches!(
                    e,
                    LineError::TooLong {
                        field: "symlink target",
                        ..
                    }
                )
            },
        ),
        (
            format!("{ROOT}/a 0 120644 1 0 0 0 0.0 a\\x00 - -\n"),
            2,
            |e| matches!(e, LineError::Nul { .. }),
        ),
        (
            format!("{ROOT}/a 0 100644 1 0 0 0 0.0 - {inline_513} -\n"),
            2,
            |e| {
                matches!(
                    e,
                    LineError::TooLong {
                        field: "content",
                        max: 512,
                        ..
                    }
                )
            },
        ),
        (
            format!("{ROOT}/a 0 100644 1 0 0 0 0.0 - a\\q -\n"),
            2,
            |e| matches!(e, LineError::Escape { .. }),
        ),
        (
            format!("{ROOT}/a 0 100644 1 0 0 0 0.0 - a\\x4 -\n"),
            2,
            |e| matches!(e, LineError::Escape { .. }),
        ),
        (
            format!("{ROOT}/a 0 100644 1 0 0 0 0.0 - a\\x-4 -\n"),
            2,
            |e| matches!(e, LineError::Escape { .. }),
        ),
        (format!("{ROOT}/a 0 100644 1 0 0 0 0.0 - a\\ -\n"), 2, |e| {
            matches!(e, LineError::Escape { .. })
        }),
        (format!("{ROOT}/a 0 100644 1 0 0 0 0.0 - - - \n"), 2, |e| {
            matches!(e, LineError::XattrSyntax { .. })
        }),
        (
            format!("{ROOT}/a 0 100644 1 0 0 0 0.0 - - - user.a\n"),
            2,
            |e| matches!(e, LineError::XattrSyntax { .. }),
        ),
        (
            format!("{ROOT}/a 0 100644 1 0 0 0 0.0 - - - user\\x00a=b\n"),
            2,
            |e| {
                matches!(
                    e,
                    LineError::Nul {
                        field: "xattr name"
                    }
                )
            },
        ),
        (
            format!("{ROOT}/a 0 100644 1 0 0 0 0.0 - - - {xattr_name_256}=b\n"),
            2,
            |e| {
                matches!(
                    e,
                    LineError::TooLong {
                        field: "xattr name",
                        ..
                    }
                )
            },
        ),
        (
            format!("{ROOT}/a 0 100644 1 0 0 0 0.0 - - - user.a={value_65536}\n"),
            2,
            |e| {
                matches!(
                    e,
                    LineError::TooLong {
                        field: "xattr value",
                        ..
                    }
                )
            },
        ),
        (
            format!("/ 0 40755 2 0 0 0 0.0 - - -{many_names}\n"),
            1,
            |e| matches!(e, LineError::XattrNamesTooLong),
        ),
        (
            format!("{ROOT}/a 1 100644 1 0 0 0 0.0 ab/cd - abcd\n"),
            2,
            |e| matches!(e, LineError::Digest(_)),
        ),
        (
            format!(
                "{ROOT}/a 1 100644 1 0 0 0 0.0 {}/{} - -\n",
                &D1[..2],
                &D1[2..]
            ),
            2,
            |e| matches!(e, LineError::NoDigest),
        ),
        (
            format!("{ROOT}/a 1 100644 1 0 0 0 0.0 - - {D1}\n"),
            2,
            |e| matches!(e, LineError::Unexpected { .. }),
        ),
        (format!("{ROOT}/a 1 100644 1 0 0 0 0.0 - - -\n"), 2, |e| {
            matches!(e, LineError::Sparse(1))
        }),
        (format!("{ROOT}/w 0 20000 2 0 0 0 0.0 - - -\n"), 2, |e| {
            matches!(e, LineError::LinkedWhiteout(2))
        }),
        (
            format!("{ROOT}/w 0 20000 1 0 0 0 0.0 - - -\n/x 0 @0 - - - - - /w\n"),
            3,
            |e| matches!(e, LineError::LinkedWhiteout(2)),
        ),
        (format!("{ROOT}/a/b 0 100644 1 0 0 0 0.0 - - -\n"), 2, |e| {
            matches!(e, LineError::ParentMissing(_))
        }),
        (
            format!("{ROOT}/a 0 100644 1 0 0 0 0.0 - - -\n/a/b 0 40755 2 0 0 0 0.0 - - -\n"),
            3,
            |e| matches!(e, LineError::ParentNotDirectory(_)),
        ),
        (format!("{ROOT}/a  0 40755 2 0 0 0 0.0 - - -\n"), 2, |e| {
            matches!(e, LineError::Number { field: "size", .. })
        }),
    ];
    for (text, line, check) in &cases {
        let e = error(text);
        assert_eq!(e.line(), Some(*line), "{e} for\n{text}");
        let DumpfileError::Line { error, .. } = &e else {
            panic!("{e}")
        };
        assert!(check(error), "unexpected {e} for\n{text}");
        // Messages are lowercase and name the line.
        let message = e.to_string();
        assert!(
            message.starts_with(&format!("dumpfile line {line}: ")),
            "{message}"
        );
    }

    assert!(matches!(error(""), DumpfileError::Empty));
    assert!(matches!(error("\n \n\t\r\n"), DumpfileError::Empty));
    let not_utf8 = b"/ 0 40755 2 0 0 0 0.0 - - -\n/a\xff 0 40755 2 0 0 0 0.0 - - -\n";
    let e = parse_dumpfile::<Sha256Digest>(not_utf8).unwrap_err();
    assert!(matches!(
        e,
        DumpfileError::Line {
            line: 2,
            error: LineError::NotUtf8
        }
    ));
}

/// A random tree with every kind of entry, odd names, hardlinks (also of
/// whiteouts that stay single-linked) and xattrs.
fn random_tree(rng: &mut StdRng) -> Fs {
    fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
        let len = rng.random_range(0..=max);
        (0..len)
            .map(|_| match rng.random_range(0..4) {
                0 => rng.random(),
                1 => *b"-=\\ \n".get(rng.random_range(0..5)).unwrap(),
                _ => rng.random_range(b'a'..=b'e'),
            })
            .collect()
    }
    fn random_stat(rng: &mut StdRng) -> Stat {
        let mut stat = Stat {
            mode: Mode::new(rng.random()),
            uid: rng.random(),
            gid: rng.random_range(0..3),
            mtime: Mtime {
                sec: rng.random_range(0..=i64::MAX),
                nsec: rng.random_range(0..1_000_000_000),
            },
            ..Stat::default()
        };
        for _ in 0..rng.random_range(0..3) {
            let mut key = random_bytes(rng, 20);
            key.retain(|&b| b != 0);
            stat.xattrs.insert(key.into(), random_bytes(rng, 30).into());
        }
        stat
    }
    fn random_name(rng: &mut StdRng) -> FileName {
        loop {
            let mut bytes = random_bytes(rng, 12);
            bytes.retain(|&b| b != 0 && b != b'/');
            if let Ok(name) = FileName::new(&bytes) {
                return name;
            }
        }
    }
    fn fill(rng: &mut StdRng, fs: &mut Fs, dir: &mut Directory, depth: usize) {
        for _ in 0..rng.random_range(0..8) {
            let name = random_name(rng);
            let inode = match rng.random_range(0..12) {
                0 | 1 if depth < 4 => {
                    let mut sub = Directory::new(random_stat(rng));
                    fill(rng, fs, &mut sub, depth + 1);
                    Inode::Directory(sub.into())
                }
                2 | 3 if !fs.leaves.is_empty() => {
                    let id = LeafId(rng.random_range(0..fs.leaves.len()));
                    if fs.leaf(id).content.is_whiteout() {
                        continue;
                    }
                    Inode::Leaf(id)
                }
                kind => {
                    let content = match kind {
                        4 => LeafContent::Symlink({
                            let mut t = random_bytes(rng, 40);
                            t.retain(|&b| b != 0);
                            t.push(b'x');
                            t.into()
                        }),
                        5 => LeafContent::BlockDevice(rng.random()),
                        6 => LeafContent::CharacterDevice(rng.random_range(0..3)),
                        7 => LeafContent::Fifo,
                        8 => LeafContent::Socket,
                        9 => LeafContent::Regular(RegularFile::External {
                            digest: Sha256Digest(rng.random()),
                            size: rng.random(),
                        }),
                        _ => {
                            LeafContent::Regular(RegularFile::Inline(random_bytes(rng, 80).into()))
                        }
                    };
                    Inode::Leaf(fs.push_leaf(Leaf {
                        stat: random_stat(rng),
                        content,
                    }))
                }
            };
            dir.entries.insert(name, inode);
        }
    }
    let mut fs = Fs::new(random_stat(rng));
    let mut root = Directory::new(random_stat(rng));
    fill(rng, &mut fs, &mut root, 0);
    fs.root = root;
    fs.compact();
    fs
}

#[test]
fn random_trees_round_trip() {
    for seed in 0..300 {
        let mut rng = StdRng::seed_from_u64(seed);
        let fs = random_tree(&mut rng);
        let text = to_string(&fs);
        assert!(text.is_ascii());
        let parsed = parse(&text);
        assert_eq!(to_string(&parsed), text, "seed {seed}");
        assert_eq!(parse(&to_string(&parsed)), parsed, "seed {seed}");
        assert_eq!(
            parsed.nlinks().iter().sum::<u32>(),
            fs.nlinks().iter().sum::<u32>()
        );
    }
}

/// A small in-process fuzzer: mutations of valid dumpfiles must either be
/// refused or parse into a tree that prints and parses back equal.
#[test]
fn mutated_input_round_trips_or_is_refused() {
    const PIECES: &[&[u8]] = &[
        b" ",
        b"\n",
        b"/",
        b"-",
        b"@",
        b"\\",
        b"\\x",
        b"=",
        b"0",
        b"9",
        b".",
        b"+",
        b"/a",
        b"\xff",
        b"120777",
        b"20000",
        b"@0 - - - - - /a",
        b"\r\n",
    ];
    let mut accepted = 0;
    for seed in 0..400 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut text = to_string(&random_tree(&mut rng)).into_bytes();
        for _ in 0..rng.random_range(1..6) {
            let at = rng.random_range(0..=text.len());
            match rng.random_range(0..4) {
                0 => {
                    let piece = PIECES[rng.random_range(0..PIECES.len())];
                    drop(text.splice(at..at, piece.iter().copied()));
                }
                1 => {
                    let end = (at + rng.random_range(0..8)).min(text.len());
                    text.drain(at..end);
                }
                2 if at < text.len() => text[at] = rng.random(),
                _ => {
                    // Move a line elsewhere.
                    let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
                    let mut lines: Vec<Vec<u8>> = lines.into_iter().map(<[u8]>::to_vec).collect();
                    let from = rng.random_range(0..lines.len());
                    let line = lines.remove(from);
                    let to = rng.random_range(0..=lines.len());
                    lines.insert(to, line);
                    text = lines.join(&b'\n');
                }
            }
        }
        if let Ok(fs) = parse_dumpfile::<Sha256Digest>(&text) {
            accepted += 1;
            let printed = to_string(&fs);
            let again = parse_dumpfile::<Sha256Digest>(printed.as_bytes())
                .unwrap_or_else(|e| panic!("seed {seed}: {e}\n{printed}"));
            assert_eq!(again, fs, "seed {seed}");
        }
    }
    assert!(accepted > 50, "only {accepted} mutants parsed");
}

/// Paths are split after unescaping, so `\x2f` separates components as
/// `/` does (the reference behaves the same).
#[test]
fn escaped_slash_separates() {
    let fs = parse(
        "/ 0 40755 2 0 0 0 0.0 - - -\n\
         /a 0 40755 2 0 0 0 0.0 - - -\n\
         /a\\x2fb 0 10644 1 0 0 0 0.0 - - -\n",
    );
    assert_eq!(
        to_string(&fs),
        "/ 0 40755 3 0 0 0 0.0 - - -\n/a 0 40755 2 0 0 0 0.0 - - -\n/a/b 0 10644 1 0 0 0 0.0 - - -\n"
    );
}
