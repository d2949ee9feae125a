//! `cfs-deploy image pull ostree:REPO:REF` against the reference
//! (`cfsctl ostree pull-local`) and against `ostree checkout`, on commits
//! made by the real `ostree` CLI in an archive and a bare-user repository:
//! dirs, files of several sizes, an empty file, a duplicate (one inode in
//! the image), symlinks, setuid, owners, a 0700 directory, xattrs.
//! Corrupted and tampered objects are refused and leave fsck clean.

use std::os::unix::fs::{chown, symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::{
    assert_clean, assert_same_tree, cannot_mount, cfsctl, is_root, ok, ours, output, snapshot,
    Mounted,
};

mod common;

fn field<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key:?} in {text}"))
        .trim()
}

fn ostree(repo: &Path) -> Command {
    let mut cmd = Command::new("ostree");
    cmd.arg(format!("--repo={}", repo.display()));
    cmd
}

fn write(path: &Path, data: &[u8], mode: u32) {
    std::fs::write(path, data).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The source tree; `xattrs` adds user xattrs to a file and a directory.
fn make_tree(root: &Path, xattrs: bool) {
    for dir in ["usr/bin", "usr/lib", "etc", "boot", "sysroot", "var/priv"] {
        std::fs::create_dir_all(root.join(dir)).expect("mkdir");
    }
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    write(&root.join("usr/bin/big"), &big, 0o4755);
    write(&root.join("usr/lib/sixtyfour"), &big[..64], 0o644);
    write(&root.join("usr/lib/sixtyfive"), &big[1..66], 0o600);
    write(&root.join("usr/lib/sixtyfive-copy"), &big[1..66], 0o600);
    write(&root.join("usr/lib/medium"), &big[..5000], 0o755);
    write(&root.join("etc/small"), b"small\n", 0o644);
    write(&root.join("etc/empty"), b"", 0o644);
    symlink("../usr/bin/big", root.join("etc/link")).expect("symlink");
    symlink("/nonexistent", root.join("etc/dangling")).expect("symlink");
    for file in ["usr/lib/sixtyfive", "usr/lib/sixtyfive-copy"] {
        chown(root.join(file), Some(1000), Some(1001)).expect("chown");
    }
    std::fs::set_permissions(
        root.join("var/priv"),
        std::fs::Permissions::from_mode(0o700),
    )
    .expect("chmod");
    chown(root.join("var/priv"), Some(5), Some(6)).expect("chown");
    if xattrs {
        let set = |path: &str, name: &str, value: &[u8]| {
            rustix::fs::lsetxattr(
                root.join(path),
                name,
                value,
                rustix::fs::XattrFlags::empty(),
            )
            .unwrap_or_else(|e| panic!("setxattr {path} {name}: {e}"));
        };
        set("etc/small", "user.b", b"two");
        set("etc/small", "user.a", b"one");
        set("usr/lib", "user.dir", b"d");
    }
}

/// An archive repo with commits `plain` and `xattrs`, and a bare-user
/// repo pulled from it.
fn fixture(work: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let archive = work.join("archive");
    let bare_user = work.join("bare-user");
    ok(ostree(&archive).args(["init", "--mode=archive"]));
    ok(ostree(&bare_user).args(["init", "--mode=bare-user"]));
    for (name, xattrs) in [("plain", false), ("xattrs", true)] {
        let tree = work.join(format!("tree-{name}"));
        make_tree(&tree, xattrs);
        ok(ostree(&archive)
            .args([
                "commit",
                "-b",
                name,
                "-s",
                name,
                "--timestamp=2024-01-01T00:00:00Z",
            ])
            .arg(&tree));
        ok(ostree(&bare_user)
            .args(["pull-local"])
            .arg(&archive)
            .arg(name));
    }
    (archive, bare_user)
}

fn init(repo: &Path) {
    ok(ours(repo).args(["repo", "init", "--insecure"]));
}

fn pull(repo: &Path, source: &Path, rev: &str, tag: &str) -> String {
    ok(ours(repo)
        .args(["image", "pull"])
        .arg(format!("ostree:{}:{rev}", source.display()))
        .args(["--name", tag]))
}

/// The reference's plain image of `rev` and its dumpfile.
fn reference(cfsctl: &Path, repo: &Path, source: &Path, rev: &str) -> (String, String) {
    let pulled = ok(Command::new(cfsctl)
        .arg("--repo")
        .arg(repo)
        .args(["--insecure", "ostree", "pull-local"])
        .arg(source)
        .arg(rev));
    let dump = ok(Command::new(cfsctl).arg("--repo").arg(repo).args([
        "--insecure",
        "ostree",
        "dump",
        rev,
    ]));
    (field(&pulled, "image").to_owned(), dump)
}

fn our_dump(repo: &Path, image: &str) -> String {
    ok(ours(repo)
        .args(["image", "dump"])
        .arg(repo.join("images").join(image)))
}

#[test]
fn ostree_pull_matches_cfsctl_and_checkout() {
    if !is_root() {
        eprintln!("SKIPPED ostree_pull: needs root to commit files owned by others");
        return;
    }
    if Command::new("ostree").arg("--version").output().is_err() {
        eprintln!("SKIPPED ostree_pull: the ostree CLI is not installed");
        return;
    }
    let Some(cfsctl) = cfsctl() else {
        eprintln!("SKIPPED ostree_pull: cfsctl is not installed (run ./dev test)");
        return;
    };
    let work = tempfile::tempdir().expect("tempdir");
    let work = work.path();
    let (archive, bare_user) = fixture(work);
    let theirs = work.join("theirs");
    ok(Command::new(&cfsctl).arg("--repo").arg(&theirs).args([
        "--hash",
        "sha512",
        "init",
        "--insecure",
    ]));

    let repo = work.join("ours");
    init(&repo);
    let mut images = Vec::new();
    for (source, kind) in [(&archive, "archive"), (&bare_user, "bare-user")] {
        // Without xattrs: the same image, byte for byte.
        let out = pull(&repo, source, "plain", &format!("{kind}-plain"));
        let (plain, _) = reference(&cfsctl, &theirs, source, "plain");
        assert_eq!(field(&out, "image "), plain, "{kind}: plain image");
        // With xattrs the reference keeps ostree's NUL at the end of each
        // xattr name (`user.a\x00`); we name them as the kernel does.
        // Apart from that the two trees are the same.
        let out = pull(&repo, source, "xattrs", &format!("{kind}-xattrs"));
        let image = field(&out, "image ").to_owned();
        let (theirs_image, theirs_dump) = reference(&cfsctl, &theirs, source, "xattrs");
        assert_ne!(
            image, theirs_image,
            "{kind}: the reference's NUL-named xattrs"
        );
        assert!(theirs_dump.contains("user.a\\x00=one"), "{theirs_dump}");
        let dump = our_dump(&repo, &image);
        assert!(dump.contains(" user.a=one user.b=two"), "{dump}");
        assert_eq!(dump, theirs_dump.replace("\\x00=", "="), "{kind}: trees");
        images.push(image);
    }
    assert_eq!(images[0], images[1], "archive and bare-user give one image");
    assert_clean(&repo, "after the pulls");

    // A second pull reads nothing but the ref and the commit.
    let again = pull(&repo, &archive, "xattrs", "again");
    assert_eq!(
        field(&again, "read "),
        "0 directories, 0 files; 0 bytes stored as objects"
    );

    // Mounted, the image shows what `ostree checkout` writes, apart from
    // mtimes and link counts (checkout copies; the image links the one
    // duplicated object twice).
    if let Some(why) = cannot_mount() {
        eprintln!("SKIPPED ostree_pull mount check: {why}");
    } else {
        let checkout = work.join("checkout");
        ok(ostree(&archive)
            .arg("checkout")
            .arg("xattrs")
            .arg(&checkout));
        let mountpoint = work.join("mnt");
        std::fs::create_dir(&mountpoint).expect("mkdir");
        ok(ours(&repo)
            .args(["image", "mount", &images[0]])
            .arg(&mountpoint));
        let _mounted = Mounted(mountpoint.clone());
        // Checkout dates everything now; ostree keeps no mtimes and the
        // image has 0 everywhere, which the comparison checks.
        let normalise = |mut tree: std::collections::BTreeMap<Vec<u8>, common::Seen>, now| {
            for seen in tree.values_mut() {
                if now {
                    seen.mtime = (0, 0);
                }
                seen.nlink = None;
            }
            tree
        };
        let mounted = snapshot(&mountpoint);
        let link = |p: &str| mounted[p.as_bytes()].nlink;
        assert_eq!(
            link("usr/lib/sixtyfive"),
            Some(2),
            "duplicates share an inode"
        );
        assert_eq!(link("usr/lib/sixtyfive-copy"), Some(2));
        let compared = assert_same_tree(
            &normalise(snapshot(&checkout), true),
            &normalise(mounted, false),
            "mounted image vs ostree checkout",
        );
        for (path, name) in [
            ("etc/small", "user.a"),
            ("etc/small", "user.b"),
            ("usr/lib", "user.dir"),
        ] {
            let read = |root: &Path| {
                let mut value = vec![0u8; 64];
                let n = rustix::fs::lgetxattr(root.join(path), name, &mut value)
                    .unwrap_or_else(|e| panic!("{path} {name}: {e}"));
                value.truncate(n);
                value
            };
            assert_eq!(read(&mountpoint), read(&checkout), "{path} {name}");
        }
        eprintln!("ostree_pull: {compared} paths of the mounted image equal the checkout");
    }
}

/// Flips one byte of `path` at `offset` from the end.
fn flip(path: &Path, from_end: usize) {
    let mut data = std::fs::read(path).expect("read object");
    let at = data.len() - from_end;
    data[at] ^= 0x20;
    std::fs::write(path, data).expect("write object");
}

/// The object of `kind` with the largest file in the repository.
fn largest(repo: &Path, ext: &str) -> std::path::PathBuf {
    let mut found = Vec::new();
    for dir in std::fs::read_dir(repo.join("objects")).expect("objects") {
        for entry in std::fs::read_dir(dir.expect("dir").path()).expect("objects/XX") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == ext) {
                found.push((std::fs::metadata(&path).expect("stat").len(), path));
            }
        }
    }
    found.sort();
    found.pop().unwrap_or_else(|| panic!("no .{ext} object")).1
}

