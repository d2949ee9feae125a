//! Our split streams against composefs 0.9.4's: the same sequence of
//! writes must give byte-identical files (their object ids are fs-verity
//! digests of those bytes), and we must read what the reference wrote,
//! including tar layers `cfsctl oci import-layer` splits.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use cfs_erofs::digest::{FsVerityDigest, Sha256Digest, Sha512Digest};
use cfs_erofs::fsverity::FsVerityHasher;
use cfs_images::splitstream::{Chunk, ContentType, SplitStream, SplitStreamWriter};
use cfs_tests::ondisk::{fill_external, write_tree};
use cfs_tests::{random_tree, TreeParams};
use composefs::fsverity::{Algorithm, FsVerityHashValue, Sha256HashValue, Sha512HashValue};
use composefs::repository::{Repository, RepositoryConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Digest types of ours and theirs that correspond.
trait Pair: FsVerityDigest {
    type Ref: FsVerityHashValue;
}
impl Pair for Sha256Digest {
    type Ref = Sha256HashValue;
}
impl Pair for Sha512Digest {
    type Ref = Sha512HashValue;
}

fn theirs<H: Pair>(digest: &H) -> H::Ref {
    H::Ref::from_hex(digest.to_hex()).expect("same length")
}

/// One step of a random writing session.
#[derive(Debug)]
enum Op {
    Inline(Vec<u8>),
    /// An object from the pool; `true` to have the reference store it
    /// itself (`write_external`) rather than take the digest.
    External(usize, bool),
    Name(String, usize),
}

/// A random session: object pool (content, digest), content type and ops.
struct Session<H> {
    pool: Vec<(Vec<u8>, H)>,
    content_type: ContentType,
    ops: Vec<Op>,
}

fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    match rng.random_range(0..4) {
        0 => (0..len).map(|_| rng.random()).collect(),
        1 => vec![rng.random(); len],
        2 => (0..len)
            .map(|i| (i % 251) as u8 ^ rng.random_range(0..2))
            .collect(),
        _ => (0..len)
            .map(|_| b"tar header \0\0\0"[rng.random_range(0..14)])
            .collect(),
    }
}

fn random_session<H: FsVerityDigest>(seed: u64) -> Session<H> {
    let mut rng = StdRng::seed_from_u64(seed);
    let pool = (0..rng.random_range(1..10))
        .map(|_| {
            let len = match rng.random_range(0..4) {
                0 => rng.random_range(0..65),
                1 | 2 => rng.random_range(65..5000),
                _ => rng.random_range(5000..300_000),
            };
            let data = random_bytes(&mut rng, len);
            let digest = FsVerityHasher::<H>::digest(&data);
            (data, digest)
        })
        .collect::<Vec<_>>();
    let names = [
        "a",
        "b",
        "",
        "composefs.image",
        "config:sha256:0123",
        "sha256:ffee",
        "ünïcode",
        "with space",
    ];
    let content_type = [
        ContentType::OCI_LAYER,
        ContentType::OCI_CONFIG,
        ContentType::OCI_MANIFEST,
        ContentType::OCI_BLOB,
        ContentType(rng.random()),
    ][rng.random_range(0..5)];
    let count = match seed % 10 {
        0 => 0,
        1..=6 => rng.random_range(1..40),
        _ => rng.random_range(40..400),
    };
    let ops = (0..count)
        .map(|_| match rng.random_range(0..10) {
            0..=4 => {
                let len = match rng.random_range(0..20) {
                    0 => 0,
                    1..=15 => rng.random_range(1..600),
                    16..=18 => rng.random_range(600..20_000),
                    _ => rng.random_range(20_000..400_000),
                };
                Op::Inline(random_bytes(&mut rng, len))
            }
            5..=8 => Op::External(rng.random_range(0..pool.len()), rng.random()),
            _ => Op::Name(
                names[rng.random_range(0..names.len())].to_owned(),
                rng.random_range(0..pool.len()),
            ),
        })
        .collect();
    Session {
        pool,
        content_type,
        ops,
    }
}

fn ours<H: FsVerityDigest>(session: &Session<H>) -> Vec<u8> {
    let mut writer = SplitStreamWriter::new(session.content_type);
    for op in &session.ops {
        match op {
            Op::Inline(data) => writer.write_inline(data),
            Op::External(i, _) => {
                let (data, digest) = &session.pool[*i];
                writer.write_external(*digest, data.len() as u64);
            }
            Op::Name(name, i) => writer
                .add_stream_ref(name, session.pool[*i].1)
                .expect("valid name"),
        }
    }
    writer.finish()
}

