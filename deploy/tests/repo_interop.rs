//! Repositories move between us and the reference `cfsctl` 0.9.4 in both
//! directions: what one tool writes (images, objects, split streams,
//! refs), the other checks, lists, collects and mounts, and the mounted
//! tree is exactly the source directory.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

use cfs_erofs::digest::{FsVerityDigest, Sha512Digest};
use cfs_erofs::tree::{FileName, Inode, LeafContent};
use cfs_images::splitstream::{ContentType, SplitStreamWriter};
use cfs_images::Repository;
use cfs_tests::ondisk::{fill_external, write_tree};
use cfs_tests::{random_tree, TreeParams};
use common::*;

/// Why this test cannot run here, if it cannot.
fn missing(test: &str) -> Option<std::path::PathBuf> {
    let Some(cfsctl) = cfsctl() else {
        eprintln!("SKIPPED {test}: cfsctl is not installed (run ./dev test)");
        return None;
    };
    if let Some(why) = cannot_mount() {
        eprintln!("SKIPPED {test}: {why} (writing owners and devices and mounting need it)");
        return None;
    }
    if Command::new("tar").arg("--version").output().is_err() {
        eprintln!("SKIPPED {test}: no tar to make a layer");
        return None;
    }
    Some(cfsctl)
}

/// Writes a random tree to `dir` (with `/usr`, as the OCI transform
/// wants, without `/run`, which it empties, and without whiteouts, which
/// overlayfs hides from readers).
fn source_tree(seed: u64, dir: &Path) {
    let params = TreeParams {
        entries: 400,
        max_inline: 300,
        ..TreeParams::default()
    };
    let mut fs = random_tree::<Sha512Digest>(seed, &params);
    for leaf in &mut fs.leaves {
        if leaf.content.is_whiteout() {
            leaf.content = LeafContent::Fifo;
        }
    }
    let usr = FileName::new(b"usr").expect("valid");
    if !matches!(fs.root.entries.get(&usr), Some(Inode::Directory(_))) {
        let stat = fs.root.stat.clone();
        fs.root.entries.insert(
            usr,
            Inode::Directory(Box::new(cfs_erofs::tree::Directory::new(stat))),
        );
    }
    fs.root
        .entries
        .remove(&FileName::new(b"run").expect("valid"));
    fs.compact();
    let contents = fill_external(&mut fs, seed, 200_000);
    std::fs::create_dir(dir).expect("mkdir");
    write_tree(&fs, &contents, dir).expect("write tree");
}

