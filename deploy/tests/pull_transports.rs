//! `image pull` from every transport, against the reference: one bootable
//! two-platform image is copied with `skopeo copy` to a registry on
//! 127.0.0.1 (plain HTTP), `oci-archive:`, `dir:`, `docker-archive:` and
//! `containers-storage:` (a private store), and an image is built with
//! `buildah`; for each, our plain and boot EROFS digests must equal what
//! `cfsctl oci pull --bootable` computes from the same reference. Also:
//! `oci:` layouts are read without skopeo, and `--platform` picks from an
//! index. Parts whose tool is missing are skipped with the reason printed.

use std::path::{Path, PathBuf};
use std::process::Command;

use cfs_tests::oci_layout::{
    sha256_digest, tar_archive, write_layout, ImageSpec, LayerBlob, LayerSpec, WrittenImage,
};
use cfs_tests::registry::Registry;
use cfs_tests::tools::installed;
use common::{assert_clean, cfsctl, ok, ours, output};

mod common;

const TAG: &str = "v1";

/// A bootable-looking tree over three layers (the second whites out a
/// file of the first, the third makes a directory of it opaque); `arch` goes into a file so the platforms differ.
/// Gzip only when `docker` (Docker images cannot hold zstd layers).
fn bootable(arch: &str, docker: bool) -> ImageSpec {
    let kernel = format!("kernel for {arch}\n").repeat(4000);
    let base = tar_archive(&[
        ("boot/", b""),
        ("boot/vmlinuz", kernel.as_bytes()),
        ("sysroot/", b""),
        ("etc/", b""),
        ("etc/os-release", b"ID=test\n"),
        ("etc/old.conf", b"old"),
        ("usr/", b""),
        ("usr/bin/", b""),
        ("usr/bin/tool", &vec![b'x'; 90_000]),
        ("usr/share/", b""),
        ("usr/share/doc/", b""),
        ("usr/share/doc/old", b"old documentation"),
    ]);
    let update = tar_archive(&[
        ("etc/", b""),
        ("etc/.wh.old.conf", b""),
        ("etc/arch", arch.as_bytes()),
    ]);
    let extra = tar_archive(&[
        ("usr/share/", b""),
        ("usr/share/big", &vec![b'y'; 70_000]),
        ("usr/share/doc/", b""),
        ("usr/share/doc/.wh..wh..opq", b""),
        ("usr/share/doc/new", b"new documentation"),
    ]);
    let second = if docker {
        LayerBlob::Gzip
    } else {
        LayerBlob::Zstd
    };
    ImageSpec::linux(
        arch,
        vec![
            LayerSpec {
                tar: base,
                blob: LayerBlob::Gzip,
            },
            LayerSpec {
                tar: update,
                blob: second,
            },
            LayerSpec {
                tar: extra,
                blob: LayerBlob::Plain,
            },
        ],
    )
}

fn skopeo_copy(args: &[&str]) {
    ok(Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--quiet"])
        .args(args));
}

/// What one of our pulls made: the manifest and config it took, and its
/// plain and boot EROFS image digests.
#[derive(Debug)]
struct Pulled {
    manifest: String,
    config: String,
    image: String,
    boot_image: String,
}

/// Pulls `reference` into `repo`.
fn our_images(repo: &Path, reference: &str, extra: &[&str]) -> Pulled {
    let text = ok(ours(repo)
        .args(["--json", "--quiet", "image", "pull", reference])
        .args(extra));
    let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let digest = |key: &str| json[key].as_str().unwrap_or_default().to_owned();
    Pulled {
        manifest: digest("manifest"),
        config: digest("config"),
        image: digest("image"),
        boot_image: digest("bootImage"),
    }
}

/// The raw config of `reference`, as skopeo reads it.
fn skopeo_config(reference: &str, extra: &[&str]) -> Vec<u8> {
    ok(Command::new("skopeo")
        .args(extra)
        .args(["inspect", "--config", "--raw", reference]))
    .into_bytes()
}

