//! Boot artefacts found in image trees and installed on an ESP, checked
//! with systemd-boot's own parser (`bootctl list`): titles, versions,
//! order newest first, boot counters and what a failed or blessed boot
//! does to the order, kernels shared between deployments, UKIs (built
//! here with `objcopy` from systemd's stub) and their sealed digests.
//!
//! `bootctl` reads only the root of a mounted filesystem, so the ESP is
//! a tmpfs: the checks that need it are skipped, with the reason
//! printed, when not root or when the tools are missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use cfs_boot::install::{bless, install_type1, install_uki, InstallError, NewEntry};
use cfs_boot::resources::{find_boot_resources, BootArtifact, BootResources, ResourceError};
use cfs_boot::DirectorySource;
use cfs_erofs::digest::Sha512Digest;
use cfs_erofs::scan::{scan_dir, HashOnly};

const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// A tmpfs ESP, unmounted when dropped.
struct Esp {
    dir: tempfile::TempDir,
}

impl Esp {
    /// `None` (with the reason printed) when this cannot work here.
    fn new(test: &str) -> Option<Esp> {
        if !rustix::process::geteuid().is_root() {
            println!("SKIPPED {test}: mounting a tmpfs ESP for bootctl needs root");
            return None;
        }
        if Command::new("bootctl").arg("--version").output().is_err() {
            println!("SKIPPED {test}: bootctl is not installed (run scripts/setup.sh)");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount");
        assert!(mounted.success(), "mounting a tmpfs");
        Some(Esp { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn dir(&self) -> Dir {
        Dir::open_ambient_dir(self.path(), ambient_authority()).expect("open ESP")
    }

    /// `bootctl list`, as (title without markers, id, version, tries) in
    /// boot menu order.
    fn list(&self) -> Vec<Listed> {
        let output = Command::new("bootctl")
            .env("SYSTEMD_RELAX_ESP_CHECKS", "1")
            .arg(format!("--esp-path={}", self.path().display()))
            .args(["--no-pager", "list"])
            .output()
            .expect("bootctl");
        let text = String::from_utf8_lossy(&output.stdout);
        let mut listed: Vec<Listed> = Vec::new();
        for line in text.lines() {
            let Some((key, value)) = line.trim().split_once(": ") else {
                continue;
            };
            match key {
                "type" => listed.push(Listed::default()),
                "title" => {
                    let title = value.split(" (").next().unwrap_or(value);
                    listed.last_mut().expect("type first").title = title.to_owned();
                }
                "id" => listed.last_mut().expect("type first").id = value.to_owned(),
                "version" => listed.last_mut().expect("type first").version = value.to_owned(),
                "tries" => listed.last_mut().expect("type first").tries = value.to_owned(),
                "options" => listed.last_mut().expect("type first").options = value.to_owned(),
                _ => {}
            }
        }
        listed
    }
}

impl Drop for Esp {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[derive(Debug, Default, Clone)]
struct Listed {
    title: String,
    id: String,
    version: String,
    tries: String,
    options: String,
}

/// Writes `files` (path, content) below a new directory.
fn tree(root: &Path, files: &[(&str, &[u8])]) -> PathBuf {
    for (path, content) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    root.to_owned()
}

fn resources(root: &Path) -> Result<BootResources<Sha512Digest>, ResourceError> {
    let dir = Dir::open_ambient_dir(root, ambient_authority()).unwrap();
    let fs = scan_dir::<Sha512Digest>(&dir, &HashOnly).unwrap();
    find_boot_resources(&fs, &DirectorySource::new(dir), "x86_64")
}

fn os_release(version: &str) -> Vec<u8> {
    format!("ID=testos\nPRETTY_NAME=\"Test OS {version}\"\nVERSION_ID={version}\n").into_bytes()
}

/// Installs the chosen Type 1 kernel of the image at `root`.
fn install(
    esp: &Esp,
    root: &Path,
    stem: &str,
    rank: u32,
    tries: Option<u32>,
) -> cfs_boot::install::Installed {
    let found = resources(root).unwrap();
    let BootArtifact::Kernel { vmlinuz, initramfs } = &found.chosen.artifact else {
        panic!("expected a kernel in {}", root.display());
    };
    let source = DirectorySource::new(Dir::open_ambient_dir(root, ambient_authority()).unwrap());
    let mut options = vec![format!("composefs={}", stem.repeat(8))];
    options.extend(found.kargs.iter().cloned());
    let entry = NewEntry {
        stem: format!("cfs-{stem}"),
        title: found.os_release.title().unwrap().to_owned(),
        version: found.os_release.best_version().unwrap().to_owned(),
        sort_key: format!("cfs-{rank}"),
        options: options.join(" "),
        tries,
        staged: false,
    };
    install_type1(
        &esp.dir(),
        &entry,
        &vmlinuz.read(&source).unwrap(),
        &initramfs.read(&source).unwrap(),
    )
    .unwrap()
}

#[test]
fn type1_entries_share_kernels_count_tries_and_order_newest_first() {
    let Some(esp) = Esp::new("type1_entries_share_kernels_count_tries_and_order_newest_first")
    else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let old_kernel: &[u8] = &[1; 5000];
    let new_kernel: &[u8] = &[2; 6000];
    let kargs: &[(&str, &[u8])] = &[
        ("usr/lib/bootc/kargs.d/10-all.toml", b"kargs = [\"quiet\"]"),
        (
            "usr/lib/bootc/kargs.d/20-arm.toml",
            b"kargs = [\"arm=1\"]\nmatch-architectures = [\"aarch64\"]",
        ),
    ];
    let image = |name: &str, version: &str, kernels: &[(&str, &[u8])]| {
        let release = os_release(version);
        let mut files: Vec<(String, Vec<u8>)> = vec![("usr/lib/os-release".into(), release)];
        for (kver, kernel) in kernels {
            files.push((format!("usr/lib/modules/{kver}/vmlinuz"), kernel.to_vec()));
            files.push((
                format!("usr/lib/modules/{kver}/initramfs.img"),
                b"initrd".to_vec(),
            ));
        }
        files.extend(kargs.iter().map(|(p, c)| (p.to_string(), c.to_vec())));
        let borrowed: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(p, c)| (p.as_str(), c.as_slice()))
            .collect();
        tree(&work.path().join(name), &borrowed)
    };
    let v1 = image("v1", "1", &[("6.1.0", old_kernel)]);
    let v2 = image("v2", "2", &[("6.1.0", old_kernel)]);
    let v3 = image("v3", "3", &[("6.1.0", old_kernel), ("6.12.0", new_kernel)]);

    // Two kernels: the newest is chosen, the other named.
    let found = resources(&v3).unwrap();
    assert_eq!(found.chosen.version, "6.12.0");
    assert_eq!(found.others, ["6.1.0"]);
    assert_eq!(found.kargs, ["quiet"]);

    let first = install(&esp, &v1, "a1", 2, None);
    let second = install(&esp, &v2, "b2", 1, None);
    let third = install(&esp, &v3, "c3", 0, Some(3));
    assert!(!first.kernel_shared && second.kernel_shared && !third.kernel_shared);
    assert_eq!(first.kernel_dir, second.kernel_dir);
    let copies = std::fs::read_dir(esp.path().join("cfs-deploy"))
        .unwrap()
        .count();
    assert_eq!(copies, 2, "one copy per distinct kernel");

    let order = |listed: &[Listed]| listed.iter().map(|l| l.title.clone()).collect::<Vec<_>>();
    let listed = esp.list();
    assert_eq!(
        order(&listed),
        ["Test OS 3", "Test OS 2", "Test OS 1"],
        "{listed:#?}"
    );
    assert_eq!(listed[0].version, "3");
    assert_eq!(listed[0].tries, "3 left");
    assert_eq!(listed[0].id, "cfs-c3.conf");
    assert_eq!(listed[1].tries, "");
    assert!(listed[0].options.ends_with(" quiet") && !listed[0].options.contains("arm=1"));

    // Three failed boots: systemd-boot's renames leave it bad, and the
    // previous deployment is first.
    let entries = esp.path().join("loader/entries");
    std::fs::rename(
        entries.join("cfs-c3+3.conf"),
        entries.join("cfs-c3+0-3.conf"),
    )
    .unwrap();
    let listed = esp.list();
    assert_eq!(
        order(&listed),
        ["Test OS 2", "Test OS 1", "Test OS 3"],
        "{listed:#?}"
    );
    assert_eq!(listed[2].tries, "0 left; 3 done");

    // A boot that succeeds after one failure is blessed.
    std::fs::rename(
        entries.join("cfs-c3+0-3.conf"),
        entries.join("cfs-c3+2-1.conf"),
    )
    .unwrap();
    let blessed = bless(&esp.dir(), "\\loader\\entries\\cfs-c3+2-1.conf").unwrap();
    assert_eq!(blessed.as_deref(), Some("loader/entries/cfs-c3.conf"));
    let listed = esp.list();
    assert_eq!(order(&listed), ["Test OS 3", "Test OS 2", "Test OS 1"]);
    assert_eq!(listed[0].tries, "");
    assert_eq!(
        bless(&esp.dir(), "loader/entries/cfs-c3.conf").unwrap(),
        None
    );
    println!(
        "bootctl listed 3 Type 1 entries newest first; fallback and bless reorder as expected"
    );
}

/// A UKI from systemd's stub with these sections, or `None` (printed)
/// when objcopy or the stub is missing.
fn build_uki(dir: &Path, cmdline: &str, version: &str) -> Option<Vec<u8>> {
    if !Path::new(STUB).exists() {
        println!("SKIPPED UKIs: {STUB} is missing (package systemd-boot-efi)");
        return None;
    }
    let sections = [
        (".osrel", os_release(version), "0x20000"),
        (".cmdline", cmdline.as_bytes().to_vec(), "0x30000"),
        (".linux", vec![7; 8000], "0x2000000"),
        (".initrd", b"initrd".to_vec(), "0x3000000"),
    ];
    let mut objcopy = Command::new("objcopy");
    for (name, content, vma) in &sections {
        let file = dir.join(name.trim_start_matches('.'));
        std::fs::write(&file, content).unwrap();
        objcopy
            .arg("--add-section")
            .arg(format!("{name}={}", file.display()))
            .arg("--change-section-vma")
            .arg(format!("{name}={vma}"));
    }
    let out = dir.join("uki.efi");
    let status = objcopy.arg(STUB).arg(&out).status();
    if !status.is_ok_and(|s| s.success()) {
        println!("SKIPPED UKIs: objcopy is not installed or failed (package binutils)");
        return None;
    }
    Some(std::fs::read(out).unwrap())
}

#[test]
fn ukis_are_checked_against_the_boot_image_and_listed() {
    let Some(esp) = Esp::new("ukis_are_checked_against_the_boot_image_and_listed") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let digest = "ab".repeat(64);
    let Some(uki) = build_uki(work.path(), &format!("composefs={digest} rw"), "5") else {
        return;
    };
    let root = tree(
        &work.path().join("image"),
        &[
            ("usr/lib/os-release", &os_release("5")),
            ("boot/EFI/Linux/os-5.efi", &uki),
        ],
    );
    let found = resources(&root).unwrap();
    let BootArtifact::Uki { file, uki: parsed } = &found.chosen.artifact else {
        panic!("expected a UKI");
    };
    assert_eq!(file.path, Path::new("/boot/EFI/Linux/os-5.efi"));
    assert_eq!(parsed.os_release.title(), Some("Test OS 5"));
    assert_eq!(parsed.composefs().unwrap().digest, digest);

    // Sealed for another image: refused, both digests shown.
    let other = "cd".repeat(64);
    let entry = NewEntry {
        stem: "cfs-u".into(),
        title: "Test OS 5".into(),
        version: "5".into(),
        sort_key: "test".into(),
        options: String::new(),
        tries: Some(3),
        staged: false,
    };
    let refused = install_uki(&esp.dir(), &entry, &uki, parsed, &other).unwrap_err();
    assert!(matches!(refused, InstallError::SealedMismatch { .. }));
    let message = refused.to_string();
    assert!(
        message.contains(&digest) && message.contains(&other),
        "{message}"
    );
    assert_eq!(
        std::fs::read_dir(esp.path()).unwrap().count(),
        0,
        "nothing written"
    );

    // A Type 1 entry runs the UKI (kept out of EFI/Linux, so that
    // systemd-boot does not list it by itself), with its sealed command
    // line.
    let installed = install_uki(&esp.dir(), &entry, &uki, parsed, &digest).unwrap();
    assert_eq!(installed.entry, "loader/entries/cfs-u+3.conf");
    assert_eq!(
        std::fs::read(esp.path().join("EFI/cfs-deploy/cfs-u.efi")).unwrap(),
        uki
    );
    assert!(!esp.path().join("EFI/Linux").exists());
    let listed = esp.list();
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0].title, "Test OS 5");
    assert_eq!(listed[0].version, "5");
    assert_eq!(listed[0].id, "cfs-u.conf");
    assert_eq!(listed[0].tries, "3 left");
    assert!(listed[0].options.is_empty(), "{listed:#?}");
}

#[test]
fn images_without_a_kernel_fail_clearly() {
    let work = tempfile::tempdir().unwrap();
    let none = tree(
        &work.path().join("none"),
        &[("usr/lib/os-release", b"ID=x\n")],
    );
    let error = resources(&none).unwrap_err();
    assert!(matches!(error, ResourceError::NoKernel), "{error}");
    assert!(error.to_string().contains("has no kernel"), "{error}");
    let half = tree(
        &work.path().join("half"),
        &[("usr/lib/modules/6.1.0/vmlinuz", &[1; 100])],
    );
    let error = resources(&half).unwrap_err();
    assert_eq!(
        error.to_string(),
        "/usr/lib/modules/6.1.0/vmlinuz has no initramfs.img beside it"
    );
    let not_pe = tree(
        &work.path().join("notpe"),
        &[("boot/EFI/Linux/x.efi", b"MZ junk")],
    );
    let error = resources(&not_pe).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("/boot/EFI/Linux/x.efi: not a PE"),
        "{error}"
    );
}
