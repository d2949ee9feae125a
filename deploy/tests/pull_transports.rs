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

use cfs_tests::oci_layout::{tar_archive, write_layout, ImageSpec, LayerBlob, LayerSpec};
use cfs_tests::registry::Registry;
use common::{assert_clean, cfsctl, ok, ours, output};

mod common;

const TAG: &str = "v1";

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

/// A bootable-looking tree over three layers (the second whites out a
/// file of the first); `arch` goes into a file so the platforms differ.
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
    ]);
    let update = tar_archive(&[
        ("etc/", b""),
        ("etc/.wh.old.conf", b""),
        ("etc/arch", arch.as_bytes()),
    ]);
    let extra = tar_archive(&[("usr/share/", b""), ("usr/share/big", &vec![b'y'; 70_000])]);
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

/// Our plain and boot image digests for `reference` (pulled into `repo`).
fn our_images(repo: &Path, reference: &str, extra: &[&str]) -> (String, String) {
    let text = ok(ours(repo)
        .args(["--json", "--quiet", "image", "pull", reference])
        .args(extra));
    let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let digest = |key: &str| json[key].as_str().unwrap_or_default().to_owned();
    (digest("image"), digest("bootImage"))
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
        if !have("skopeo") {
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

    /// Checks ours against the reference for `reference`; returns the
    /// plain digest.
    fn compare(
        &self,
        name: &str,
        reference: &str,
        ours_extra: &[&str],
        env: &[(&str, &Path)],
    ) -> String {
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
    ) -> String {
        let repo = self.root.join(format!("ours-{name}"));
        ok(ours(&repo).args(["repo", "init", "--insecure"]));
        let mine = our_images(&repo, reference, ours_extra);
        let theirs = their_images(
            &self.cfsctl,
            &self.root.join(format!("ref-{name}")),
            oracle,
            env,
        );
        assert_eq!(mine.0, theirs.0, "{name}: plain image");
        assert_eq!(mine.1, theirs.1, "{name}: boot image");
        assert_clean(&repo, name);
        println!(
            "{name}: plain {} boot {} equal cfsctl's",
            &mine.0[..12],
            &mine.1[..12]
        );
        mine.0
    }
}

#[test]
fn every_transport_matches_cfsctl() {
    let Some(fx) = Fixture::new("every_transport_matches_cfsctl") else {
        return;
    };
    let layout = fx.root.join("layout");
    write_layout(
        &layout,
        TAG,
        &[bootable("amd64", false), bootable("arm64", false)],
    )
    .expect("layout");
    let from = format!("oci:{}:{TAG}", layout.display());
    let host = ["--override-arch", "amd64"];
    let plain = fx.compare("oci", &from, &["--platform", "linux/amd64"], &[]);

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
    assert_eq!(fx.compare("oci-archive", &archive, &[], &[]), plain);
    let dir = format!("dir:{}", fx.root.join("dir").display());
    ok(Command::new("skopeo").args(host).args([
        "--insecure-policy",
        "copy",
        "--quiet",
        &from,
        &dir,
    ]));
    assert_eq!(fx.compare("dir", &dir, &[], &[]), plain);

    // Docker archives hold uncompressed layers under a Docker manifest,
    // and no zstd: a gzip-only image, compared as itself.
    let docker_layout = fx.root.join("docker-layout");
    write_layout(&docker_layout, TAG, &[bootable("amd64", true)]).expect("layout");
    let docker = format!(
        "docker-archive:{}:cfs/test:{TAG}",
        fx.root.join("docker.tar").display()
    );
    skopeo_copy(&[&format!("oci:{}:{TAG}", docker_layout.display()), &docker]);
    let docker_copy = format!("oci:{}:{TAG}", fx.root.join("docker-copy").display());
    skopeo_copy(&[&docker, &docker_copy]);
    fx.compare_via("docker-archive", &docker, &docker_copy, &[], &[]);

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
        let digest = fx.compare_via("containers-storage", &stored, &stored_copy, &[], &[]);
        assert_eq!(digest, plain);
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
                assert_eq!(host_plain, plain);
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
            assert_ne!(arm, plain, "arm64 is another image");
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
    if !have("buildah") {
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
