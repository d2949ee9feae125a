//! The repository through its library API: how refs are replaced and
//! what their links say on disk (the reference's relative layout), what
//! `meta.json` holds and how its features gate opening and writing, and
//! which names are refused.

use std::path::Path;

use cfs_erofs::digest::{FsVerityDigest, Sha256Digest, Sha512Digest};
use cfs_erofs::format::FormatVersion;
use cfs_erofs::tree::{
    Directory, FileName, FileSystem, Inode, Leaf, LeafContent, Mode, Mtime, RegularFile, Stat,
};
use cfs_images::splitstream::{ContentType, SplitStreamWriter};
use cfs_images::{Error, InitOptions, Repository};

const INSECURE: InitOptions = InitOptions {
    format: FormatVersion::V1,
    insecure: true,
};

fn init(path: &Path) -> Repository<Sha512Digest> {
    Repository::init(path, &INSECURE).expect("init")
}

/// An EROFS image with one external file `data` and root mtime `sec`.
fn image(repo: &Repository<Sha512Digest>, data: &[u8], sec: i64) -> Vec<u8> {
    let stat = Stat {
        mode: Mode::new(0o755),
        mtime: Mtime { sec, nsec: 0 },
        ..Stat::default()
    };
    let mut fs = FileSystem::<Sha512Digest>::new(stat.clone());
    let digest = repo.ensure_object(data).expect("object");
    let leaf = fs.push_leaf(Leaf {
        stat: Stat {
            mode: Mode::new(0o644),
            ..stat
        },
        content: LeafContent::Regular(RegularFile::External {
            digest,
            size: data.len() as u64,
        }),
    });
    fs.root
        .entries
        .insert(FileName::new(b"file").expect("name"), Inode::Leaf(leaf));
    fs.root.entries.insert(
        FileName::new(b"dir").expect("name"),
        Inode::Directory(Box::new(Directory::new(Stat::default()))),
    );
    cfs_erofs::writer::mkfs(&fs, FormatVersion::V1).expect("mkfs")
}

fn link_text(path: &Path) -> String {
    std::fs::read_link(path)
        .expect("readlink")
        .to_string_lossy()
        .into_owned()
}

fn no_temporaries(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("readdir") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with(".link-"), "{name} left in {dir:?}");
        if entry.file_type().expect("type").is_dir() {
            no_temporaries(&entry.path());
        }
    }
}

#[test]
fn image_refs_are_replaced_and_link_relatively() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = init(dir.path());
    let first = repo
        .write_image(&image(&repo, &[1; 100], 1), Some("os"))
        .expect("write");
    let second = repo
        .write_image(&image(&repo, &[2; 100], 2), Some("os"))
        .expect("write");
    assert_ne!(first, second);
    assert_eq!(repo.resolve_image("os").expect("resolve"), second);
    // Both images stay listed under images/; the ref names the second.
    let root = dir.path();
    assert_eq!(
        link_text(&root.join("images/refs/os")),
        format!("../{}", second.to_hex())
    );
    assert_eq!(
        link_text(&root.join(format!("images/{}", second.to_hex()))),
        format!("../objects/{}", second.object_pathname())
    );
    assert!(root.join(format!("images/{}", first.to_hex())).exists());
    // Rewriting the same ref with the same image changes nothing.
    repo.write_image(&image(&repo, &[2; 100], 2), Some("os"))
        .expect("write");
    no_temporaries(&root.join("images"));

    // Nested names link up as many levels as they are deep.
    repo.write_image(&image(&repo, &[3; 100], 3), Some("a/b/c"))
        .expect("write");
    let nested = link_text(&root.join("images/refs/a/b/c"));
    assert!(nested.starts_with("../../../"), "{nested}");
    std::fs::read(root.join("images/refs/a/b/c")).expect("nested ref resolves");
    let refs = repo.list_refs("images").expect("list");
    assert_eq!(
        refs.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["a/b/c", "os"]
    );

    // The replaced image and its file are garbage now, nothing else is.
    let report = repo.gc(false).expect("gc");
    assert_eq!(report.links_removed, [format!("images/{}", first.to_hex())]);
    assert_eq!(report.objects_removed, 2, "{report:?}");
    assert!(repo.fsck(false).expect("fsck").is_clean());

    // Removing a ref makes its image garbage.
    assert!(repo.remove_image_ref("a/b/c").expect("rm"));
    assert!(!repo.remove_image_ref("a/b/c").expect("rm again"));
    let report = repo.gc(false).expect("gc");
    assert_eq!(report.objects_removed, 2, "{report:?}");
    assert_eq!(repo.list_refs("images").expect("list").len(), 1);
}

