//! `image ls`, `inspect`, `tag` and `untag` on pulled `oci:` images: what
//! they report matches what the layout holds (diff_ids hashed here from
//! the tars, digests from the layout's own index), and untagging plus
//! `repo gc` reclaims exactly the untagged image's own objects.

use std::path::Path;
use std::process::Command;

use cfs_tests::oci_layout::{tar_archive, write_layout, ImageSpec, LayerBlob, LayerSpec};
use common::{assert_clean, object_of, ok, ours, output};
use sha2::{Digest, Sha256};

mod common;

/// A one-layer image whose only large file is `unique` (stored as an
/// object), in an `oci:` layout at `dir` under `tag`. Returns the layer's
/// diff_id, hashed here.
fn image(dir: &Path, tag: &str, unique: &[u8]) -> String {
    let tar = tar_archive(&[
        ("usr/", b""),
        ("usr/bin/", b""),
        ("usr/bin/tool", unique),
        ("etc/", b""),
        ("etc/hostname", b"demo"),
    ]);
    let diff_id = format!("sha256:{:x}", Sha256::digest(&tar));
    let layers = vec![LayerSpec {
        tar,
        blob: LayerBlob::Gzip,
    }];
    write_layout(dir, tag, &[ImageSpec::linux("amd64", layers)]).expect("write layout");
    diff_id
}

/// The manifest digest the layout's index gives `tag`.
fn indexed_manifest(dir: &Path, tag: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("{tag} not in {index}"))["digest"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn json(cmd: &mut Command) -> serde_json::Value {
    let text = ok(cmd);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn tags(repo: &Path) -> Vec<String> {
    json(ours(repo).args(["--json", "image", "ls"]))
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["tag"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn ls_inspect_tag_untag_and_gc() {
    let work = tempfile::tempdir().unwrap();
    let (one, two) = (work.path().join("one"), work.path().join("two"));
    let unique_one = vec![1u8; 70_000];
    let unique_two = vec![2u8; 80_000];
    let diff_one = image(&one, "v1", &unique_one);
    image(&two, "v2", &unique_two);
    let repo = work.path().join("repo");
    ok(ours(&repo).args(["repo", "init", "--insecure"]));
    let pulled = json(ours(&repo).args([
        "--json",
        "image",
        "pull",
        &format!("oci:{}:v1", one.display()),
        "--name",
        "one",
    ]));
    ok(ours(&repo).args(["image", "pull", &format!("oci:{}:v2", two.display())]));
    ok(ours(&repo)
        .args(["image", "pull", "--name", "two"])
        .arg(format!("oci:{}:v2", two.display())));
    ok(ours(&repo).args(["image", "untag", &format!("oci:{}:v2", two.display())]));

    // inspect reports the layout's manifest, the tar's diff_id and the
    // images the pull made.
    let info = json(ours(&repo).args(["--json", "image", "inspect", "one"]));
    assert_eq!(info["manifest"], indexed_manifest(&one, "v1"));
    assert_eq!(info["manifest"], pulled["manifest"]);
    assert_eq!(info["config"], pulled["config"]);
    assert_eq!(info["platform"], "linux/amd64");
    assert_eq!(info["layers"][0]["diffId"], diff_one.as_str());
    assert_eq!(info["layers"].as_array().unwrap().len(), 1);
    assert_eq!(info["image"], pulled["image"]);
    assert_eq!(info["bootImage"], pulled["bootImage"]);
    let text = ok(ours(&repo).args(["image", "inspect", "one"]));
    assert!(text.contains(&format!(
        "layer {}",
        info["layers"][0]["digest"].as_str().unwrap()
    )));

    // tag gives a second name to the same manifest; ls shows both.
    ok(ours(&repo).args(["image", "tag", "one", "also/one"]));
    assert_eq!(tags(&repo), ["also/one", "one", "two"]);
    let also = json(ours(&repo).args(["--json", "image", "inspect", "also/one"]));
    assert_eq!(also["manifest"], info["manifest"]);

    // Unknown names are errors that say which name.
    let missing = output(ours(&repo).args(["image", "untag", "nope"]));
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no image tagged \"nope\""));
    let missing = output(ours(&repo).args(["image", "inspect", "nope"]));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no image tagged \"nope\""));

    // Untagging one name keeps the image; untagging the last lets gc take
    // its own objects and nothing of the other image.
    ok(ours(&repo).args(["image", "untag", "one"]));
    ok(ours(&repo).args(["repo", "gc"]));
    assert!(repo.join(object_of(&unique_one)).exists());
    ok(ours(&repo).args(["image", "untag", "also/one"]));
    assert_eq!(tags(&repo), ["two"]);
    ok(ours(&repo).args(["repo", "gc"]));
    assert!(!repo.join(object_of(&unique_one)).exists());
    assert!(repo.join(object_of(&unique_two)).exists());
    assert_clean(&repo, "after untag and gc");
    let two_info = json(ours(&repo).args(["--json", "image", "inspect", "two"]));
    assert_eq!(two_info["manifest"], indexed_manifest(&two, "v2"));
}