#[test]
fn corrupt_and_tampered_objects_are_refused() {
    if Command::new("ostree").arg("--version").output().is_err() {
        eprintln!("SKIPPED ostree corruption: the ostree CLI is not installed");
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let work = work.path();
    let tree = work.join("tree");
    std::fs::create_dir_all(tree.join("usr")).expect("mkdir");
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    write(&tree.join("usr/big"), &big, 0o644);
    write(&tree.join("usr/small"), b"small", 0o644);

    // (mode, object kind, byte flipped counted from the end, what).
    let cases = [
        ("archive", "filez", 10, "usr/big"),
        ("bare-user", "file", 10, "usr/big"),
        ("archive", "commit", 1, "commit"),
    ];
    for (mode, ext, from_end, what) in cases {
        let source = work.join(format!("{mode}-{ext}"));
        ok(ostree(&source).args(["init", &format!("--mode={mode}")]));
        ok(ostree(&source)
            .args(["commit", "-b", "r", "--owner-uid=0", "--owner-gid=0"])
            .arg(&tree));
        flip(&largest(&source, ext), from_end);
        let repo = work.join(format!("ours-{mode}-{ext}"));
        init(&repo);
        let out = output(
            ours(&repo)
                .args(["image", "pull"])
                .arg(format!("ostree:{}:r", source.display())),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{mode} {what}: pull succeeded");
        assert!(
            stderr.contains("corrupt") || stderr.contains("cannot be read"),
            "{mode} {what}: {stderr}"
        );
        assert!(
            !repo.join("streams/refs/ostree/r").exists(),
            "{mode} {what}: tagged anyway"
        );
        assert_clean(&repo, &format!("after a refused {mode} {what}"));
        eprintln!(
            "{mode} {what} refused: {}",
            stderr.lines().last().unwrap_or("")
        );
    }
}