/// The reference's plain and boot image digests for `reference`.
fn their_images(
    cfsctl: &Path,
    repo: &Path,
    reference: &str,
    env: &[(&str, &Path)],
) -> (String, String) {
    if !repo.exists() {
        ok(Command::new(cfsctl)
            .arg("--repo")
            .arg(repo)
            .args(["init", "--insecure"]));
    }
    let cfsctl_cmd = || {
        let mut cmd = Command::new(cfsctl);
        cmd.arg("--repo").arg(repo).arg("--insecure");
        for (key, value) in env {
            cmd.env(key, value);
        }
        cmd
    };
    let pulled = ok(cfsctl_cmd().args(["oci", "pull", "--bootable", reference, "img"]));
    let boot = pulled
        .lines()
        .find_map(|l| l.strip_prefix("Boot image:"))
        .unwrap_or_else(|| panic!("no boot image in {pulled}"))
        .trim()
        .to_owned();
    let plain = ok(cfsctl_cmd().args(["oci", "compute-id", "img"]));
    (plain.trim().to_owned(), boot)
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    cfsctl: PathBuf,
}

impl Fixture {
    fn new(test: &str) -> Option<Fixture> {
        let Some(cfsctl) = cfsctl() else {
            println!("SKIPPED {test}: cfsctl is not installed (run scripts/setup.sh)");
            return None;
        };
        if !installed("skopeo") {
            println!("SKIPPED {test}: skopeo is not installed (run scripts/setup.sh)");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_owned();
        Some(Fixture {
            _dir: dir,
            root,
            cfsctl,
        })
    }

    /// Checks ours against the reference for `reference`; returns what
    /// we pulled.
    fn compare(
        &self,
        name: &str,
        reference: &str,
        ours_extra: &[&str],
        env: &[(&str, &Path)],
    ) -> Pulled {
        self.compare_via(name, reference, reference, ours_extra, env)
    }

    /// [`Fixture::compare`], the reference reading `oracle`: an `oci:`
    /// copy where cfsctl 0.9.4 cannot read the transport through Debian
    /// 12's skopeo 1.9 (containers-storage: "Failed to get uncompressed
    /// layer info", the proxy has no GetLayerInfo; docker-archive:
    /// "Unknown blob" for skopeo's converted config). The copy has the
    /// same layer tars, which are all the EROFS images depend on.
    fn compare_via(
        &self,
        name: &str,
        reference: &str,
        oracle: &str,
        ours_extra: &[&str],
        env: &[(&str, &Path)],
    ) -> Pulled {
        let repo = self.root.join(format!("ours-{name}"));
        ok(ours(&repo).args(["repo", "init", "--insecure"]));
        let mine = our_images(&repo, reference, ours_extra);
        let theirs = their_images(
            &self.cfsctl,
            &self.root.join(format!("ref-{name}")),
            oracle,
            env,
        );
        assert_eq!(mine.image, theirs.0, "{name}: plain image");
        assert_eq!(mine.boot_image, theirs.1, "{name}: boot image");
        assert_clean(&repo, name);
        println!(
            "{name}: plain {} boot {} equal cfsctl's",
            &mine.image[..12],
            &mine.boot_image[..12]
        );
        mine
    }
}

#[test]
fn every_transport_matches_cfsctl() {
    let Some(fx) = Fixture::new("every_transport_matches_cfsctl") else {
        return;
    };
    let layout = fx.root.join("layout");
    let written = write_layout(
        &layout,
        TAG,
        &[bootable("amd64", false), bootable("arm64", false)],
    )
    .expect("layout");
    let from = format!("oci:{}:{TAG}", layout.display());
    let host = ["--override-arch", "amd64"];
    let amd64 = written.image("linux/amd64").expect("written");
    let plain = fx.compare("oci", &from, &["--platform", "linux/amd64"], &[]);
    // Every copy but the docker-archive keeps the layout's config bytes
    // (the same tars, so the same diff_ids) and so gives the same images.
    // The manifest is kept where skopeo stores blobs as they are (`dir:`,
    // containers-storage); on the way to an archive or a registry it
    // compresses the plain third layer and so writes a new manifest.
    let same_as = |pulled: Pulled, image: &WrittenImage, name: &str| {
        assert_eq!(pulled.config, image.config.digest, "{name}: config");
        let kept = ["oci", "dir", "containers-storage"].contains(&name);
        assert_eq!(
            pulled.manifest == image.manifest.digest,
            kept,
            "{name}: manifest {} (layout's: {})",
            pulled.manifest,
            image.manifest.digest
        );
        pulled.image
    };
    let plain = same_as(plain, amd64, "oci");

    // skopeo picks amd64 for the single-image forms; both tools read them
    // the same way.
    let archive = format!("oci-archive:{}:{TAG}", fx.root.join("image.tar").display());
    ok(Command::new("skopeo").args(host).args([
        "--insecure-policy",
        "copy",
        "--quiet",
        &from,
        &archive,
    ]));
    let pulled = fx.compare("oci-archive", &archive, &[], &[]);
    assert_eq!(same_as(pulled, amd64, "oci-archive"), plain);
    let dir = format!("dir:{}", fx.root.join("dir").display());
    ok(Command::new("skopeo").args(host).args([
        "--insecure-policy",
        "copy",
        "--quiet",
        &from,
        &dir,
    ]));
    let pulled = fx.compare("dir", &dir, &[], &[]);
    assert_eq!(same_as(pulled, amd64, "dir"), plain);

    // Docker archives hold uncompressed layers under a Docker manifest,
    // and no zstd: a gzip-only image, compared as itself.
    let docker_layout = fx.root.join("docker-layout");
    let docker_written =
        write_layout(&docker_layout, TAG, &[bootable("amd64", true)]).expect("layout");
    let docker_image = &docker_written.images[0];
    let docker = format!(
        "docker-archive:{}:cfs/test:{TAG}",
        fx.root.join("docker.tar").display()
    );
    skopeo_copy(&[&format!("oci:{}:{TAG}", docker_layout.display()), &docker]);
    let docker_copy = format!("oci:{}:{TAG}", fx.root.join("docker-copy").display());
    skopeo_copy(&[&docker, &docker_copy]);
    let pulled = fx.compare_via("docker-archive", &docker, &docker_copy, &[], &[]);
    // The archive keeps the config bytes, but skopeo's OCI translation of
    // it (what its proxy hands us, and what it writes to a layout)
    // re-serializes them: another digest for the same JSON. The manifest
    // is the translation of the archive's Docker one.
    assert!(skopeo_config(&docker, &[]) == docker_image.config.bytes);
    let translated = skopeo_config(&docker_copy, &[]);
    let json = |bytes: &[u8]| serde_json::from_slice::<serde_json::Value>(bytes).expect("JSON");
    assert_eq!(json(&translated), json(&docker_image.config.bytes));
    assert_eq!(
        pulled.config,
        sha256_digest(&translated),
        "docker-archive: config"
    );
    assert_ne!(pulled.config, docker_image.config.digest);
    assert_ne!(pulled.manifest, docker_image.manifest.digest);

    // A private store: the host's is left alone.
    let store = format!(
        "[vfs@{}+{}]",
        fx.root.join("storage").display(),
        fx.root.join("run").display()
    );
    let stored = format!("containers-storage:{store}localhost/cfs-transports:{TAG}");
    let copied = output(Command::new("skopeo").args(host).args([
        "--insecure-policy",
        "copy",
        "--quiet",
        &from,
        &stored,
    ]));
    if copied.status.success() {
        let stored_copy = format!("oci:{}:{TAG}", fx.root.join("stored-copy").display());
        skopeo_copy(&[&stored, &stored_copy]);
        let pulled = fx.compare_via("containers-storage", &stored, &stored_copy, &[], &[]);
        assert_eq!(same_as(pulled, amd64, "containers-storage"), plain);
    } else {
        println!(
            "SKIPPED containers-storage: unusable here: {}",
            String::from_utf8_lossy(&copied.stderr).trim()
        );
    }

    // A registry over plain HTTP: ours with its flag, the reference
    // through copies.
    match Registry::start(&fx.root) {
        Some(registry) => {
            let image = format!("docker://{}/cfs/transports:{TAG}", registry.address);
            skopeo_copy(&["--all", "--dest-tls-verify=false", &from, &image]);
            let refused =
                output(ours(&fx.root.join("refused")).args(["repo", "init", "--insecure"]));
            assert!(refused.status.success());
            let refused = output(ours(&fx.root.join("refused")).args(["image", "pull", &image]));
            assert!(
                !refused.status.success(),
                "plain HTTP needs --insecure-registry"
            );
            // cfsctl has no flag for plain HTTP (and Debian 12's skopeo
            // ignores CONTAINERS_REGISTRIES_CONF): it reads copies.
            let host_copy = format!("oci:{}:{TAG}", fx.root.join("host-copy").display());
            skopeo_copy(&["--src-tls-verify=false", &image, &host_copy]);
            let host_plain = fx.compare_via(
                "registry",
                &image,
                &host_copy,
                &["--insecure-registry"],
                &[],
            );
            if std::env::consts::ARCH == "x86_64" {
                assert_eq!(same_as(host_plain, amd64, "registry"), plain);
            }
            // And an arm64-only copy for the other platform, as `dir:`
            // (its `oci:` import refuses an image of another architecture).
            let arm_copy = format!("dir:{}", fx.root.join("arm-copy").display());
            ok(Command::new("skopeo").args([
                "--override-arch",
                "arm64",
                "--insecure-policy",
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                &image,
                &arm_copy,
            ]));
            let arm = fx.compare_via(
                "registry-arm64",
                &image,
                &arm_copy,
                &["--insecure-registry", "--platform", "linux/arm64"],
                &[],
            );
            let arm64 = written.image("linux/arm64").expect("written");
            assert_ne!(same_as(arm, arm64, "registry-arm64"), plain);
        }
        None => println!("SKIPPED registry: docker-registry is not installed"),
    }
}

#[test]
fn buildah_image_in_containers_storage_matches_cfsctl() {
    let test = "buildah_image_in_containers_storage_matches_cfsctl";
    let Some(fx) = Fixture::new(test) else {
        return;
    };
    if !installed("buildah") {
        println!("SKIPPED {test}: buildah is not installed (run scripts/setup.sh)");
        return;
    }
    let tree = fx.root.join("tree");
    for dir in ["boot", "sysroot", "etc", "usr/bin", "usr/lib/modules/6.1.0"] {
        std::fs::create_dir_all(tree.join(dir)).expect("mkdir");
    }
    std::fs::write(tree.join("etc/os-release"), "ID=built\n").expect("write");
    std::fs::write(tree.join("boot/loader.conf"), "timeout 3\n").expect("write");
    std::fs::write(tree.join("usr/bin/tool"), vec![b'z'; 100_000]).expect("write");
    std::fs::write(
        tree.join("usr/lib/modules/6.1.0/vmlinuz"),
        vec![b'k'; 50_000],
    )
    .expect("write");
    let buildah = |args: &[&str]| {
        let out = output(
            Command::new("buildah")
                .arg("--root")
                .arg(fx.root.join("storage"))
                .arg("--runroot")
                .arg(fx.root.join("run"))
                .args(["--storage-driver", "vfs"])
                .args(args),
        );
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            out.stderr,
        )
    };
    let (made, container, stderr) = buildah(&["from", "scratch"]);
    if !made {
        println!(
            "SKIPPED {test}: buildah cannot work here: {}",
            String::from_utf8_lossy(&stderr).trim()
        );
        return;
    }
    let (copied, _, stderr) = buildah(&["copy", &container, &tree.display().to_string(), "/"]);
    assert!(copied, "buildah copy: {}", String::from_utf8_lossy(&stderr));
    let (committed, _, stderr) = buildah(&["commit", "--quiet", &container, "localhost/built:v1"]);
    assert!(
        committed,
        "buildah commit: {}",
        String::from_utf8_lossy(&stderr)
    );
    let reference = format!(
        "containers-storage:[vfs@{}+{}]localhost/built:v1",
        fx.root.join("storage").display(),
        fx.root.join("run").display()
    );
    let copy = format!("oci:{}:built", fx.root.join("copy").display());
    skopeo_copy(&[&reference, &copy]);
    fx.compare_via("buildah", &reference, &copy, &[], &[]);
}

