//! Opening and creating repositories, and the locking discipline.
//!
//! Every open repository holds a shared `flock` on its directory for its
//! whole life; garbage collection converts it to an exclusive lock for the
//! sweep only. So GC never runs while anyone might be about to link an
//! object they just wrote, and writers never wait on each other.

use std::io::{Read, Write};
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use cfs_erofs::digest::FsVerityDigest;
use cfs_erofs::format::FormatVersion;
use rustix::fs::{flock, AtFlags, FlockOperation, Mode, OFlags, CWD};
use rustix::io::Errno;

use crate::error::{Error, IoContext, Result};
use crate::meta::{algorithm_name, RepoMeta};
use crate::verity::{self, VerityState};

/// What `init` creates.
#[derive(Debug, Clone, Copy)]
pub struct InitOptions {
    /// The EROFS format of the images the repository names.
    pub format: FormatVersion,
    /// Whether objects go without fs-verity (for filesystems that lack
    /// it); digests are then checked in userspace where it matters.
    pub insecure: bool,
}

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            format: FormatVersion::V1,
            insecure: false,
        }
    }
}

/// An open composefs repository whose objects are named by `H` digests.
#[derive(Debug)]
pub struct Repository<H> {
    dir: OwnedFd,
    path: PathBuf,
    meta: RepoMeta,
    format: FormatVersion,
    insecure: bool,
    writable: bool,
    _digest: PhantomData<H>,
}

/// `/proc/self/fd/N`, to reach an unnamed file by path (for `linkat` and
/// read-only reopening).
pub(crate) fn proc_fd(fd: impl AsFd) -> String {
    format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd())
}

fn open_dir(path: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .io("opening repository", path)
}

impl<H: FsVerityDigest> Repository<H> {
    /// Creates a repository at `path` (and missing parents), or opens the
    /// one there if its configuration is the same.
    pub fn init(path: &Path, options: &InitOptions) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).io("creating", parent)?;
        }
        match rustix::fs::mkdir(path, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e).io("creating", path),
        }
        let dir = open_dir(path)?;
        flock(&dir, FlockOperation::LockExclusive).io("locking", path)?;
        // The directories first: meta.json makes the directory a
        // repository, so an init cut short before it leaves none.
        for sub in ["objects", "images", "streams"] {
            match rustix::fs::mkdirat(&dir, sub, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(e).io("creating", path.join(sub)),
            }
        }
        let wanted = RepoMeta::new(H::ALGORITHM, options.format);
        match read_meta(&dir, path) {
            Ok(bytes) => {
                let (found, _) = RepoMeta::parse(&bytes)?;
                let found_insecure = !matches!(
                    verity::measure::<H>(open_meta(&dir, path)?).io("measuring", path)?,
                    VerityState::Enabled(_)
                );
                if found != wanted || found_insecure != options.insecure {
                    return Err(Error::AlreadyInitialized(format!(
                        "{}, {} images, {}",
                        found.algorithm,
                        found.default_format()?.header_version(),
                        if found_insecure {
                            "insecure"
                        } else {
                            "fs-verity"
                        }
                    )));
                }
            }
            Err(Error::NotARepository(_)) => write_meta::<H>(&dir, path, &wanted, options)?,
            Err(e) => return Err(e),
        }
        rustix::fs::fsync(&dir).io("syncing", path)?;
        drop(dir);
        Self::open(path)
    }

    /// Opens the repository at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let dir = open_dir(path)?;
        flock(&dir, FlockOperation::LockShared).io("locking", path)?;
        let (meta, writable) = RepoMeta::parse(&read_meta(&dir, path)?)?;
        if meta.algorithm != algorithm_name(H::ALGORITHM) {
            return Err(Error::AlgorithmMismatch {
                found: meta.algorithm,
                expected: algorithm_name(H::ALGORITHM),
            });
        }
        // A repository is secure exactly when its meta.json has fs-verity:
        // the state is recorded on disk, never guessed per call.
        let insecure = !matches!(
            verity::measure::<H>(open_meta(&dir, path)?).io("measuring", path.join("meta.json"))?,
            VerityState::Enabled(_)
        );
        let format = meta.default_format()?;
        Ok(Self {
            dir,
            path: path.to_owned(),
            meta,
            format,
            insecure,
            writable,
            _digest: PhantomData,
        })
    }

    /// Where the repository is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether objects go without fs-verity.
    pub fn is_insecure(&self) -> bool {
        self.insecure
    }

    /// The format of the images the repository names.
    pub fn format(&self) -> FormatVersion {
        self.format
    }

    /// The parsed `meta.json`.
    pub fn meta(&self) -> &RepoMeta {
        &self.meta
    }

    pub(crate) fn dir(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// Refuses writes to a repository with features we do not know.
    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(Error::ReadOnly(
                self.meta.features.read_only_compatible.clone(),
            ))
        }
    }

    /// Flushes everything written so far to disk; called before any link
    /// makes new objects reachable.
    pub fn sync(&self) -> Result<()> {
        rustix::fs::syncfs(&self.dir).io("syncing", &self.path)
    }

    /// Holds the lock exclusively (waiting for every other user to close
    /// the repository) until the guard is dropped.
    pub(crate) fn lock_exclusive(&self) -> Result<ExclusiveGuard<'_>> {
        flock(&self.dir, FlockOperation::LockExclusive).io("locking", &self.path)?;
        Ok(ExclusiveGuard { dir: &self.dir })
    }
}

/// While alive, nobody else has the repository open; dropping it goes
/// back to sharing.
#[derive(Debug)]
pub(crate) struct ExclusiveGuard<'a> {
    dir: &'a OwnedFd,
}

impl Drop for ExclusiveGuard<'_> {
    fn drop(&mut self) {
        // Converting back cannot fail for a lock we hold.
        let _ = flock(self.dir, FlockOperation::LockShared);
    }
}

fn open_meta(dir: &OwnedFd, path: &Path) -> Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        "meta.json",
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::NOENT => Error::NotARepository(path.to_owned()),
        e => Error::Io {
            op: "opening",
            path: path.join("meta.json"),
            source: e.into(),
        },
    })
}

fn read_meta(dir: &OwnedFd, path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::from(open_meta(dir, path)?)
        .take(1 << 20)
        .read_to_end(&mut bytes)
        .io("reading", path.join("meta.json"))?;
    Ok(bytes)
}

/// Writes meta.json whole or not at all: an unnamed file, synced (and
/// verity-enabled for a secure repository), then linked into place.
fn write_meta<H: FsVerityDigest>(
    dir: &OwnedFd,
    path: &Path,
    meta: &RepoMeta,
    options: &InitOptions,
) -> Result<()> {
    let meta_path = path.join("meta.json");
    let tmp = rustix::fs::openat(
        dir,
        ".",
        OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .io("creating", &meta_path)?;
    let mut file = std::fs::File::from(tmp);
    file.write_all(&meta.to_json()).io("writing", &meta_path)?;
    file.sync_all().io("syncing", &meta_path)?;
    let readonly = rustix::fs::open(
        proc_fd(&file),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .io("reopening", &meta_path)?;
    drop(file);
    if !options.insecure
        && !verity::enable::<H>(&readonly).io("enabling fs-verity on", &meta_path)?
    {
        return Err(Error::NoVerity(path.to_owned()));
    }
    rustix::fs::linkat(
        CWD,
        proc_fd(&readonly),
        dir,
        "meta.json",
        AtFlags::SYMLINK_FOLLOW,
    )
    .io("linking", &meta_path)?;
    rustix::fs::fsync(dir).io("syncing", path)
}
