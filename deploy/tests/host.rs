//! A host's life without booting it: `install to-filesystem`, `upgrade
//! --check`, `upgrade` (with the /etc 3-way merge and the kernel
//! arguments carried over), `rollback` twice, `switch`, `gc`; the ESP
//! read by systemd-boot's own parser (`bootctl list`) after each step;
//! `upgrade` killed at random moments; and `install to-disk` read back
//! from the disk image.
//!
//! Root is needed (owners in /etc, tmpfs for bootctl, loop mounts):
//! without it the tests say so and skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use cfs_tests::oci_layout::{tar_archive, write_layout, ImageSpec, LayerBlob, LayerSpec};
use common::{assert_clean, is_root, ok, output, Tmpfs, OURS};
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
    vec![LayerSpec {
        tar: base,
        blob: LayerBlob::Gzip,
    }]
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
    assert_eq!(check["layersToFetch"], 1, "{check}");
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
    ok(&mut fx.ours(&["gc"]));
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

/// Every entry names a complete deployment: its boot image in the
/// repository and its state with origin and /etc.
fn assert_entries_complete(fx: &Fixture, when: &str) -> Vec<String> {
    let status = fx.status();
    let mut ids = Vec::new();
    for d in status["deployments"].as_array().unwrap() {
        let id = d["id"].as_str().unwrap();
        assert!(
            fx.root.join("composefs/images").join(id).exists(),
            "{when}: entry names missing image {id}"
        );
        let state = fx.root.join("state/deploy").join(id);
        assert!(
            state.join("origin").exists() && state.join("etc").is_dir(),
            "{when}: {id}"
        );
        ids.push(id.to_owned());
    }
    ids
}

#[test]
fn upgrade_killed_anywhere_leaves_the_previous_deployment() {
    let Some(fx) = Fixture::new("upgrade_killed_anywhere_leaves_the_previous_deployment") else {
        return;
    };
    fx.install();
    let v1 = assert_entries_complete(&fx, "after install")[0].clone();
    // A pristine copy of the host to restore before each attempt.
    let saved = fx.work.path().join("saved");
    std::fs::create_dir(&saved).unwrap();
    ok(Command::new("cp")
        .arg("-a")
        .arg(&fx.root)
        .arg(saved.join("root")));
    ok(Command::new("cp")
        .arg("-a")
        .arg(&fx.esp)
        .arg(saved.join("esp")));
    fx.publish("2");
    let start = Instant::now();
    ok(&mut fx.ours(&["--quiet", "upgrade"]));
    let full = start.elapsed();

    let mut rng = common::rng(7);
    let (mut interrupted, runs) = (0, 50);
    for run in 0..runs {
        for (from, to) in [(saved.join("root"), &fx.root), (saved.join("esp"), &fx.esp)] {
            ok(Command::new("sh").arg("-c").arg(format!(
                "rm -rf '{0}'/* && cp -a '{1}'/. '{0}'/",
                to.display(),
                from.display()
            )));
        }
        let delay = full.mul_f64(rng.random_range(0.0..1.0));
        let mut child = fx
            .ours(&["--quiet", "upgrade"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let killed = child.try_wait().unwrap().is_none();
        let _ = child.kill();
        let _ = child.wait();
        interrupted += usize::from(killed);
        let when = format!("run {run}, killed after {delay:?}");
        let ids = assert_entries_complete(&fx, &when);
        assert!(ids.contains(&v1), "{when}: the previous deployment is gone");
        // Finishing the interrupted upgrade works.
        ok(&mut fx.ours(&["--quiet", "upgrade"]));
        assert_eq!(assert_entries_complete(&fx, &when).len(), 2, "{when}");
        assert_clean(&fx.root.join("composefs"), &when);
    }
    println!(
        "upgrade ({full:?} uninterrupted) killed during the run {interrupted} of {runs} times; \
         every time the previous deployment stayed complete and a rerun finished"
    );
    assert!(
        interrupted >= runs / 2,
        "too few kills landed: {interrupted}"
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
    let commit = |version: &str| {
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
            .arg(format!("--tree=dir={}", tree.display())))
        .trim()
        .to_owned()
    };
    let first = commit("1");
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

    let second = commit("2");
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
}
