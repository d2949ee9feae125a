//! Static deltas made by the real `ostree static-delta generate`, parsed
//! and run by ours: every object they build must be the one the
//! repository holds, the operation counts must be those
//! `ostree static-delta show` reports (so every opcode is exercised,
//! bsdiff included), and together with the base commit and the fallbacks
//! the objects must make up the whole target commit. Damaged deltas are
//! refused with errors that say what is wrong.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use cfs_erofs::digest::{FsVerityDigest, Sha512Digest};
use cfs_images::{InitOptions, Repository};
use cfs_ostree::delta::{
    apply_parts, execute, fetch_superblock, naming, parse_delta_index, parse_summary_deltas,
    ApplyStats, ListedDelta, NoReadSource, ObjectSink, ObjectType, OpCounts, Part, PartHeader,
    ReadSource, Superblock,
};
use cfs_ostree::object::FileHeader;
use cfs_ostree::pull::{pull_local, pull_remote, RemoteOptions};
use cfs_ostree::repo::LocalRepo;
use cfs_ostree::{Checksum, OstreeError};

/// Two commits made by `ostree commit` and three deltas made by
/// `ostree static-delta generate`.
struct Fixture {
    _dir: tempfile::TempDir,
    repo: PathBuf,
    c1: Checksum,
    c2: Checksum,
    /// `static-delta show` of C1 -> C2, scratch -> C1, scratch -> C2.
    show_from: String,
    show_scratch: String,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run ostree");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn ostree(repo: &Path) -> Command {
    let mut cmd = Command::new("ostree");
    cmd.arg(format!("--repo={}", repo.display()));
    cmd
}

/// Incompressible but reproducible bytes (xorshift), so the delta
/// generator has to diff rather than compress.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn numbers(n: u32) -> Vec<u8> {
    (1..=n).map(|i| format!("{i}\n")).collect::<String>().into()
}

fn make_tree(root: &Path, version: u32) {
    for dir in ["usr/bin", "usr/lib", "etc"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    // A large file with a 7-byte change between versions: bsdiff.
    let mut big = noise(300_000, 1);
    if version == 2 {
        big[1000..1007].copy_from_slice(b"PATCHED");
    }
    std::fs::write(root.join("usr/bin/big"), big).unwrap();
    // Lines appended: the rolling checksum splices most of it from v1.
    std::fs::write(
        root.join("etc/numbers"),
        numbers(20_000 + 10 * (version - 1)),
    )
    .unwrap();
    for i in 0..5 {
        std::fs::write(
            root.join(format!("usr/lib/lib{i}.so")),
            noise(500 * i, i as u64),
        )
        .unwrap();
    }
    std::fs::write(root.join("etc/small"), b"small\n").unwrap();
    std::fs::write(root.join("etc/empty"), b"").unwrap();
    symlink("../usr/bin/big", root.join("etc/link")).unwrap();
    if version == 2 {
        // Over --min-fallback-size=1 (MB): fetched loose, not in a part.
        std::fs::write(root.join("usr/lib/huge"), noise(1_500_000, 9)).unwrap();
        std::fs::write(root.join("etc/new"), b"new in v2\n").unwrap();
    }
}

/// The fixture, or `None` (the reason printed) without the ostree CLI.
fn fixture() -> Option<&'static Fixture> {
    static FIXTURE: OnceLock<Option<Fixture>> = OnceLock::new();
    FIXTURE
        .get_or_init(|| {
            if Command::new("ostree").arg("--version").output().is_err() {
                eprintln!("SKIPPED delta tests: the ostree CLI is not installed");
                return None;
            }
            Some(make_fixture())
        })
        .as_ref()
}

