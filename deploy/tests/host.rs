//! A host's life without booting it: `install to-filesystem`, `upgrade
//! --check`, `upgrade` (with the /etc 3-way merge and the kernel
//! arguments carried over), `rollback` twice, `switch`, `gc`; the ESP
//! read by systemd-boot's own parser (`bootctl list`) after each step;
//! the /etc merge's metadata (owners, modes, xattrs, SELinux labels) and
//! conflicts; every state-changing command (`upgrade`, `switch`,
//! `rollback`, `pin`, `finalize`, `gc`, `install to-filesystem`) killed
//! at random moments, and `finalize` before each of its steps (strace
//! fault injection), with one check of what must survive; and `install
//! to-disk` read back from the disk image.
//!
//! Root is needed (owners in /etc, tmpfs for bootctl, loop mounts):
//! without it the tests say so and skip.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cfs_erofs::digest::{FsVerityDigest, Sha512Digest};
use cfs_erofs::fsverity::FsVerityHasher;
use cfs_erofs::tree::{LeafContent, RegularFile};
use cfs_tests::oci_layout::{tar_archive, write_layout, ImageSpec, LayerBlob, LayerSpec};
use common::{assert_clean, is_root, ok, output, GpgKey, Tmpfs, OURS};
use rand::Rng;

mod common;

/// A sample OS, version `version`: a kernel, os-release, kargs.d and an
/// /etc where `sample.conf` and `changes.conf` differ between versions.
fn sample(version: &str, kernel: &[u8]) -> Vec<LayerSpec> {
    let release = format!("ID=sample\nPRETTY_NAME=\"Sample OS {version}\"\nVERSION_ID={version}\n");
    let changes = format!("changed by the image in {version}\n");
    let only = format!("etc/only-in-{version}.conf");
    let big = format!("payload of {version}\n").repeat(1000);
    let base = tar_archive(&[
        ("boot/", b""),
        ("sysroot/", b""),
        ("usr/", b""),
        ("usr/lib/", b""),
        ("usr/lib/os-release", release.as_bytes()),
        ("usr/lib/modules/", b""),
        ("usr/lib/modules/6.12.0/", b""),
        ("usr/lib/modules/6.12.0/vmlinuz", kernel),
        ("usr/lib/modules/6.12.0/initramfs.img", b"initramfs"),
        ("usr/lib/bootc/", b""),
        ("usr/lib/bootc/kargs.d/", b""),
        (
            "usr/lib/bootc/kargs.d/10.toml",
            b"kargs = [\"console=ttyS0\"]",
        ),
        ("usr/share/", b""),
        ("usr/share/payload", big.as_bytes()),
        ("etc/", b""),
        ("etc/sample.conf", b"setting=default\n"),
        ("etc/changes.conf", changes.as_bytes()),
        ("etc/removed.conf", b"the administrator removes this\n"),
        (&only, b"new in this version\n"),
        ("var/", b""),
        ("var/lib/", b""),
        ("var/lib/seeded", b"from the first image\n"),
    ]);
    vec![
        LayerSpec {
            tar: base,
            blob: LayerBlob::Gzip,
        },
        LayerSpec {
            tar: etc_layer(version, None),
            blob: LayerBlob::Gzip,
        },
    ]
}

/// A file capability (`security.capability`, one of the xattrs an OCI
/// image keeps): `cap_net_bind_service` in version 1, `cap_net_raw` after.
fn capability(version: &str) -> [u8; 20] {
    let mut data = [0u8; 20];
    // VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE
    data[..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
    let bit = if version == "1" { 10 } else { 13 };
    data[4..8].copy_from_slice(&(1u32 << bit).to_le_bytes());
    data
}

/// The part of the sample's /etc with metadata beyond contents: a SELinux
/// policy (whose label for `labelled.conf` changes with the version),
/// owners, modes and file capabilities (`owned.conf`'s change after
/// version 1), a symlink, and `conf.d`: a directory, or when `conf_d` is given a
/// symlink to it (a hostile image).
fn etc_layer(version: &str, conf_d: Option<&Path>) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str,
                   kind: tar::EntryType,
                   (mode, gid): (u32, u64),
                   content: &[u8],
                   xattrs: &[(&str, &[u8])]| {
        if !xattrs.is_empty() {
            let records: Vec<(String, &[u8])> = xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
                .collect();
            tar.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
                .unwrap();
        }
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(kind);
        header.set_mtime(1_700_000_000);
        header.set_uid(0);
        header.set_gid(gid);
        header.set_mode(mode);
        if kind == tar::EntryType::Symlink {
            header.set_size(0);
            tar.append_link(&mut header, path, OsStr::from_bytes(content))
                .unwrap();
        } else {
            header.set_size(content.len() as u64);
            tar.append_data(&mut header, path, content).unwrap();
        }
    };
    let (dir, file, link) = (
        tar::EntryType::Directory,
        tar::EntryType::Regular,
        tar::EntryType::Symlink,
    );
    let contexts = format!(
        "/.*\tsystem_u:object_r:default_t:s0\n/etc(/.*)?\tsystem_u:object_r:etc_t:s0\n\
         /etc/labelled\\.conf\tsystem_u:object_r:labelled_v{version}_t:s0\n"
    );
    for path in [
        "etc/selinux/",
        "etc/selinux/sample/",
        "etc/selinux/sample/contexts/",
        "etc/selinux/sample/contexts/files/",
    ] {
        add(path, dir, (0o755, 0), b"", &[]);
    }
    add(
        "etc/selinux/config",
        file,
        (0o644, 0),
        b"SELINUX=enforcing\nSELINUXTYPE=sample\n",
        &[],
    );
    add(
        "etc/selinux/sample/contexts/files/file_contexts",
        file,
        (0o644, 0),
        contexts.as_bytes(),
        &[],
    );
    let owned = if version == "1" {
        (0o640, 42)
    } else {
        (0o600, 43)
    };
    add(
        "etc/owned.conf",
        file,
        owned,
        b"owned\n",
        &[("security.capability", &capability(version))],
    );
    add("etc/labelled.conf", file, (0o644, 0), b"labelled\n", &[]);
    add("etc/mine.conf", file, (0o644, 0), b"image\n", &[]);
    add(
        "etc/relabelled.conf",
        file,
        (0o644, 0),
        b"relabel me\n",
        &[],
    );
    let both = format!("both in {version}\n");
    add("etc/both.conf", file, (0o644, 0), both.as_bytes(), &[]);
    add("etc/link", link, (0o777, 0), b"owned.conf", &[]);
    match conf_d {
        None => {
            add("etc/conf.d/", dir, (0o755, 0), b"", &[]);
            add("etc/conf.d/a.conf", file, (0o644, 0), b"a\n", &[]);
        }
        Some(target) => add(
            "etc/conf.d",
            link,
            (0o777, 0),
            target.as_os_str().as_bytes(),
            &[],
        ),
    }
    tar.into_inner().unwrap()
}

