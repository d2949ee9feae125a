//! Runs parsed commands.

mod bless;
mod host;
mod image;
mod repo;
mod setup_root;

use std::path::PathBuf;

use anyhow::{Context, Result};
use cfs_erofs::digest::{Algorithm, FsVerityDigest, Sha256Digest, Sha512Digest};
use cfs_images::Repository;

use crate::cli::{Args, Command, Hash, ImageCommand, RepoCommand};

/// Runs `args`. The digest type is picked once, here: from the
/// repository's meta.json when the command uses one, else from `--hash`.
pub fn run(mut args: Args) -> Result<()> {
    // Before anything starts a thread (see `make_writable`).
    if let Some(path) = written_path(&args) {
        crate::writable::make_writable(&path)?;
    }
    if let Some(boot_dir @ None) = boot_dir_mut(&mut args.command) {
        *boot_dir = Some(crate::esp::locate()?);
    }
    let algorithm = match uses_existing_repo(&args.command) {
        true => {
            let path = match (&args.command, host_args(&args.command)) {
                (Command::SetupRoot { sysroot, .. }, _) => sysroot.join(crate::host::REPO_DIR),
                (Command::Image(ImageCommand::Copy { from_repo, .. }), _) => from_repo.clone(),
                (_, Some(host)) => host.sysroot.join(crate::host::REPO_DIR),
                (_, None) => repo_path(&args),
            };
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
        Command::Bless { .. } | Command::Install(_) => false,
        Command::Serve { .. } => true,
        Command::Upgrade { .. }
        | Command::Switch { .. }
        | Command::Finalize { .. }
        | Command::Pin { .. }
        | Command::Rollback { .. }
        | Command::Status { .. }
        | Command::Gc { .. }
        | Command::SetupRoot { .. } => true,
        Command::Image(command) => matches!(
            command,
            ImageCommand::Create { .. }
                | ImageCommand::Mount { .. }
                | ImageCommand::Rm { .. }
                | ImageCommand::Pull { .. }
                | ImageCommand::Copy { .. }
                | ImageCommand::PushLayer { .. }
                | ImageCommand::PullLayer { .. }
        ),
    }
}

/// Where a command writes, if it writes below a physical root that a
/// booted host mounts read-only: the host commands' sysroot, the
/// repository of the repository commands that change it.
fn written_path(args: &Args) -> Option<PathBuf> {
    match &args.command {
        Command::Status { .. } | Command::Upgrade { check: true, .. } => None,
        Command::Repo(
            RepoCommand::Gc { dry_run: false }
            | RepoCommand::Fsck { repair: true }
            | RepoCommand::EnableVerity,
        ) => Some(repo_path(args)),
        command => host_args(command).map(|host| host.sysroot.clone()),
    }
}

/// Where a host command finds the host.
fn host_args(command: &Command) -> Option<&crate::cli::HostArgs> {
    match command {
        Command::Upgrade { host, .. }
        | Command::Switch { host, .. }
        | Command::Finalize { host }
        | Command::Pin { host, .. }
        | Command::Rollback { host }
        | Command::Status { host }
        | Command::Gc { host } => Some(host),
        _ => None,
    }
}

/// The boot directory option of the host commands, to be filled in
/// when not given.
fn boot_dir_mut(command: &mut Command) -> Option<&mut Option<PathBuf>> {
    match command {
        Command::Upgrade { host, .. }
        | Command::Switch { host, .. }
        | Command::Finalize { host }
        | Command::Pin { host, .. }
        | Command::Rollback { host }
        | Command::Status { host }
        | Command::Gc { host } => Some(&mut host.boot_dir),
        _ => None,
    }
}

/// `--repo`, or where cfsctl looks by default.
pub(crate) fn repo_path(args: &Args) -> PathBuf {
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
        Command::Serve { varlink } => {
            // Opened once to fail early; the service opens it per call.
            drop(open_repo::<H>(&args)?);
            crate::varlink::serve::<H>(&repo_path(&args), varlink)
        }
        Command::Install(command) => host::install::<H>(&args, command),
        Command::Upgrade { check, keep, host } => {
            host::upgrade::<H>(&args, host, None, *check, *keep)
        }
        Command::Switch { source, keep, host } => {
            host::upgrade::<H>(&args, host, Some(source), false, *keep)
        }
        Command::Finalize { host } => host::finalize::<H>(&args, host),
        Command::Pin { id, unpin, host } => host::pin(host, id, *unpin),
        Command::Rollback { host } => host::rollback(&args, host),
        Command::Status { host } => host::status(&args, host),
        Command::Gc { host } => host::gc::<H>(&args, host),
        Command::SetupRoot { sysroot, cmdline } => setup_root::run::<H>(sysroot, cmdline),
    }
}

/// Prints `value` as JSON on one line.
fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}
