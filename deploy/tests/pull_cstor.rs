//! `image pull containers-storage:` read straight from the store, against
//! the same pull through skopeo (`--via-skopeo`).
//!
//! A podman store (overlay driver) and our repositories live on a
//! loop-mounted XFS made with reflinks: every file above the inline limit
//! must be reflinked, no byte copied (the statistics, and the free space
//! of the filesystem before and after, say so), and the split streams and
//! EROFS images must be the very ones the skopeo pull writes. A repository
//! on ext4 gets copies and still the same digests. A store whose files or
//! tar-split were tampered with is refused, each way with its own message,
//! and leaves the repository fsck-clean with no image. `image copy` to
//! another repository reflinks (same filesystem) or copies (ext4), and
//! both repositories stay clean with the same image; a corrupt source
//! object stops the copy with no tag written.
//!
//! Needs root (loop mounts), `mkfs.xfs`, `mkfs.ext4`, `podman` and
//! `skopeo`; skips with a printed reason otherwise.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assert_clean, installed, is_root, ok, ours, output, write_files, LoopFs};

/// Files above this size become objects (composefs's inline limit).
const INLINE_MAX: u64 = 64;

/// Why these tests cannot run here, if they cannot.
fn missing() -> Option<String> {
    if !is_root() {
        return Some("not running as root (loop mounts)".into());
    }
    for tool in ["mkfs.xfs", "mkfs.ext4", "podman", "skopeo"] {
        if !installed(tool) {
            return Some(format!("{tool} is not installed (run scripts/setup.sh)"));
        }
    }
    None
}

/// `podman` on a private store.
fn podman(root: &Path, driver: &str) -> Command {
    let mut cmd = Command::new("podman");
    cmd.arg("--root")
        .arg(root.join("store"))
        .arg("--runroot")
        .arg(root.join("run"))
        .args(["--storage-driver", driver]);
    cmd
}

/// Builds `localhost/cstor:1` from two trees with `podman build` (FROM
/// scratch, one COPY per tree: two layers); returns how many files above
/// the inline limit the layers hold (hardlinks are not files of their
/// own), or why podman cannot build here.
fn build_image(root: &Path, driver: &str, files: usize) -> Result<u64, String> {
    let context = root.join("context");
    let first = context.join("one");
    let second = context.join("two");
    let large = |paths: &[PathBuf], base: &Path| {
        paths
            .iter()
            .filter(|path| std::fs::metadata(base.join(path)).expect("stat").len() > INLINE_MAX)
            .count() as u64
    };
    let paths = write_files(&first, files, (1, 96 << 10), 1);
    let mut objects = large(&paths, &first);
    for dir in ["etc", "usr/lib", "usr/bin"] {
        std::fs::create_dir_all(first.join(dir)).expect("mkdir");
    }
    std::fs::write(first.join("etc/os-release"), "ID=cstor\n").expect("write");
    std::fs::write(first.join("usr/lib/empty"), "").expect("write");
    std::fs::write(first.join("usr/bin/tool"), vec![b't'; 70_000]).expect("write");
    objects += 1;
    std::fs::hard_link(first.join("usr/bin/tool"), first.join("usr/bin/tool-too")).expect("link");
    std::os::unix::fs::symlink("tool", first.join("usr/bin/tool-link")).expect("symlink");
    // The second layer replaces some files of the first and adds its own.
    let paths = write_files(&second, files / 4, (1, 200 << 10), 2);
    objects += large(&paths, &second);
    std::fs::write(
        context.join("Containerfile"),
        "FROM scratch\nCOPY one /\nCOPY two /\n",
    )
    .expect("write");
    let built = output(
        podman(root, driver)
            .args(["build", "-q", "-t", "localhost/cstor:1"])
            .arg(&context),
    );
    if !built.status.success() {
        return Err(format!(
            "podman build: {}",
            String::from_utf8_lossy(&built.stderr).trim()
        ));
    }
    Ok(objects)
}

fn init(repo: &Path) {
    ok(ours(repo).args(["repo", "init", "--insecure"]));
}

