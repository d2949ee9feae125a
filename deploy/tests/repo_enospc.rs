//! A full filesystem: `image create` on a repository whose tmpfs runs out
//! of space (or of inodes) mid-write fails with a clear "No space left on
//! device" error, fsck stays clean, GC frees what the failed run stored,
//! and the same command succeeds once there is room.
//!
//! Sweeping the tmpfs's size and inode limit page by page and inode by
//! inode makes the failure land at each step of a write in turn: the
//! temporary object, its directory, the image, the image's link, the
//! ref's directory and the ref.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;

/// Bytes in use on the filesystem at `path`.
fn used_bytes(path: &Path) -> u64 {
    let st = rustix::fs::statvfs(path).expect("statvfs");
    (st.f_blocks - st.f_bfree) * st.f_frsize
}

/// Asserts that a failed run's error says the disk is full; returns the
/// context in front of the system's message (what was being done).
fn assert_disk_full(out: &std::process::Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: expected a clean failure (exit 1), got {}: {stderr}",
        out.status
    );
    assert!(
        stderr.contains("No space left on device"),
        "{what}: the error does not say the disk is full: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    // The words of the step in front of the system's message, without
    // the digests and temporary names in it.
    let context = stderr
        .split("No space left on device")
        .next()
        .unwrap_or_default();
    let step = context
        .trim_end_matches([':', ' ', '('])
        .rsplit(": ")
        .next()
        .unwrap_or_default();
    step.split_whitespace()
        .map(|word| match word.rsplit_once('/') {
            // An absolute path is the repository's: keep the entry.
            Some((_, leaf)) if word.starts_with('/') => leaf.to_owned(),
            Some((dir, _)) if dir.starts_with("objects") => "objects/*".to_owned(),
            Some((dir, leaf)) if leaf.starts_with('.') || leaf.len() > 16 => format!("{dir}/*"),
            _ => word.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn full_filesystem_mid_write() {
    let test = "full_filesystem_mid_write";
    if !is_root() {
        eprintln!("SKIPPED {test}: mounting a small tmpfs needs root");
        return;
    }
    let fs = Tmpfs::new("size=8m").expect("mount tmpfs");
    let work = tempfile::tempdir().expect("tempdir");
    let repo = fs.path().join("repo");
    ok(ours(&repo).args(["repo", "init", "--insecure"]));

    // An image that fits, which the failure must not harm.
    let small = work.path().join("small");
    write_files(&small, 50, (65, 4096), 1);
    ok(ours(&repo)
        .args(["image", "create"])
        .arg(&small)
        .args(["--name", "small"]));
    let before = used_bytes(fs.path());

    // About 19 MiB in 600 files, on an 8 MiB filesystem.
    let big = work.path().join("big");
    write_files(&big, 600, (16 << 10, 48 << 10), 2);
    let out = output(
        ours(&repo)
            .args(["image", "create"])
            .arg(&big)
            .args(["--name", "big"]),
    );
    let step = assert_disk_full(&out, "image create of 19 MiB on 8 MiB");
    let message = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    let full = used_bytes(fs.path());

    let report = assert_clean(&repo, "after running out of space");
    let refs = image_refs(&repo);
    assert_eq!(refs.keys().collect::<Vec<_>>(), ["small"]);
    assert_refs_resolve(&repo);

    // What the failed run stored is garbage: GC frees it, on a full disk.
    let gc: serde_json::Value =
        serde_json::from_str(&ok(ours(&repo).args(["--json", "repo", "gc"]))).expect("json");
    let after_gc = used_bytes(fs.path());
    assert!(gc["objectsRemoved"].as_u64() > Some(0), "{gc}");
    assert!(
        after_gc <= before,
        "gc left {after_gc} bytes, {before} before"
    );
    assert_clean(&repo, "after gc");

    // The repository still works.
    let medium = work.path().join("medium");
    write_files(&medium, 200, (4 << 10, 16 << 10), 3);
    ok(ours(&repo)
        .args(["image", "create"])
        .arg(&medium)
        .args(["--name", "medium"]));
    assert_clean(&repo, "after a new image");
    assert_eq!(assert_refs_resolve(&repo), 2);

    eprintln!(
        "8 MiB tmpfs: 19 MiB image create failed at {:.1} MiB used while {step}: {message:?}; \
         fsck clean ({} objects), only the earlier ref; gc removed {} objects ({} bytes) down \
         to {:.1} MiB; a 2 MiB image then stored fine",
        full as f64 / 1048576.0,
        report["objectsChecked"],
        gc["objectsRemoved"],
        gc["bytesRemoved"],
        after_gc as f64 / 1048576.0,
    );
}

/// Runs `image create` of `src` on a fresh tmpfs mounted with `limit`
/// (and plenty of everything else), then with the limit lifted. Returns
/// the failing step, or `None` if the first run fitted.
fn create_with_limit(src: &Path, limit: &str, lifted: &str) -> Option<String> {
    let fs = Tmpfs::new(&format!("size=64m,nr_inodes=10000,{limit}")).expect("mount tmpfs");
    let repo = fs.path().join("repo");
    let init = output(ours(&repo).args(["repo", "init", "--insecure"]));
    if !init.status.success() {
        let step = assert_disk_full(&init, &format!("repo init with {limit}"));
        // A failed init leaves no repository, rather than one without
        // some of its directories, and running it again completes it.
        fs.remount(lifted);
        let out = output(
            ours(&repo)
                .args(["image", "create"])
                .arg(src)
                .args(["--name", "img"]),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("not a composefs repository"),
            "after init failed with {limit}: {stderr}"
        );
        ok(ours(&repo).args(["repo", "init", "--insecure"]));
        ok(ours(&repo)
            .args(["image", "create"])
            .arg(src)
            .args(["--name", "img"]));
        assert_clean(&repo, &format!("after init again with {limit} lifted"));
        return Some(format!("init: {step}"));
    }
    let out = output(
        ours(&repo)
            .args(["image", "create"])
            .arg(src)
            .args(["--name", "img"]),
    );
    let step = if out.status.success() {
        None
    } else {
        let step = assert_disk_full(&out, &format!("image create with {limit}"));
        assert_clean(&repo, &format!("after running out with {limit}"));
        assert!(
            image_refs(&repo).is_empty(),
            "a failed run left a ref ({limit})"
        );
        Some(step)
    };
    fs.remount(lifted);
    ok(ours(&repo)
        .args(["image", "create"])
        .arg(src)
        .args(["--name", "img"]));
    assert_clean(&repo, &format!("after rerunning with {limit} lifted"));
    assert_eq!(assert_refs_resolve(&repo), 1);
    step
}

#[test]
fn out_of_space_at_every_step() {
    let test = "out_of_space_at_every_step";
    if !is_root() {
        eprintln!("SKIPPED {test}: mounting tmpfs needs root");
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let src = work.path().join("src");
    // 20 files of one page or less, in one directory.
    write_files(&src, 20, (65, 4000), 4);

    let mut steps: BTreeMap<String, usize> = BTreeMap::new();
    let mut runs = 0;
    // Each file, object, link and directory takes an inode.
    for inodes in 2..=60 {
        let step = create_with_limit(&src, &format!("nr_inodes={inodes}"), "nr_inodes=10000");
        runs += 1;
        *steps
            .entry(step.map_or("fitted".into(), |s| format!("inodes: {s}")))
            .or_default() += 1;
    }
    // Each object, meta.json and a symlink of over 128 bytes take a page.
    for pages in 1..=40 {
        let step = create_with_limit(&src, &format!("size={}k", pages * 4), "size=64m");
        runs += 1;
        *steps
            .entry(step.map_or("fitted".into(), |s| format!("space: {s}")))
            .or_default() += 1;
    }
    eprintln!("{runs} runs on tmpfs limited to 2..=60 inodes and 1..=40 pages; outcomes by failing step (each followed by a clean fsck and a successful rerun): {steps:#?}");
    assert!(
        steps.len() >= 5,
        "the failures hit too few steps: {steps:?}"
    );
}