/// A `skopeo` that records that it ran and fails, first in `PATH`.
fn fake_skopeo(dir: &Path) -> (std::ffi::OsString, PathBuf) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    let marker = dir.join("skopeo-ran");
    let script = bin.join("skopeo");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$@\" >> '{}'\nexit 1\n", marker.display()),
    )
    .expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .expect("PATH");
    (path, marker)
}

#[test]
fn oci_layout_pull_starts_no_skopeo() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = dir.path().join("layout");
    write_layout(&layout, TAG, &[bootable("amd64", false)]).expect("layout");
    let (path, marker) = fake_skopeo(dir.path());
    let repo = dir.path().join("repo");
    ok(ours(&repo).args(["repo", "init", "--insecure"]));
    ok(ours(&repo).env("PATH", &path).args([
        "image",
        "pull",
        &format!("oci:{}:{TAG}", layout.display()),
    ]));
    assert!(!marker.exists(), "skopeo ran for an oci: pull");
    // The control: any other transport does start skopeo (and fails here).
    let other = output(ours(&repo).env("PATH", &path).args([
        "image",
        "pull",
        &format!("dir:{}", dir.path().join("nowhere").display()),
    ]));
    assert!(!other.status.success());
    assert!(marker.exists(), "the fake skopeo was not found in PATH");
}

