//! Crash safety: `cfs-deploy` is SIGKILLed at random moments of `image
//! create` and of `repo gc`. After every kill the repository must pass
//! fsck, every ref must resolve to a complete image, and running the
//! killed command again must complete.
//!
//! Delays are seeded and spread uniformly over the measured duration of
//! an uninterrupted run (plus a tenth, so some runs finish first).
//! `CFS_KILLS` changes the number of kills (default 100 per command).

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cfs_erofs::digest::Sha512Digest;
use cfs_images::Repository;
use common::*;
use rand::rngs::StdRng;
use rand::Rng;

/// Kills per command.
fn kills() -> usize {
    std::env::var("CFS_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

/// File sizes: all over the 64-byte inline limit, so each is an object.
const SIZES: (usize, usize) = (65, 4096);

/// How a killed run ended.
#[derive(Debug, Default)]
struct Tally {
    /// Killed while running.
    landed: usize,
    /// Finished before the signal.
    finished: usize,
    /// `.link-*` temporaries seen right after a kill.
    leftover_links: usize,
}

/// Runs `cmd`, SIGKILLs it after `delay` unless it has ended, and
/// records how it ended. A run that ends on its own must have
/// succeeded. Returns whether the kill landed, and how long a run that
/// ended on its own took.
fn run_and_kill(cmd: &mut Command, delay: Duration, tally: &mut Tally) -> (bool, Option<Duration>) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let started = Instant::now();
    let ended = loop {
        if child.try_wait().expect("try_wait").is_some() {
            break Some(started.elapsed());
        }
        let elapsed = started.elapsed();
        if elapsed >= delay {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep((delay - elapsed).min(Duration::from_micros(200)));
    };
    let out = child.wait_with_output().expect("wait");
    if out.status.signal() == Some(9) {
        tally.landed += 1;
        (true, None)
    } else {
        assert!(
            out.status.success(),
            "{cmd:?} failed on its own: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tally.finished += 1;
        (false, ended)
    }
}

/// The expected length of an uninterrupted run, learnt from the runs
/// themselves: a run that ends on its own shows its length, a kill that
/// lands beyond the estimate shows the estimate is short.
#[derive(Debug)]
struct Estimate(Duration);

impl Estimate {
    fn learn(&mut self, delay: Duration, landed: bool, ended: Option<Duration>) {
        if let Some(took) = ended {
            self.0 = (self.0 + took) / 2;
        } else if landed && delay > self.0 {
            self.0 = delay;
        }
    }
}

/// A delay over the whole run (and a little after it).
fn random_delay(rng: &mut StdRng, full: &Estimate) -> Duration {
    full.0.mul_f64(rng.random_range(0.0..1.1))
}

/// Runs `cmd` and SIGKILLs it as soon as `now()` holds (polled in a
/// tight loop), or lets it finish. Returns whether the kill landed.
fn run_and_kill_when(cmd: &mut Command, now: impl Fn() -> bool, tally: &mut Tally) -> bool {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    while child.try_wait().expect("try_wait").is_none() {
        if now() {
            let _ = child.kill();
            break;
        }
    }
    let out = child.wait_with_output().expect("wait");
    if out.status.signal() == Some(9) {
        tally.landed += 1;
        true
    } else {
        assert!(
            out.status.success(),
            "{cmd:?} failed on its own: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tally.finished += 1;
        false
    }
}

/// Entries of `images/` (image links, and `refs`).
fn image_entries(repo: &Path) -> usize {
    std::fs::read_dir(repo.join("images")).map_or(0, Iterator::count)
}

/// `image create SRC --name NAME --json`; returns the digest.
fn create(repo: &Path, src: &Path, name: &str) -> String {
    let out = ok(ours(repo)
        .args(["--json", "image", "create"])
        .arg(src)
        .args(["--name", name]));
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    json["digest"].as_str().expect("digest").to_owned()
}

/// After a run's end the repository is consistent.
fn check_consistent(repo: &Path, when: &str) {
    assert_clean(repo, when);
    assert_refs_resolve(repo);
}

#[test]
fn sigkill_during_image_create() {
    const FILES: usize = 2000;
    let (scratch, kind) = scratch("2g");
    let src = scratch.path().join("src");
    let files = write_files(&src, FILES, SIZES, 7);
    let repo = scratch.path().join("repo");
    ok(ours(&repo).args(["repo", "init", "--insecure"]));

    let started = Instant::now();
    let mut previous = create(&repo, &src, "kill");
    let first = started.elapsed();
    let mut full = Estimate(first);
    let mut rng = rng(42);
    let mut tally = Tally::default();
    let mut rerun_time = Duration::ZERO;
    let mut late = Tally::default();
    let (mut late_old_ref, mut late_new_ref) = (0, 0);
    let test_start = Instant::now();
    for i in 0..kills() {
        // New content for 5% of the files: every run links new objects.
        rewrite_some(&src, &files, FILES / 20, SIZES, &mut rng);
        let mut cmd = ours(&repo);
        cmd.args(["image", "create"])
            .arg(&src)
            .args(["--name", "kill"]);
        // Every other kill aims at the short end of the run instead: as
        // soon as the new image's link appears, before or while the ref
        // is replaced.
        let (landed, delay) = if i % 2 == 0 {
            let delay = random_delay(&mut rng, &full);
            let (landed, ended) = run_and_kill(&mut cmd, delay, &mut tally);
            full.learn(delay, landed, ended);
            (landed, Some(delay))
        } else {
            let before = image_entries(&repo);
            let landed = run_and_kill_when(&mut cmd, || image_entries(&repo) > before, &mut late);
            (landed, None)
        };
        let after_kill = image_refs(&repo).get("kill").cloned();
        tally.leftover_links += leftover_links(&repo);
        check_consistent(&repo, &format!("after kill {i} ({delay:?})"));

        let rerun = Instant::now();
        let digest = create(&repo, &src, "kill");
        rerun_time += rerun.elapsed();
        assert_eq!(image_refs(&repo).get("kill"), Some(&digest));
        // The killed run left the old image or completed the new one.
        assert!(
            after_kill.as_ref() == Some(&previous) || after_kill.as_ref() == Some(&digest),
            "after kill {i} the ref named {after_kill:?}, neither {previous} nor {digest}"
        );
        if landed && delay.is_none() {
            if after_kill.as_ref() == Some(&digest) {
                late_new_ref += 1;
            } else {
                late_old_ref += 1;
            }
        }
        previous = digest;
        if i % 10 == 9 {
            // Keep the repository small: old images are garbage.
            ok(ours(&repo).args(["repo", "gc"]));
        }
    }
    ok(ours(&repo).args(["repo", "gc"]));
    check_consistent(&repo, "at the end");
    assert_eq!(leftover_links(&repo), 0, "gc leaves no link temporaries");
    let id = ok(ours(&repo).args(["image", "compute-id"]).arg(&src));
    assert_eq!(id.trim(), previous, "the last image is the tree's");
    let n = kills();
    eprintln!(
        "image create on a {kind}: {FILES} files, first run {first:.2?}; \
         {} kills at random delays: {} mid-run, {} after the run had finished; {} kills \
         as the new image link appeared: {} mid-run ({late_old_ref} before the ref moved, \
         {late_new_ref} after), {} after the run had finished; \
         {} link temporaries left by kills (collected by gc); \
         fsck clean and refs resolved after every kill; every rerun completed \
         (mean {:.2?}) and the last one's image is the tree's compute-id; total {:.1?}",
        tally.landed + tally.finished,
        tally.landed,
        tally.finished,
        late.landed + late.finished,
        late.landed,
        late.finished,
        tally.leftover_links,
        rerun_time / n as u32,
        test_start.elapsed()
    );
    assert!(
        tally.landed + late.landed >= n / 2,
        "too few kills landed mid-run ({} + {} of {n})",
        tally.landed,
        late.landed
    );
}

/// Garbage for GC: `objects` loose objects written through the library,
/// and an image of `small` stored and un-named through the CLI.
fn make_garbage(repo: &Path, small: &Path, objects: usize, rng: &mut StdRng) {
    {
        let r = Repository::<Sha512Digest>::open(repo).expect("open");
        for _ in 0..objects {
            let len = rng.random_range(SIZES.0..=SIZES.1);
            let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            r.ensure_object(&data).expect("write object");
        }
        // Dropping `r` releases the lock GC needs.
    }
    let files: Vec<PathBuf> = (0..20)
        .map(|i| PathBuf::from(format!("usr/d00/f{i:04}")))
        .collect();
    rewrite_some(small, &files, 20, SIZES, rng);
    create(repo, small, "garbage");
    ok(ours(repo).args(["image", "rm", "garbage"]));
}

#[test]
fn sigkill_during_gc() {
    const LIVE_FILES: usize = 500;
    const GARBAGE: usize = 1000;
    let (scratch, kind) = scratch("1g");
    let src = scratch.path().join("src");
    write_files(&src, LIVE_FILES, SIZES, 8);
    let small = scratch.path().join("small");
    write_files(&small, 20, SIZES, 9);
    let repo = scratch.path().join("repo");
    ok(ours(&repo).args(["repo", "init", "--insecure"]));
    create(&repo, &src, "live");
    let mut rng = rng(43);

    // Kills are spread over the median of three uninterrupted runs.
    let mut runs: Vec<Duration> = (0..3)
        .map(|_| {
            make_garbage(&repo, &small, GARBAGE, &mut rng);
            let started = Instant::now();
            ok(ours(&repo).args(["repo", "gc"]));
            started.elapsed()
        })
        .collect();
    runs.sort();
    let mut full = Estimate(runs[1]);
    let first = runs[1];

    let mut tally = Tally::default();
    let test_start = Instant::now();
    let mut removed_by_reruns = 0u64;
    for i in 0..kills() {
        make_garbage(&repo, &small, GARBAGE, &mut rng);
        let delay = random_delay(&mut rng, &full);
        let (landed, ended) = run_and_kill(ours(&repo).args(["repo", "gc"]), delay, &mut tally);
        full.learn(delay, landed, ended);
        tally.leftover_links += leftover_links(&repo);
        check_consistent(&repo, &format!("after kill {i} at {delay:?}"));
        assert!(image_refs(&repo).contains_key("live"));

        let out = ok(ours(&repo).args(["--json", "repo", "gc"]));
        let report: serde_json::Value = serde_json::from_str(&out).expect("json");
        removed_by_reruns += report["objectsRemoved"].as_u64().expect("count");
        let again = ok(ours(&repo).args(["--json", "repo", "gc", "--dry-run"]));
        let again: serde_json::Value = serde_json::from_str(&again).expect("json");
        assert_eq!(again["objectsRemoved"], 0, "rerun left garbage: {again}");
        assert_eq!(again["linksRemoved"], serde_json::json!([]), "{again}");
    }
    check_consistent(&repo, "at the end");
    let n = kills();
    eprintln!(
        "repo gc on a {kind}: {LIVE_FILES} live files, {GARBAGE} garbage objects and an \
         unnamed image per round, uninterrupted gc {first:.2?} (median of 3, then learnt from the runs: {:.2?} at the end); {n} kills: {} mid-run, {} \
         after the run had finished; fsck clean and refs resolved after every kill; reruns \
         completed, removing {removed_by_reruns} leftover objects in all, and left nothing \
         to collect; total {:.1?}",
        full.0,
        tally.landed,
        tally.finished,
        test_start.elapsed()
    );
    assert!(
        tally.landed >= n / 2,
        "too few kills landed mid-run ({}/{n})",
        tally.landed
    );
}