fn make_fixture() -> Fixture {
    {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        run(ostree(&repo).args(["init", "--mode=archive"]));
        let mut commits = Vec::new();
        for version in [1, 2] {
            let tree = dir.path().join(format!("tree{version}"));
            make_tree(&tree, version);
            let out = run(ostree(&repo)
                .args([
                    "commit",
                    "-b",
                    "test/ref",
                    "--owner-uid=0",
                    "--owner-gid=0",
                    &format!("--subject=v{version}"),
                    &format!("--timestamp=2024-01-0{version}T00:00:00Z"),
                ])
                .arg(&tree));
            commits.push(Checksum::from_hex(out.trim()).unwrap());
        }
        let (c1, c2) = (commits[0], commits[1]);
        run(ostree(&repo).args([
            "static-delta",
            "generate",
            &format!("--from={c1}"),
            &format!("--to={c2}"),
            "--min-fallback-size=1",
        ]));
        run(ostree(&repo).args(["static-delta", "generate", "--empty", &format!("--to={c1}")]));
        run(ostree(&repo).args([
            "static-delta",
            "generate",
            "--empty",
            &format!("--to={c2}"),
            "--inline",
            "--set-endianness=B",
        ]));
        run(ostree(&repo).args(["static-delta", "reindex"]));
        run(ostree(&repo).args(["summary", "-u"]));
        let show_from = run(ostree(&repo).args(["static-delta", "show", &format!("{c1}-{c2}")]));
        let show_scratch = run(ostree(&repo).args(["static-delta", "show", &c1.to_hex()]));
        Fixture {
            _dir: dir,
            repo,
            c1,
            c2,
            show_from,
            show_scratch,
        }
    }
}

/// The operation counts `ostree static-delta show` prints, summed over
/// parts (`PartPayloadOps0: openspliceclose=4 open=2 …`).
fn shown_ops(show: &str) -> OpCounts {
    let mut counts = OpCounts::default();
    for line in show.lines().filter(|l| l.starts_with("PartPayloadOps")) {
        for field in line.split_whitespace().skip(1) {
            let (name, value) = field.split_once('=').unwrap();
            let value: usize = value.parse().unwrap();
            match name {
                "openspliceclose" => counts.open_splice_and_close += value,
                "open" => counts.open += value,
                "write" => counts.write += value,
                "setread" => counts.set_read_source += value,
                "unsetread" => counts.unset_read_source += value,
                "close" => counts.close += value,
                "bspatch" => counts.bspatch += value,
                other => panic!("unknown op {other} in {line}"),
            }
        }
    }
    counts
}

/// The fallback checksums `ostree static-delta show` lists.
fn shown_fallbacks(show: &str) -> BTreeSet<Checksum> {
    show.lines()
        .filter_map(|l| Checksum::from_hex(l.trim()).ok())
        .collect()
}

/// Objects built by a delta, as handed to the sink.
#[derive(Default)]
struct Collected {
    metadata: HashMap<Checksum, (ObjectType, Vec<u8>)>,
    content: HashMap<Checksum, (FileHeader, Vec<u8>)>,
}

impl ObjectSink for Collected {
    fn metadata(
        &mut self,
        kind: ObjectType,
        checksum: &Checksum,
        bytes: &[u8],
    ) -> Result<(), OstreeError> {
        self.metadata.insert(*checksum, (kind, bytes.to_vec()));
        Ok(())
    }

    fn content(
        &mut self,
        checksum: &Checksum,
        header: &FileHeader,
        content: &[u8],
    ) -> Result<(), OstreeError> {
        self.content
            .insert(*checksum, (header.clone(), content.to_vec()));
        Ok(())
    }
}

/// Base-commit files read from the ostree repository itself.
struct RepoFiles<'a>(&'a LocalRepo);

impl ReadSource for RepoFiles<'_> {
    fn read_content(&self, checksum: &Checksum) -> Result<Vec<u8>, OstreeError> {
        Ok(self.0.open_content(checksum)?.read_verified()?.1)
    }
}

/// Reads files of the repository directory, as a repository source does.
fn dir_fetch(repo: &Path) -> impl FnMut(&str, u64) -> Result<Option<Vec<u8>>, OstreeError> + '_ {
    move |path, limit| match std::fs::read(repo.join(path)) {
        Ok(bytes) if bytes.len() as u64 > limit => panic!("{path} over {limit}"),
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => panic!("{path}: {e}"),
    }
}

