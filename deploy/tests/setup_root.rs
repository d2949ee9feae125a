//! `setup-root` on this machine's kernel (erofs and overlayfs, no
//! fs-verity, so an insecure repository and `composefs=?ID`): a host
//! installed by `install to-filesystem` into a directory, the command line
//! its boot entry holds, and the mounts checked from inside a private
//! mount namespace (`unshare`), where they vanish when it exits.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{ok, output, OURS};

/// The image's `/usr/bin/hello`.
const HELLO: &str = "#!/bin/sh\necho hello from the setup-root sample\n";

/// A small OS tree: a stand-in kernel (never booted here), os-release,
/// /etc, the /sysroot mount point bootable images have, and /var.
fn sample_os(root: &Path, with_var: bool) {
    let modules = root.join("usr/lib/modules/6.12.0");
    for dir in [
        modules.as_path(),
        &root.join("usr/bin"),
        &root.join("etc"),
        &root.join("sysroot"),
        &root.join("boot"),
    ] {
        std::fs::create_dir_all(dir).expect("creating the sample tree");
    }
    if with_var {
        std::fs::create_dir_all(root.join("var/lib/sample")).expect("creating /var");
    }
    let write = |path: &str, text: &str| {
        std::fs::write(root.join(path), text).unwrap_or_else(|e| panic!("writing {path}: {e}"));
    };
    write("usr/lib/modules/6.12.0/vmlinuz", "not a kernel");
    write("usr/lib/modules/6.12.0/initramfs.img", "not an initramfs");
    write("usr/lib/os-release", "ID=sample\nVERSION_ID=1\n");
    write("usr/bin/hello", HELLO);
    write("etc/sample.conf", "setting=from-image\n");
    if with_var {
        write("var/lib/sample/data", "state\n");
    }
}

fn oci_layout_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/oci-layout.py")
}

/// Why this test cannot run here, if it cannot.
fn cannot_run() -> Option<String> {
    if let Some(why) = common::cannot_mount() {
        return Some(why);
    }
    let probe = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        return Some("unshare --mount does not work here".into());
    }
    if !Path::new("/usr/lib/systemd/boot/efi/systemd-bootx64.efi").exists() {
        return Some("no systemd-boot on this machine (package systemd-boot-efi)".into());
    }
    None
}

/// Runs `script` with `sh -eu` in a private mount namespace, with `$ROOT`
/// a mount point of its own (as the physical root is in the initramfs);
/// `$OURS` and `$ROOT` are set.
fn in_namespace(root: &Path, script: &str) -> Output {
    let script = format!("mount --bind \"$ROOT\" \"$ROOT\"\n{script}");
    output(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-euc", &script])
            .env("OURS", OURS)
            .env("ROOT", root),
    )
}

/// The `options` line of the one boot entry on `esp`.
fn entry_options(esp: &Path) -> String {
    let entries: Vec<_> = std::fs::read_dir(esp.join("loader/entries"))
        .expect("listing entries")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(entries.len(), 1, "one entry after install: {entries:?}");
    let text = std::fs::read_to_string(&entries[0]).expect("reading the entry");
    text.lines()
        .find_map(|l| l.strip_prefix("options "))
        .unwrap_or_else(|| panic!("no options in {text}"))
        .trim()
        .to_owned()
}

