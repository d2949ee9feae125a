//! The initramfs step that turns the physical root into a deployment's
//! root, before systemd's `switch-root`: the boot image named by
//! `composefs=[?]ID` becomes `/`, with the deployment's own `/etc`, the
//! shared `/var`, and the physical root read-only at `/sysroot`.
//!
//! Kernels before 6.15 cannot attach mounts below a detached mount tree,
//! and a mount below a shared parent (systemd makes `/` shared) cannot be
//! moved; so, as bootc does on those kernels, the composefs mount is
//! stacked directly on `<sysroot>` and the other mounts are attached
//! below it. Everything they come from (the physical root itself, the
//! state directories) is opened *before* the stacking, while `<sysroot>`
//! still shows the physical root. If any step after the stacking fails,
//! the stack is detached again, so `<sysroot>` shows the physical root as
//! before.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use anyhow::{bail, Context, Result};
use cap_std::ambient_authority;
use cap_std::fs::Dir;
use cfs_boot::uki::ComposefsArg;
use cfs_erofs::digest::FsVerityDigest;
use cfs_images::Repository;
use rustix::fs::{Mode, OFlags};
use rustix::mount::{
    mount_remount, move_mount, open_tree, unmount, MountFlags, MoveMountFlags, OpenTreeFlags,
    UnmountFlags,
};

use crate::host::{REPO_DIR, STATE_DIR};

/// Mounts the deployment `cmdline` names over `sysroot` (see the module
/// documentation). Returns its `composefs=` argument.
pub fn setup_root<H: FsVerityDigest>(sysroot: &Path, cmdline: &str) -> Result<ComposefsArg> {
    let arg = ComposefsArg::find(cmdline).context("no composefs= on the kernel command line")?;
    let id = &arg.digest;
    H::from_hex(id).with_context(|| format!("composefs={id}: not an image digest"))?;

    let repo_path = sysroot.join(REPO_DIR);
    let repo = Repository::<H>::open(&repo_path)
        .with_context(|| format!("opening repository {}", repo_path.display()))?;
    if repo.is_insecure() && !arg.insecure {
        bail!(
            "composefs={id} requires fs-verity, but repository {} has none \
             (composefs=?{id} boots without it)",
            repo_path.display()
        );
    }

    // Everything below the physical root is reached while it still shows.
    let physical = Dir::open_ambient_dir(sysroot, ambient_authority())
        .with_context(|| format!("opening the physical root {}", sysroot.display()))?;
    let state = format!("{STATE_DIR}/{id}");
    let etc = clone_dir(&physical, &format!("{state}/etc"), sysroot)?;
    // cap-std resolves the `var` symlink inside the physical root only:
    // an absolute or escaping target is refused.
    let var = clone_dir(&physical, &format!("{state}/var"), sysroot)?;
    let physical_clone = open_tree(
        &physical,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH,
    )
    .with_context(|| format!("cloning the mount of {}", sysroot.display()))?;

    repo.mount_image(id, sysroot)
        .with_context(|| format!("mounting image {id} on {}", sysroot.display()))?;
    drop(repo);
    let attached = attach_state(sysroot, physical_clone, etc, var);
    if attached.is_err() {
        // Peel the stack off again: the physical root shows as before.
        let _ = unmount(sysroot, UnmountFlags::DETACH);
    }
    attached.with_context(|| format!("assembling the root of deployment {id}"))?;
    Ok(arg)
}

/// A detached bind mount of `path` below the physical root.
fn clone_dir(physical: &Dir, path: &str, sysroot: &Path) -> Result<OwnedFd> {
    let shown = sysroot.join(path);
    let dir = physical
        .open_dir(path)
        .with_context(|| format!("opening {}", shown.display()))?;
    open_tree(
        &dir,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH,
    )
    .with_context(|| format!("cloning a mount of {}", shown.display()))
}

/// Attaches the physical root (read-only), `/etc` and `/var` below the
/// new root now mounted at `sysroot`.
fn attach_state(sysroot: &Path, physical: OwnedFd, etc: OwnedFd, var: OwnedFd) -> Result<()> {
    let new_root = rustix::fs::open(
        sysroot,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("opening the new root at {}", sysroot.display()))?;
    attach(&new_root, "sysroot", &physical)?;
    // A bind mount inherits the source's flags: make this one read-only.
    let target = sysroot.join("sysroot");
    mount_remount(&target, MountFlags::BIND | MountFlags::RDONLY, "")
        .with_context(|| format!("making {} read-only", target.display()))?;
    attach(&new_root, "etc", &etc)?;
    attach(&new_root, "var", &var)?;
    Ok(())
}

/// Moves the detached mount `tree` onto the directory `name` of the new
/// root. The image decides what `name` is: a symlink there is refused,
/// not followed.
fn attach(new_root: &OwnedFd, name: &str, tree: &OwnedFd) -> Result<()> {
    let target = rustix::fs::openat(
        new_root,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("the image has no /{name} directory to mount on"))?;
    move_mount(
        tree.as_fd(),
        "",
        target.as_fd(),
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .with_context(|| format!("mounting on /{name} of the new root"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cfs_erofs::digest::Sha512Digest;

    #[test]
    fn command_line_without_or_with_a_bad_composefs_is_refused() {
        let sysroot = Path::new("/nonexistent-sysroot");
        let none = setup_root::<Sha512Digest>(sysroot, "root=/dev/vda2 rw").unwrap_err();
        assert!(format!("{none:#}").contains("no composefs="), "{none:#}");
        let bad = setup_root::<Sha512Digest>(sysroot, "composefs=?../../etc").unwrap_err();
        assert!(
            format!("{bad:#}").contains("composefs=../../etc: not an image digest"),
            "{bad:#}"
        );
    }
}