/// `image pull --json` of the image in the store at `root`.
fn pull(repo: &Path, root: &Path, driver: &str, extra: &[&str]) -> serde_json::Value {
    let reference = format!(
        "containers-storage:[{driver}@{}+{}]localhost/cstor:1",
        root.join("store").display(),
        root.join("run").display()
    );
    let out = ok(ours(repo)
        .args(["--json", "-q", "image", "pull", "--name", "cstor"])
        .args(extra)
        .arg(&reference));
    serde_json::from_str(&out).expect("pull prints JSON")
}

/// The objects the layer streams of `repo` are stored as, by diff_id.
fn layer_streams(repo: &Path) -> BTreeMap<String, PathBuf> {
    let mut streams = BTreeMap::new();
    for entry in std::fs::read_dir(repo.join("streams")).expect("streams/") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(diff_id) = name.strip_prefix("oci-layer-") {
            let target = std::fs::read_link(entry.path()).expect("stream link");
            streams.insert(diff_id.to_owned(), target);
        }
    }
    streams
}

fn count(stats: &serde_json::Value, key: &str) -> u64 {
    stats[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {stats}"))
}

#[test]
fn podman_image_is_reflinked_and_equals_the_skopeo_pull() {
    let test = "podman_image_is_reflinked_and_equals_the_skopeo_pull";
    if let Some(why) = missing() {
        println!("SKIPPED {test}: {why}");
        return;
    }
    let xfs = match LoopFs::new(&["mkfs.xfs", "-q", "-f", "-m", "reflink=1"], 1 << 30) {
        Ok(fs) => fs,
        Err(why) => {
            println!("SKIPPED {test}: no reflink XFS here: {why}");
            return;
        }
    };
    let root = xfs.path();
    let objects = match build_image(&root, "overlay", 400) {
        Ok(objects) => objects,
        Err(why) => {
            println!("SKIPPED {test}: {why}");
            return;
        }
    };

    // Straight from the store, on the same filesystem: all reflinks.
    let direct = root.join("direct");
    init(&direct);
    let before = xfs.available();
    let pulled = pull(&direct, &root, "overlay", &[]);
    let used_direct = before.saturating_sub(xfs.available());
    let stats = &pulled["storeImport"];
    println!("direct pull on XFS: {stats}, {used_direct} bytes of free space used");
    assert_eq!(count(stats, "copiedFiles"), 0, "{stats}");
    assert_eq!(count(stats, "copiedBytes"), 0, "{stats}");
    assert_eq!(
        count(stats, "reflinkedFiles") + count(stats, "existingFiles"),
        objects,
        "{stats}"
    );
    let reflinked = count(stats, "reflinkedBytes");
    assert!(reflinked > 8 << 20, "{stats}");
    assert_eq!(pulled["fetched"]["layers"], 2, "{pulled}");
    assert_clean(&direct, "after the direct pull");

    // Through skopeo, on the same filesystem: everything written.
    let skopeo = root.join("skopeo");
    init(&skopeo);
    let before = xfs.available();
    let via = pull(&skopeo, &root, "overlay", &["--via-skopeo"]);
    let used_skopeo = before.saturating_sub(xfs.available());
    println!("skopeo pull on XFS: {used_skopeo} bytes of free space used");
    assert!(via["storeImport"].is_null(), "{via}");
    // The free space agrees: the reflinked import allocated next to no
    // data, the skopeo one at least all of it.
    assert!(
        used_direct < reflinked / 8,
        "{used_direct} bytes used for {reflinked} reflinked"
    );
    assert!(
        used_skopeo >= reflinked,
        "{used_skopeo} bytes used for {reflinked} copied"
    );
    for key in ["manifest", "config", "image"] {
        assert_eq!(pulled[key], via[key], "{key}");
    }
    assert_eq!(layer_streams(&direct), layer_streams(&skopeo));
    assert_eq!(layer_streams(&direct).len(), 2);
    assert_clean(&skopeo, "after the skopeo pull");

    // `image copy` to a third repository on the same filesystem: every
    // object reflinked, both repositories clean, the same image.
    let copy = root.join("copy");
    init(&copy);
    let before = xfs.available();
    let copied = copy_image(&direct, &copy);
    let used_copy = before.saturating_sub(xfs.available());
    println!("image copy on XFS: {copied}, {used_copy} bytes of free space used");
    assert_eq!(copied["copiedObjects"], 0, "{copied}");
    assert!(count(&copied, "reflinkedObjects") > objects, "{copied}");
    assert!(used_copy < reflinked / 8, "{used_copy} bytes used");
    assert_eq!(inspect(&direct), inspect(&copy));
    assert_eq!(layer_streams(&direct), layer_streams(&copy));
    assert_clean(&direct, "after copying from it");
    assert_clean(&copy, "after the copy");
    // A second copy finds everything there.
    let again = copy_image(&direct, &copy);
    assert_eq!(count(&again, "reflinkedObjects"), 0, "{again}");

    // A repository on ext4, from the store on XFS: copies, same digests.
    let ext4 = match LoopFs::new(&["mkfs.ext4", "-q", "-F"], 256 << 20) {
        Ok(fs) => fs,
        Err(why) => panic!("ext4 loop filesystem: {why}"),
    };
    let other = ext4.path().join("repo");
    init(&other);
    let copied = pull(&other, &root, "overlay", &[]);
    let stats = &copied["storeImport"];
    println!("direct pull to ext4: {stats}");
    assert_eq!(count(stats, "reflinkedFiles"), 0, "{stats}");
    assert_eq!(
        count(stats, "copiedFiles") + count(stats, "existingFiles"),
        objects,
        "{stats}"
    );
    assert_eq!(count(stats, "copiedBytes"), reflinked, "{stats}");
    assert_eq!(copied["image"], via["image"]);
    assert_eq!(layer_streams(&other), layer_streams(&skopeo));
    assert_clean(&other, "after the pull to ext4");

    // `image copy` across filesystems copies.
    let across = ext4.path().join("across");
    init(&across);
    let copied = copy_image(&direct, &across);
    assert_eq!(copied["reflinkedObjects"], 0, "{copied}");
    assert!(count(&copied, "copiedObjects") > objects, "{copied}");
    assert_eq!(inspect(&direct), inspect(&across));
    assert_clean(&across, "after the copy to ext4");

    // A source object whose content is not its name stops the copy
    // before anything names what was copied: no tag, fsck clean.
    let victim = largest_object(&direct);
    let mut content = std::fs::read(&victim).expect("read object");
    content[0] ^= 0xff;
    std::fs::write(&victim, &content).expect("corrupt object");
    let refused = root.join("refused");
    init(&refused);
    let out = output(
        Command::new(common::OURS)
            .args(["image", "copy", "cstor", "--from-repo"])
            .arg(&direct)
            .arg("--to-repo")
            .arg(&refused),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "copy of a corrupt object succeeded");
    assert!(stderr.contains("is corrupt"), "{stderr}");
    let listed = ok(ours(&refused).args(["image", "ls"]));
    assert!(listed.trim().is_empty(), "a tag was written: {listed}");
    assert_clean(&refused, "after a refused copy");
}

/// The largest file below `objects/`: a layer file's content.
fn largest_object(repo: &Path) -> PathBuf {
    let mut largest = (0, PathBuf::new());
    for dir in std::fs::read_dir(repo.join("objects")).expect("objects/") {
        let dir = dir.expect("entry").path();
        if !dir.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&dir).expect("objects/XX") {
            let path = file.expect("entry").path();
            let len = std::fs::metadata(&path).expect("stat").len();
            if len > largest.0 {
                largest = (len, path);
            }
        }
    }
    largest.1
}