/// A layer tar of a few files found nowhere else, so that only the split
/// stream keeps their objects alive.
fn layer_tar(work: &Path, seed: u64) -> std::path::PathBuf {
    let dir = work.join("layer");
    write_files(&dir, 30, (65, 50_000), seed);
    let tar = work.join("layer.tar");
    ok(Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    tar
}

/// Runs `cfsctl --repo REPO ARGS`, which must succeed.
fn theirs(cfsctl: &Path, repo: &Path, args: &[&str]) -> String {
    ok(Command::new(cfsctl)
        .env("RUST_BACKTRACE", "0")
        .arg("--repo")
        .arg(repo)
        .args(args))
}

/// Mounts `name` with `tool` and compares it with `source`.
fn mount_and_compare(
    mount: &mut Command,
    mountpoint: &Path,
    source: &std::collections::BTreeMap<Vec<u8>, Seen>,
    what: &str,
) -> usize {
    std::fs::create_dir_all(mountpoint).expect("mkdir");
    ok(mount.arg(mountpoint));
    let _mounted = Mounted(mountpoint.to_owned());
    assert_same_tree(source, &snapshot(mountpoint), what)
}

#[test]
fn cfsctl_repository_passes_our_fsck_gc_and_mount() {
    let test = "cfsctl_repository_passes_our_fsck_gc_and_mount";
    let Some(cfsctl) = missing(test) else {
        return;
    };
    let work = tempfile::tempdir().expect("tempdir");
    let repo = work.path().join("repo");
    let src = work.path().join("src");
    source_tree(1, &src);
    let source = snapshot(&src);

    theirs(&cfsctl, &repo, &["init", "--insecure"]);
    let printed = theirs(
        &cfsctl,
        &repo,
        &["create-image", src.to_str().unwrap(), "img"],
    );
    let digest = printed.trim().trim_start_matches("sha512:").to_owned();
    let tar = layer_tar(work.path(), 2);
    // The reference takes the layer's digest on trust: any will do.
    let layer_id = format!("sha256:{}", "ab".repeat(32));
    ok(Command::new(&cfsctl)
        .arg("--repo")
        .arg(&repo)
        .args(["oci", "import-layer", &layer_id, "layer"])
        .stdin(Stdio::from(std::fs::File::open(&tar).expect("open tar"))));

    let report = assert_clean(&repo, "of cfsctl's repository");
    eprintln!(
        "our fsck of cfsctl's repository: {} objects, {} streams, {} images, {} refs: clean",
        report["objectsChecked"],
        report["streamsChecked"],
        report["imagesChecked"],
        report["refsChecked"]
    );
    assert_eq!(report["streamsChecked"], 1);
    assert_eq!(report["imagesChecked"], 1);
    assert_eq!(report["refsChecked"], 2);
    let ls: serde_json::Value =
        serde_json::from_str(&ok(ours(&repo).args(["--json", "repo", "ls"]))).expect("json");
    assert_eq!(ls["images"][0][0], "img", "{ls}");
    assert_eq!(ls["streams"][0][0], "layer", "{ls}");

    // Everything is referenced: our GC must see the stream's objects.
    let gc: serde_json::Value =
        serde_json::from_str(&ok(ours(&repo).args(["--json", "repo", "gc"]))).expect("json");
    assert_eq!(gc["objectsRemoved"], 0, "{gc}");
    assert_eq!(gc["linksRemoved"].as_array().map(Vec::len), Some(0), "{gc}");
    theirs(&cfsctl, &repo, &["fsck"]);
    let cat = output(
        Command::new(&cfsctl)
            .arg("--repo")
            .arg(&repo)
            .args(["cat", "refs/layer"]),
    );
    assert!(cat.status.success(), "{cat:?}");
    assert!(
        cat.stdout == std::fs::read(&tar).expect("read tar"),
        "the layer no longer reassembles after our gc"
    );

    let by_name = mount_and_compare(
        ours(&repo).args(["image", "mount", "img"]),
        &work.path().join("mnt"),
        &source,
        "cfsctl's image mounted by us (by name)",
    );
    mount_and_compare(
        ours(&repo).args(["image", "mount", &digest]),
        &work.path().join("mnt2"),
        &source,
        "cfsctl's image mounted by us (by digest)",
    );
    eprintln!("cfsctl's image mounted by us: {by_name} paths equal the source (by name and by digest); our gc removed nothing and the layer still reassembles");
}

/// The objects an image of `source` must reference: every regular file of
/// more than 64 bytes.
fn expected_objects(source: &std::collections::BTreeMap<Vec<u8>, Seen>) -> BTreeSet<String> {
    source
        .values()
        .filter(|s| s.size.is_some_and(|n| n > 64) && s.content.is_some())
        .map(|s| format!("sha512:{}", s.content.clone().expect("regular")))
        .collect()
}

#[test]
fn our_repository_passes_cfsctl_fsck_and_mount() {
    let test = "our_repository_passes_cfsctl_fsck_and_mount";
    let Some(cfsctl) = missing(test) else {
        return;
    };
    let work = tempfile::tempdir().expect("tempdir");
    let repo = work.path().join("repo");
    let src = work.path().join("src");
    source_tree(3, &src);
    let source = snapshot(&src);

    ok(ours(&repo).args(["repo", "init", "--insecure"]));
    let created: serde_json::Value = serde_json::from_str(&ok(ours(&repo)
        .args(["--json", "image", "create"])
        .arg(&src)
        .args(["--name", "img"])))
    .expect("json");
    let digest = created["digest"].as_str().expect("digest").to_owned();
    let reference_id = ok(Command::new(&cfsctl)
        .args(["--no-repo", "compute-id"])
        .arg(&src));
    assert_eq!(
        reference_id.trim(),
        digest,
        "cfsctl compute-id of the source"
    );

    // A split stream of ours, referencing some of the image's objects and
    // holding inline data, named like an OCI layer.
    {
        let r = Repository::<Sha512Digest>::open(&repo).expect("open");
        let mut writer = SplitStreamWriter::<Sha512Digest>::new(ContentType::OCI_LAYER);
        let mut referenced = 0;
        for seen in source.values().filter(|s| s.size.is_some_and(|n| n > 64)) {
            let Some(hex) = &seen.content else { continue };
            writer.write_inline(&[0x55; 512]);
            let d = Sha512Digest::from_hex(hex).expect("hex");
            writer.write_external(d, seen.size.expect("file"));
            referenced += 1;
            if referenced == 20 {
                break;
            }
        }
        let bytes = writer.finish();
        r.write_stream(
            &format!("oci-layer-sha256:{}", "cd".repeat(32)),
            &bytes,
            Some("ours/layer"),
        )
        .expect("write stream");
    }
    assert_clean(&repo, "of our repository");

    theirs(&cfsctl, &repo, &["fsck"]);
    let report: serde_json::Value =
        serde_json::from_str(&theirs(&cfsctl, &repo, &["fsck", "--json"])).expect("json");
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["streams_checked"], 1, "{report:#}");
    assert_eq!(report["images_checked"], 1, "{report:#}");
    let images: serde_json::Value =
        serde_json::from_str(&theirs(&cfsctl, &repo, &["images", "--json", "--no-trunc"]))
            .expect("json");
    assert_eq!(
        images["images"],
        serde_json::json!([{ "name": "img", "digest": digest }]),
        "{images:#}"
    );
    let listed: BTreeSet<String> = theirs(&cfsctl, &repo, &["image-objects", "img"])
        .lines()
        .map(str::to_owned)
        .collect();
    let expected = expected_objects(&source);
    assert_eq!(listed, expected, "cfsctl image-objects");

    // cfsctl's GC must keep everything: the image's objects and our stream.
    let gc = theirs(&cfsctl, &repo, &["gc"]);
    assert!(gc.contains("Objects: 0 removed"), "{gc}");
    assert_clean(&repo, "after cfsctl's gc");

    // By digest: cfsctl requires fs-verity when mounting by ref name,
    // even in an insecure repository; by digest it honours insecure.
    let compared = mount_and_compare(
        Command::new(&cfsctl)
            .env("RUST_BACKTRACE", "0")
            .arg("--repo")
            .arg(&repo)
            .args(["mount", &digest]),
        &work.path().join("mnt"),
        &source,
        "our image mounted by cfsctl",
    );
    eprintln!(
        "cfsctl fsck of our repository: {} objects, 1 stream, 1 image: ok; image-objects lists all {} objects; cfsctl gc removed nothing; cfsctl mount shows {compared} paths equal to the source",
        report["objects_checked"],
        listed.len()
    );
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex_string(&sha2::Sha256::digest(data))
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `blob` under `layout/blobs/sha256/` and returns its descriptor.
fn add_blob(layout: &Path, media_type: &str, blob: &[u8]) -> serde_json::Value {
    let digest = sha256_hex(blob);
    std::fs::write(layout.join("blobs/sha256").join(&digest), blob).expect("write blob");
    serde_json::json!({
        "mediaType": media_type,
        "digest": format!("sha256:{digest}"),
        "size": blob.len(),
    })
}

/// An OCI image layout at `layout` holding one image tagged `tag`, whose
/// single uncompressed layer is the tar `layer`.
fn oci_layout(layout: &Path, layer: &[u8], tag: &str) {
    std::fs::create_dir_all(layout.join("blobs/sha256")).expect("mkdir");
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("write oci-layout");
    let layer = add_blob(layout, "application/vnd.oci.image.layer.v1.tar", layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [layer["digest"]] },
    });
    let config = add_blob(
        layout,
        "application/vnd.oci.image.config.v1+json",
        config.to_string().as_bytes(),
    );
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": [layer],
    });
    let mut manifest = add_blob(
        layout,
        "application/vnd.oci.image.manifest.v1+json",
        manifest.to_string().as_bytes(),
    );
    manifest["annotations"] = serde_json::json!({ "org.opencontainers.image.ref.name": tag });
    let index = serde_json::json!({ "schemaVersion": 2, "manifests": [manifest] });
    std::fs::write(layout.join("index.json"), index.to_string()).expect("write index");
}