#[test]
fn multi_platform_index_picks_the_right_manifest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = dir.path().join("layout");
    let written = write_layout(
        &layout,
        TAG,
        &[bootable("amd64", false), bootable("arm64", false)],
    )
    .expect("layout");
    let index = written.index.as_ref().expect("two images make an index");
    let from = format!("oci:{}:{TAG}", layout.display());
    let repo = dir.path().join("repo");
    ok(ours(&repo).args(["repo", "init", "--insecure"]));
    let inspect = |tag: &str| -> serde_json::Value {
        serde_json::from_str(&ok(ours(&repo).args(["--json", "image", "inspect", tag])))
            .expect("JSON")
    };
    let host = match std::env::consts::ARCH {
        "x86_64" => Some("linux/amd64"),
        "aarch64" => Some("linux/arm64"),
        _ => None,
    };
    if let Some(host) = host {
        ok(ours(&repo).args(["image", "pull", &from, "--name", "default"]));
        let info = inspect("default");
        assert_eq!(
            info["manifest"],
            written.image(host).unwrap().manifest.digest.as_str()
        );
        assert_eq!(info["platform"], host);
    }
    ok(ours(&repo).args([
        "image",
        "pull",
        &from,
        "--name",
        "arm",
        "--platform",
        "linux/arm64",
    ]));
    let info = inspect("arm");
    assert_eq!(
        info["manifest"],
        written
            .image("linux/arm64")
            .unwrap()
            .manifest
            .digest
            .as_str()
    );
    assert_eq!(info["platform"], "linux/arm64");
    // The index is kept: which one, and what else it offered.
    assert_eq!(info["index"]["digest"], index.digest.as_str());
    assert_eq!(
        info["index"]["platforms"],
        serde_json::json!(["linux/amd64", "linux/arm64"])
    );
    let text = ok(ours(&repo).args(["image", "inspect", "arm"]));
    assert!(
        text.contains(&format!(
            "index {} (linux/amd64, linux/arm64)",
            index.digest
        )),
        "{text}"
    );
    // A tag copies the index reference; untag and gc drop it.
    ok(ours(&repo).args(["image", "tag", "arm", "arm2"]));
    assert_eq!(inspect("arm2")["index"]["digest"], index.digest.as_str());

    let missing = output(ours(&repo).args(["image", "pull", &from, "--platform", "linux/s390x"]));
    assert!(!missing.status.success());
    let message = String::from_utf8_lossy(&missing.stderr);
    assert!(
        message.contains("linux/s390x") && message.contains("linux/amd64, linux/arm64"),
        "{message}"
    );
    for tag in ["arm", "arm2", "default"] {
        let _ = output(ours(&repo).args(["image", "untag", tag]));
    }
    ok(ours(&repo).args(["repo", "gc"]));
    let left = ok(ours(&repo).args(["repo", "ls"]));
    assert!(!left.contains("oci-index"), "{left}");
    assert_clean(&repo, "after untagging everything");
}