/// `image copy cstor --from-repo FROM --to-repo TO --json`.
fn copy_image(from: &Path, to: &Path) -> serde_json::Value {
    let out = ok(Command::new(common::OURS)
        .args(["--json", "image", "copy", "cstor", "--from-repo"])
        .arg(from)
        .arg("--to-repo")
        .arg(to));
    serde_json::from_str(&out).expect("copy prints JSON")
}

/// `image inspect cstor --json`.
fn inspect(repo: &Path) -> serde_json::Value {
    let out = ok(ours(repo).args(["--json", "image", "inspect", "cstor"]));
    serde_json::from_str(&out).expect("inspect prints JSON")
}

/// The first file above the inline limit in a layer directory.
fn large_file(dir: &Path) -> PathBuf {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir.join("usr/d00"))
        .expect("usr/d00")
        .map(|e| e.expect("entry").path())
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > INLINE_MAX))
        .collect();
    paths.sort();
    paths.into_iter().next().expect("a large file")
}

#[test]
fn tampered_store_is_refused() {
    let test = "tampered_store_is_refused";
    if let Some(why) = missing() {
        println!("SKIPPED {test}: {why}");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    if let Err(why) = build_image(root, "vfs", 40) {
        println!("SKIPPED {test}: {why}");
        return;
    }
    let repo = root.join("repo");
    init(&repo);
    // The first layer: its files and its tar-split.
    let layers: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.join("store/vfs-layers/layers.json")).expect("layers.json"),
    )
    .expect("JSON");
    let base = layers
        .as_array()
        .and_then(|all| all.iter().find(|l| l.get("parent").is_none()))
        .and_then(|l| l["id"].as_str())
        .expect("a base layer")
        .to_owned();
    let files = root.join("store/vfs/dir").join(&base);
    let tar_split = root
        .join("store/vfs-layers")
        .join(format!("{base}.tar-split.gz"));
    let victim = large_file(&files);
    let name = victim
        .strip_prefix(&files)
        .expect("below")
        .to_string_lossy()
        .into_owned();
    let original = std::fs::read(&victim).expect("read");
    let original_split = std::fs::read(&tar_split).expect("read");

    let refused = |case: &str, expected: &str| {
        let reference = format!(
            "containers-storage:[vfs@{}+{}]localhost/cstor:1",
            root.join("store").display(),
            root.join("run").display()
        );
        let out = output(ours(&repo).args(["-q", "image", "pull", &reference]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{case}: pull succeeded");
        assert!(stderr.contains(expected), "{case}: {stderr}");
        println!("{case}: {}", stderr.trim());
        assert_clean(&repo, case);
        assert!(
            !repo.join("streams/refs/oci").exists()
                || std::fs::read_dir(repo.join("streams/refs/oci"))
                    .expect("refs")
                    .next()
                    .is_none(),
            "{case}: a tag was written"
        );
    };
    let restore = || {
        let _ = std::fs::remove_file(&victim);
        std::fs::write(&victim, &original).expect("restore");
        std::fs::write(&tar_split, &original_split).expect("restore");
    };

    std::fs::remove_file(&victim).expect("rm");
    std::os::unix::fs::symlink("/etc/passwd", &victim).expect("symlink");
    refused("symlink", "is a symbolic link");
    restore();

    std::fs::remove_file(&victim).expect("rm");
    ok(Command::new("mkfifo").arg(&victim));
    refused("fifo", "is not a regular file");
    restore();

    let mut longer = original.clone();
    longer.push(b'!');
    std::fs::write(&victim, &longer).expect("write");
    refused("size", "but tar-split says");
    restore();

    let mut changed = original.clone();
    changed[0] ^= 0xff;
    std::fs::write(&victim, &changed).expect("write");
    refused("content", "not the diff_id");
    restore();

    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&original_split[..]),
        &mut text,
    )
    .expect("tar-split is gzip");
    let quoted = format!("\"name\":\"{name}\"");
    assert!(text.contains(&quoted), "{name} not in the tar-split");
    let hostile = text.replace(&quoted, "\"name\":\"../../../x\"");
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut encoder, hostile.as_bytes()).expect("gzip");
    std::fs::write(&tar_split, encoder.finish().expect("gzip")).expect("write");
    refused("dot-dot", "outside the layer");
    restore();

    // Untouched again, the store imports.
    let out = ok(ours(&repo).args([
        "-q",
        "image",
        "pull",
        &format!(
            "containers-storage:[vfs@{}]localhost/cstor:1",
            root.join("store").display()
        ),
    ]));
    assert!(out.contains("tagged"), "{out}");
    assert_clean(&repo, "after the good pull");
}