/// `Objects: N removed (B bytes)` from cfsctl gc.
fn cfsctl_gc_counts(text: &str) -> (u64, u64) {
    let line = text
        .lines()
        .find(|l| l.starts_with("Objects:"))
        .unwrap_or_else(|| panic!("no counts in {text:?}"));
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

#[test]
fn cfsctl_oci_pull_survives_our_gc() {
    let test = "cfsctl_oci_pull_survives_our_gc";
    let Some(cfsctl) = missing(test) else {
        return;
    };
    let work = tempfile::tempdir().expect("tempdir");
    let repo = work.path().join("repo");
    // Plain files (inline and external), directories and symlinks: tar
    // and cfsctl's tar reader are not what this test is about.
    let src = work.path().join("src");
    write_files(&src, 200, (1, 20_000), 6);
    std::os::unix::fs::symlink("d00/f0001", src.join("usr/link")).expect("symlink");
    std::os::unix::fs::symlink("/usr/d01", src.join("dirlink")).expect("symlink");
    let tar = work.path().join("layer.tar");
    ok(Command::new("tar")
        .arg("-C")
        .arg(&src)
        .args(["--numeric-owner", "-cf"])
        .arg(&tar)
        .arg("."));
    let layout = work.path().join("layout");
    oci_layout(&layout, &std::fs::read(&tar).expect("read tar"), "t");

    theirs(&cfsctl, &repo, &["init", "--insecure"]);
    let source = format!("oci:{}:t", layout.display());
    theirs(&cfsctl, &repo, &["oci", "pull", &source, "mytag"]);
    let report = assert_clean(&repo, "after cfsctl oci pull");
    assert_eq!(report["streamsChecked"], 3, "{report:#}");
    assert_eq!(report["refsChecked"], 1, "{report:#}");
    let images = report["imagesChecked"].as_u64().expect("count");
    assert!(images >= 1, "{report:#}");

    // Both collectors agree on what is garbage: the config object the
    // pull replaced when it linked the EROFS image. The image itself is
    // kept alive by the config stream's named refs alone.
    let (theirs_count, theirs_bytes) =
        cfsctl_gc_counts(&theirs(&cfsctl, &repo, &["gc", "--dry-run"]));
    let dry: serde_json::Value =
        serde_json::from_str(&ok(ours(&repo).args(["--json", "repo", "gc", "--dry-run"])))
            .expect("json");
    assert_eq!(
        (dry["objectsRemoved"].as_u64(), dry["bytesRemoved"].as_u64()),
        (Some(theirs_count), Some(theirs_bytes)),
        "{dry}"
    );
    let gc: serde_json::Value =
        serde_json::from_str(&ok(ours(&repo).args(["--json", "repo", "gc"]))).expect("json");
    assert_eq!(gc["linksRemoved"], serde_json::json!([]), "{gc}");
    theirs(&cfsctl, &repo, &["fsck"]);
    theirs(&cfsctl, &repo, &["oci", "fsck"]);
    assert_clean(&repo, "after our gc");

    // The image cfsctl generated mounts with us and shows the tree (tar
    // keeps whole seconds only).
    let image = std::fs::read_dir(repo.join("images"))
        .expect("images")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .find(|n| n != "refs")
        .expect("an image");
    let seconds = |mut tree: std::collections::BTreeMap<Vec<u8>, Seen>| {
        tree.values_mut().for_each(|s| s.mtime.1 = 0);
        tree
    };
    let compared = mount_and_compare(
        ours(&repo).args(["image", "mount", &image]),
        &work.path().join("mnt"),
        &seconds(snapshot(&src)),
        "cfsctl's OCI image mounted by us",
    );
    eprintln!(
        "cfsctl oci pull of a {}-byte layer: our fsck clean ({} objects, 3 streams, {images} \
         image); our gc and cfsctl gc both find {theirs_count} objects ({theirs_bytes} bytes) \
         of garbage; after our gc cfsctl fsck and oci fsck pass; the pulled image mounted by us \
         shows {compared} paths equal to the source",
        std::fs::metadata(&tar).expect("stat").len(),
        report["objectsChecked"],
    );
}

#[test]
fn other_hashes_and_formats_both_ways() {
    let test = "other_hashes_and_formats_both_ways";
    let Some(cfsctl) = cfsctl() else {
        eprintln!("SKIPPED {test}: cfsctl is not installed (run ./dev test)");
        return;
    };
    let work = tempfile::tempdir().expect("tempdir");
    let src = work.path().join("src");
    write_files(&src, 50, (1, 10_000), 7);
    let mut done = Vec::new();
    for (hash, version) in [("sha256", "1"), ("sha512", "2"), ("sha256", "2")] {
        let theirs_repo = work.path().join(format!("theirs-{hash}-v{version}"));
        let ours_repo = work.path().join(format!("ours-{hash}-v{version}"));
        ok(Command::new(&cfsctl)
            .arg("--repo")
            .arg(&theirs_repo)
            .args(["init", "--insecure", "--erofs-version", version])
            .arg(format!("--algorithm=fsverity-{hash}-12")));
        ok(ours(&ours_repo).args([
            "--hash",
            hash,
            "--erofs-version",
            version,
            "repo",
            "init",
            "--insecure",
        ]));
        assert_eq!(
            std::fs::read_to_string(theirs_repo.join("meta.json")).expect("read"),
            std::fs::read_to_string(ours_repo.join("meta.json")).expect("read"),
            "meta.json of {hash} V{version}"
        );
        let theirs_id = theirs(
            &cfsctl,
            &theirs_repo,
            &["create-image", src.to_str().unwrap(), "a"],
        );
        let ours_id = ok(ours(&ours_repo)
            .args(["image", "create"])
            .arg(&src)
            .args(["--name", "a"]));
        assert_eq!(theirs_id.trim(), ours_id.trim(), "{hash} V{version}");
        // Each tool checks and extends the other's repository.
        let report = assert_clean(&theirs_repo, &format!("cfsctl's {hash} V{version}"));
        assert_eq!(report["imagesChecked"], 1);
        ok(ours(&theirs_repo)
            .args(["image", "create"])
            .arg(&src)
            .args(["--name", "b"]));
        theirs(&cfsctl, &ours_repo, &["fsck"]);
        theirs(
            &cfsctl,
            &ours_repo,
            &["create-image", src.to_str().unwrap(), "b"],
        );
        theirs(&cfsctl, &theirs_repo, &["fsck"]);
        assert_clean(
            &ours_repo,
            &format!("our {hash} V{version} after cfsctl wrote"),
        );
        done.push(format!("{hash} V{version}"));
    }
    eprintln!(
        "{done:?}: meta.json byte-identical, same image id, each tool fscks and writes into the \
         other's repository"
    );
}
