//! A booted host has its physical root mounted read-only at `/sysroot`
//! (setup-root does that, so nothing changes the repository or the state
//! by accident). Commands that write there do as ostree does: the process
//! enters a mount namespace of its own and makes its copy of that mount
//! writable. The rest of the system keeps seeing it read-only, and the
//! writable copy ends with the process.
//!
//! The namespace is entered with `unshare`, which needs the crate's one
//! `unsafe` call: rustix marks it so because of `CLONE_FILES`, which is
//! not used here.
#![allow(unsafe_code)]

use std::path::Path;

use anyhow::{bail, Context, Result};
use rustix::fs::StatVfsMountFlags;
use rustix::io::Errno;
use rustix::mount::{mount_change, mount_remount, MountFlags, MountPropagationFlags};
use rustix::thread::{unshare_unsafe, UnshareFlags};

/// Whether this process has entered its own mount namespace.
static PRIVATE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Moves this process into a mount namespace of its own (once), where
/// nothing mounted propagates back to the system. Call it before any
/// thread is started.
pub fn enter_private_namespace() -> Result<()> {
    use std::sync::atomic::Ordering;
    if PRIVATE.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    // SAFETY: CLONE_NEWNS (with the CLONE_FS it implies) leaves the file
    // descriptor table shared, the case rustix's safety note is about.
    unsafe { unshare_unsafe(UnshareFlags::NEWNS) }.context("entering a private mount namespace")?;
    // Nothing done in this namespace propagates back to the system.
    mount_change(
        "/",
        MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC,
    )
    .context("making the private mount namespace a slave")?;
    Ok(())
}

/// Makes `path` writable for this process if it lies on a read-only
/// mount (see the module documentation); does nothing otherwise, or if
/// `path` does not exist. Call it before any thread is started: a new
/// mount namespace applies to the calling thread and those it starts.
pub fn make_writable(path: &Path) -> Result<()> {
    let Some(flags) = mount_flags(path)? else {
        return Ok(());
    };
    if !flags.contains(StatVfsMountFlags::RDONLY) {
        return Ok(());
    }
    enter_private_namespace()?;
    // Keep the mount's other per-mount flags; atime flags are kept by the
    // kernel when none is given.
    let mut keep = MountFlags::BIND;
    for (has, flag) in [
        (StatVfsMountFlags::NOSUID, MountFlags::NOSUID),
        (StatVfsMountFlags::NODEV, MountFlags::NODEV),
        (StatVfsMountFlags::NOEXEC, MountFlags::NOEXEC),
    ] {
        if flags.contains(has) {
            keep |= flag;
        }
    }
    // The mount point is `path` or one of its parents: remounting
    // anything else fails with EINVAL.
    let mount_point = path
        .ancestors()
        .find_map(|candidate| match mount_remount(candidate, keep, "") {
            Ok(()) => Some(Ok(candidate)),
            Err(Errno::INVAL) => None,
            Err(e) => Some(Err(e)),
        })
        .with_context(|| format!("found no mount point above {}", path.display()))?
        .with_context(|| format!("making the mount of {} writable", path.display()))?;
    if mount_flags(path)?.is_some_and(|f| f.contains(StatVfsMountFlags::RDONLY)) {
        bail!(
            "the filesystem at {} is read-only (not only its mount at {})",
            path.display(),
            mount_point.display()
        );
    }
    Ok(())
}

fn mount_flags(path: &Path) -> Result<Option<StatVfsMountFlags>> {
    match rustix::fs::statvfs(path) {
        Ok(stat) => Ok(Some(stat.f_flag)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("checking the mount of {}", path.display())),
    }
}