fn reference<H: Pair>(session: &Session<H>, repo: &Arc<Repository<H::Ref>>) -> Vec<u8> {
    let mut writer = repo
        .create_stream(session.content_type.0)
        .expect("create_stream");
    for op in &session.ops {
        match op {
            Op::Inline(data) => writer.write_inline(data),
            Op::External(i, true) => writer
                .write_external(&session.pool[*i].0)
                .expect("write_external"),
            Op::External(i, false) => {
                let (data, digest) = &session.pool[*i];
                writer.add_external_size(data.len() as u64);
                writer
                    .write_reference(theirs(digest))
                    .expect("write_reference");
            }
            Op::Name(name, i) => writer.add_named_stream_ref(name, &theirs(&session.pool[*i].1)),
        }
    }
    let id = writer.done().expect("done");
    repo.read_object(&id).expect("read_object")
}

/// What the session's stream must read back as: content, object refs,
/// named refs.
fn expected<H: FsVerityDigest>(session: &Session<H>) -> (Vec<u8>, Vec<H>, BTreeMap<String, H>) {
    let mut content = Vec::new();
    let mut objects = Vec::new();
    let mut names = BTreeMap::new();
    for op in &session.ops {
        match op {
            Op::Inline(data) => content.extend_from_slice(data),
            Op::External(i, _) => {
                let (data, digest) = &session.pool[*i];
                content.extend_from_slice(data);
                if !objects.contains(digest) {
                    objects.push(*digest);
                }
            }
            Op::Name(name, i) => {
                names.insert(name.clone(), session.pool[*i].1);
            }
        }
    }
    (content, objects, names)
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

/// Parses `file` with our reader and checks it against the session.
fn check_read<H: FsVerityDigest>(session: &Session<H>, file: &[u8]) -> Result<(), String> {
    let stream = SplitStream::<H>::parse(file).map_err(|e| format!("parse: {e}"))?;
    let (content, objects, names) = expected(session);
    let pool: HashMap<H, &[u8]> = session.pool.iter().map(|(d, h)| (*h, &d[..])).collect();
    let mut out = Vec::new();
    stream
        .reassemble(|digest| Ok(pool[digest]), &mut out)
        .map_err(|e| format!("reassemble: {e}"))?;
    let named: BTreeMap<String, H> = stream
        .named_refs()
        .map(|(n, d)| (n.to_owned(), *d))
        .collect();
    if out != content
        || stream.object_refs() != objects
        || named != names
        || stream.content_type() != session.content_type
        || stream.stream_size() != content.len() as u64
    {
        return Err("read back differently".into());
    }
    Ok(())
}

fn run_sessions<H: Pair>(seeds: std::ops::Range<u64>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = RepositoryConfig::new(Algorithm::for_hash::<H::Ref>()).set_insecure();
    let (repo, _) =
        Repository::<H::Ref>::init_path(rustix::fs::CWD, dir.path().join("repo"), config)
            .expect("init reference repository");
    let repo = Arc::new(repo);
    let mut failures = Vec::new();
    let (mut bytes, mut ops) = (0, 0);
    for seed in seeds.clone() {
        let session = random_session::<H>(seed);
        let ours = ours(&session);
        let theirs = reference(&session, &repo);
        bytes += ours.len();
        ops += session.ops.len();
        if ours != theirs {
            failures.push(format!(
                "seed {seed}: ours {} bytes, theirs {}, first difference at {:#x}",
                ours.len(),
                theirs.len(),
                first_difference(&ours, &theirs)
            ));
        } else if let Err(e) = check_read(&session, &theirs) {
            failures.push(format!("seed {seed}: reading theirs: {e}"));
        }
    }
    for f in failures.iter().take(20) {
        eprintln!("{f}");
    }
    assert!(
        failures.is_empty(),
        "{} of {} sessions failed",
        failures.len(),
        seeds.end - seeds.start
    );
    eprintln!(
        "{}: {} sessions ({ops} operations, {bytes} stream bytes) byte-identical to the reference",
        H::ALGORITHM,
        seeds.end - seeds.start
    );
}

#[test]
fn random_sessions_are_byte_identical_sha256() {
    run_sessions::<Sha256Digest>(0..300);
}

#[test]
fn random_sessions_are_byte_identical_sha512() {
    run_sessions::<Sha512Digest>(1000..1100);
}

/// The reference tool, if installed (`./dev` installs it).
fn cfsctl() -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let path = home.join("bin/cfsctl");
    path.exists().then_some(path)
}

