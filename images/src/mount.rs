//! Mounting a stored image as composefs does: the EROFS image (file-backed)
//! as the metadata layer, overlayfs on top with the repository's objects
//! as a data-only lower layer, and `verity=require` unless the repository
//! is insecure, so the kernel checks every file's content on open.
//!
//! Before Linux 6.15 overlayfs refuses a detached mount as a layer, so the
//! EROFS mount is attached on a temporary directory (under
//! `$TMPDIR`) while the overlay is created, and detached right after: the
//! overlay keeps its own reference to the layer.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use cfs_erofs::digest::FsVerityDigest;
use rustix::fs::{Mode, OFlags, CWD};
use rustix::mount::{
    fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount, unmount,
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, UnmountFlags,
};

use crate::error::{Error, IoContext, Result};
use crate::objects::object_path;
use crate::repo::{proc_fd, Repository};

impl<H: FsVerityDigest> Repository<H> {
    /// Mounts the image `name` (hex digest or ref) read-only at
    /// `mountpoint`. The image's own digest is checked first.
    pub fn mount_image(&self, name: &str, mountpoint: &Path) -> Result<H> {
        let digest = self.resolve_image(name)?;
        // Checks the digest (kernel or userspace) before the kernel parses it.
        self.read_object(&digest)?;
        let image = self.open_object(&digest)?;
        let op = "mounting";

        let erofs = fsopen("erofs", FsOpenFlags::FSOPEN_CLOEXEC).io(op, "erofs")?;
        fsconfig_set_string(&erofs, "source", proc_fd(&image)).io(op, object_path(&digest))?;
        fsconfig_set_flag(&erofs, "ro").io(op, "erofs")?;
        fsconfig_create(&erofs).io("creating erofs mount of", object_path(&digest))?;
        let layer = fsmount(
            &erofs,
            FsMountFlags::FSMOUNT_CLOEXEC,
            MountAttrFlags::MOUNT_ATTR_RDONLY,
        )
        .io(op, "erofs")?;
        let layer = AttachedLayer::attach(layer)?;

        let objects = rustix::fs::openat(
            self.dir(),
            "objects",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .io("opening", "objects")?;
        let overlay = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).io(op, "overlay")?;
        let set = |key: &str, value: &str| {
            fsconfig_set_string(&overlay, key, value).io(op, format!("overlay {key}={value}"))
        };
        set("source", &format!("composefs:{}", digest.to_hex()))?;
        set("metacopy", "on")?;
        set("redirect_dir", "on")?;
        set("lowerdir+", &layer.path())?;
        set("datadir+", &proc_fd(&objects))?;
        if !self.is_insecure() {
            set("verity", "require")?;
        }
        fsconfig_create(&overlay).io("creating overlay mount of", object_path(&digest))?;
        drop(layer);
        let root = fsmount(
            &overlay,
            FsMountFlags::FSMOUNT_CLOEXEC,
            MountAttrFlags::MOUNT_ATTR_RDONLY,
        )
        .io(op, "overlay")?;
        move_mount(
            root.as_fd(),
            "",
            CWD,
            mountpoint,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(|e| Error::Io {
            op: "attaching mount at",
            path: mountpoint.to_owned(),
            source: e.into(),
        })?;
        Ok(digest)
    }
}

/// A mount attached on a temporary directory, detached and the directory
/// removed when dropped.
struct AttachedLayer {
    dir: tempfile::TempDir,
}

impl AttachedLayer {
    fn attach(mount: OwnedFd) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(".cfs-layer-")
            .tempdir()
            .io("creating a directory for", "the EROFS layer")?;
        move_mount(
            mount.as_fd(),
            "",
            CWD,
            dir.path(),
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(|e| Error::Io {
            op: "attaching the EROFS layer at",
            path: dir.path().to_owned(),
            source: e.into(),
        })?;
        Ok(Self { dir })
    }

    fn path(&self) -> String {
        self.dir.path().to_string_lossy().into_owned()
    }
}

impl Drop for AttachedLayer {
    fn drop(&mut self) {
        let _ = unmount(self.dir.path(), UnmountFlags::DETACH);
    }
}