/// `install to-filesystem ROOT --esp ESP` of `source`, insecure, with
/// `root=LABEL=x`; callers add options.
fn install_to_filesystem(root: &Path, esp: &Path, source: &str) -> Command {
    let mut cmd = Command::new(OURS);
    cmd.args(["--quiet", "install", "to-filesystem"])
        .arg(root)
        .arg("--esp")
        .arg(esp)
        .args([
            "--root-karg",
            "root=LABEL=x",
            "--insecure",
            "--source",
            source,
        ]);
    cmd
}

/// A layout in `dir` with sample version 1 tagged `v1`; its source.
fn sample_layout(dir: &Path) -> String {
    write_layout(
        dir,
        "v1",
        &[ImageSpec::linux("amd64", sample("1", &[1; 3000]))],
    )
    .unwrap();
    format!("oci:{}:v1", dir.display())
}

struct Fixture {
    work: tempfile::TempDir,
    _esp: Tmpfs,
    esp: PathBuf,
    root: PathBuf,
}

impl Fixture {
    fn new(test: &str) -> Option<Fixture> {
        if !is_root() {
            println!("SKIPPED {test}: needs root (owners in /etc, a tmpfs ESP)");
            return None;
        }
        let work = tempfile::tempdir().expect("tempdir");
        for version in ["1", "2", "3"] {
            let kernel = if version == "3" {
                &[3u8; 3000][..]
            } else {
                &[1u8; 3000]
            };
            write_layout(
                &work.path().join(format!("layout-{version}")),
                "latest",
                &[ImageSpec::linux("amd64", sample(version, kernel))],
            )
            .expect("layout");
        }
        let esp_mount = Tmpfs::new("size=64m").expect("tmpfs");
        let esp = esp_mount.path().to_owned();
        let root = work.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let fixture = Fixture {
            work,
            _esp: esp_mount,
            esp,
            root,
        };
        fixture.publish("1");
        Some(fixture)
    }

    /// Points `layout` (the source the host follows) at a version.
    fn publish(&self, version: &str) {
        let link = self.work.path().join("layout");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("layout-{version}"), &link).unwrap();
    }

    fn source(&self) -> String {
        format!("oci:{}:latest", self.work.path().join("layout").display())
    }

    fn ours(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(OURS);
        cmd.args(args)
            .arg("--sysroot")
            .arg(&self.root)
            .arg("--esp")
            .arg(&self.esp);
        cmd
    }

    fn install(&self) -> String {
        ok(Command::new(OURS)
            .args(["--quiet", "install", "to-filesystem"])
            .arg(&self.root)
            .arg("--esp")
            .arg(&self.esp)
            .args(["--root-karg", "root=LABEL=sample", "--insecure"])
            .args(["--karg", "quiet"])
            .args(["--source", &self.source()]))
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&ok(&mut self.ours(&["--json", "status"]))).expect("JSON")
    }

    /// (version, tries left or None) of each deployment, in boot order.
    fn order(&self) -> Vec<(String, Option<u64>)> {
        self.status()["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["version"].as_str().unwrap().to_owned(),
                    d["bootCounter"]["left"].as_u64(),
                )
            })
            .collect()
    }

    /// What systemd-boot would show: titles in menu order.
    fn bootctl(&self) -> Vec<String> {
        let listed = ok(Command::new("bootctl")
            .env("SYSTEMD_RELAX_ESP_CHECKS", "1")
            .arg(format!("--esp-path={}", self.esp.display()))
            .args(["--no-pager", "list"]));
        listed
            .lines()
            .filter_map(|l| l.trim().strip_prefix("title: "))
            .map(|t| t.split(" (").next().unwrap().to_owned())
            .collect()
    }

    fn etc(&self, id: &str) -> PathBuf {
        self.root.join("state/deploy").join(id).join("etc")
    }
}

fn have_bootctl() -> bool {
    Command::new("bootctl").arg("--version").output().is_ok()
}

