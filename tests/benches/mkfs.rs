//! `just bench`: writing the EROFS image of a 50,000-file tree, ours
//! against the reference crate, in the same run.
//!
//! Each implementation runs in its own child process (this same binary,
//! told which one by an environment variable) so that its peak memory is
//! its own: the child resets the kernel's high-water mark after building
//! the input tree and reads it back after writing.

#[path = "../tests/reference/mod.rs"]
mod reference;

use std::process::Command;
use std::time::{Duration, Instant};

use cfs_erofs::digest::Sha256Digest;
use cfs_erofs::format::FormatVersion;
use cfs_tests::rootfs_like_tree;
use composefs::erofs::writer::{mkfs_erofs_versioned, ValidatedFileSystem};

const FILES: usize = 50_000;
const ROUNDS: usize = 5;
const CHILD_ENV: &str = "CFS_BENCH_IMPL";

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("field in /proc/self/status")
}

/// Runs one implementation; prints `best-seconds peak-extra-kib size`.
fn child(which: &str) {
    let fs = rootfs_like_tree::<Sha256Digest>(FILES, 1);
    let validated = (which == "reference")
        .then(|| ValidatedFileSystem::new(reference::to_reference(&fs)).expect("valid tree"));
    let version = FormatVersion::V1;
    // Reset the peak RSS to the current RSS (Linux >= 4.0).
    std::fs::write("/proc/self/clear_refs", "5").expect("clear_refs");
    let base = status_kib("VmRSS:");
    let mut best = Duration::MAX;
    let mut size = 0;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        size = match &validated {
            Some(v) => mkfs_erofs_versioned(v, reference::ref_version(version)).len(),
            None => cfs_erofs::writer::mkfs(&fs, version).expect("mkfs").len(),
        };
        best = best.min(start.elapsed());
    }
    let peak = status_kib("VmHWM:").saturating_sub(base);
    println!("{} {} {}", best.as_secs_f64(), peak, size);
}

fn run(which: &str) -> (f64, u64, usize) {
    let out = Command::new(std::env::current_exe().expect("own path"))
        .env(CHILD_ENV, which)
        .output()
        .expect("spawn benchmark child");
    assert!(out.status.success(), "{which} failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut fields = text.split_whitespace();
    let mut next = || fields.next().expect("three fields").to_owned();
    (
        next().parse().expect("seconds"),
        next().parse().expect("kib"),
        next().parse().expect("size"),
    )
}

fn main() {
    if let Ok(which) = std::env::var(CHILD_ENV) {
        return child(&which);
    }
    let (ours_s, ours_kib, ours_size) = run("ours");
    let (ref_s, ref_kib, ref_size) = run("reference");
    assert_eq!(ours_size, ref_size, "both write the same image");
    println!("mkfs of a {FILES}-file tree (V1, sha256, {ours_size} bytes), best of {ROUNDS}:");
    println!(
        "  ours:      {:8.1} ms   peak +{:7.1} MiB",
        ours_s * 1e3,
        ours_kib as f64 / 1024.0
    );
    println!(
        "  reference: {:8.1} ms   peak +{:7.1} MiB",
        ref_s * 1e3,
        ref_kib as f64 / 1024.0
    );
    println!(
        "  ratio ours/reference: time {:.2}, memory {:.2} (target: time <= 1.00)",
        ours_s / ref_s,
        ours_kib as f64 / ref_kib.max(1) as f64
    );
}