/// Every object reachable from a commit: (kind, checksum).
fn reachable(repo: &LocalRepo, commit: &Checksum) -> BTreeSet<(&'static str, Checksum)> {
    fn walk(
        repo: &LocalRepo,
        tree: &Checksum,
        meta: &Checksum,
        out: &mut BTreeSet<(&'static str, Checksum)>,
    ) {
        out.insert(("dirmeta", *meta));
        out.insert(("dirtree", *tree));
        let listing = repo.read_dirtree(tree).unwrap();
        for (_, file) in &listing.files {
            out.insert(("file", *file));
        }
        for (_, sub, sub_meta) in &listing.dirs {
            walk(repo, sub, sub_meta, out);
        }
    }
    let (commit, _) = repo.read_commit(commit).unwrap();
    let mut out = BTreeSet::new();
    walk(repo, &commit.root_tree, &commit.root_meta, &mut out);
    out
}

/// Applies the delta `from` -> `to` of the fixture repository.
fn apply(
    from: Option<&Checksum>,
    to: &Checksum,
    source: &dyn ReadSource,
) -> (Superblock, Collected, ApplyStats) {
    let repo = &fixture().expect("only tests that have it call this").repo;
    let mut fetch = dir_fetch(repo);
    let (superblock, _) = fetch_superblock(&mut fetch, from, to, None)
        .unwrap()
        .expect("the delta exists");
    let mut sink = Collected::default();
    let stats = apply_parts(&superblock, &mut fetch, &|_| false, source, &mut sink).unwrap();
    (superblock, sink, stats)
}

/// Each built object is byte for byte the repository's, and the set of
/// them is what `built` says.
fn assert_objects_match(repo: &LocalRepo, sink: &Collected) -> BTreeSet<(&'static str, Checksum)> {
    let mut built = BTreeSet::new();
    for (checksum, (kind, bytes)) in &sink.metadata {
        let hex = checksum.to_hex();
        let path = fixture()
            .expect("only tests that have it call this")
            .repo
            .join(format!(
                "objects/{}/{}.{}",
                &hex[..2],
                &hex[2..],
                kind.extension()
            ));
        assert_eq!(&std::fs::read(path).unwrap(), bytes, "{checksum}");
        built.insert((kind.extension(), *checksum));
    }
    for (checksum, (header, content)) in &sink.content {
        let (want_header, want_content) = repo
            .open_content(checksum)
            .unwrap()
            .read_verified()
            .unwrap();
        assert_eq!(&want_header, header, "{checksum}");
        assert_eq!(&want_content, content, "{checksum}");
        built.insert(("file", *checksum));
    }
    built
}

#[test]
fn scratch_delta_builds_the_whole_commit() {
    let Some(f) = fixture() else { return };
    let repo = LocalRepo::open(&f.repo).unwrap();
    let (superblock, sink, stats) = apply(None, &f.c1, &NoReadSource);
    assert_eq!(superblock.from, None);
    assert_eq!(superblock.to, f.c1);
    assert_eq!(superblock.commit, repo.read_commit(&f.c1).unwrap().1);
    assert!(superblock.fallbacks.is_empty());
    assert_eq!(stats.ops, shown_ops(&f.show_scratch));
    assert!(stats.ops.open_splice_and_close > 0);
    assert_eq!((stats.parts_fetched, stats.parts_inline), (1, 0));
    let built = assert_objects_match(&repo, &sink);
    assert_eq!(built, reachable(&repo, &f.c1));
}

#[test]
fn from_delta_patches_splices_and_falls_back() {
    let Some(f) = fixture() else { return };
    let repo = LocalRepo::open(&f.repo).unwrap();
    let (superblock, sink, stats) = apply(Some(&f.c1), &f.c2, &RepoFiles(&repo));
    assert_eq!(superblock.from, Some(f.c1));
    // Every opcode ostree writes ran, as many times as ostree counts.
    let shown = shown_ops(&f.show_from);
    assert_eq!(stats.ops, shown);
    assert!(shown.bspatch > 0 && shown.write > 0 && shown.set_read_source > 0);
    assert!(shown.unset_read_source > 0 && shown.open > 0 && shown.close > 0);
    let fallbacks: BTreeSet<Checksum> = superblock.fallbacks.iter().map(|f| f.checksum).collect();
    assert_eq!(fallbacks, shown_fallbacks(&f.show_from));
    assert_eq!(fallbacks.len(), 1);
    // Delta, base commit and fallbacks together make up the target.
    let built = assert_objects_match(&repo, &sink);
    let mut have = reachable(&repo, &f.c1);
    have.extend(built.iter().copied());
    have.extend(fallbacks.iter().map(|c| ("file", *c)));
    let missing: Vec<_> = reachable(&repo, &f.c2).difference(&have).copied().collect();
    assert!(
        missing.is_empty(),
        "not in delta, base or fallbacks: {missing:?}"
    );
    // And it carried nothing the base already had.
    let base = reachable(&repo, &f.c1);
    assert!(built.is_disjoint(&base));
}

#[test]
fn inline_big_endian_delta() {
    let Some(f) = fixture() else { return };
    let repo = LocalRepo::open(&f.repo).unwrap();
    let (superblock, sink, stats) = apply(None, &f.c2, &NoReadSource);
    assert_eq!((stats.parts_fetched, stats.parts_inline), (0, 1));
    // Sizes read in the wrong byte order would not match the part.
    let part = superblock.inline_part(0).unwrap();
    assert_eq!(superblock.parts[0].compressed_size, part.len() as u64);
    let built = assert_objects_match(&repo, &sink);
    assert_eq!(built, reachable(&repo, &f.c2));
}

#[test]
fn damaged_deltas_are_refused() {
    let Some(f) = fixture() else { return };
    let repo = LocalRepo::open(&f.repo).unwrap();
    let superblock_path = f.repo.join(naming::superblock_path(Some(&f.c1), &f.c2));
    let part_path = f.repo.join(naming::part_path(Some(&f.c1), &f.c2, 0));
    let good_superblock = std::fs::read(&superblock_path).unwrap();
    let good_part = std::fs::read(&part_path).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let try_apply = |superblock: &[u8], part: &[u8]| -> Result<ApplyStats, OstreeError> {
        let dir = scratch.path();
        let sb = dir.join(naming::superblock_path(Some(&f.c1), &f.c2));
        std::fs::create_dir_all(sb.parent().unwrap()).unwrap();
        std::fs::write(&sb, superblock).unwrap();
        std::fs::write(dir.join(naming::part_path(Some(&f.c1), &f.c2, 0)), part).unwrap();
        let mut fetch = dir_fetch(dir);
        let (superblock, _) = fetch_superblock(&mut fetch, Some(&f.c1), &f.c2, None)?.unwrap();
        apply_parts(
            &superblock,
            &mut fetch,
            &|_| false,
            &RepoFiles(&repo),
            &mut Collected::default(),
        )
    };
    try_apply(&good_superblock, &good_part).expect("the copy applies");

    let message = |r: Result<ApplyStats, OstreeError>| r.unwrap_err().to_string();
    // A part cut short.
    let truncated = message(try_apply(
        &good_superblock,
        &good_part[..good_part.len() - 100],
    ));
    assert!(
        truncated.contains("delta part 0") && truncated.contains("truncated"),
        "{truncated}"
    );
    // A part with one byte changed.
    let mut flipped = good_part.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    let corrupt = message(try_apply(&good_superblock, &flipped));
    assert!(corrupt.contains("delta part 0 is corrupt"), "{corrupt}");
    // A superblock whose carried commit was tampered with.
    let commit = repo.read_commit(&f.c2).unwrap().1;
    let at = good_superblock
        .windows(commit.len())
        .position(|w| w == commit)
        .expect("the superblock carries the commit");
    let mut tampered = good_superblock.clone();
    tampered[at + commit.len() - 40] ^= 1;
    let bad_commit = message(try_apply(&tampered, &good_part));
    assert!(
        bad_commit.contains("delta superblock") && bad_commit.contains("hashes to"),
        "{bad_commit}"
    );
    // A superblock cut short.
    let short = message(try_apply(
        &good_superblock[..good_superblock.len() / 2],
        &good_part,
    ));
    assert!(short.starts_with("delta superblock"), "{short}");
    // A superblock listed with another digest.
    let mut fetch = dir_fetch(&f.repo);
    let wrong = fetch_superblock(&mut fetch, Some(&f.c1), &f.c2, Some(&f.c1)).unwrap_err();
    assert!(matches!(
        wrong,
        OstreeError::Delta(cfs_ostree::delta::DeltaError::SuperblockChecksum { .. })
    ));
}

#[test]
fn signed_superblock_is_unwrapped() {
    use gvariant::{gv, Marker};
    let Some(f) = fixture() else { return };
    let plain = std::fs::read(f.repo.join(naming::superblock_path(None, &f.c1))).unwrap();
    let wrapped = gv!("(taya{sv})").serialize_to_vec(&(
        u64::from_be_bytes(*b"OSTSGNDT").to_be(),
        &plain[..],
        &[] as &[(&str, &gvariant::Variant)],
    ));
    assert!(wrapped.starts_with(b"OSTSGNDT"));
    let signed = Superblock::parse(&wrapped).unwrap();
    assert!(signed.signed);
    let unsigned = Superblock::parse(&plain).unwrap();
    assert!(!unsigned.signed);
    assert_eq!(signed.commit, unsigned.commit);
    assert_eq!(signed.parts, unsigned.parts);
}

/// `static-delta reindex` and `summary -u` list every delta with the
/// digest of its superblock file, and ours reads them the same.
#[test]
fn delta_index_and_summary_list_the_deltas() {
    let Some(f) = fixture() else { return };
    let listed = |from: Option<&Checksum>, to: &Checksum| ListedDelta {
        from: from.copied(),
        to: *to,
        superblock_digest: Checksum::of(&[&std::fs::read(
            f.repo.join(naming::superblock_path(from, to)),
        )
        .unwrap()]),
    };
    let sorted = |mut v: Vec<ListedDelta>| {
        v.sort_by_key(|d| (d.from, d.to));
        v
    };
    let index = std::fs::read(f.repo.join(naming::index_path(&f.c2))).unwrap();
    assert_eq!(
        sorted(parse_delta_index(&index).unwrap()),
        sorted(vec![listed(Some(&f.c1), &f.c2), listed(None, &f.c2)])
    );
    let summary = std::fs::read(f.repo.join("summary")).unwrap();
    assert_eq!(
        sorted(parse_summary_deltas(&summary).unwrap()),
        sorted(vec![
            listed(Some(&f.c1), &f.c2),
            listed(None, &f.c2),
            listed(None, &f.c1)
        ])
    );
    // The listed digest is checked when the superblock is fetched.
    let mut fetch = dir_fetch(&f.repo);
    let digest = listed(Some(&f.c1), &f.c2).superblock_digest;
    assert!(
        fetch_superblock(&mut fetch, Some(&f.c1), &f.c2, Some(&digest))
            .unwrap()
            .is_some()
    );
}

/// A composefs repository in a temporary directory, as `repo init
/// --insecure` makes one (SHA-512, no fs-verity needed).
fn composefs_repo(dir: &Path) -> Repository<Sha512Digest> {
    let options = InitOptions {
        insecure: true,
        ..InitOptions::default()
    };
    Repository::init(dir, &options).unwrap()
}

fn assert_fsck_clean(repo: &Repository<Sha512Digest>) {
    let report = repo.fsck(false).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// The reference's image of `rev` (`cfsctl ostree pull-local`, then
/// `compute-id`), if cfsctl is installed.
fn reference_image(source: &Path, rev: &Checksum, work: &Path) -> Option<String> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let cfsctl = home.join("bin/cfsctl");
    if !cfsctl.exists() {
        eprintln!("cfsctl is not installed: the reference comparison is skipped");
        return None;
    }
    let repo = work.join("reference");
    let cfsctl = |args: &[&str]| {
        let mut cmd = Command::new(&cfsctl);
        cmd.arg("--repo").arg(&repo).args(args);
        run(&mut cmd)
    };
    cfsctl(&["--hash", "sha512", "init", "--insecure"]);
    let source = source.to_str().unwrap();
    cfsctl(&["--insecure", "ostree", "pull-local", source, &rev.to_hex()]);
    Some(
        cfsctl(&["--insecure", "ostree", "compute-id", &rev.to_hex()])
            .trim()
            .to_owned(),
    )
}

/// Pulls through deltas fetch the delta and nothing else but fallbacks,
/// and build the same images as a loose pull and as the reference.
#[test]
fn pulls_use_deltas_and_fetch_only_them() {
    let Some(f) = fixture() else { return };
    let work = tempfile::tempdir().unwrap();
    let source = f.repo.to_str().unwrap();
    let options = RemoteOptions::default();

    // A new tag: the scratch delta to C1, nothing fetched loose.
    let ours = composefs_repo(&work.path().join("ours"));
    let (first, stats) = pull_remote(&ours, source, &f.c1.to_hex(), Some("os"), &options).unwrap();
    assert_eq!(
        (stats.delta_superblocks, stats.delta_parts),
        (1, 1),
        "{stats:?}"
    );
    assert_eq!(
        (stats.metadata_objects, stats.content_objects),
        (0, 0),
        "{stats:?}"
    );

    // C1 -> C2: the from-delta, and only its fallback loose.
    let (second, stats) = pull_remote(&ours, source, &f.c2.to_hex(), Some("os"), &options).unwrap();
    eprintln!("C1 -> C2 through the delta: {stats:?}");
    assert_eq!(
        (stats.delta_superblocks, stats.delta_parts),
        (1, 1),
        "{stats:?}"
    );
    assert_eq!(
        (stats.metadata_objects, stats.content_objects),
        (0, 1),
        "{stats:?}"
    );
    let delta_bytes = std::fs::metadata(f.repo.join(naming::part_path(Some(&f.c1), &f.c2, 0)))
        .unwrap()
        .len();
    assert!(stats.bytes > delta_bytes, "{stats:?}");
    assert_fsck_clean(&ours);

    // The same commits pulled object by object give the same images.
    let loose = composefs_repo(&work.path().join("loose"));
    let no_deltas = RemoteOptions {
        static_deltas: false,
        ..RemoteOptions::default()
    };
    for (rev, image) in [(&f.c1, &first.image), (&f.c2, &second.image)] {
        let (report, stats) = pull_remote(&loose, source, &rev.to_hex(), None, &no_deltas).unwrap();
        eprintln!("{rev} object by object: {stats:?}");
        assert_eq!((stats.delta_superblocks, stats.delta_parts), (0, 0));
        assert!(stats.metadata_objects > 0);
        assert_eq!(&report.image, image, "{rev}");
        let local = pull_local(
            &composefs_repo(&work.path().join("local")),
            &f.repo,
            &rev.to_hex(),
            None,
        )
        .unwrap();
        assert_eq!(&local.image, image, "{rev}");
    }
    if let Some(reference) = reference_image(&f.repo, &f.c2, work.path()) {
        assert_eq!(second.image.to_hex(), reference);
        eprintln!("C2's image equals cfsctl ostree compute-id: {reference}");
    }
}

/// A delta pull that fails leaves a clean repository, and the retry
/// fetches the parts it lacks, not the ones it completed.
#[test]
fn a_damaged_delta_fails_the_pull_cleanly() {
    let Some(f) = fixture() else { return };
    let work = tempfile::tempdir().unwrap();
    let copy = work.path().join("source");
    run(Command::new("cp").arg("-a").arg(&f.repo).arg(&copy));
    let ours = composefs_repo(&work.path().join("ours"));
    let source = copy.to_str().unwrap();
    let options = RemoteOptions::default();
    let pull = |rev: &Checksum| pull_remote(&ours, source, &rev.to_hex(), Some("os"), &options);

    // A superblock whose carried commit was tampered with: the index's
    // digest no longer matches.
    let superblock = copy.join(naming::superblock_path(None, &f.c1));
    let good_superblock = std::fs::read(&superblock).unwrap();
    let mut bad = good_superblock.clone();
    let last = bad.len() - 20;
    bad[last] ^= 1;
    std::fs::write(&superblock, &bad).unwrap();
    let message = pull(&f.c1).unwrap_err().to_string();
    assert!(
        message.starts_with("delta superblock hashes to"),
        "{message}"
    );
    assert_fsck_clean(&ours);
    std::fs::write(&superblock, &good_superblock).unwrap();

    // Regenerated in two parts (--max-chunk-size=1 puts the 1.5 MB file
    // in a part of its own), the second cut short.
    run(ostree(&copy).args(["static-delta", "delete", &f.c2.to_hex()]));
    run(ostree(&copy).args([
        "static-delta",
        "generate",
        "--empty",
        &format!("--to={}", f.c2),
        "--max-chunk-size=1",
    ]));
    run(ostree(&copy).args(["static-delta", "reindex"]));
    let superblock = std::fs::read(copy.join(naming::superblock_path(None, &f.c2))).unwrap();
    let parts = Superblock::parse(&superblock).unwrap().parts.len();
    assert!(parts >= 2, "{parts} parts");
    let part = copy.join(naming::part_path(None, &f.c2, parts - 1));
    let good = std::fs::read(&part).unwrap();
    std::fs::write(&part, &good[..good.len() / 2]).unwrap();
    let message = pull(&f.c2).unwrap_err().to_string();
    assert!(
        message.starts_with(&format!("delta part {}", parts - 1)) && message.contains("truncated"),
        "{message}"
    );
    assert_fsck_clean(&ours);

    // Repaired, the retry fetches only the part that failed.
    std::fs::write(&part, &good).unwrap();
    let (report, stats) = pull(&f.c2).unwrap();
    assert_eq!(stats.delta_parts, 1, "{stats:?}");
    assert_eq!(
        (stats.metadata_objects, stats.content_objects),
        (0, 0),
        "{stats:?}"
    );
    assert_fsck_clean(&ours);
    let local = pull_local(
        &composefs_repo(&work.path().join("local")),
        &f.repo,
        &f.c2.to_hex(),
        None,
    )
    .unwrap();
    assert_eq!(report.image, local.image);
}

/// Real superblocks and parts with bytes flipped or cut never make the
/// parser or the executor panic: each mutation applies or is refused.
#[test]
fn mutated_deltas_never_panic() {
    use std::io::Read;
    let Some(f) = fixture() else { return };
    let repo = LocalRepo::open(&f.repo).unwrap();
    let superblock =
        std::fs::read(f.repo.join(naming::superblock_path(Some(&f.c1), &f.c2))).unwrap();
    let parsed = Superblock::parse(&superblock).unwrap();
    let part_file = std::fs::read(f.repo.join(naming::part_path(Some(&f.c1), &f.c2, 0))).unwrap();
    let mut raw = Vec::new();
    xz2::read::XzDecoder::new(&part_file[1..])
        .read_to_end(&mut raw)
        .unwrap();

    let try_part = |header: &PartHeader, file: &[u8]| -> Result<OpCounts, OstreeError> {
        let part = Part::open(0, header, file)?;
        execute(
            0,
            header,
            &part,
            &RepoFiles(&repo),
            &mut Collected::default(),
        )
    };
    // Unharmed, the uncompressed part applies.
    let mut file = vec![0u8];
    file.extend(&raw);
    let mut header = parsed.parts[0].clone();
    header.checksum = Checksum::of(&[&file]);
    try_part(&header, &file).expect("the uncompressed part applies");

    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |bound: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % bound as u64) as usize
    };
    let (mut applied, mut refused) = (0, 0);
    for round in 0..400 {
        // The superblock: flips anywhere, or cut short.
        let mut bytes = superblock.clone();
        if round % 4 == 0 {
            bytes.truncate(next(bytes.len()));
        } else {
            for _ in 0..1 + next(4) {
                let at = next(bytes.len());
                bytes[at] ^= 1 << next(8);
            }
        }
        let _ = Superblock::parse(&bytes);

        // The part, uncompressed so flips reach the tables, payload and
        // operations rather than the xz framing; its header checksum
        // made to match so the executor sees the damage.
        let mut mutated = raw.clone();
        for _ in 0..1 + next(3) {
            let at = next(mutated.len());
            mutated[at] ^= 1 << next(8);
        }
        let mut file = vec![0u8];
        file.extend(&mutated);
        let mut header = parsed.parts[0].clone();
        header.checksum = Checksum::of(&[&file]);
        let result = try_part(&header, &file);
        match result {
            Ok(_) => applied += 1,
            Err(_) => refused += 1,
        }
    }
    eprintln!("mutated parts: {applied} applied (flips in unused bytes), {refused} refused");
    assert!(refused > 0);
}
