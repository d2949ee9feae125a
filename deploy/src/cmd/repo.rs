//! `cfs-deploy repo ...`: creating, listing, collecting and checking the
//! repository.

use anyhow::{bail, Context, Result};
use cfs_erofs::digest::FsVerityDigest;
use cfs_images::{InitOptions, Repository};

use super::{open_repo, print_json, repo_path};
use crate::cli::{Args, RepoCommand};

pub fn run<H: FsVerityDigest>(args: &Args, command: &RepoCommand) -> Result<()> {
    match command {
        RepoCommand::Init { insecure } => {
            let path = repo_path(args);
            let options = InitOptions {
                format: args.erofs_version,
                insecure: *insecure,
            };
            let repo = Repository::<H>::init(&path, &options)
                .with_context(|| format!("creating repository {}", path.display()))?;
            if args.json {
                print_json(repo.meta())?;
            } else {
                println!(
                    "repository {} ({}, EROFS V{}, {})",
                    path.display(),
                    H::ALGORITHM,
                    repo.format().header_version(),
                    if repo.is_insecure() {
                        "insecure"
                    } else {
                        "fs-verity"
                    }
                );
            }
        }
        RepoCommand::Gc { dry_run } => {
            let repo = open_repo::<H>(args)?;
            let report = repo.gc(*dry_run).context("collecting garbage")?;
            if args.json {
                print_json(&report)?;
            } else {
                let verb = if *dry_run { "would remove" } else { "removed" };
                for path in report.links_removed.iter().chain(&report.objects) {
                    println!("{verb} {path}");
                }
                println!(
                    "{verb} {} objects ({} bytes) and {} links",
                    report.objects_removed,
                    report.bytes_removed,
                    report.links_removed.len()
                );
            }
        }
        RepoCommand::Fsck { repair } => {
            let repo = open_repo::<H>(args)?;
            let report = repo.fsck(*repair).context("checking the repository")?;
            if args.json {
                print_json(&report)?;
            } else {
                for problem in &report.problems {
                    let kind = serde_json::to_value(problem.kind)?;
                    let kind = kind.as_str().unwrap_or("problem");
                    println!("{kind}: {}: {}", problem.path, problem.detail);
                }
                for path in &report.repaired {
                    println!("removed corrupt {path}");
                }
                println!(
                    "objects: {}, streams: {}, images: {}, refs: {}; status: {}",
                    report.objects_checked,
                    report.streams_checked,
                    report.images_checked,
                    report.refs_checked,
                    if report.is_clean() { "ok" } else { "BROKEN" }
                );
            }
            if !report.is_clean() {
                bail!("{} problems found", report.problems.len());
            }
        }
        RepoCommand::EnableVerity => {
            let repo = open_repo::<H>(args)?;
            let report = repo
                .enable_verity()
                .with_context(|| format!("enabling fs-verity in {}", repo.path().display()))?;
            if args.json {
                print_json(&report)?;
            } else {
                println!(
                    "fs-verity enabled on {} objects ({} had it); repository {} is secure",
                    report.objects_enabled,
                    report.objects_already,
                    repo.path().display()
                );
            }
        }
        RepoCommand::Ls => {
            let repo = open_repo::<H>(args)?;
            let images = repo.list_refs("images")?;
            let streams = repo.list_refs("streams")?;
            if args.json {
                print_json(&serde_json::json!({ "images": images, "streams": streams }))?;
            } else {
                for (name, target) in &images {
                    println!(
                        "image  {name} -> {}",
                        target.rsplit('/').next().unwrap_or(target)
                    );
                }
                for (name, target) in &streams {
                    println!(
                        "stream {name} -> {}",
                        target.rsplit('/').next().unwrap_or(target)
                    );
                }
            }
        }
    }
    Ok(())
}