#[test]
fn install_upgrade_rollback_switch_gc() {
    let Some(fx) = Fixture::new("install_upgrade_rollback_switch_gc") else {
        return;
    };
    fx.install();
    let v1 = fx.status()["deployments"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(fx.order(), [("1".into(), None)]);
    assert_eq!(
        std::fs::read_to_string(fx.root.join("state/os/default/var/lib/seeded")).unwrap(),
        "from the first image\n"
    );
    assert_eq!(
        std::fs::read_link(fx.root.join("state/deploy").join(&v1).join("var")).unwrap(),
        Path::new("../../os/default/var")
    );
    assert!(fx.esp.join("EFI/BOOT/BOOTX64.EFI").exists());

    // The administrator's changes to /etc.
    let etc = fx.etc(&v1);
    std::fs::write(etc.join("sample.conf"), "setting=mine\n").unwrap();
    std::fs::write(etc.join("local.conf"), "added here\n").unwrap();
    std::fs::remove_file(etc.join("removed.conf")).unwrap();

    // --check says what would change, and changes nothing.
    fx.publish("2");
    let check: serde_json::Value =
        serde_json::from_str(&ok(&mut fx.ours(&["--json", "upgrade", "--check"]))).unwrap();
    assert_eq!(check["update"], true, "{check}");
    // The base and the /etc layer both differ between versions.
    assert_eq!(check["layersToFetch"], 2, "{check}");
    assert_eq!(fx.order().len(), 1);

    ok(&mut fx.ours(&["--quiet", "upgrade"]));
    assert_eq!(fx.order(), [("2".into(), Some(3)), ("1".into(), None)]);
    let v2 = fx.status()["deployments"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let etc2 = fx.etc(&v2);
    let read = |name: &str| std::fs::read_to_string(etc2.join(name)).ok();
    assert_eq!(
        read("sample.conf").as_deref(),
        Some("setting=mine\n"),
        "local edit kept"
    );
    assert_eq!(
        read("local.conf").as_deref(),
        Some("added here\n"),
        "local file kept"
    );
    assert_eq!(read("removed.conf"), None, "local removal kept");
    assert_eq!(
        read("changes.conf").as_deref(),
        Some("changed by the image in 2\n")
    );
    assert!(read("only-in-2.conf").is_some() && read("only-in-1.conf").is_none());
    // Kernel arguments: the machine's carried over, the image's once.
    let entry = fx.status()["deployments"][0]["entry"]
        .as_str()
        .unwrap()
        .to_owned();
    let text = std::fs::read_to_string(fx.esp.join(&entry)).unwrap();
    let options = text
        .lines()
        .find_map(|l| l.strip_prefix("options "))
        .unwrap();
    assert_eq!(
        options,
        format!("root=LABEL=sample rw quiet composefs=?{v2} console=ttyS0")
    );
    if have_bootctl() {
        assert_eq!(fx.bootctl(), ["Sample OS 2", "Sample OS 1"]);
    }

    // Rollback, and again (undo).
    ok(&mut fx.ours(&["rollback"]));
    assert_eq!(fx.order(), [("1".into(), None), ("2".into(), Some(3))]);
    if have_bootctl() {
        assert_eq!(fx.bootctl(), ["Sample OS 1", "Sample OS 2"]);
    }
    ok(&mut fx.ours(&["rollback"]));
    assert_eq!(fx.order(), [("2".into(), Some(3)), ("1".into(), None)]);

    // Nothing new: nothing changes.
    let again = ok(&mut fx.ours(&["--quiet", "upgrade"]));
    assert!(again.starts_with("already deployed"), "{again}");

    // Switch to another image (another kernel), keeping two deployments.
    let v3_source = format!("oci:{}:latest", fx.work.path().join("layout-3").display());
    ok(&mut fx.ours(&["--quiet", "switch", &v3_source, "--keep", "2"]));
    assert_eq!(fx.order(), [("3".into(), Some(3)), ("2".into(), Some(3))]);
    assert!(
        !fx.root.join("state/deploy").join(&v1).exists(),
        "v1's state pruned"
    );
    let kernels = std::fs::read_dir(fx.esp.join("cfs-deploy"))
        .unwrap()
        .count();
    assert_eq!(kernels, 2, "one per distinct kernel in use");
    // What a write killed before its rename leaves (a rollback's entry
    // rewrite, a staged entry): gc removes it, and only it.
    let entries_before = fx.order();
    for dir in ["loader/entries", "loader/entries.staged"] {
        std::fs::create_dir_all(fx.esp.join(dir)).unwrap();
        std::fs::write(
            fx.esp.join(dir).join(".cfs-interrupted+3.conf.tmp"),
            "title x\n",
        )
        .unwrap();
    }
    ok(&mut fx.ours(&["gc"]));
    for dir in ["loader/entries", "loader/entries.staged"] {
        let left: Vec<_> = std::fs::read_dir(fx.esp.join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "gc left {left:?} in {dir}");
    }
    assert_eq!(fx.order(), entries_before, "gc kept every entry");
    let repo = fx.root.join("composefs");
    assert!(
        !repo.join("images").join(&v1).exists(),
        "v1's boot image collected"
    );
    assert!(repo.join("images").join(&v2).exists());
    assert_clean(&repo, "after switch and gc");

    // Three failed boots of v3: v2 boots; rolling back to the bad one is
    // refused.
    let entry = fx.status()["deployments"][0]["entry"]
        .as_str()
        .unwrap()
        .to_owned();
    let bad = fx.esp.join(entry.replace("+3.conf", "+0-3.conf"));
    std::fs::rename(fx.esp.join(&entry), &bad).unwrap();
    assert_eq!(fx.order(), [("2".into(), Some(3)), ("3".into(), Some(0))]);
    if have_bootctl() {
        assert_eq!(fx.bootctl(), ["Sample OS 2", "Sample OS 3"]);
    }
    let refused = output(&mut fx.ours(&["rollback"]));
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("failed to boot"));
}

/// What every interruption must leave: each entry (staged ones too)
/// names a deployment whose boot image is complete in the repository (its
/// bytes have the digest it is named by, our reader parses it, every
/// object it names is there) and whose state has an origin, an `/etc` and
/// the shared `/var`; the kernel, initramfs or UKI each entry names is on
/// the ESP; `previous` (the default before) is still in the menu; fsck is
/// clean. Returns the ids in boot order.
fn assert_host_sound(fx: &Fixture, previous: Option<&str>, when: &str) -> Vec<String> {
    let repo = fx.root.join("composefs");
    if previous.is_none() && !repo.join("meta.json").exists() {
        // An installation cut short before the repository was made.
        let entries = fx.esp.join("loader/entries");
        let count = std::fs::read_dir(&entries).map_or(0, |d| d.count());
        assert_eq!(count, 0, "{when}: entries without a repository");
        return Vec::new();
    }
    let status = fx.status();
    let mut ids = Vec::new();
    for d in status["deployments"].as_array().unwrap() {
        let id = d["id"].as_str().unwrap();
        let bytes = std::fs::read(repo.join("images").join(id))
            .unwrap_or_else(|e| panic!("{when}: entry names missing image {id}: {e}"));
        assert_eq!(
            FsVerityHasher::<Sha512Digest>::digest(&bytes).to_hex(),
            id,
            "{when}: image {id} has other content"
        );
        let image = cfs_erofs::reader::read_image::<Sha512Digest>(&bytes)
            .unwrap_or_else(|e| panic!("{when}: image {id} does not parse: {e}"));
        for leaf in &image.fs.leaves {
            if let LeafContent::Regular(RegularFile::External { digest, size }) = &leaf.content {
                let object = repo.join("objects").join(digest.object_pathname());
                let found = std::fs::metadata(&object).map(|m| m.len());
                assert_eq!(found.ok(), Some(*size), "{when}: image {id}: {object:?}");
            }
        }
        let state = fx.root.join("state/deploy").join(id);
        assert!(
            state.join("origin").is_file() && state.join("etc").is_dir(),
            "{when}: state of {id} incomplete"
        );
        assert!(state.join("var").is_dir(), "{when}: {id} has no /var");
        let entry = std::fs::read_to_string(fx.esp.join(d["entry"].as_str().unwrap()))
            .unwrap_or_else(|e| panic!("{when}: entry of {id}: {e}"));
        for line in entry.lines() {
            if let Some(file) = line
                .strip_prefix("linux ")
                .or_else(|| line.strip_prefix("initrd "))
                .or_else(|| line.strip_prefix("efi "))
            {
                let path = fx.esp.join(file.trim().trim_start_matches('/'));
                assert!(path.is_file(), "{when}: {id}'s entry names missing {file}");
            }
        }
        ids.push(id.to_owned());
    }
    if let Some(previous) = previous {
        assert!(
            status["deployments"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["id"] == previous && !d["roles"].to_string().contains("staged")),
            "{when}: the previous default {previous} is not in the menu: {status:#}"
        );
    }
    assert_clean(&repo, when);
    ids
}

impl Fixture {
    /// Copies the host (root and ESP) aside, to start each kill from.
    fn save(&self, name: &str) -> PathBuf {
        let saved = self.work.path().join(format!("saved-{name}"));
        std::fs::create_dir(&saved).unwrap();
        for (from, to) in [(&self.root, "root"), (&self.esp, "esp")] {
            ok(Command::new("cp")
                .arg("-a")
                .arg(format!("{}/.", from.display()))
                .arg(saved.join(to)));
        }
        saved
    }

    /// Puts back the host saved as `saved`.
    fn restore(&self, saved: &Path) {
        for (to, from) in [(&self.root, "root"), (&self.esp, "esp")] {
            ok(Command::new("sh").arg("-c").arg(format!(
                "rm -rf '{0}'/* '{0}'/.[!.]* && cp -a '{1}'/. '{0}'/",
                to.display(),
                saved.join(from).display()
            )));
        }
    }
}

/// Runs `command` from the host saved as `saved` once to time it, then
/// `runs` times killed at a random moment of that time, each from the
/// saved host: after each kill the host must be sound with the
/// `previous` default, a rerun must succeed, and `finished` must hold
/// after it. Returns how many kills landed while the command ran.
fn kill_anywhere(
    fx: &Fixture,
    saved: &Path,
    command: &dyn Fn() -> Command,
    previous: Option<&str>,
    runs: usize,
    finished: &dyn Fn(&[String], &str),
) -> usize {
    // The fastest of three uninterrupted runs bounds the kill delays: one
    // slow run on a loaded machine would otherwise put most kills after
    // the command had already finished.
    let mut full = Duration::MAX;
    for _ in 0..3 {
        fx.restore(saved);
        let start = Instant::now();
        ok(&mut command());
        full = full.min(start.elapsed());
        finished(
            &assert_host_sound(fx, previous, "uninterrupted"),
            "uninterrupted",
        );
    }
    let name = format!("{:?}", command().get_args().collect::<Vec<_>>());
    let mut rng = common::rng(7);
    let mut interrupted = 0;
    for run in 0..runs {
        fx.restore(saved);
        let delay = full.mul_f64(rng.random_range(0.0..1.0));
        let mut child = command()
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let killed = child.try_wait().unwrap().is_none();
        let _ = child.kill();
        let _ = child.wait();
        interrupted += usize::from(killed);
        let when = format!("{name}, run {run}, killed after {delay:?}");
        assert_host_sound(fx, previous, &when);
        ok(&mut command());
        let when = format!("{when}, then rerun");
        finished(&assert_host_sound(fx, previous, &when), &when);
    }
    println!(
        "{name} ({full:?} uninterrupted) killed during the run {interrupted} of {runs} times; \
         every time the host stayed sound and a rerun finished"
    );
    interrupted
}

/// The system calls that change a host's files (and make the changes
/// durable): [`kill_at_each_step`] kills a command on entry to each.
const STEPS: &[&str] = &[
    "rename",
    "renameat",
    "renameat2",
    "unlink",
    "unlinkat",
    "rmdir",
    "mkdir",
    "mkdirat",
    "linkat",
    "symlinkat",
    "fsync",
    "fdatasync",
];

/// Like [`kill_anywhere`], but deterministic: `command` is traced once to
/// count its [`STEPS`], then killed by strace on entry to each of them in
/// turn (before the step takes effect), each time from the saved host.
/// Every rename is tried; a call made many times (an fsync per file, an
/// unlink per file of a tree) at its first, last and two middle
/// occurrences, to keep the time reasonable. Returns how many steps were
/// tried; `None` without strace.
fn kill_at_each_step(
    fx: &Fixture,
    saved: &Path,
    command: &dyn Fn() -> Command,
    previous: Option<&str>,
    finished: &dyn Fn(&[String], &str),
) -> Option<usize> {
    if Command::new("strace").arg("-V").output().is_err() {
        println!("SKIPPED killing at each step: strace is not installed");
        return None;
    }
    let traced = |extra: &[String]| {
        let inner = command();
        let mut cmd = Command::new("strace");
        cmd.args(["-f", "-qq", "-e"])
            .arg(format!("trace={}", STEPS.join(",")))
            .args(extra)
            .arg(inner.get_program())
            .args(inner.get_args())
            .stdout(std::process::Stdio::null());
        cmd
    };
    fx.restore(saved);
    let log = fx.work.path().join("strace.log");
    ok(&mut traced(&["-o".into(), log.display().to_string()]));
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        // "PID name(args) = result", or "PID <... name resumed>".
        let call = line.split_once(' ').map_or(line, |(_, rest)| rest);
        if let Some((name, _)) = call.split_once('(') {
            if STEPS.contains(&name) {
                *counts.entry(name.to_owned()).or_default() += 1;
            }
        }
    }
    let name = format!("{:?}", command().get_args().collect::<Vec<_>>());
    let mut tried = 0;
    for (call, &count) in &counts {
        let mut chosen: Vec<usize> = if call.starts_with("rename") || count <= 4 {
            (1..=count).collect()
        } else {
            vec![1, count / 3 + 1, 2 * count / 3 + 1, count]
        };
        chosen.dedup();
        for nth in chosen {
            fx.restore(saved);
            let out = output(&mut traced(&[
                "-o".into(),
                "/dev/null".into(),
                "-e".into(),
                format!("inject={call}:signal=KILL:when={nth}"),
            ]));
            let when = format!("{name}, killed before {call} #{nth}");
            assert!(!out.status.success(), "{when}: not killed");
            assert_host_sound(fx, previous, &when);
            ok(&mut command());
            let when = format!("{when}, then rerun");
            finished(&assert_host_sound(fx, previous, &when), &when);
            tried += 1;
        }
    }
    println!(
        "{name} killed before {tried} of its steps ({counts:?} in all); the host stayed sound"
    );
    Some(tried)
}

