//! Concurrency: four writers (`image create` of their own trees, which
//! share half their files, under new names, in loops) and a collector
//! (`image rm` of all but each writer's two newest images, then `repo
//! gc`, or `cfsctl gc` every other round when it is installed, in a loop)
//! run together. Every command must succeed; afterwards
//! fsck is clean, every ref resolves, every remaining image mounts and
//! reads, and each writer's last image shows exactly its tree.
//!
//! The run lasts `CFS_CONCURRENCY_SECS` seconds: 60 with
//! `CFS_LONG_TESTS=1`, else 15.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;

const WRITERS: usize = 4;
const SIZES: (usize, usize) = (65, 8192);

fn duration() -> Duration {
    let default = if std::env::var("CFS_LONG_TESTS").is_ok_and(|v| v == "1") {
        60
    } else {
        15
    };
    let secs = std::env::var("CFS_CONCURRENCY_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    Duration::from_secs(secs)
}

/// What one writer did.
#[derive(Debug, Default)]
struct Written {
    /// Images created, in order: (name, digest).
    images: Vec<(String, String)>,
    /// Time spent in `image create`.
    busy: Duration,
}

/// Runs `cmd`; a failure is recorded in `errors` instead of panicking in
/// a thread. Returns stdout on success.
fn try_run(cmd: &mut std::process::Command, errors: &Mutex<Vec<String>>) -> Option<String> {
    let out = output(cmd);
    if out.status.success() {
        Some(String::from_utf8(out.stdout).expect("utf-8"))
    } else {
        errors.lock().expect("lock").push(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
        None
    }
}

fn writer(
    repo: &Path,
    tree: &Path,
    own: &[PathBuf],
    index: usize,
    until: Instant,
    errors: &Mutex<Vec<String>>,
) -> Written {
    let mut rng = rng(1000 + index as u64);
    let mut written = Written::default();
    let mut n = 0;
    while Instant::now() < until {
        // A few new objects each round, and the shared half unchanged.
        rewrite_some(tree, own, 10, SIZES, &mut rng);
        let name = format!("w{index}-{n:04}");
        n += 1;
        let started = Instant::now();
        let out = try_run(
            ours(repo)
                .args(["--json", "image", "create"])
                .arg(tree)
                .args(["--name", &name]),
            errors,
        );
        written.busy += started.elapsed();
        let Some(out) = out else { continue };
        let json: serde_json::Value = serde_json::from_str(&out).expect("json");
        let digest = json["digest"].as_str().expect("digest").to_owned();
        written.images.push((name, digest));
    }
    written
}

/// What the collector did.
#[derive(Debug, Default)]
struct Collected {
    rounds: usize,
    /// Rounds in which `cfsctl gc` collected.
    reference_rounds: usize,
    refs_removed: usize,
    objects_removed: u64,
    longest_gc: Duration,
}

fn collector(
    repo: &Path,
    cfsctl: Option<&Path>,
    until: Instant,
    errors: &Mutex<Vec<String>>,
) -> Collected {
    let mut done = Collected::default();
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(200));
        let mut by_writer: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for name in image_refs(repo).into_keys() {
            let writer = name.split('-').next().unwrap_or_default().to_owned();
            by_writer.entry(writer).or_default().push(name);
        }
        for names in by_writer.values_mut() {
            names.sort();
            let keep = names.len().saturating_sub(2);
            for name in &names[..keep] {
                if try_run(ours(repo).args(["image", "rm", name]), errors).is_some() {
                    done.refs_removed += 1;
                }
            }
        }
        let started = Instant::now();
        // Every other round the reference collects: it takes the same
        // lock, so it must be as safe next to our writers as ours.
        if let Some(cfsctl) = cfsctl.filter(|_| done.rounds % 2 == 1) {
            let mut cmd = std::process::Command::new(cfsctl);
            cmd.arg("--repo").arg(repo).arg("gc");
            let Some(out) = try_run(&mut cmd, errors) else {
                continue;
            };
            let line = out
                .lines()
                .find(|l| l.starts_with("Objects:"))
                .unwrap_or("");
            let removed: u64 = line
                .split(|c: char| !c.is_ascii_digit())
                .find_map(|w| w.parse().ok())
                .unwrap_or_else(|| panic!("no count in {out:?}"));
            done.objects_removed += removed;
            done.reference_rounds += 1;
        } else {
            let Some(out) = try_run(ours(repo).args(["--json", "repo", "gc"]), errors) else {
                continue;
            };
            let report: serde_json::Value = serde_json::from_str(&out).expect("json");
            done.objects_removed += report["objectsRemoved"].as_u64().expect("count");
        }
        done.longest_gc = done.longest_gc.max(started.elapsed());
        done.rounds += 1;
    }
    done
}

