//! `image pull containers-storage:` by a user who is not root, from that
//! user's own rootless podman store.
//!
//! The store's files belong to the user's subordinate ids (a file that
//! is `1234:1234 0600` in the image is unreadable to the user outside
//! the user namespace), so the pull must run again under `podman
//! unshare`; the repository it writes must still belong to the user, and
//! the direct import and the skopeo pull (`--via-skopeo`) must produce
//! the same image. The test user is made (once, and kept) with
//! `useradd`, which gives it subordinate ids.
//!
//! Needs root (to make and become the user), `podman`, `skopeo`,
//! `newuidmap`, `useradd` and `su`; skips with a printed reason otherwise.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

use common::{installed, is_root, output, OURS};

/// The unprivileged user the test runs podman and our binary as.
const USER: &str = "cfs-rootless-test";

fn missing() -> Option<String> {
    if !is_root() {
        return Some("not running as root (makes and becomes a user)".into());
    }
    for tool in ["podman", "skopeo", "newuidmap", "useradd", "su"] {
        if !installed(tool) {
            return Some(format!("{tool} is not installed (run scripts/setup.sh)"));
        }
    }
    None
}

/// The test user's uid, after making the user if it does not exist.
fn test_user() -> Result<u32, String> {
    let id = || output(Command::new("id").args(["-u", USER]));
    let mut found = id();
    if !found.status.success() {
        let made = output(Command::new("useradd").args(["--create-home", USER]));
        if !made.status.success() {
            return Err(format!(
                "useradd: {}",
                String::from_utf8_lossy(&made.stderr).trim()
            ));
        }
        found = id();
    }
    let subuids = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
    if !subuids.lines().any(|l| l.starts_with(&format!("{USER}:"))) {
        return Err(format!("{USER} has no subordinate ids in /etc/subuid"));
    }
    String::from_utf8_lossy(&found.stdout)
        .trim()
        .parse()
        .map_err(|e| format!("id -u {USER}: {e}"))
}

/// Runs `script` with `sh` as the test user, in a login environment.
fn as_user(script: &str) -> Output {
    output(Command::new("su").args(["-", USER, "-c", script]))
}

fn as_user_ok(script: &str) -> String {
    let out = as_user(script);
    assert!(
        out.status.success(),
        "as {USER}: {script}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every file below `path` and its owner, where that is not `uid`.
fn not_owned_by(path: &Path, uid: u32) -> Vec<String> {
    let mut wrong = Vec::new();
    let meta = std::fs::symlink_metadata(path).expect("stat");
    if meta.uid() != uid {
        wrong.push(format!("{} ({})", path.display(), meta.uid()));
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).expect("readdir") {
            wrong.extend(not_owned_by(&entry.expect("entry").path(), uid));
        }
    }
    wrong
}

#[test]
fn rootless_store_pulls_through_the_user_namespace() {
    let test = "rootless_store_pulls_through_the_user_namespace";
    if let Some(why) = missing() {
        println!("SKIPPED {test}: {why}");
        return;
    }
    let uid = match test_user() {
        Ok(uid) => uid,
        Err(why) => {
            println!("SKIPPED {test}: {why}");
            return;
        }
    };
    // Our binary, where the user can run it.
    let bin_dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = bin_dir.path().join("cfs-deploy");
    std::fs::copy(OURS, &bin).expect("copying the binary");

    let work = as_user_ok("mktemp -d \"$HOME/cstor.XXXXXX\"")
        .trim()
        .to_owned();
    let tag = format!(
        "localhost/rootless-{}:1",
        Path::new(&work)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_lowercase()
    );
    // Two layers: one of the user's own files, one chowned to an id that
    // maps to a subordinate id outside (and a private mode).
    let built = as_user(&format!(
        "set -e; cd {work}
         mkdir -p own/usr/bin own/etc other/usr/lib
         head -c 70000 /dev/urandom > own/usr/bin/tool
         echo ID=rootless > own/etc/os-release
         head -c 90000 /dev/urandom > other/usr/lib/private
         chmod 600 other/usr/lib/private
         printf 'FROM scratch\\nCOPY own /\\nCOPY --chown=1234:1234 other /\\n' > Containerfile
         podman build -q -t {tag} ."
    ));
    if !built.status.success() {
        let _ = std::fs::remove_dir_all(&work);
        println!(
            "SKIPPED {test}: rootless podman cannot build here: {}",
            String::from_utf8_lossy(&built.stderr).trim()
        );
        return;
    }

    let pull = |repo: &str, extra: &str| -> serde_json::Value {
        let bin = bin.display();
        let out = as_user_ok(&format!(
            "set -e; {bin} --repo {work}/{repo} repo init --insecure >/dev/null
             {bin} --repo {work}/{repo} --json -q image pull --name r {extra} \
               containers-storage:{tag}"
        ));
        serde_json::from_str(&out).expect("pull prints JSON")
    };
    let direct = pull("direct", "");
    let stats = &direct["storeImport"];
    println!("rootless direct pull: {stats}");
    let files = |key: &str| stats[key].as_u64().unwrap_or_else(|| panic!("{stats}"));
    assert_eq!(
        files("reflinkedFiles") + files("copiedFiles"),
        2,
        "both large files imported: {stats}"
    );
    let via = pull("skopeo", "--via-skopeo");
    assert!(via["storeImport"].is_null(), "{via}");
    for key in ["manifest", "config", "image"] {
        assert_eq!(direct[key], via[key], "{key}: direct {direct} skopeo {via}");
    }
    assert!(direct["image"].is_string(), "{direct}");

    for repo in ["direct", "skopeo"] {
        let fsck = as_user_ok(&format!(
            "{} --repo {work}/{repo} --json repo fsck",
            bin.display()
        ));
        let fsck: serde_json::Value = serde_json::from_str(&fsck).expect("fsck prints JSON");
        assert!(
            fsck["problems"].as_array().is_some_and(Vec::is_empty),
            "{repo}: {fsck}"
        );
        let wrong = not_owned_by(&Path::new(&work).join(repo), uid);
        assert!(
            wrong.is_empty(),
            "{repo}: files not owned by {USER}: {wrong:?}"
        );
    }

    let _ = as_user(&format!("podman rmi -f {tag}"));
    std::fs::remove_dir_all(&work).expect("removing the work directory");
}