#[test]
fn stream_refs_are_replaced_and_link_relatively() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = init(dir.path());
    let object = repo.ensure_object(&[7; 1000]).expect("object");
    let stream = |inline: u8| {
        let mut w = SplitStreamWriter::<Sha512Digest>::new(ContentType::OCI_LAYER);
        w.write_inline(&[inline; 10]);
        w.write_external(object, 1000);
        w.finish()
    };
    let id = format!("oci-layer-sha256:{}", "0".repeat(64));
    let first = repo
        .write_stream(&id, &stream(1), Some("oci/img:1"))
        .expect("write");
    assert_eq!(
        link_text(&dir.path().join("streams/refs/oci/img:1")),
        format!("../../{id}")
    );
    // The same content id with new content replaces the stream link.
    let second = repo.write_stream(&id, &stream(2), None).expect("write");
    assert_ne!(first, second);
    assert_eq!(repo.has_stream(&id).expect("has"), Some(second));
    let (found, parsed) = repo.open_stream("refs/oci/img:1").expect("open");
    assert_eq!(found, second);
    assert_eq!(parsed.object_refs(), [object]);

    // A second name for the stream, then the first name goes.
    repo.name_stream(&id, "other").expect("name");
    assert!(repo.remove_stream_ref("oci/img:1").expect("rm"));
    let report = repo.gc(false).expect("gc");
    // Only the replaced stream object: the live one keeps `object`.
    assert_eq!(report.objects_removed, 1, "{report:?}");
    assert!(repo.has_object(&object).expect("has"));
    assert!(repo.fsck(false).expect("fsck").is_clean());
    assert!(matches!(
        repo.name_stream("no-such-stream", "x"),
        Err(Error::NotFound { .. })
    ));
    no_temporaries(&dir.path().join("streams"));
}

#[test]
fn bad_names_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = init(dir.path());
    let img = image(&repo, &[1; 100], 1);
    for name in ["", "/abs", "a//b", "../up", "a/./b", "a/..", "nul\0"] {
        assert!(
            matches!(
                repo.write_image(&img, Some(name)),
                Err(Error::BadName { .. })
            ),
            "image ref {name:?}"
        );
        assert!(
            matches!(
                repo.write_stream("s", b"", Some(name)),
                Err(Error::BadName { .. })
            ),
            "stream ref {name:?}"
        );
    }
    for id in ["a/b", ".hidden", ".."] {
        assert!(
            matches!(repo.write_stream(id, b"", None), Err(Error::BadName { .. })),
            "content id {id:?}"
        );
    }
    assert!(matches!(
        repo.write_image(b"not an image", Some("x")),
        Err(Error::Image { .. })
    ));
    assert!(repo.list_refs("images").expect("list").is_empty());
}

/// What `cfsctl init --insecure` 0.9.4 writes, byte for byte.
const REFERENCE_META: &str = r#"{
  "version": 1,
  "algorithm": "fsverity-sha512-12",
  "features": {
    "compatible": [],
    "read-only-compatible": [
      "v1_erofs"
    ],
    "incompatible": []
  },
  "erofs_formats": {
    "default": 1
  }
}
"#;