#[test]
fn compute_id_of_an_image_reference_matches_cfsctl() {
    let Some(cfsctl) = common::cfsctl() else {
        eprintln!("SKIPPED compute_id_of_an_image_reference: cfsctl is not installed");
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let tar = tar_archive(&[
        ("usr/", b""),
        ("usr/bin/", b""),
        ("usr/bin/tool", &[3u8; 90_000]),
        ("boot/", b""),
        ("boot/vmlinuz", &[4u8; 5_000]),
        ("sysroot/", b""),
    ]);
    let layers = vec![LayerSpec {
        tar,
        blob: LayerBlob::Zstd,
    }];
    write_layout(&layout, "v1", &[ImageSpec::linux("amd64", layers)]).unwrap();
    let source = format!("oci:{}:v1", layout.display());

    let theirs = work.path().join("theirs");
    let cfs = |args: &[&str]| {
        ok(Command::new(&cfsctl)
            .arg("--repo")
            .arg(&theirs)
            .arg("--insecure")
            .args(args))
        .trim()
        .to_owned()
    };
    ok(Command::new(&cfsctl)
        .arg("--repo")
        .arg(&theirs)
        .args(["init", "--insecure"]));
    cfs(&["oci", "pull", "--bootable", &source, "img"]);
    let plain = cfs(&["oci", "compute-id", "img"]);
    let boot = cfs(&["oci", "compute-id", "--bootable", "img"]);
    assert_ne!(plain, boot);

    // Without a repository: pulled into a temporary one.
    let id = |args: &[&str]| ok(Command::new(common::OURS).args(args)).trim().to_owned();
    assert_eq!(id(&["image", "compute-id", &source]), plain);
    assert_eq!(id(&["image", "compute-id", "--bootable", &source]), boot);
    // By tag, from a repository.
    let repo = work.path().join("repo");
    ok(ours(&repo).args(["repo", "init", "--insecure"]));
    ok(ours(&repo).args(["image", "pull", &source, "--name", "t"]));
    let by_tag = ok(ours(&repo).args(["image", "compute-id", "--bootable", "t"]));
    assert_eq!(by_tag.trim(), boot);
    let unknown = output(ours(&repo).args(["image", "compute-id", "no-such-tag"]));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no image tagged"));
}

/// Several layers are imported in parallel: a complete pull gives every
/// layer once, and a corrupt layer among them fails the pull naming its
/// diff_id, without a tag and with the repository fsck-clean.
#[test]
fn parallel_layer_import_all_or_nothing() {
    let work = tempfile::tempdir().unwrap();
    let layers: Vec<LayerSpec> = (0u8..6)
        .map(|i| {
            let dir = format!("usr/l{i}/");
            let file = format!("usr/l{i}/data");
            LayerSpec {
                tar: tar_archive(&[
                    ("usr/", b""),
                    (&dir, b""),
                    (&file, &vec![i; 50_000 + i as usize]),
                ]),
                blob: if i % 2 == 0 {
                    LayerBlob::Gzip
                } else {
                    LayerBlob::Zstd
                },
            }
        })
        .collect();
    let good = work.path().join("good");
    write_layout(&good, "v1", &[ImageSpec::linux("amd64", layers.clone())]).unwrap();
    let bad = work.path().join("bad");
    let written = write_layout(&bad, "v1", &[ImageSpec::linux("amd64", layers)]).unwrap();
    let victim = &written.images[0].layers[4];
    let path = bad
        .join("blobs/sha256")
        .join(victim.blob.digest.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    let repo = work.path().join("repo");
    ok(ours(&repo).args(["repo", "init", "--insecure"]));
    let failed = output(
        ours(&repo)
            .args(["image", "pull", "--name", "bad"])
            .arg(format!("oci:{}:v1", bad.display())),
    );
    assert!(!failed.status.success());
    let message = String::from_utf8_lossy(&failed.stderr);
    assert!(message.contains(&victim.diff_id), "{message}");
    assert!(tags(&repo).is_empty());
    assert_clean(&repo, "after a failed parallel pull");

    let pulled = json(
        ours(&repo)
            .args(["--json", "image", "pull", "--name", "good"])
            .arg(format!("oci:{}:v1", good.display())),
    );
    assert_eq!(
        pulled["layersFetched"].as_u64().unwrap() + pulled["layersPresent"].as_u64().unwrap(),
        6
    );
    let info = json(ours(&repo).args(["--json", "image", "inspect", "good"]));
    assert_eq!(info["layers"].as_array().unwrap().len(), 6);
    assert_clean(&repo, "after a parallel pull");
}

/// Layer `index` of a 20-layer image: a directory of its own with a file
/// large enough to be an object, whose content says which image version
/// (`flavour`) made it.
fn numbered_layer(index: usize, flavour: &str) -> LayerSpec {
    let dir = format!("usr/share/layer{index:02}/");
    let file = format!("{dir}data");
    let content = numbered_content(index, flavour);
    LayerSpec {
        tar: tar_archive(&[
            ("usr/", b""),
            ("usr/share/", b""),
            (&dir, b""),
            (&file, &content),
        ]),
        blob: LayerBlob::Gzip,
    }
}

fn numbered_content(index: usize, flavour: &str) -> Vec<u8> {
    format!("layer {index} of {flavour}\n")
        .repeat(200)
        .into_bytes()
}

#[test]
fn images_sharing_layers_fetch_and_keep_only_their_own() {
    let work = tempfile::tempdir().unwrap();
    // v1 and v2 share layers 0..15; 15..20 differ.
    let flavour =
        |version: &str, index: usize| if index < 15 { "base" } else { version }.to_owned();
    for version in ["v1", "v2"] {
        let layers = (0..20)
            .map(|i| numbered_layer(i, &flavour(version, i)))
            .collect();
        write_layout(
            &work.path().join(version),
            version,
            &[ImageSpec::linux("amd64", layers)],
        )
        .unwrap();
    }
    let source = |version: &str| format!("oci:{}:{version}", work.path().join(version).display());
    let repo = work.path().join("repo");
    ok(ours(&repo).args(["repo", "init", "--insecure"]));
    let pull = |version: &str| {
        json(ours(&repo).args([
            "--json",
            "image",
            "pull",
            &source(version),
            "--name",
            version,
        ]))
    };
    let first = pull("v1");
    assert_eq!(first["fetched"]["layers"], 20, "{first}");
    let second = pull("v2");
    assert_eq!(second["fetched"]["layers"], 5, "{second}");
    assert_eq!(second["layersPresent"], 15, "{second}");

    ok(ours(&repo).args(["image", "untag", "v1"]));
    ok(ours(&repo).args(["repo", "gc"]));
    assert_clean(&repo, "after untagging v1 and gc");
    for index in 15..20 {
        let own = numbered_content(index, "v1");
        assert!(!repo.join(object_of(&own)).exists(), "v1's layer {index}");
        let kept = numbered_content(index, "v2");
        assert!(repo.join(object_of(&kept)).exists(), "v2's layer {index}");
    }
    for index in 0..15 {
        let shared = numbered_content(index, "base");
        assert!(
            repo.join(object_of(&shared)).exists(),
            "shared layer {index}"
        );
    }
    let image = |pulled: &serde_json::Value| pulled["image"].as_str().unwrap().to_owned();
    assert!(!repo.join("images").join(image(&first)).exists());

    // v2 mounts whole: every layer's file with v2's content.
    if let Some(why) = common::cannot_mount() {
        println!(
            "SKIPPED the mount of v2 in images_sharing_layers_fetch_and_keep_only_their_own: {why}"
        );
        return;
    }
    let mountpoint = work.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    ok(ours(&repo)
        .args(["image", "mount", &image(&second)])
        .arg(&mountpoint));
    let _mounted = common::Mounted(mountpoint.clone());
    for index in 0..20 {
        let path = mountpoint.join(format!("usr/share/layer{index:02}/data"));
        let content = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            content,
            numbered_content(index, &flavour("v2", index)),
            "{index}"
        );
    }
    println!("v1 then v2 (15 of 20 layers shared): fetched 20 then 5 layers; gc kept v2 whole");
}