#[test]
fn writers_and_collector_together() {
    let work = tempfile::tempdir().expect("tempdir");
    let repo = work.path().join("repo");
    ok(ours(&repo).args(["repo", "init", "--insecure"]));
    let mut trees = Vec::new();
    for w in 0..WRITERS {
        let tree = work.path().join(format!("tree{w}"));
        // The shared half: same paths and contents in every tree.
        write_files(&tree, 150, SIZES, 99);
        let own: Vec<PathBuf> = write_files(&tree.join("opt"), 150, SIZES, w as u64)
            .into_iter()
            .map(|p| Path::new("opt").join(p))
            .collect();
        trees.push((tree, own));
    }

    let reference = cfsctl();
    if reference.is_none() {
        eprintln!(
            "SKIPPED writers_and_collector_together (cfsctl gc rounds): cfsctl is not installed"
        );
    }
    let length = duration();
    let started = Instant::now();
    let until = started + length;
    let errors = Mutex::new(Vec::new());
    let (written, collected) = std::thread::scope(|scope| {
        let writers: Vec<_> = trees
            .iter()
            .enumerate()
            .map(|(i, (tree, own))| {
                let (repo, errors) = (&repo, &errors);
                scope.spawn(move || writer(repo, tree, own, i, until, errors))
            })
            .collect();
        let collected = collector(&repo, reference.as_deref(), until, &errors);
        let written: Vec<Written> = writers
            .into_iter()
            .map(|w| w.join().expect("writer thread"))
            .collect();
        (written, collected)
    });
    let elapsed = started.elapsed();
    let errors = errors.into_inner().expect("lock");
    assert!(
        errors.is_empty(),
        "{} commands failed, first: {:#?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );

    let report = assert_clean(&repo, "after the run");
    let refs = assert_refs_resolve(&repo);
    let remaining = image_refs(&repo);
    for w in &written {
        for (name, digest) in &w.images {
            if let Some(found) = remaining.get(name) {
                assert_eq!(found, digest, "ref {name} changed");
            }
        }
        let (last, _) = w.images.last().expect("every writer wrote");
        assert!(remaining.contains_key(last), "{last} was collected");
    }

    let mounted = match cannot_mount() {
        Some(why) => {
            eprintln!("SKIPPED writers_and_collector_together (mount part): {why}");
            None
        }
        None => Some(mount_all(&repo, &remaining, &written, &trees, work.path())),
    };

    let creates: usize = written.iter().map(|w| w.images.len()).sum();
    let busy: Duration = written.iter().map(|w| w.busy).sum();
    eprintln!(
        "{WRITERS} writers and a collector for {elapsed:.1?}: {creates} image creates \
         ({:?} per writer, mean {:.2?}), {} gc rounds ({} of them cfsctl gc; longest \
         {:.2?}) removing {} refs and \
         {} objects; all commands succeeded; fsck clean ({} objects), {refs} refs resolve; {}",
        written.iter().map(|w| w.images.len()).collect::<Vec<_>>(),
        busy / creates.max(1) as u32,
        collected.rounds,
        collected.reference_rounds,
        collected.longest_gc,
        collected.refs_removed,
        collected.objects_removed,
        report["objectsChecked"],
        mounted.unwrap_or_else(|| "mounting skipped".into()),
    );
    assert!(collected.rounds > 0, "gc never ran");
}

/// Mounts every remaining image and reads all of it; the last image of
/// each writer must show exactly its tree.
fn mount_all(
    repo: &Path,
    remaining: &BTreeMap<String, String>,
    written: &[Written],
    trees: &[(PathBuf, Vec<PathBuf>)],
    work: &Path,
) -> String {
    let mnt = work.join("mnt");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    let mut paths = 0;
    for name in remaining.keys() {
        ok(ours(repo).args(["image", "mount", name]).arg(&mnt));
        let _mounted = Mounted(mnt.clone());
        // Reads every file: a missing object would fail here.
        let seen = snapshot(&mnt);
        let last = written
            .iter()
            .position(|w| w.images.last().map(|(n, _)| n) == Some(name));
        if let Some(w) = last {
            assert_same_tree(&snapshot(&trees[w].0), &seen, name);
        }
        paths += seen.len();
    }
    format!(
        "all {} remaining images mounted and read ({paths} paths), each writer's last equal to its tree",
        remaining.len()
    )
}