#[test]
fn meta_json_is_the_references_and_gates_access() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("repo");
    let repo = init(&path);
    assert!(repo.is_insecure());
    assert_eq!(
        std::fs::read_to_string(path.join("meta.json")).expect("read"),
        REFERENCE_META
    );
    drop(repo);
    // The same configuration again is fine; another is refused.
    init(&path);
    assert!(matches!(
        Repository::<Sha512Digest>::init(
            &path,
            &InitOptions {
                format: FormatVersion::V2,
                insecure: true
            }
        ),
        Err(Error::AlreadyInitialized(_))
    ));
    assert!(matches!(
        Repository::<Sha256Digest>::open(&path),
        Err(Error::AlgorithmMismatch { .. })
    ));
    assert_eq!(
        cfs_images::meta::repository_algorithm(&path).expect("algorithm"),
        cfs_erofs::digest::Algorithm::Sha512
    );

    // Unknown features: compatible ones are ignored, read-only ones
    // forbid writing, incompatible ones forbid opening.
    let set = |kind: &str| {
        let text = REFERENCE_META.replace(
            &format!(r#""{kind}": []"#),
            &format!(r#""{kind}": ["future"]"#),
        );
        std::fs::write(path.join("meta.json"), text).expect("write meta");
    };
    set("compatible");
    let repo = Repository::<Sha512Digest>::open(&path).expect("open");
    repo.ensure_object(b"fine").expect("write");
    drop(repo);
    let text = REFERENCE_META.replace(r#""v1_erofs""#, r#""v1_erofs", "future""#);
    std::fs::write(path.join("meta.json"), text).expect("write meta");
    let repo = Repository::<Sha512Digest>::open(&path).expect("open read-only");
    assert!(matches!(repo.ensure_object(b"no"), Err(Error::ReadOnly(_))));
    assert!(repo.fsck(false).is_ok());
    drop(repo);
    set("incompatible");
    assert!(matches!(
        Repository::<Sha512Digest>::open(&path),
        Err(Error::IncompatibleFeatures(_))
    ));
    std::fs::remove_file(path.join("meta.json")).expect("rm");
    assert!(matches!(
        Repository::<Sha512Digest>::open(&path),
        Err(Error::NotARepository(_))
    ));
}

#[test]
fn secure_init_needs_fs_verity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = InitOptions {
        format: FormatVersion::V1,
        insecure: false,
    };
    match Repository::<Sha512Digest>::init(dir.path(), &options) {
        // This filesystem has fs-verity: the repository is secure.
        Ok(repo) => assert!(!repo.is_insecure()),
        // It has not: refused, and nothing half-made is left behind.
        Err(Error::NoVerity(_)) => {
            assert!(!dir.path().join("meta.json").exists());
            eprintln!("secure_init_needs_fs_verity: no fs-verity here; init refused");
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[test]
fn enable_verity_makes_an_insecure_repository_secure_or_refuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = init(dir.path());
    let object = repo.ensure_object(&[7u8; 5000]).expect("object");
    match repo.enable_verity() {
        // fs-verity here: every object has it now, and the repository
        // opens secure, checking objects by the kernel's measurement.
        Ok(report) => {
            assert_eq!(report.objects_enabled, 1);
            assert!(!report.was_secure);
            let reopened = Repository::<Sha512Digest>::open(dir.path()).expect("open");
            assert!(!reopened.is_insecure());
            reopened.open_object(&object).expect("a checked object");
        }
        // None: refused with the reason, the repository stays insecure
        // and usable.
        Err(Error::NoVerity(path)) => {
            assert_eq!(path, dir.path());
            let reopened = Repository::<Sha512Digest>::open(dir.path()).expect("open");
            assert!(reopened.is_insecure());
            assert_eq!(reopened.read_object(&object).expect("read"), [7u8; 5000]);
            eprintln!("enable_verity: no fs-verity here; refused (the VM test covers the rest)");
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}
