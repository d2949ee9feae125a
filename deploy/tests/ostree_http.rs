//! `cfs-deploy image pull ostree:http://HOST:PORT/PATH:REF` from archive
//! repositories made by the real `ostree` CLI and served on 127.0.0.1 by
//! a small Python HTTP server that logs every request it answers.
//!
//! Images are compared with the reference (`cfsctl ostree pull` over the
//! same URL); fetches are counted twice, by our statistics and by the
//! server's log, against object sets the `ostree` CLI lists
//! (`ostree ls -R -C`).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{assert_clean, cfsctl, ok, ours, output, GpgKey};
use rand::Rng;

mod common;

/// A static file server for one directory; every request path goes to
/// `log`, one per line, and each answer waits `delay` seconds first.
const SERVER: &str = r#"
import sys, time, functools, http.server
root, delay, log = sys.argv[1], float(sys.argv[2]), sys.argv[3]
class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
    def do_GET(self):
        with open(log, "a") as f:
            f.write(self.path + "\n")
        time.sleep(delay)
        super().do_GET()
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=root))
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// A running server; killed when dropped.
struct Server {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Server {
    fn start(root: &Path, delay: f64) -> Self {
        let log = root.with_extension(format!("log-{}", rand::rng().random::<u32>()));
        let mut child = Command::new("python3")
            .args(["-c", SERVER])
            .arg(root)
            .arg(delay.to_string())
            .arg(&log)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting python3 http server");
        let mut port = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut port)
            .expect("reading the server's port");
        let url = format!("http://127.0.0.1:{}", port.trim());
        Self { child, url, log }
    }

