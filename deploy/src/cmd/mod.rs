//! Runs parsed commands.

mod bless;
mod image;
mod repo;

use std::path::PathBuf;

use anyhow::{Context, Result};
use cfs_erofs::digest::{Algorithm, FsVerityDigest, Sha256Digest, Sha512Digest};
use cfs_images::Repository;

use crate::cli::{Args, Command, Hash, ImageCommand, RepoCommand};

/// Runs `args`. The digest type is picked once, here: from the
/// repository's meta.json when the command uses one, else from `--hash`.
pub fn run(args: Args) -> Result<()> {
    let algorithm = match uses_existing_repo(&args.command) {
        true => {
            let path = repo_path(&args);
            cfs_images::meta::repository_algorithm(&path)
                .with_context(|| format!("opening repository {}", path.display()))?
        }
        false => match args.hash {
            Hash::Sha256 => Algorithm::Sha256,
            Hash::Sha512 => Algorithm::Sha512,
        },
    };
    match algorithm {
        Algorithm::Sha256 => dispatch::<Sha256Digest>(args),
        Algorithm::Sha512 => dispatch::<Sha512Digest>(args),
    }
}

fn uses_existing_repo(command: &Command) -> bool {
    match command {
        Command::Repo(RepoCommand::Init { .. }) => false,
        Command::Repo(_) => true,
        Command::Bless { .. } => false,
        Command::Image(command) => matches!(
            command,
            ImageCommand::Create { .. }
                | ImageCommand::Mount { .. }
                | ImageCommand::Rm { .. }
                | ImageCommand::Pull { .. }
        ),
    }
}

/// `--repo`, or where cfsctl looks by default.
fn repo_path(args: &Args) -> PathBuf {
    if let Some(path) = &args.repo {
        return path.clone();
    }
    if rustix::process::geteuid().is_root() {
        PathBuf::from("/sysroot/composefs")
    } else {
        let home = std::env::var_os("HOME").unwrap_or_default();
        PathBuf::from(home).join(".var/lib/composefs")
    }
}

/// Opens the repository the command names.
fn open_repo<H: FsVerityDigest>(args: &Args) -> Result<Repository<H>> {
    let path = repo_path(args);
    Repository::open(&path).with_context(|| format!("opening repository {}", path.display()))
}

fn dispatch<H: FsVerityDigest>(args: Args) -> Result<()> {
    match &args.command {
        Command::Image(command) => image::run::<H>(&args, command),
        Command::Repo(command) => repo::run::<H>(&args, command),
        Command::Bless { esp } => bless::run(esp.as_deref()),
    }
}

/// Prints `value` as JSON on one line.
fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}
