//! `cfs-deploy image pull` against `cfsctl oci pull --bootable` on the same
//! OCI layout (two layers, one of them whiting out and replacing files of
//! the other): the same plain and boot images, and a second pull that
//! fetches only the manifest (counted).

use std::path::Path;
use std::process::Command;

use cfs_tests::oci_layout::{tar_archive, write_layout, ImageSpec, LayerBlob, LayerSpec};
use common::{cfsctl, ok, OURS};

mod common;

fn field<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key:?} in {text}"))
        .trim()
}

/// Writes the layout; returns the bytes of its layer blobs.
fn layout(dir: &Path) -> u64 {
    let big = vec![7u8; 100_000];
    let base = tar_archive(&[
        ("usr/", b""),
        ("usr/bin/", b""),
        ("usr/bin/tool", &big),
        ("usr/lib/", b""),
        ("usr/lib/small", b"tiny"),
        ("etc/", b""),
        ("etc/old.conf", b"old"),
        ("boot/", b""),
        ("boot/vmlinuz", &big[..5000]),
        ("sysroot/", b""),
    ]);
    let update = tar_archive(&[
        ("etc/", b""),
        ("etc/.wh.old.conf", b""),
        (
            "etc/new.conf",
            b"new configuration, more than sixty-four bytes long to be external!!",
        ),
        ("usr/lib/small", b"replaced"),
    ]);
    let layers = vec![
        LayerSpec {
            tar: base,
            blob: LayerBlob::Gzip,
        },
        LayerSpec {
            tar: update,
            blob: LayerBlob::Zstd,
        },
    ];
    let written =
        write_layout(dir, "v1", &[ImageSpec::linux("amd64", layers)]).expect("write layout");
    written.images[0]
        .layers
        .iter()
        .map(|l| l.blob.bytes.len() as u64)
        .sum()
}

#[test]
fn pull_matches_cfsctl_and_second_pull_fetches_nothing() {
    let Some(cfsctl) = cfsctl() else {
        eprintln!("SKIPPED pull_matches_cfsctl: cfsctl is not installed (run ./dev test)");
        return;
    };
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("layout");
    let layer_bytes = layout(&dir);
    let source = format!("oci:{}:v1", dir.display());

    let ours = work.path().join("ours");
    ok(Command::new(OURS)
        .arg("--repo")
        .arg(&ours)
        .args(["repo", "init", "--insecure"]));
    let first = ok(Command::new(OURS)
        .arg("--repo")
        .arg(&ours)
        .args(["image", "pull", &source]));
    assert_eq!(field(&first, "layers "), "2 fetched, 0 already present");
    // Manifest and config; both layer blobs, whole and once.
    assert_eq!(
        field(&first, "fetched "),
        format!("2 documents, 2 layer blobs, {layer_bytes} bytes")
    );

    let theirs = work.path().join("theirs");
    ok(Command::new(&cfsctl)
        .arg("--repo")
        .arg(&theirs)
        .args(["init", "--insecure"]));
    let reference = ok(Command::new(&cfsctl).arg("--repo").arg(&theirs).args([
        "--insecure",
        "oci",
        "pull",
        "--bootable",
        &source,
        "img",
    ]));
    let plain = ok(Command::new(&cfsctl).arg("--repo").arg(&theirs).args([
        "--insecure",
        "oci",
        "compute-id",
        "img",
    ]));
    assert_eq!(field(&first, "image "), plain.trim(), "plain image");
    assert_eq!(
        field(&first, "boot image "),
        field(&reference, "Boot image:"),
        "boot image"
    );

    let second = ok(Command::new(OURS)
        .arg("--repo")
        .arg(&ours)
        .args(["image", "pull", &source, "--name", "again"]));
    assert_eq!(field(&second, "layers "), "0 fetched, 2 already present");
    // Only the manifest: the config and layers are known by digest.
    assert_eq!(
        field(&second, "fetched "),
        "1 documents, 0 layer blobs, 0 bytes"
    );
    assert_eq!(field(&second, "image "), field(&first, "image "));
    ok(Command::new(OURS)
        .arg("--repo")
        .arg(&ours)
        .args(["repo", "fsck"]));
    eprintln!(
        "pull: plain {} and boot {} equal cfsctl's; second pull fetched 0 layers",
        &plain.trim()[..16],
        &field(&first, "boot image ")[..16]
    );
}