fn first_id(fx: &Fixture) -> String {
    fx.status()["deployments"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn upgrade_killed_anywhere_leaves_the_previous_deployment() {
    let Some(fx) = Fixture::new("upgrade_killed_anywhere_leaves_the_previous_deployment") else {
        return;
    };
    fx.install();
    let v1 = first_id(&fx);
    let saved = fx.save("installed");
    fx.publish("2");
    let runs = 50;
    let interrupted = kill_anywhere(
        &fx,
        &saved,
        &|| fx.ours(&["--quiet", "upgrade"]),
        Some(&v1),
        runs,
        &|ids, when| assert_eq!(ids.len(), 2, "{when}"),
    );
    assert!(
        interrupted >= runs / 2,
        "too few kills landed: {interrupted}"
    );
}

/// The other state-changing commands, each killed at random moments
/// (fewer runs than `upgrade`, which does the most).
const KILLS: usize = 12;

#[test]
fn switch_killed_anywhere_leaves_the_previous_deployment() {
    let Some(fx) = Fixture::new("switch_killed_anywhere_leaves_the_previous_deployment") else {
        return;
    };
    fx.install();
    let v1 = first_id(&fx);
    let saved = fx.save("installed");
    let v3_source = format!("oci:{}:latest", fx.work.path().join("layout-3").display());
    kill_anywhere(
        &fx,
        &saved,
        &|| fx.ours(&["--quiet", "switch", &v3_source]),
        Some(&v1),
        KILLS,
        &|ids, when| assert_eq!(ids.len(), 2, "{when}"),
    );
}

#[test]
fn rollback_and_pin_killed_anywhere_leave_both_deployments() {
    let Some(fx) = Fixture::new("rollback_and_pin_killed_anywhere_leave_both_deployments") else {
        return;
    };
    fx.install();
    let v1 = first_id(&fx);
    fx.publish("2");
    ok(&mut fx.ours(&["--quiet", "upgrade"]));
    let v2 = first_id(&fx);
    let saved = fx.save("upgraded");
    kill_anywhere(
        &fx,
        &saved,
        &|| fx.ours(&["rollback"]),
        Some(&v2),
        KILLS,
        // A rollback that finished before the kill is undone by the rerun.
        &|ids, when| {
            let mut both = ids.to_vec();
            both.sort();
            let mut expected = [v1.clone(), v2.clone()];
            expected.sort();
            assert_eq!(both, expected, "{when}");
        },
    );
    kill_anywhere(
        &fx,
        &saved,
        &|| fx.ours(&["pin", &v1]),
        Some(&v2),
        KILLS,
        &|_, when| {
            assert!(
                fx.root
                    .join("state/deploy")
                    .join(&v1)
                    .join("pinned")
                    .exists(),
                "{when}"
            )
        },
    );
}

#[test]
fn finalize_killed_anywhere_leaves_the_booted_default() {
    let Some(fx) = Fixture::new("finalize_killed_anywhere_leaves_the_booted_default") else {
        return;
    };
    fx.install();
    let v1 = first_id(&fx);
    let cmdline = fx.work.path().join("cmdline");
    std::fs::write(&cmdline, format!("root=LABEL=sample rw composefs=?{v1}\n")).unwrap();
    let running = |args: &[&str]| {
        let mut cmd = fx.ours(args);
        cmd.arg("--cmdline").arg(&cmdline);
        cmd
    };
    fx.publish("2");
    ok(&mut running(&["--quiet", "upgrade"]));
    std::fs::write(fx.etc(&v1).join("sample.conf"), "setting=late\n").unwrap();
    let saved = fx.save("staged");
    let finished = |ids: &[String], when: &str| {
        assert_eq!(ids.len(), 2, "{when}");
        assert_ne!(ids[0], v1, "{when}: the upgrade is the default");
        assert_eq!(
            std::fs::read_to_string(fx.etc(&ids[0]).join("sample.conf")).unwrap(),
            "setting=late\n",
            "{when}"
        );
        let staged = fx.root.join("state/deploy").join(&ids[0]).join(".etc.new");
        assert!(!staged.exists(), "{when}: {staged:?} left behind");
    };
    let finalize = || running(&["finalize"]);
    kill_anywhere(&fx, &saved, &finalize, Some(&v1), KILLS, &finished);
    kill_at_each_step(&fx, &saved, &finalize, Some(&v1), &finished);
}

#[test]
fn gc_killed_anywhere_keeps_the_default_and_rollback() {
    let Some(fx) = Fixture::new("gc_killed_anywhere_keeps_the_default_and_rollback") else {
        return;
    };
    fx.install();
    fx.publish("2");
    ok(&mut fx.ours(&["--quiet", "upgrade"]));
    let v2 = first_id(&fx);
    let v3_source = format!("oci:{}:latest", fx.work.path().join("layout-3").display());
    ok(&mut fx.ours(&["--quiet", "switch", &v3_source]));
    let v3 = first_id(&fx);
    assert_eq!(fx.order().len(), 3);
    let saved = fx.save("three");
    kill_anywhere(
        &fx,
        &saved,
        &|| fx.ours(&["--quiet", "gc"]),
        Some(&v3),
        KILLS,
        &|ids, when| assert_eq!(ids, [v3.clone(), v2.clone()], "{when}"),
    );
}

#[test]
fn install_killed_anywhere_can_be_run_again() {
    let Some(fx) = Fixture::new("install_killed_anywhere_can_be_run_again") else {
        return;
    };
    let saved = fx.save("empty");
    kill_anywhere(
        &fx,
        &saved,
        &|| {
            let mut cmd = Command::new(OURS);
            cmd.args(["--quiet", "install", "to-filesystem"])
                .arg(&fx.root)
                .arg("--esp")
                .arg(&fx.esp)
                .args(["--root-karg", "root=LABEL=sample", "--insecure"])
                .args(["--source", &fx.source()]);
            cmd
        },
        None,
        KILLS,
        &|ids, when| {
            assert_eq!(ids.len(), 1, "{when}");
            assert!(fx.esp.join("EFI/BOOT/BOOTX64.EFI").is_file(), "{when}");
        },
    );
}

#[test]
fn install_to_disk_writes_a_bootable_layout() {
    if !is_root() {
        println!("SKIPPED install_to_disk_writes_a_bootable_layout: needs root (loop mount)");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let source = sample_layout(&work.path().join("layout"));
    let disk = work.path().join("disk.img");
    ok(Command::new(OURS)
        .args(["--quiet", "install", "to-disk"])
        .arg(&disk)
        .args(["--size", "1G", "--insecure", "--source"])
        .arg(&source));
    let table: serde_json::Value =
        serde_json::from_str(&ok(Command::new("sfdisk").arg("--json").arg(&disk))).unwrap();
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0]["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    assert_eq!(parts[1]["type"], "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709");
    let root_uuid = parts[1]["uuid"].as_str().unwrap().to_lowercase();

    // The ESP, read with mtools (no vfat driver needed).
    let esp = format!("{}@@1M", disk.display());
    let entries = ok(Command::new("mdir").args(["-b", "-i", &esp, "::/loader/entries"]));
    let entry = entries
        .lines()
        .find(|l| l.contains("cfs-"))
        .expect("an entry");
    let text = ok(Command::new("mtype").args(["-i", &esp, entry]));
    assert!(
        text.contains(&format!("root=PARTUUID={root_uuid}")),
        "{text}"
    );
    let id = text
        .split_ascii_whitespace()
        .find_map(|a| a.strip_prefix("composefs=?"))
        .expect("composefs=?ID")
        .to_owned();
    ok(Command::new("mdir").args(["-b", "-i", &esp, "::/EFI/BOOT/BOOTX64.EFI"]));

    // The root, through a loop device of its own.
    let start = parts[1]["start"].as_u64().unwrap() * 512;
    let size = parts[1]["size"].as_u64().unwrap() * 512;
    let loopdev = ok(Command::new("losetup")
        .args(["--find", "--show", "--read-only"])
        .arg(format!("--offset={start}"))
        .arg(format!("--sizelimit={size}"))
        .arg(&disk))
    .trim()
    .to_owned();
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = output(Command::new("mount").args(["-o", "ro", &loopdev]).arg(&mnt));
    let check = || {
        assert!(mnt.join("composefs/images").join(&id).exists());
        assert_eq!(
            std::fs::read_to_string(mnt.join("state/deploy").join(&id).join("etc/sample.conf"))
                .unwrap(),
            "setting=default\n"
        );
        assert!(mnt.join("state/os/default/var/lib/seeded").exists());
    };
    let result = std::panic::catch_unwind(check);
    if mounted.status.success() {
        ok(Command::new("umount").arg(&mnt));
    }
    ok(Command::new("losetup").args(["-d", &loopdev]));
    assert!(mounted.status.success(), "mounting the root partition");
    result.unwrap();
}

#[test]
fn an_image_without_a_kernel_pulls_but_does_not_install() {
    if !is_root() {
        println!("SKIPPED an_image_without_a_kernel_pulls_but_does_not_install: needs root");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let tar = tar_archive(&[
        ("boot/", b""),
        ("sysroot/", b""),
        ("usr/", b""),
        ("usr/lib/", b""),
        ("usr/lib/os-release", b"ID=nokernel\n"),
    ]);
    let layers = vec![LayerSpec {
        tar,
        blob: LayerBlob::Gzip,
    }];
    write_layout(&layout, "v1", &[ImageSpec::linux("amd64", layers)]).unwrap();
    let source = format!("oci:{}:v1", layout.display());
    // Pulling is fine: a container image need not boot.
    let repo = work.path().join("repo");
    ok(common::ours(&repo).args(["repo", "init", "--insecure"]));
    ok(common::ours(&repo).args(["--quiet", "image", "pull", &source]));
    // Installing says why not, and leaves no entry.
    let (root, esp) = (work.path().join("root"), work.path().join("esp"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&esp).unwrap();
    let refused = output(&mut install_to_filesystem(&root, &esp, &source));
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("the image has no kernel"), "{message}");
    assert_eq!(
        std::fs::read_dir(&esp).unwrap().count(),
        0,
        "the ESP is untouched"
    );
    assert!(!root.join("state/deploy").exists(), "no deployment state");
}

#[test]
fn a_running_host_stages_and_finalizes_and_keeps_pinned_deployments() {
    let Some(fx) = Fixture::new("a_running_host_stages_and_finalizes_and_keeps_pinned_deployments")
    else {
        return;
    };
    fx.install();
    let v1 = fx.status()["deployments"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The host runs v1: its command line says so.
    let cmdline = fx.work.path().join("cmdline");
    std::fs::write(&cmdline, format!("root=LABEL=sample rw composefs=?{v1}\n")).unwrap();
    let running = |args: &[&str]| {
        let mut cmd = fx.ours(args);
        cmd.arg("--cmdline").arg(&cmdline);
        cmd
    };
    let roles = || -> Vec<(String, Vec<String>)> {
        let status: serde_json::Value =
            serde_json::from_str(&ok(&mut running(&["--json", "status"]))).unwrap();
        assert_eq!(status["booted"], v1.as_str());
        status["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                let roles = d["roles"].as_array().unwrap();
                (
                    d["version"].as_str().unwrap().to_owned(),
                    roles
                        .iter()
                        .map(|r| r.as_str().unwrap().to_owned())
                        .collect(),
                )
            })
            .collect()
    };
    let etc = fx.etc(&v1);

    fx.publish("2");
    ok(&mut running(&["--quiet", "upgrade"]));
    assert_eq!(
        roles(),
        [
            ("1".into(), vec!["booted".to_owned(), "default".into()]),
            ("2".into(), vec!["staged".to_owned()]),
        ]
    );
    if have_bootctl() {
        assert_eq!(
            fx.bootctl(),
            ["Sample OS 1"],
            "a staged entry is not in the menu"
        );
    }
    // Changed after the upgrade ran, before shutdown: still merged.
    std::fs::write(etc.join("sample.conf"), "setting=late\n").unwrap();
    ok(&mut running(&["finalize"]));
    let v2 = fx.status()["deployments"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        roles(),
        [
            ("2".into(), vec!["default".to_owned()]),
            ("1".into(), vec!["booted".to_owned(), "rollback".into()]),
        ]
    );
    assert_eq!(
        std::fs::read_to_string(fx.etc(&v2).join("sample.conf")).unwrap(),
        "setting=late\n"
    );
    if have_bootctl() {
        assert_eq!(fx.bootctl(), ["Sample OS 2", "Sample OS 1"]);
    }
    let nothing = ok(&mut running(&["finalize"]));
    assert_eq!(nothing.trim(), "nothing staged");

    // A rollback drops a staged deployment.
    let v3_source = format!("oci:{}:latest", fx.work.path().join("layout-3").display());
    ok(&mut running(&["--quiet", "switch", &v3_source]));
    assert!(roles().iter().any(|(v, r)| v == "3" && r == &["staged"]));
    ok(&mut running(&["rollback"]));
    assert_eq!(
        roles(),
        [
            ("1".into(), vec!["booted".to_owned(), "default".into()]),
            ("2".into(), vec!["rollback".to_owned()]),
        ]
    );

    // gc keeps default, rollback, booted and pinned; pin and unpin by
    // a prefix of the id.
    ok(&mut running(&["pin", &v2[..12]]));
    ok(&mut running(&["--quiet", "switch", &v3_source]));
    ok(&mut running(&["finalize"]));
    ok(&mut running(&["gc"]));
    let now = roles();
    assert_eq!(now.len(), 3, "{now:?}");
    assert!(now
        .iter()
        .any(|(v, r)| v == "2" && r.contains(&"pinned".to_owned())));
    ok(&mut running(&["pin", "--unpin", &v2[..12]]));
    let gc: serde_json::Value = serde_json::from_str(&ok(&mut running(&["--json", "gc"]))).unwrap();
    assert_eq!(gc["deploymentsRemoved"], serde_json::json!([v2]), "{gc}");
    assert_clean(&fx.root.join("composefs"), "after gc");
}

#[test]
fn entries_and_kernels_can_live_on_an_xbootldr_partition() {
    if !is_root() || !have_bootctl() {
        println!(
            "SKIPPED entries_and_kernels_can_live_on_an_xbootldr_partition: needs root and bootctl"
        );
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let source = sample_layout(&work.path().join("layout"));
    let (esp, boot) = (
        Tmpfs::new("size=16m").unwrap(),
        Tmpfs::new("size=16m").unwrap(),
    );
    let root = work.path().join("root");
    std::fs::create_dir(&root).unwrap();
    ok(install_to_filesystem(&root, esp.path(), &source)
        .arg("--boot-dir")
        .arg(boot.path()));
    assert!(esp.path().join("EFI/BOOT/BOOTX64.EFI").exists());
    assert!(!esp.path().join("loader/entries").exists());
    assert_eq!(
        std::fs::read_dir(boot.path().join("loader/entries"))
            .unwrap()
            .count(),
        1
    );
    assert!(
        boot.path().join("cfs-deploy").is_dir(),
        "kernels beside the entries"
    );
    let listed = ok(Command::new("bootctl")
        .env("SYSTEMD_RELAX_ESP_CHECKS", "1")
        .arg(format!("--esp-path={}", esp.path().display()))
        .arg(format!("--boot-path={}", boot.path().display()))
        .args(["--no-pager", "list"]));
    assert!(listed.contains("title: Sample OS 1"), "{listed}");
    let status = ok(Command::new(OURS)
        .args(["--json", "status", "--sysroot"])
        .arg(&root)
        .arg("--boot-dir")
        .arg(boot.path()));
    assert!(status.contains("\"default\""), "{status}");
}

#[test]
fn an_ostree_commit_deploys_and_upgrades_like_an_oci_image() {
    let test = "an_ostree_commit_deploys_and_upgrades_like_an_oci_image";
    if !is_root() {
        println!("SKIPPED {test}: needs root");
        return;
    }
    if Command::new("ostree").arg("--version").output().is_err() {
        println!("SKIPPED {test}: ostree is not installed");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let ostree_repo = work.path().join("ostree");
    ok(Command::new("ostree")
        .args(["init", "--mode=archive", "--repo"])
        .arg(&ostree_repo));
    let commit = |version: &str, sign: &[String]| {
        let tree = work.path().join(format!("tree-{version}"));
        let files: &[(&str, String)] = &[
            ("usr/lib/modules/6.12.0/vmlinuz", "kernel".repeat(500)),
            ("usr/lib/modules/6.12.0/initramfs.img", "initramfs".into()),
            (
                "usr/lib/os-release",
                format!("ID=tree\nPRETTY_NAME=\"Tree OS {version}\"\nVERSION_ID={version}\n"),
            ),
            ("etc/sample.conf", format!("from commit {version}\n")),
        ];
        for (path, content) in files {
            let path = tree.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        std::fs::create_dir_all(tree.join("boot")).unwrap();
        std::fs::create_dir_all(tree.join("sysroot")).unwrap();
        ok(Command::new("ostree")
            .args(["commit", "--branch=os", "--repo"])
            .arg(&ostree_repo)
            .args(sign)
            .arg(format!("--tree=dir={}", tree.display())))
        .trim()
        .to_owned()
    };
    let first = commit("1", &[]);
    let (root, esp) = (work.path().join("root"), work.path().join("esp"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&esp).unwrap();
    let source = format!("ostree:{}:os", ostree_repo.display());
    ok(&mut install_to_filesystem(&root, &esp, &source));
    let host = |args: &[&str]| {
        let mut cmd = Command::new(OURS);
        cmd.args(args)
            .arg("--sysroot")
            .arg(&root)
            .arg("--boot-dir")
            .arg(&esp);
        cmd
    };
    let status = || -> serde_json::Value {
        serde_json::from_str(&ok(&mut host(&["--json", "status"]))).unwrap()
    };
    assert_eq!(status()["deployments"][0]["manifest"], first.as_str());
    let check = ok(&mut host(&["upgrade", "--check"]));
    assert!(check.starts_with("no update"), "{check}");

    let second = commit("2", &[]);
    let check = ok(&mut host(&["upgrade", "--check"]));
    assert!(
        check.contains(&format!("commit {first} -> {second}")),
        "{check}"
    );
    ok(&mut host(&["--quiet", "upgrade"]));
    let now = status();
    let versions: Vec<_> = now["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["version"].clone(), d["manifest"].clone()))
        .collect();
    assert_eq!(
        versions,
        [
            (serde_json::json!("2"), serde_json::json!(second)),
            (serde_json::json!("1"), serde_json::json!(first)),
        ]
    );
    ok(&mut host(&["gc"]));
    assert_clean(&root.join("composefs"), "after an ostree upgrade and gc");

    // A keyring given once to `image pull` for the source holds for its
    // upgrades: a commit signed by another key is refused, one signed by
    // the trusted key deployed.
    for tool in ["gpg", "gpgv", "gpgconf"] {
        if Command::new(tool).arg("--version").output().is_err() {
            println!("SKIPPED {test} (signed upgrades): {tool} is not installed");
            return;
        }
    }
    let trusted = GpgKey::new(work.path().join("gnupg-trusted"), "trusted");
    let other = GpgKey::new(work.path().join("gnupg-other"), "other");
    let keyring = trusted.export(&work.path().join("trusted.gpg"), false);
    let third = commit("3", &trusted.sign_args());
    let pulled = ok(Command::new(OURS)
        .arg("--repo")
        .arg(root.join("composefs"))
        .args(["image", "pull", &source, &keyring]));
    assert!(pulled.contains(&format!("commit {third}")), "{pulled}");
    let fourth = commit("4", &other.sign_args());
    let out = output(&mut host(&["--quiet", "upgrade"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "upgraded to {fourth} signed by another key"
    );
    assert!(
        stderr.contains(&format!("commit {fourth} refused"))
            && stderr.contains("which is not in the keyring"),
        "{stderr}"
    );
    assert_eq!(status()["deployments"][0]["manifest"], second.as_str());
    let fifth = commit("5", &trusted.sign_args());
    ok(&mut host(&["--quiet", "upgrade"]));
    assert_eq!(status()["deployments"][0]["manifest"], fifth.as_str());
    assert_clean(&root.join("composefs"), "after signed ostree upgrades");
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut value = vec![0u8; 256];
    let len = rustix::fs::lgetxattr(path, name, &mut value).ok()?;
    value.truncate(len);
    Some(value)
}

fn set_xattr(path: &Path, name: &str, value: &str) {
    rustix::fs::lsetxattr(
        path,
        name,
        value.as_bytes(),
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
}

/// (mode, uid, gid) of `path`, not followed.
fn owner_mode(path: &Path) -> (u32, u32, u32) {
    let meta = std::fs::symlink_metadata(path).unwrap();
    (meta.permissions().mode() & 0o7777, meta.uid(), meta.gid())
}

fn label(path: &Path) -> String {
    String::from_utf8(xattr(path, "security.selinux").unwrap_or_default()).unwrap()
}

#[test]
fn etc_merge_keeps_the_metadata_of_each_side() {
    let Some(fx) = Fixture::new("etc_merge_keeps_the_metadata_of_each_side") else {
        return;
    };
    fx.install();
    let v1 = first_id(&fx);
    let etc = fx.etc(&v1);
    // The checkout carries the boot image's metadata: owners, modes,
    // xattrs, and labels from the image's policy, a symlink's too.
    assert_eq!(owner_mode(&etc.join("owned.conf")), (0o640, 0, 42));
    assert_eq!(
        xattr(&etc.join("owned.conf"), "security.capability").unwrap(),
        capability("1")
    );
    assert_eq!(
        label(&etc.join("labelled.conf")),
        "system_u:object_r:labelled_v1_t:s0"
    );
    assert_eq!(label(&etc.join("link")), "system_u:object_r:etc_t:s0");
    assert!(std::fs::symlink_metadata(etc.join("link"))
        .unwrap()
        .file_type()
        .is_symlink());

    // The administrator's changes: content with owner, mode, xattr and
    // label; a label alone; content the image changes too; a new
    // directory with metadata.
    let mine = etc.join("mine.conf");
    std::fs::write(&mine, "mine\n").unwrap();
    std::os::unix::fs::lchown(&mine, Some(7), Some(8)).unwrap();
    std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o600)).unwrap();
    set_xattr(&mine, "user.mine", "yes");
    set_xattr(&mine, "security.selinux", "system_u:object_r:mine_t:s0");
    set_xattr(
        &etc.join("relabelled.conf"),
        "security.selinux",
        "system_u:object_r:custom_t:s0",
    );
    std::fs::write(etc.join("both.conf"), "local\n").unwrap();
    let added = etc.join("added.d");
    std::fs::create_dir(&added).unwrap();
    std::fs::write(added.join("x.conf"), "x\n").unwrap();
    set_xattr(&added.join("x.conf"), "user.added", "1");
    std::fs::set_permissions(added.join("x.conf"), std::fs::Permissions::from_mode(0o604)).unwrap();
    std::os::unix::fs::lchown(&added, Some(5), Some(6)).unwrap();
    std::fs::set_permissions(&added, std::fs::Permissions::from_mode(0o750)).unwrap();

    fx.publish("2");
    let out = output(&mut fx.ours(&["--json", "upgrade"]));
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["etcConflicts"],
        serde_json::json!(["both.conf"]),
        "only both.conf changed on both sides: {report}"
    );
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(
        note.contains("/etc/both.conf: changed here and in the new image"),
        "{note}"
    );
    let v2 = first_id(&fx);
    let etc2 = fx.etc(&v2);

    // Untouched files follow the new image, metadata included.
    assert_eq!(owner_mode(&etc2.join("owned.conf")), (0o600, 0, 43));
    assert_eq!(
        xattr(&etc2.join("owned.conf"), "security.capability").unwrap(),
        capability("2")
    );
    assert_eq!(
        label(&etc2.join("labelled.conf")),
        "system_u:object_r:labelled_v2_t:s0"
    );
    assert_eq!(label(&etc2.join("link")), "system_u:object_r:etc_t:s0");
    assert_eq!(
        label(&etc2.join("only-in-2.conf")),
        "system_u:object_r:etc_t:s0"
    );
    // Changed ones keep everything the administrator gave them.
    let mine = etc2.join("mine.conf");
    assert_eq!(std::fs::read_to_string(&mine).unwrap(), "mine\n");
    assert_eq!(owner_mode(&mine), (0o600, 7, 8));
    assert_eq!(xattr(&mine, "user.mine").unwrap(), b"yes");
    assert_eq!(label(&mine), "system_u:object_r:mine_t:s0");
    let relabelled = etc2.join("relabelled.conf");
    assert_eq!(label(&relabelled), "system_u:object_r:custom_t:s0");
    assert_eq!(
        std::fs::read_to_string(&relabelled).unwrap(),
        "relabel me\n"
    );
    assert_eq!(
        std::fs::read_to_string(etc2.join("both.conf")).unwrap(),
        "local\n"
    );
    let added = etc2.join("added.d");
    assert_eq!(owner_mode(&added), (0o750, 5, 6));
    assert_eq!(owner_mode(&added.join("x.conf")), (0o604, 0, 0));
    assert_eq!(xattr(&added.join("x.conf"), "user.added").unwrap(), b"1");

    // A hostile image turns a directory the administrator changed a file
    // in into a symlink out of /etc: the upgrade stops, writes nothing
    // there, and leaves the host as it was.
    let outside = fx.work.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(etc2.join("conf.d/a.conf"), "changed\n").unwrap();
    let mut layers = sample("4", &[1; 3000]);
    layers[1].tar = etc_layer("4", Some(&outside));
    write_layout(
        &fx.work.path().join("layout-4"),
        "latest",
        &[ImageSpec::linux("amd64", layers)],
    )
    .unwrap();
    fx.publish("4");
    let refused = output(&mut fx.ours(&["--quiet", "upgrade"]));
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("/etc/conf.d"), "{message}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    assert_eq!(
        assert_host_sound(&fx, Some(&v2), "after a refused merge")[0],
        v2
    );
}

/// systemd's UKI stub, which `objcopy` turns into a UKI.
const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// An OCI layout at `dir` whose only boot artefact is a UKI sealed for
/// the image's own boot image: the boot image's digest is computed first
/// (with `/boot` emptied, it does not depend on the UKI in it).
fn uki_layout(work: &Path, version: &str) -> String {
    let release = format!("ID=ukios\nPRETTY_NAME=\"UKI OS {version}\"\nVERSION_ID={version}\n");
    let base = tar_archive(&[
        ("boot/", b""),
        ("sysroot/", b""),
        ("usr/", b""),
        ("usr/lib/", b""),
        ("usr/lib/os-release", release.as_bytes()),
        ("etc/", b""),
        ("etc/hostname", b"uki\n"),
    ]);
    let layer = |tar: &[u8]| LayerSpec {
        tar: tar.to_vec(),
        blob: LayerBlob::Gzip,
    };
    let bare = work.join(format!("bare-{version}"));
    write_layout(
        &bare,
        "latest",
        &[ImageSpec::linux("amd64", vec![layer(&base)])],
    )
    .unwrap();
    let digest = ok(Command::new(OURS).args([
        "image",
        "compute-id",
        "--bootable",
        &format!("oci:{}:latest", bare.display()),
    ]))
    .trim()
    .to_owned();
    let parts = work.join(format!("uki-{version}"));
    std::fs::create_dir(&parts).unwrap();
    let mut objcopy = Command::new("objcopy");
    for (name, content, vma) in [
        (".osrel", release.into_bytes(), "0x20000"),
        (
            ".cmdline",
            format!("composefs=?{digest} rw").into_bytes(),
            "0x30000",
        ),
        (".linux", vec![7; 8000], "0x2000000"),
        (".initrd", b"initrd".to_vec(), "0x3000000"),
    ] {
        let file = parts.join(name.trim_start_matches('.'));
        std::fs::write(&file, content).unwrap();
        objcopy
            .arg("--add-section")
            .arg(format!("{name}={}", file.display()))
            .arg("--change-section-vma")
            .arg(format!("{name}={vma}"));
    }
    let uki = parts.join("os.efi");
    ok(objcopy.arg(STUB).arg(&uki));
    let uki_layer = tar_archive(&[
        ("boot/EFI/", b""),
        ("boot/EFI/Linux/", b""),
        ("boot/EFI/Linux/os.efi", &std::fs::read(&uki).unwrap()),
    ]);
    let dir = work.join(format!("uki-layout-{version}"));
    write_layout(
        &dir,
        "latest",
        &[ImageSpec::linux(
            "amd64",
            vec![layer(&base), layer(&uki_layer)],
        )],
    )
    .unwrap();
    format!("oci:{}:latest", dir.display())
}

#[test]
fn uki_deployments_roll_back_through_their_entries() {
    let test = "uki_deployments_roll_back_through_their_entries";
    if !is_root() || !have_bootctl() {
        println!("SKIPPED {test}: needs root and bootctl");
        return;
    }
    if !Path::new(STUB).exists() || Command::new("objcopy").arg("--version").output().is_err() {
        println!("SKIPPED {test}: needs {STUB} (systemd-boot-efi) and objcopy (binutils)");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (v1, v2) = (uki_layout(work.path(), "1"), uki_layout(work.path(), "2"));
    let esp_mount = Tmpfs::new("size=16m").unwrap();
    let fx = Fixture {
        esp: esp_mount.path().to_owned(),
        root: work.path().join("root"),
        work,
        _esp: esp_mount,
    };
    std::fs::create_dir(&fx.root).unwrap();
    ok(&mut install_to_filesystem(&fx.root, &fx.esp, &v1));
    ok(&mut fx.ours(&["--quiet", "switch", &v2]));
    assert_eq!(fx.order(), [("2".into(), Some(3)), ("1".into(), None)]);
    assert_eq!(fx.bootctl(), ["UKI OS 2", "UKI OS 1"]);
    assert_eq!(
        std::fs::read_dir(fx.esp.join("EFI/cfs-deploy"))
            .unwrap()
            .count(),
        2
    );
    assert!(!fx.esp.join("EFI/Linux").exists(), "not listed by itself");

    ok(&mut fx.ours(&["rollback"]));
    assert_eq!(fx.order(), [("1".into(), None), ("2".into(), Some(3))]);
    assert_eq!(fx.bootctl(), ["UKI OS 1", "UKI OS 2"]);
    ok(&mut fx.ours(&["rollback"]));
    assert_eq!(fx.bootctl(), ["UKI OS 2", "UKI OS 1"]);
    let ids = assert_host_sound(&fx, None, "after UKI rollbacks");

    // Pruning a deployment takes its UKI with its entry.
    let v3 = uki_layout(fx.work.path(), "3");
    ok(&mut fx.ours(&["--quiet", "switch", &v3, "--keep", "2"]));
    assert_eq!(fx.bootctl(), ["UKI OS 3", "UKI OS 2"]);
    let ukis: Vec<_> = std::fs::read_dir(fx.esp.join("EFI/cfs-deploy"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(ukis.len(), 2, "{ukis:?}");
    let v1_id = &ids[1];
    assert!(
        !ukis.iter().any(|u| v1_id.starts_with(&u[4..u.len() - 4])),
        "v1's UKI is gone: {ukis:?}"
    );
    assert_host_sound(&fx, None, "after pruning a UKI deployment");
}