    /// The paths requested so far, and forgets them.
    fn take_requests(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let _ = std::fs::remove_file(&self.log);
        text.lines().map(str::to_owned).collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn have_tools() -> bool {
    for tool in ["ostree", "python3"] {
        if Command::new(tool).arg("--version").output().is_err() {
            eprintln!("SKIPPED ostree_http: {tool} is not installed");
            return false;
        }
    }
    true
}

fn ostree(repo: &Path) -> Command {
    let mut cmd = Command::new("ostree");
    cmd.arg(format!("--repo={}", repo.display()));
    cmd
}

fn write(path: &Path, data: &[u8], mode: u32) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, data).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Commits `tree` to branch `branch` of `repo` (owned by root, so no
/// privilege is needed), returning the commit checksum.
fn commit(repo: &Path, branch: &str, tree: &Path) -> String {
    ok(ostree(repo)
        .args(["commit", "-b", branch, "-s", branch])
        .args(["--owner-uid=0", "--owner-gid=0"])
        .arg("--timestamp=2024-01-01T00:00:00Z")
        .arg(tree))
    .trim()
    .to_owned()
}

fn archive_repo(path: &Path) {
    ok(ostree(path).args(["init", "--mode=archive"]));
}

/// The objects (`CHECKSUM.KIND`) of `rev` as the ostree CLI lists them:
/// each directory's dirtree and dirmeta, each file's content object.
fn objects_of(repo: &Path, rev: &str) -> BTreeSet<String> {
    let listing = ok(ostree(repo).args(["ls", "-R", "-C", rev]));
    let mut objects = BTreeSet::new();
    for line in listing.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if line.starts_with('d') {
            objects.insert(format!("{}.dirtree", fields[4]));
            objects.insert(format!("{}.dirmeta", fields[5]));
        } else {
            objects.insert(format!("{}.file", fields[4]));
        }
    }
    objects
}

/// The object requests in a server log, as `CHECKSUM.KIND` (content
/// named `.file`, as `objects_of` names it).
fn object_requests(requests: &[String]) -> Vec<String> {
    requests
        .iter()
        .filter_map(|path| path.strip_prefix("/objects/"))
        .map(|rest| rest.replacen('/', "", 1).replace(".filez", ".file"))
        .collect()
}

fn init(repo: &Path) {
    ok(ours(repo).args(["repo", "init", "--insecure"]));
}

/// Our pull over HTTP; returns the `--json` report.
fn pull(repo: &Path, url: &str, rev: &str, extra: &[&str]) -> serde_json::Value {
    let out = ok(ours(repo)
        .args(["--json", "image", "pull"])
        .arg(format!("ostree:{url}:{rev}"))
        .args(extra));
    serde_json::from_str(&out).expect("pull --json")
}

/// The reference's image of `rev` pulled over `url`.
fn reference_image(work: &Path, url: &str, rev: &str) -> Option<String> {
    let cfsctl = cfsctl()?;
    let theirs = work.join(format!("theirs-{}", rand::rng().random::<u32>()));
    ok(Command::new(&cfsctl).arg("--repo").arg(&theirs).args([
        "--hash",
        "sha512",
        "init",
        "--insecure",
    ]));
    ok(Command::new(&cfsctl).arg("--repo").arg(&theirs).args([
        "--insecure",
        "ostree",
        "pull",
        "--no-delta",
        url,
        rev,
    ]));
    let id = ok(Command::new(&cfsctl).arg("--repo").arg(&theirs).args([
        "--insecure",
        "ostree",
        "compute-id",
        rev,
    ]));
    Some(id.trim().to_owned())
}

fn our_dump(repo: &Path, image: &str) -> String {
    ok(ours(repo)
        .args(["image", "dump"])
        .arg(repo.join("images").join(image)))
}

/// A tree of `files` files spread over a few directories, with a
/// symlink, an empty file and files on both sides of the inline limit.
fn make_tree(root: &Path, files: usize, salt: u8) {
    for i in 0..files {
        let size = [0, 10, 64, 65, 3000, 70_000][i % 6] + i % 7;
        let data: Vec<u8> = (0..size)
            .map(|j| (j as u8).wrapping_mul(31) ^ (i as u8) ^ salt)
            .collect();
        write(
            &root.join(format!("usr/d{}/f{i}", i % 17)),
            &data,
            0o644 | ((i as u32 % 2) * 0o111),
        );
    }
    write(&root.join("etc/empty"), b"", 0o644);
    symlink("../usr/d0/f0", root.join("etc/link")).expect("symlink");
}

#[test]
fn http_pull_equals_reference_and_fetches_only_what_changed() {
    if !have_tools() {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let work = work.path();
    let source = work.join("served");
    archive_repo(&source);
    let tree1 = work.join("tree1");
    make_tree(&tree1, 60, 0);
    let c1 = commit(&source, "os", &tree1);
    // Commit 2: one directory's files changed, one file added.
    let tree2 = work.join("tree2");
    ok(Command::new("cp").arg("-a").arg(&tree1).arg(&tree2));
    for entry in std::fs::read_dir(tree2.join("usr/d3")).expect("d3") {
        let path = entry.expect("entry").path();
        let mut data = std::fs::read(&path).expect("read");
        data.push(b'!');
        std::fs::write(&path, data).expect("write");
    }
    write(&tree2.join("usr/new"), b"a new file in commit 2\n", 0o644);
    let c2 = commit(&source, "os", &tree2);
    ok(ostree(&source).args(["summary", "-u"]));
    let server = Server::start(&source, 0.0);

    let repo = work.join("ours");
    init(&repo);
    let first = pull(&repo, &server.url, &c1, &["--name", "v1"]);
    let fetched1 = object_requests(&server.take_requests());
    let objects1 = objects_of(&source, &c1);
    let mut expected1: Vec<String> = objects1.iter().cloned().collect();
    expected1.push(format!("{c1}.commitmeta"));
    expected1.push(format!("{c1}.commit"));
    let mut got1 = fetched1.clone();
    got1.sort();
    expected1.sort();
    assert_eq!(got1, expected1, "commit 1: every object once");
    let image1 = first["image"].as_str().expect("image").to_owned();
    match reference_image(work, &server.url, &c1) {
        Some(theirs) => assert_eq!(image1, theirs, "commit 1: cfsctl ostree pull's image"),
        None => eprintln!("SKIPPED reference comparison: cfsctl is not installed"),
    }
    server.take_requests();

    // Commit 2 by its ref, through the summary: only the objects commit 1
    // lacks, by the server's count and by ours.
    let second = pull(
        &repo,
        &server.url,
        "os",
        &["--name", "v2", "--fetch-jobs", "3"],
    );
    assert_eq!(second["commit"], c2.as_str());
    let fetched2 = object_requests(&server.take_requests());
    let objects2 = objects_of(&source, &c2);
    let mut expected2: Vec<String> = objects2.difference(&objects1).cloned().collect();
    expected2.push(format!("{c2}.commitmeta"));
    expected2.push(format!("{c2}.commit"));
    expected2.sort();
    let mut got2 = fetched2.clone();
    got2.sort();
    assert_eq!(got2, expected2, "commit 2: only what changed");
    let stats = &second["fetched"];
    let changed = objects2.difference(&objects1).count() as u64;
    assert_eq!(
        stats["metadataObjects"].as_u64().unwrap() + stats["contentObjects"].as_u64().unwrap(),
        changed + 1,
        "our count: the changed objects and the commit; {stats}"
    );
    assert_eq!(
        stats["held"].as_u64().unwrap(),
        objects2.intersection(&objects1).count() as u64,
        "our count of objects already held; {stats}"
    );
    eprintln!(
        "commit 2 after 1: {} of {} objects fetched ({} changed per ostree ls)",
        fetched2.len() - 2,
        objects2.len(),
        changed
    );
    match reference_image(work, &server.url, &c2) {
        Some(theirs) => assert_eq!(second["image"], theirs.as_str(), "commit 2"),
        None => eprintln!("SKIPPED reference comparison: cfsctl is not installed"),
    }
    assert_clean(&repo, "after two HTTP pulls");
}

#[test]
fn http_pull_of_symlinks_and_empty_files() {
    if !have_tools() {
        return;
    }
    // The reference's documented shortfall: an archive symlink has no
    // deflate data at all, and an empty file only an empty block.
    let work = tempfile::tempdir().expect("tempdir");
    let work = work.path();
    let tree = work.join("tree");
    std::fs::create_dir_all(&tree).expect("mkdir");
    symlink("target/of/link", tree.join("link")).expect("symlink");
    symlink("/absolute", tree.join("abs")).expect("symlink");
    write(&tree.join("empty"), b"", 0o600);
    let source = work.join("served");
    archive_repo(&source);
    let c = commit(&source, "links", &tree);
    let server = Server::start(&source, 0.0);
    let repo = work.join("ours");
    init(&repo);
    let report = pull(&repo, &server.url, "links", &[]);
    assert_eq!(report["commit"], c.as_str());
    let dump = our_dump(&repo, report["image"].as_str().expect("image"));
    assert!(
        dump.contains("/link 14 120777 1 0 0 0 0.0 target/of/link"),
        "{dump}"
    );
    assert!(
        dump.contains("/abs 9 120777 1 0 0 0 0.0 /absolute"),
        "{dump}"
    );
    assert!(dump.contains("/empty 0 100600 1 0 0 0 0.0 - -"), "{dump}");
    assert_clean(&repo, "after pulling symlinks");
}

#[test]
fn http_pull_names_xattrs_without_nul() {
    if !have_tools() {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let work = work.path();
    let tree = work.join("tree");
    write(&tree.join("conf"), b"x\n", 0o644);
    if rustix::fs::lsetxattr(
        tree.join("conf"),
        "user.test",
        b"value1",
        rustix::fs::XattrFlags::empty(),
    )
    .is_err()
    {
        eprintln!("SKIPPED xattr names: this filesystem has no user xattrs");
        return;
    }
    let source = work.join("served");
    archive_repo(&source);
    commit(&source, "x", &tree);
    // ostree stores the name with its NUL: check the fixture really does.
    let listing = ok(ostree(&source).args(["ls", "-X", "x", "/conf"]));
    assert!(listing.contains("user.test"), "{listing}");
    let server = Server::start(&source, 0.0);
    let repo = work.join("ours");
    init(&repo);
    let report = pull(&repo, &server.url, "x", &[]);
    let dump = our_dump(&repo, report["image"].as_str().expect("image"));
    assert!(dump.contains(" user.test=value1"), "{dump}");
    assert!(
        !dump.contains("\\x00"),
        "a NUL left in an xattr name: {dump}"
    );
}

#[test]
fn bad_sources_are_refused_clearly() {
    if !have_tools() {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let work = work.path();
    let tree = work.join("tree");
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    write(&tree.join("big"), &big, 0o644);
    let source = work.join("served");
    archive_repo(&source);
    let c = commit(&source, "r", &tree);
    let server = Server::start(&source, 0.0);

    let refused = |repo: &Path, reference: &str, needle: &str| {
        let out = output(ours(repo).args(["image", "pull", reference]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{reference}: pull succeeded");
        assert!(stderr.contains(needle), "{reference}: {stderr}");
        assert!(
            !repo.join("streams/refs/ostree").exists() || {
                std::fs::read_dir(repo.join("streams/refs/ostree"))
                    .expect("refs")
                    .next()
                    .is_none()
            }
        );
        assert_clean(repo, &format!("after refusing {reference}"));
        eprintln!("refused: {}", stderr.lines().last().unwrap_or(""));
    };
    let repo = work.join("ours");
    init(&repo);
    refused(
        &repo,
        &format!("ostree:{}:nosuch", server.url),
        "no ref \"nosuch\"",
    );
    // A repository that is not archive mode cannot be served.
    let bare = work.join("bare-user");
    ok(ostree(&bare).args(["init", "--mode=bare-user"]));
    let bare_server = Server::start(&bare, 0.0);
    refused(
        &repo,
        &format!("ostree:{}:r", bare_server.url),
        "only archive repositories can be pulled from",
    );
    // A corrupted content object.
    let hex = |kind: &str| {
        let objects = objects_of(&source, &c);
        let name = objects
            .iter()
            .find(|o| o.ends_with(kind))
            .expect("object")
            .clone();
        source
            .join("objects")
            .join(&name[..2])
            .join(name[2..].replace(".file", ".filez"))
    };
    let filez = hex(".file");
    let pristine = std::fs::read(&filez).expect("read");
    let mut bad = pristine.clone();
    let at = bad.len() - 10;
    bad[at] ^= 0x40;
    std::fs::write(&filez, &bad).expect("write");
    refused(&repo, &format!("ostree:{}:r", server.url), "corrupt");
    std::fs::write(&filez, &pristine).expect("write");
    // A tampered commit (its bytes no longer hash to the ref's name),
    // into a repository that has not verified and kept it already.
    let repo = work.join("ours-fresh");
    init(&repo);
    let commit_path = source
        .join("objects")
        .join(&c[..2])
        .join(format!("{}.commit", &c[2..]));
    let mut tampered = std::fs::read(&commit_path).expect("read");
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    std::fs::write(&commit_path, &tampered).expect("write");
    refused(&repo, &format!("ostree:{}:r", server.url), "corrupt");
}

#[test]
fn killed_http_pull_resumes_fetching_only_what_was_missing() {
    if !have_tools() {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let work = work.path();
    let tree = work.join("tree");
    make_tree(&tree, 240, 7);
    let source = work.join("served");
    archive_repo(&source);
    let c = commit(&source, "big", &tree);
    let all = objects_of(&source, &c);
    // Slow enough (10 ms an object, 2 at a time) that a kill lands mid-way.
    let server = Server::start(&source, 0.01);
    let repo = work.join("ours");
    init(&repo);
    let reference = format!("ostree:{}:big", server.url);
    let mut child = ours(&repo)
        .args(["image", "pull", &reference, "--fetch-jobs", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn pull");
    let wait_ms = rand::rng().random_range(300..1200);
    std::thread::sleep(Duration::from_millis(wait_ms));
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    let held: BTreeSet<String> = walk_index(&repo.join("ostree/objects"));
    assert!(
        held.len() < all.len(),
        "killed after {wait_ms} ms, the pull had already finished"
    );
    server.take_requests();

    let report = pull(&repo, &server.url, "big", &["--fetch-jobs", "2"]);
    let fetched: BTreeSet<String> = object_requests(&server.take_requests())
        .into_iter()
        .filter(|o| !o.ends_with(".commit") && !o.ends_with(".commitmeta"))
        .collect();
    let missing: BTreeSet<String> = all.difference(&held).cloned().collect();
    assert_eq!(
        fetched, missing,
        "the re-run fetched exactly what was missing"
    );
    eprintln!(
        "killed after {wait_ms} ms with {} of {} objects held; the re-run fetched {}",
        held.intersection(&all).count(),
        all.len(),
        fetched.len()
    );
    // The result is the same image a clean pull makes.
    let clean = work.join("clean");
    init(&clean);
    let fresh = pull(&clean, &server.url, "big", &[]);
    assert_eq!(report["image"], fresh["image"]);
    assert_clean(&repo, "after the resumed pull");
}

/// The objects the index holds, as `CHECKSUM.KIND`.
fn walk_index(root: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let Ok(dirs) = std::fs::read_dir(root) else {
        return found;
    };
    for dir in dirs {
        let dir = dir.expect("entry");
        let prefix = dir.file_name().to_string_lossy().into_owned();
        for entry in std::fs::read_dir(dir.path()).expect("index dir") {
            let name = entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned();
            if !name.starts_with('.') {
                found.insert(format!("{prefix}{name}"));
            }
        }
    }
    found
}

/// With static deltas on the server (`static-delta generate`, indexed by
/// `static-delta reindex`), a first pull takes the delta from scratch
/// and the next one the delta from commit 1: the server's log shows the
/// delta files and, besides the `.commitmeta`, only the fallback object
/// fetched loose. The images equal the reference's object-by-object pull.
#[test]
fn http_pull_through_static_deltas_fetches_only_the_delta() {
    if !have_tools() {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let work = work.path();
    let source = work.join("served");
    archive_repo(&source);
    let tree1 = work.join("tree1");
    make_tree(&tree1, 30, 0);
    // Incompressible bytes, so the generator must diff, not compress.
    let noise = |len: u32, seed: u32| -> Vec<u8> {
        (0..len)
            .map(|i| ((i ^ seed).wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    };
    let big = noise(400_000, 1);
    write(&tree1.join("usr/big"), &big, 0o755);
    let c1 = commit(&source, "os", &tree1);
    // Commit 2: a few bytes changed in the big file (bsdiff), and a file
    // over --min-fallback-size that the delta leaves to a loose fetch.
    let tree2 = work.join("tree2");
    ok(Command::new("cp").arg("-a").arg(&tree1).arg(&tree2));
    let mut big2 = big;
    big2[5000..5007].copy_from_slice(b"PATCHED");
    write(&tree2.join("usr/big"), &big2, 0o755);
    let huge = noise(1_500_000, 2);
    write(&tree2.join("usr/huge"), &huge, 0o644);
    let c2 = commit(&source, "os", &tree2);
    ok(ostree(&source).args(["static-delta", "generate", "--empty", "--to", &c1]));
    ok(ostree(&source).args([
        "static-delta",
        "generate",
        "--from",
        &c1,
        "--to",
        &c2,
        "--min-fallback-size=1",
    ]));
    ok(ostree(&source).args(["static-delta", "reindex"]));
    ok(ostree(&source).args(["summary", "-u"]));
    let show = ok(ostree(&source).args(["static-delta", "show", &format!("{c1}-{c2}")]));
    assert!(show.contains("bspatch=1"), "{show}");
    let fallback = show
        .lines()
        .map(str::trim)
        .find(|l| l.len() == 64 && l.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| panic!("one fallback in {show}"))
        .to_owned();
    let server = Server::start(&source, 0.0);

    let repo = work.join("ours");
    init(&repo);
    let first = pull(&repo, &server.url, &c1, &["--name", "os"]);
    let requests = server.take_requests();
    assert_eq!(
        object_requests(&requests),
        vec![format!("{c1}.commitmeta")],
        "commit 1: no object but through the delta; {requests:?}"
    );
    let deltas: Vec<&String> = requests
        .iter()
        .filter(|p| p.starts_with("/deltas/"))
        .collect();
    assert_eq!(deltas.len(), 2, "superblock and part: {requests:?}");
    assert_eq!(first["fetched"]["deltaParts"], 1);

    let second = pull(&repo, &server.url, "os", &["--name", "os"]);
    assert_eq!(second["commit"], c2.as_str());
    let requests = server.take_requests();
    let mut objects = object_requests(&requests);
    objects.sort();
    let mut expected = vec![format!("{c2}.commitmeta"), format!("{fallback}.file")];
    expected.sort();
    assert_eq!(
        objects, expected,
        "commit 2: the fallback only; {requests:?}"
    );
    let part = requests
        .iter()
        .find(|p| p.starts_with("/deltas/") && p.ends_with("/0"))
        .unwrap_or_else(|| panic!("a part of C1 -> C2 in {requests:?}"));
    assert!(part.contains('-'), "the delta from commit 1: {part}");
    let stats = &second["fetched"];
    assert_eq!(stats["deltaSuperblocks"], 1, "{stats}");
    assert_eq!(stats["deltaParts"], 1, "{stats}");
    assert_eq!(stats["metadataObjects"], 0, "{stats}");
    assert_eq!(stats["contentObjects"], 1, "{stats}");
    eprintln!("commit 2 through the delta from commit 1: {stats}");

    for (report, rev) in [(&first, &c1), (&second, &c2)] {
        match reference_image(work, &server.url, rev) {
            Some(theirs) => assert_eq!(report["image"], theirs.as_str(), "{rev}"),
            None => eprintln!("SKIPPED reference comparison: cfsctl is not installed"),
        }
    }
    assert_clean(&repo, "after two delta pulls");
}

/// Adds an `ostree.sign.ed25519` signature of `signed_file`'s bytes,
/// made by `openssl pkeyutl`, to the `a{sv}` at `meta_file` (created if
/// absent), serialized by GLib: neither is our code.
fn add_ed25519_signature(pem: &Path, signed_file: &Path, meta_file: &Path) {
    const MERGE: &str = r#"
import sys, subprocess, os
from gi.repository import GLib
pem, signed, meta_path = sys.argv[1:]
sig = subprocess.run(["openssl", "pkeyutl", "-sign", "-rawin", "-inkey", pem, "-in", signed],
                     check=True, capture_output=True).stdout
meta = {}
if os.path.exists(meta_path):
    v = GLib.Variant.new_from_bytes(GLib.VariantType("a{sv}"), GLib.Bytes(open(meta_path, "rb").read()), False)
    meta = {k: v.lookup_value(k, None) for k in v.keys()}
meta["ostree.sign.ed25519"] = GLib.Variant("aay", [sig])
out = GLib.Variant("a{sv}", meta).get_normal_form()
open(meta_path, "wb").write(out.get_data_as_bytes().get_data())
"#;
    ok(Command::new("/usr/bin/python3")
        .args(["-c", MERGE])
        .arg(pem)
        .arg(signed_file)
        .arg(meta_file));
}

#[test]
fn signatures_are_verified_against_configured_keys() {
    if !have_tools() {
        return;
    }
    let gi = Command::new("/usr/bin/python3")
        .args(["-c", "from gi.repository import GLib"])
        .output();
    if !gi.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED signatures: needs python3-gi (GLib) for the fixtures");
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let work = work.path();
    let pem = work.join("ed25519.pem");
    ok(Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&pem));
    let public_der = output(
        Command::new("openssl")
            .args(["pkey", "-pubout", "-outform", "DER", "-in"])
            .arg(&pem),
    )
    .stdout;
    let ed25519_public = base64_of(&public_der[public_der.len() - 32..]);
    let other_pem = work.join("other.pem");
    ok(Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&other_pem));

    let source = work.join("served");
    archive_repo(&source);
    let tree = work.join("tree");
    make_tree(&tree, 6, 1);
    let signed = commit(&source, "signed", &tree);
    write(&tree.join("extra"), b"unsigned\n", 0o644);
    let unsigned = commit(&source, "unsigned", &tree);
    let object = |c: &str, kind: &str| {
        source
            .join("objects")
            .join(&c[..2])
            .join(format!("{}.{kind}", &c[2..]))
    };
    add_ed25519_signature(
        &pem,
        &object(&signed, "commit"),
        &object(&signed, "commitmeta"),
    );
    ok(ostree(&source).args(["summary", "-u"]));
    add_ed25519_signature(&pem, &source.join("summary"), &source.join("summary.sig"));
    let server = Server::start(&source, 0.0);
    let url = &server.url;
    let ed_flag = format!("--ed25519-key={ed25519_public}");

    let repo = work.join("ours");
    init(&repo);
    // Good signatures: through the summary (whose summary.sig is
    // checked) and by commit checksum; the key inline and in a file.
    let key_file = work.join("trusted.pub");
    std::fs::write(&key_file, format!("{ed25519_public}\n")).expect("write key");
    let file_flag = format!("--ed25519-key={}", key_file.display());
    for (flag, rev) in [(&ed_flag, "signed"), (&file_flag, signed.as_str())] {
        let report = pull(&repo, url, rev, &[flag]);
        assert_eq!(report["commit"], signed.as_str(), "{flag} {rev}");
    }
    let requests = server.take_requests();
    assert!(requests.iter().any(|r| r == "/summary.sig"), "{requests:?}");
    assert!(
        requests.iter().any(|r| r.ends_with(".commitmeta")),
        "{requests:?}"
    );

    let refused = |flags: &[&str], rev: &str, needle: &str| {
        let repo = work.join(format!("refusing-{}", rand::rng().random::<u32>()));
        init(&repo);
        let out = output(
            ours(&repo)
                .args(["image", "pull"])
                .arg(format!("ostree:{url}:{rev}"))
                .args(flags),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} {rev}: pull succeeded");
        assert!(stderr.contains(needle), "{flags:?} {rev}: {stderr}");
        assert!(
            !repo
                .join("images")
                .read_dir()
                .is_ok_and(|mut d| d.next().is_some()),
            "an image was written"
        );
        assert_clean(&repo, &format!("after refusing {rev}"));
        eprintln!("refused: {}", stderr.lines().last().unwrap_or(""));
    };
    // An unsigned commit when keys are configured (by checksum: the
    // summary is fine, the commit has no .commitmeta at all).
    refused(&[&ed_flag], &unsigned, "is not signed");
    // Signatures by keys not configured.
    let other_ed = format!(
        "--ed25519-key={}",
        base64_of(&{
            let der = output(
                Command::new("openssl")
                    .args(["pkey", "-pubout", "-outform", "DER", "-in"])
                    .arg(&other_pem),
            )
            .stdout;
            der[der.len() - 32..].to_vec()
        })
    );
    refused(&[&other_ed], &signed, "none of its 1 signatures verifies");
    // A summary changed after it was signed.
    let summary = std::fs::read(source.join("summary")).expect("summary");
    let mut changed = summary.clone();
    let last = changed.len() - 1;
    changed[last] ^= 1;
    std::fs::write(source.join("summary"), &changed).expect("write");
    refused(&[&ed_flag], "signed", "summary refused");
    std::fs::write(source.join("summary"), &summary).expect("write");
    // A wrong signature on the commit: made over other bytes.
    add_ed25519_signature(
        &pem,
        &object(&unsigned, "commit"),
        &object(&signed, "commitmeta"),
    );
    refused(&[&ed_flag], &signed, "none of its 1 signatures verifies");
    assert_clean(&repo, "after the signed pulls");
}

fn base64_of(data: &[u8]) -> String {
    let mut child = Command::new("base64")
        .arg("-w0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("base64");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), data).expect("write");
    let out = child.wait_with_output().expect("base64");
    String::from_utf8(out.stdout).expect("base64 text")
}

/// Flips the last byte of the first `ostree.gpgsigs` signature in the
/// `a{sv}` at `meta_file`, re-serialized by GLib.
fn tamper_gpg_signature(meta_file: &Path) {
    const TAMPER: &str = r#"
import sys
from gi.repository import GLib
path = sys.argv[1]
v = GLib.Variant.new_from_bytes(GLib.VariantType("a{sv}"), GLib.Bytes(open(path, "rb").read()), False)
meta = {k: v.lookup_value(k, None) for k in v.keys()}
sigs = [bytes(s) for s in meta["ostree.gpgsigs"].unpack()]
sigs[0] = sigs[0][:-1] + bytes([sigs[0][-1] ^ 1])
meta["ostree.gpgsigs"] = GLib.Variant("aay", sigs)
out = GLib.Variant("a{sv}", meta).get_normal_form()
open(path, "wb").write(out.get_data_as_bytes().get_data())
"#;
    ok(Command::new("/usr/bin/python3")
        .args(["-c", TAMPER])
        .arg(meta_file));
}

#[test]
fn gpg_signatures_are_verified_against_configured_keyrings() {
    if !have_tools() {
        return;
    }
    for tool in ["gpg", "gpgv", "gpgconf"] {
        if Command::new(tool).arg("--version").output().is_err() {
            eprintln!("SKIPPED gpg signatures: {tool} is not installed");
            return;
        }
    }
    let gi = Command::new("/usr/bin/python3")
        .args(["-c", "from gi.repository import GLib"])
        .output();
    if !gi.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED gpg signatures: needs python3-gi (GLib) to tamper a signature");
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let work = work.path();
    let trusted = GpgKey::new(work.join("gnupg-trusted"), "trusted");
    let other = GpgKey::new(work.join("gnupg-other"), "other");
    let keyring = trusted.export(&work.join("trusted.gpg"), false);
    let armored = trusted.export(&work.join("trusted.asc"), true);
    let other_keyring = other.export(&work.join("other.gpg"), false);

    // Commits signed by `ostree commit --gpg-sign`: by the trusted key
    // (twice: one to tamper with), by the other key, and not at all.
    let source = work.join("served");
    archive_repo(&source);
    let tree = work.join("tree");
    make_tree(&tree, 6, 2);
    let signed_commit = |branch: &str, key: Option<&GpgKey>| {
        write(&tree.join("branch"), branch.as_bytes(), 0o644);
        let mut cmd = ostree(&source);
        cmd.args([
            "commit",
            "-b",
            branch,
            "-s",
            branch,
            "--owner-uid=0",
            "--owner-gid=0",
        ]);
        if let Some(key) = key {
            cmd.args(key.sign_args());
        }
        ok(cmd.arg(&tree)).trim().to_owned()
    };
    let signed = signed_commit("signed", Some(&trusted));
    let tampered = signed_commit("tampered", Some(&trusted));
    let by_other = signed_commit("other", Some(&other));
    let unsigned = signed_commit("unsigned", None);
    let commitmeta = |c: &str| {
        source
            .join("objects")
            .join(&c[..2])
            .join(format!("{}.commitmeta", &c[2..]))
    };
    tamper_gpg_signature(&commitmeta(&tampered));
    ok(ostree(&source)
        .args(["summary", "-u"])
        .args(trusted.sign_args()));
    let server = Server::start(&source, 0.0);
    let url = &server.url;
    // The oracle: `ostree pull` from a remote with the trusted key
    // imported, GPG verification of commits and summary on.
    let armored_path = work.join("trusted.asc");
    let ostree_accepts = |rev: &str| {
        let client = work.join(format!("client-{}", rand::rng().random::<u32>()));
        ok(ostree(&client).args(["init", "--mode=bare-user"]));
        ok(ostree(&client)
            .args(["remote", "add", "--set=gpg-verify-summary=true"])
            .arg(format!("--gpg-import={}", armored_path.display()))
            .args(["origin", url]));
        let accepted = ostree(&client)
            .args(["pull", "origin", rev])
            .output()
            .expect("ostree pull")
            .status
            .success();
        let _ = std::fs::remove_dir_all(&client);
        accepted
    };
    for (rev, accepted) in [
        (signed.as_str(), true),
        ("signed", true),
        (&by_other, false),
        (&unsigned, false),
        (&tampered, false),
    ] {
        assert_eq!(ostree_accepts(rev), accepted, "ostree pull {rev}");
    }
    server.take_requests();

    // A good signature, with the ref resolved through a summary whose
    // summary.sig is checked too; gpg names the same key we do.
    let repo = work.join("ours");
    init(&repo);
    let report = pull(&repo, url, "signed", &[&keyring]);
    assert_eq!(report["commit"], signed.as_str());
    assert_eq!(
        report["signedBy"],
        format!("GPG key {}", trusted.fingerprint).as_str()
    );
    let requests = server.take_requests();
    for wanted in ["/summary.sig", ".commitmeta"] {
        assert!(
            requests.iter().any(|r| r.ends_with(wanted)),
            "{wanted} not fetched: {requests:?}"
        );
    }
    // An armored keyring works the same; so do two keyrings.
    for flags in [vec![armored.as_str()], vec![&other_keyring, &keyring]] {
        let repo = work.join(format!("good-{}", rand::rng().random::<u32>()));
        init(&repo);
        let report = pull(&repo, url, &signed, &flags);
        assert_eq!(report["commit"], signed.as_str(), "{flags:?}");
    }

    let refused = |repo: &Path, flags: &[&str], rev: &str, needle: &str| {
        let tag = repo.join("streams/refs/ostree").join(rev);
        let tagged_before = std::fs::read_link(&tag).ok();
        let out = output(
            ours(repo)
                .args(["image", "pull"])
                .arg(format!("ostree:{url}:{rev}"))
                .args(flags),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} {rev}: pull succeeded");
        assert!(stderr.contains(needle), "{flags:?} {rev}: {stderr}");
        assert_eq!(
            std::fs::read_link(&tag).ok(),
            tagged_before,
            "{rev} was tagged"
        );
        assert_clean(repo, &format!("after refusing {rev}"));
        eprintln!("refused: {}", stderr.lines().last().unwrap_or(""));
    };
    let fresh = || {
        let repo = work.join(format!("refusing-{}", rand::rng().random::<u32>()));
        init(&repo);
        repo
    };
    let not_in_keyring = "which is not in the keyring";
    refused(&fresh(), &[&keyring], &by_other, not_in_keyring);
    refused(&fresh(), &[&keyring], &unsigned, "is not signed");
    refused(&fresh(), &[&keyring], &tampered, "bad signature by key");
    // The same commits pass with the other key (so the refusals were
    // about the key) and without keys (so they were about signatures).
    let repo_other = fresh();
    pull(&repo_other, url, &by_other, &[&other_keyring]);
    let repo_none = fresh();
    for commit in [&unsigned, &tampered] {
        let report = pull(&repo_none, url, commit, &[]);
        assert!(report["signedBy"].is_null(), "{report}");
    }

    // The keyring given to the first pull is the remote's from then on.
    refused(&repo, &[], &by_other, not_in_keyring);
    refused(&repo, &[], &unsigned, "is not signed");
    let again = pull(&repo, url, &signed, &[]);
    assert_eq!(
        again["signedBy"],
        format!("GPG key {}", trusted.fingerprint).as_str()
    );

    // summary.sig: by the other key, then none at all.
    ok(ostree(&source)
        .args(["summary", "-u"])
        .args(other.sign_args()));
    assert!(
        !ostree_accepts("signed"),
        "ostree took a summary by the other key"
    );
    refused(&fresh(), &[&keyring], "signed", "summary refused");
    refused(&repo, &[], "signed", "summary refused");
    ok(ostree(&source).args(["summary", "-u"]));
    assert!(!source.join("summary.sig").exists());
    refused(&repo, &[], "signed", "summary refused: it is not signed");
    assert_clean(&repo, "after the GPG-signed pulls");
}