fn text(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn setup_root_assembles_the_deployment_and_refuses_what_it_must() {
    if let Some(why) = cannot_run() {
        println!("SKIPPED: {why}");
        return;
    }
    let work = tempfile::tempdir().expect("temp dir");
    let layout = work.path().join("layout");
    for (tag, with_sysroot) in [("v1", true), ("no-var", false)] {
        let tree = work.path().join(tag);
        sample_os(&tree, with_sysroot);
        ok(Command::new(oci_layout_script())
            .arg(&layout)
            .arg(tag)
            .arg(&tree));
    }

    // Not a tmpfs: EROFS cannot be backed by a tmpfs file (ENOTBLK).
    let root = &work.path().join("sysroot");
    std::fs::create_dir_all(root).expect("creating the physical root");
    let esp = work.path().join("esp");
    std::fs::create_dir_all(&esp).expect("creating the ESP");
    ok(Command::new(OURS)
        .args(["--quiet", "install", "to-filesystem"])
        .arg(root)
        .arg("--esp")
        .arg(&esp)
        .args(["--root-karg", "root=LABEL=root", "--insecure", "--source"])
        .arg(format!("oci:{}:v1", layout.display())));
    let options = entry_options(&esp);
    let id = options
        .split_ascii_whitespace()
        .find_map(|a| a.strip_prefix("composefs=?"))
        .unwrap_or_else(|| panic!("no composefs=? in {options}"))
        .to_owned();
    let state = root.join("state/deploy").join(&id);
    // A local edit: /etc must come from the state, not the image.
    std::fs::write(state.join("etc/sample.conf"), "setting=local\n").expect("editing /etc");
    let cmdline = work.path().join("cmdline");
    std::fs::write(&cmdline, format!("BOOT_IMAGE=/vmlinuz {options}\n")).expect("cmdline");

    let out = in_namespace(
        root,
        &format!(
            r#"
            "$OURS" setup-root --sysroot "$ROOT" --cmdline {cmdline}
            echo "hello: $(cat "$ROOT/usr/bin/hello" | tail -1)"
            echo "etc: $(cat "$ROOT/etc/sample.conf")"
            echo written-at-boot > "$ROOT/etc/boot-note"
            echo var-at-boot > "$ROOT/var/lib/sample/boot-note"
            echo "var: $(cat "$ROOT/var/lib/sample/data")"
            echo "sysroot repo: $(test -f "$ROOT/sysroot/composefs/meta.json" && echo present)"
            touch "$ROOT/sysroot/new-file" 2>/dev/null && echo "sysroot: writable" || echo "sysroot: read-only"
            touch "$ROOT/usr/new-file" 2>/dev/null && echo "usr: writable" || echo "usr: read-only"
            echo "root mount: $(findmnt -n -o FSTYPE,SOURCE --mountpoint "$ROOT" | tail -1)"
            "#,
            cmdline = cmdline.display()
        ),
    );
    assert!(out.status.success(), "setup-root: {}", text(&out));
    let seen = String::from_utf8_lossy(&out.stdout);
    let hello_line = HELLO.lines().last().expect("two lines");
    for expected in [
        format!("hello: {hello_line}"),
        "etc: setting=local".to_owned(),
        "var: state".to_owned(),
        "sysroot repo: present".to_owned(),
        "sysroot: read-only".to_owned(),
        "usr: read-only".to_owned(),
        format!("root mount: overlay composefs:{id}"),
    ] {
        assert!(
            seen.lines().any(|l| l.trim() == expected),
            "want {expected:?} in:\n{seen}"
        );
    }
    // Writes went to the deployment's /etc and to the shared /var.
    let read =
        |path: PathBuf| std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    assert_eq!(read(state.join("etc/boot-note")), "written-at-boot\n");
    assert_eq!(
        read(root.join("state/os/default/var/lib/sample/boot-note")),
        "var-at-boot\n"
    );
    assert!(!root.join("new-file").exists(), "/sysroot was writable");

    // Refusals, each leaving the physical root showing at ROOT.
    let refused = |cmdline_text: &str| -> String {
        std::fs::write(&cmdline, cmdline_text).expect("cmdline");
        let out = in_namespace(
            root,
            &format!(
                r#"
                if "$OURS" setup-root --sysroot "$ROOT" --cmdline {cmdline}; then exit 3; fi
                test -f "$ROOT/composefs/meta.json" || {{ echo "physical root hidden" >&2; exit 4; }}
                "#,
                cmdline = cmdline.display()
            ),
        );
        assert!(out.status.success(), "{cmdline_text}: {}", text(&out));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // fs-verity demanded of an insecure repository.
    let error = refused(&format!("root=LABEL=root composefs={id}"));
    assert!(
        error.contains("requires fs-verity") && error.contains(&id),
        "{error}"
    );
    // An id that is no image of the repository.
    let missing = "ab".repeat(64);
    let error = refused(&format!("composefs=?{missing}"));
    assert!(error.contains(&missing), "{error}");
    // A /var symlink that leaves the physical root.
    std::fs::remove_file(state.join("var")).expect("removing var");
    std::os::unix::fs::symlink("../../../../../../../../etc", state.join("var")).expect("symlink");
    let error = refused(&format!("composefs=?{id}"));
    assert!(error.contains(&format!("state/deploy/{id}/var")), "{error}");
    std::fs::remove_file(state.join("var")).expect("removing var");
    std::os::unix::fs::symlink("../../os/default/var", state.join("var")).expect("symlink");

    // An image without /var: /sysroot and /etc are mounted when that
    // fails, and the stacked mounts are all taken off again.
    let pulled = ok(Command::new(OURS)
        .arg("--repo")
        .arg(root.join("composefs"))
        .args(["--json", "--quiet", "image", "pull"])
        .arg(format!("oci:{}:no-var", layout.display())));
    let pulled: serde_json::Value = serde_json::from_str(&pulled).expect("pull JSON");
    let other = pulled["bootImage"]
        .as_str()
        .expect("a boot image")
        .to_owned();
    let other_state = root.join("state/deploy").join(&other);
    std::fs::create_dir_all(other_state.join("etc")).expect("state");
    std::os::unix::fs::symlink("../../os/default/var", other_state.join("var")).expect("var");
    let error = refused(&format!("composefs=?{other}"));
    assert!(
        error.contains("no /var directory") && error.contains(&other),
        "{error}"
    );
}
