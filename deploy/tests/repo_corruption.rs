//! Damage: a flipped byte, a truncated or missing object and a malformed
//! split stream are each reported by `repo fsck` as exactly the damaged
//! item, with exit code 1 and never a panic; `--repair` removes corrupt
//! objects and says what that leaves broken; storing the content again
//! makes the repository clean.

mod common;

use std::path::{Path, PathBuf};

use cfs_erofs::digest::{FsVerityDigest, Sha512Digest};
use cfs_images::splitstream::{ContentType, SplitStreamWriter};
use cfs_images::Repository;
use common::*;

/// `(kind, path, detail)` of each problem in a fsck report.
fn problems(report: &serde_json::Value) -> Vec<(String, String, String)> {
    report["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().expect("string").to_owned();
            (s("kind"), s("path"), s("detail"))
        })
        .collect()
}

/// A repository with one image of 30 files; returns it, the source and
/// the image's digest.
fn setup(work: &Path) -> (PathBuf, PathBuf, String) {
    let repo = work.join("repo");
    let src = work.join("src");
    write_files(&src, 30, (65, 8192), 5);
    ok(ours(&repo).args(["repo", "init", "--insecure"]));
    let out = ok(ours(&repo)
        .args(["--json", "image", "create"])
        .arg(&src)
        .args(["--name", "img"]));
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    let digest = json["digest"].as_str().expect("digest").to_owned();
    assert_clean(&repo, "after setup");
    (repo, src, digest)
}

fn flip_byte(path: &Path) {
    let mut data = std::fs::read(path).expect("read object");
    let at = data.len() / 2;
    data[at] ^= 0x01;
    std::fs::write(path, data).expect("write object");
}