fn run(cmd: &mut Command, stdin: &[u8]) -> String {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // A tool that fails may stop reading; its exit status tells why.
    let _ = child.stdin.take().expect("stdin").write_all(stdin);
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{cmd:?} failed: {out:?}");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// Splits `tar` with `cfsctl oci import-layer` into the repository `repo`
/// and checks the stream it stored: we parse it, reassemble the tar, and
/// writing its chunks again with our writer gives the same bytes.
fn check_layer(cfsctl: &Path, repo: &Path, tar: &[u8], what: &str) -> (usize, usize) {
    let diff_id = run(&mut Command::new("sha256sum"), tar);
    let diff_id = diff_id.split_whitespace().next().expect("sha256sum output");
    let id = run(
        Command::new(cfsctl)
            .arg("--repo")
            .arg(repo)
            .args(["oci", "import-layer"])
            .arg(format!("sha256:{diff_id}")),
        tar,
    );
    let hex = id.strip_prefix("sha512:").expect("a sha512 repository");
    let digest = Sha512Digest::from_hex(hex).expect("digest");
    let object = |d: &Sha512Digest| repo.join("objects").join(d.object_pathname());
    let file = std::fs::read(object(&digest)).expect("stream object");
    assert_eq!(
        FsVerityHasher::<Sha512Digest>::digest(&file),
        digest,
        "{what}"
    );

    let stream = SplitStream::<Sha512Digest>::parse(&file[..]).expect("parse cfsctl's stream");
    assert_eq!(stream.content_type(), ContentType::OCI_LAYER, "{what}");
    assert_eq!(stream.named_refs().count(), 0, "{what}");
    let mut out = Vec::new();
    let len = stream
        .reassemble(|d| std::fs::File::open(object(d)), &mut out)
        .expect("reassemble");
    assert_eq!(len, tar.len() as u64, "{what}");
    assert!(
        out == tar,
        "{what}: reassembled tar differs at {:#x}",
        first_difference(&out, tar)
    );

    let mut writer = SplitStreamWriter::<Sha512Digest>::new(stream.content_type());
    for chunk in stream.chunks() {
        match chunk.expect("chunk") {
            Chunk::Inline(bytes) => writer.write_inline(&bytes),
            Chunk::External(d) => {
                let size = std::fs::metadata(object(d)).expect("object").len();
                writer.write_external(*d, size);
            }
        }
    }
    let again = writer.finish();
    assert!(
        again == file,
        "{what}: our rewrite of cfsctl's stream differs at {:#x} ({} vs {} bytes)",
        first_difference(&again, &file),
        again.len(),
        file.len()
    );
    (stream.object_refs().len(), file.len())
}

fn tar(dir: &Path, flags: &[&str]) -> Vec<u8> {
    let out = Command::new("tar")
        .args(flags)
        .arg("-C")
        .arg(dir)
        .args(["--numeric-owner", "-cf", "-", "."])
        .output()
        .expect("run tar");
    assert!(out.status.success(), "tar {flags:?}: {out:?}");
    out.stdout
}

#[test]
fn cfsctl_tar_layers() {
    let Some(cfsctl) = cfsctl() else {
        eprintln!("SKIPPED cfsctl_tar_layers: cfsctl is not installed (run ./dev test)");
        return;
    };
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED cfsctl_tar_layers: writing random trees (owners, devices) needs root");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    run(
        Command::new(&cfsctl)
            .arg("--repo")
            .arg(&repo)
            .args(["init", "--insecure"]),
        b"",
    );
    let formats: [&[&str]; 3] = [
        &["--format=gnu"],
        &["--format=pax", "--xattrs", "--xattrs-include=*"],
        &["--format=gnu", "--blocking-factor=1"],
    ];
    let mut layers = 0;
    for seed in 0..12u64 {
        let params = TreeParams {
            entries: 30 + (seed as usize * 37) % 300,
            ..TreeParams::default()
        };
        let mut fs = random_tree::<Sha256Digest>(seed, &params);
        // The reference refuses PAX xattr records whose name is not UTF-8
        // and negative PAX mtimes.
        fs.for_each_stat_mut(|stat| {
            stat.xattrs
                .retain(|name, _| std::str::from_utf8(name).is_ok());
            stat.mtime.sec = stat.mtime.sec.max(0);
        });
        let contents = fill_external(&mut fs, seed, 200_000);
        let root = dir.path().join(format!("tree-{seed}"));
        std::fs::create_dir(&root).expect("mkdir");
        write_tree(&fs, &contents, &root).expect("write tree");
        for flags in formats {
            let tar = tar(&root, flags);
            let (objects, len) =
                check_layer(&cfsctl, &repo, &tar, &format!("seed {seed} {flags:?}"));
            eprintln!(
                "seed {seed} {flags:?}: {} byte tar, {objects} objects, {len} byte stream",
                tar.len()
            );
            layers += 1;
        }
    }
    // A real tree: this machine's /usr/bin (binaries, symlinks, hardlinks).
    let usr_bin = Path::new("/usr/bin");
    if usr_bin.is_dir() {
        let tar = tar(usr_bin, &["--format=pax"]);
        let (objects, len) = check_layer(&cfsctl, &repo, &tar, "/usr/bin");
        eprintln!(
            "/usr/bin: {} byte tar, {objects} objects, {len} byte stream",
            tar.len()
        );
        layers += 1;
    }
    eprintln!("{layers} cfsctl tar layers read, reassembled and rewritten byte-identically");
}