/// fsck in text mode must fail too, naming `path`, without panicking.
fn text_fsck_names(repo: &Path, path: &str) {
    let out = output(ours(repo).args(["repo", "fsck"]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains(path), "{stdout}");
    assert!(stdout.contains("BROKEN"), "{stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn flipped_byte_in_a_file_object() {
    let work = tempfile::tempdir().expect("tempdir");
    let (repo, src, image) = setup(work.path());
    let data = std::fs::read(src.join("usr/d00/f0007")).expect("read source");
    let object = object_of(&data);
    flip_byte(&repo.join(&object));

    let (code, report) = fsck(&repo, false);
    assert_eq!(code, 1, "{report:#}");
    let found = problems(&report);
    assert_eq!(found.len(), 1, "{report:#}");
    assert_eq!(
        (found[0].0.as_str(), found[0].1.as_str()),
        ("corrupt-object", object.as_str())
    );
    text_fsck_names(&repo, &object);

    let (code, repaired) = fsck(&repo, true);
    assert_eq!(repaired["repaired"], serde_json::json!([object]));
    assert!(!repo.join(&object).exists(), "--repair left {object}");
    // What the removal leaves broken is reported, not hidden.
    let left = problems(&repaired);
    let hex = object.trim_start_matches("objects/").replace('/', "");
    assert_eq!(code, 1, "{repaired:#}");
    assert_eq!(
        left,
        [(
            "missing-object".to_owned(),
            format!("images/{image}"),
            hex.clone()
        )],
        "{repaired:#}"
    );
    let (code, after) = fsck(&repo, false);
    assert_eq!((code, problems(&after)), (1, left.clone()));

    // Storing the content again restores the object.
    ok(ours(&repo)
        .args(["image", "create"])
        .arg(&src)
        .args(["--name", "img"]));
    let report = assert_clean(&repo, "after storing the content again");
    eprintln!(
        "flipped byte in {object}: fsck exit 1 with exactly that problem; --repair removed it and \
         reported the image now missing it (exit 1); image create restored it: fsck clean ({} \
         objects)",
        report["objectsChecked"]
    );
}

#[test]
fn truncated_and_missing_objects() {
    let work = tempfile::tempdir().expect("tempdir");
    let (repo, src, image) = setup(work.path());
    let truncated = object_of(&std::fs::read(src.join("usr/d00/f0003")).expect("read"));
    let missing = object_of(&std::fs::read(src.join("usr/d01/f0021")).expect("read"));
    let len = std::fs::metadata(repo.join(&truncated))
        .expect("stat")
        .len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(repo.join(&truncated))
        .expect("open")
        .set_len(len / 2)
        .expect("truncate");
    std::fs::remove_file(repo.join(&missing)).expect("remove");

    let (code, report) = fsck(&repo, false);
    assert_eq!(code, 1);
    let missing_hex = missing.trim_start_matches("objects/").replace('/', "");
    let mut found: Vec<(String, String, String)> = problems(&report);
    found.iter_mut().for_each(|p| {
        if p.0 == "corrupt-object" {
            p.2.clear();
        }
    });
    assert_eq!(
        found,
        [
            (
                "missing-object".into(),
                format!("images/{image}"),
                missing_hex
            ),
            ("corrupt-object".into(), truncated.clone(), String::new()),
        ],
        "{report:#}"
    );
    eprintln!(
        "truncated {truncated} and removed {missing}: fsck exit 1, reporting exactly those two"
    );
}

#[test]
fn flipped_byte_in_the_image_object() {
    let work = tempfile::tempdir().expect("tempdir");
    let (repo, _src, image) = setup(work.path());
    let digest = Sha512Digest::from_hex(&image).expect("hex");
    let object = format!("objects/{}", digest.object_pathname());
    flip_byte(&repo.join(&object));

    let (code, report) = fsck(&repo, false);
    assert_eq!(code, 1);
    let found = problems(&report);
    // The object, and the image link that can no longer be read: both
    // name this image and nothing else.
    assert!(
        found
            .iter()
            .any(|p| p.0 == "corrupt-object" && p.1 == object),
        "{report:#}"
    );
    for p in &found {
        assert!(
            p.1 == object || p.1 == format!("images/{image}"),
            "unrelated problem {p:?}"
        );
    }
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let out = output(ours(&repo).args(["image", "mount", "img"]).arg(&mnt));
    let _guard = out.status.success().then(|| Mounted(mnt.clone()));
    assert_eq!(out.status.code(), Some(1), "a corrupt image must not mount");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("corrupt"), "{stderr}");
    eprintln!(
        "flipped byte in the image object: fsck exit 1 with {} problems, all naming it; image \
         mount refused: {}",
        found.len(),
        stderr.trim()
    );
}

/// A split stream referencing some of the image's objects, with inline
/// data, as the library writes them.
fn stream_bytes(src: &Path) -> Vec<u8> {
    let mut writer = SplitStreamWriter::<Sha512Digest>::new(ContentType::OCI_LAYER);
    for i in 0..10 {
        let data = std::fs::read(src.join(format!("usr/d00/f{i:04}"))).expect("read");
        writer.write_inline(&[i as u8; 700]);
        writer.write_external(
            cfs_erofs::fsverity::FsVerityHasher::<Sha512Digest>::digest(&data),
            data.len() as u64,
        );
    }
    writer.finish()
}

#[test]
fn truncated_stream_is_an_error_not_a_panic() {
    let work = tempfile::tempdir().expect("tempdir");
    let (repo, src, _image) = setup(work.path());
    let good = stream_bytes(&src);
    let lengths: Vec<usize> = [0, 1, 8, 63, 64, 100, 200, good.len() / 2, good.len() - 1]
        .into_iter()
        .filter(|&n| n < good.len())
        .collect();
    {
        let r = Repository::<Sha512Digest>::open(&repo).expect("open");
        r.write_stream("good", &good, Some("good")).expect("write");
    }
    assert_clean(&repo, "with a good stream");
    let mut reported = 0;
    for &len in &lengths {
        let id = format!("truncated-{len}");
        {
            let r = Repository::<Sha512Digest>::open(&repo).expect("open");
            // A well-named object whose content is a cut-off stream.
            r.write_stream(&id, &good[..len], Some(&id)).expect("write");
        }
        let (code, report) = fsck(&repo, false);
        assert_eq!(code, 1, "{len}: {report:#}");
        let found = problems(&report);
        assert_eq!(found.len(), 1, "{len}: {report:#}");
        assert_eq!(
            (found[0].0.as_str(), found[0].1.as_str()),
            ("bad-stream", format!("streams/{id}").as_str()),
            "{len}"
        );
        reported += 1;

        // GC cannot know what a broken stream keeps alive: it must refuse,
        // cleanly, rather than delete or panic.
        let gc = output(ours(&repo).args(["repo", "gc"]));
        let stderr = String::from_utf8_lossy(&gc.stderr);
        assert_eq!(gc.status.code(), Some(1), "gc with {id}: {stderr}");
        assert!(stderr.contains("split stream"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        ok(ours(&repo).args(["repo", "ls"]));

        let r = Repository::<Sha512Digest>::open(&repo).expect("open");
        assert!(r.open_stream(&format!("refs/{id}")).is_err(), "{len}");
        assert!(r.remove_stream_ref(&id).expect("remove ref"));
        drop(r);
        let gc: serde_json::Value =
            serde_json::from_str(&ok(ours(&repo).args(["--json", "repo", "gc"]))).expect("json");
        assert_eq!(
            gc["linksRemoved"],
            serde_json::json!([format!("streams/{id}")]),
            "{gc}"
        );
        assert_clean(&repo, &format!("after removing {id}"));
    }
    eprintln!(
        "{reported} truncations of a {}-byte stream ({lengths:?}): each fsck exit 1 naming only \
         that stream, gc refused with an error, no panics; after removing its ref, gc collected it",
        good.len()
    );
}
