//! Turning an insecure repository into a secure one, once the filesystem
//! (or the kernel) it lives on has fs-verity.
//!
//! A host is installed from a machine whose kernel may lack fs-verity
//! (an image builder, a live system): its repository is then written
//! insecure. Booted on a kernel that has fs-verity, the repository can be
//! upgraded in place: every object gets fs-verity, and its kernel
//! measurement must equal its name (so a corrupt object stops the
//! upgrade, as `fsck` would report it). `meta.json` gets fs-verity last:
//! that one step is what makes the repository secure, so an upgrade cut
//! short leaves an insecure repository whose objects partly have
//! fs-verity, which insecure repositories accept.

use std::sync::atomic::{AtomicUsize, Ordering};

use rustix::fs::{Mode, OFlags};

use cfs_erofs::digest::FsVerityDigest;

use crate::error::{Error, IoContext, Result};
use crate::gc::list_dir;
use crate::repo::Repository;
use crate::verity::{self, VerityState};

/// What [`Repository::enable_verity`] did.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnableVerityReport {
    /// Objects that got fs-verity now.
    pub objects_enabled: u64,
    /// Objects that had it already.
    pub objects_already: u64,
    /// Whether the repository was secure before.
    pub was_secure: bool,
}

impl<H: FsVerityDigest> Repository<H> {
    /// Enables fs-verity on every object and then on `meta.json`, making
    /// the repository secure (see the module documentation). Holds the
    /// repository exclusively meanwhile: no writer may hold an object
    /// open, or the kernel refuses.
    pub fn enable_verity(&self) -> Result<EnableVerityReport> {
        self.check_writable()?;
        let _exclusive = self.lock_exclusive()?;
        let mut report = EnableVerityReport {
            was_secure: !self.is_insecure(),
            ..Default::default()
        };
        let dirs: Vec<String> = list_dir(self.dir(), "objects")?
            .into_iter()
            .filter(|(_, is_dir)| *is_dir)
            .map(|(name, _)| name)
            .collect();
        // The kernel hashes each file as fs-verity is enabled: one worker
        // per core.
        let next = AtomicUsize::new(0);
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let counts = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(|| {
                        let mut counts = (0, 0);
                        while let Some(dir) = dirs.get(next.fetch_add(1, Ordering::Relaxed)) {
                            let (enabled, already) = self.enable_in_dir(dir)?;
                            counts.0 += enabled;
                            counts.1 += already;
                        }
                        Ok::<_, Error>(counts)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().expect("no worker panics"))
                .collect::<Result<Vec<_>>>()
        })?;
        for (enabled, already) in counts {
            report.objects_enabled += enabled;
            report.objects_already += already;
        }
        let meta = self.open_readonly("meta.json")?;
        if !verity::enable::<H>(&meta).io("enabling fs-verity on", "meta.json")? {
            return Err(Error::NoVerity(self.path().to_owned()));
        }
        rustix::fs::fsync(&meta).io("syncing", "meta.json")?;
        rustix::fs::fsync(self.dir()).io("syncing", self.path())?;
        Ok(report)
    }

    /// Enables fs-verity on the objects of `objects/<dir>`; returns how
    /// many got it now and how many had it.
    fn enable_in_dir(&self, dir: &str) -> Result<(u64, u64)> {
        let dir_path = format!("objects/{dir}");
        let mut counts = (0, 0);
        for (file, _) in list_dir(self.dir(), &dir_path)? {
            let path = format!("{dir_path}/{file}");
            let name = H::from_hex(&format!("{dir}{file}")).map_err(|_| Error::CorruptObject {
                name: path.clone(),
                found: "a name that is not a digest".into(),
            })?;
            if self.enable_on(&path, &name)? {
                counts.0 += 1;
            } else {
                counts.1 += 1;
            }
        }
        Ok(counts)
    }

    /// Enables fs-verity on the object at `path` and checks the kernel's
    /// measurement against `name`. Returns whether it was enabled now.
    fn enable_on(&self, path: &str, name: &H) -> Result<bool> {
        let fd = self.open_readonly(path)?;
        let before = verity::measure::<H>(&fd).io("measuring", path)?;
        if before == VerityState::Unsupported {
            return Err(Error::NoVerity(self.path().to_owned()));
        }
        if before == VerityState::Disabled
            && !verity::enable::<H>(&fd).io("enabling fs-verity on", path)?
        {
            return Err(Error::NoVerity(self.path().to_owned()));
        }
        match verity::measure::<H>(&fd).io("measuring", path)? {
            VerityState::Enabled(found) if found == *name => Ok(before == VerityState::Disabled),
            VerityState::Enabled(found) => Err(Error::CorruptObject {
                name: name.to_hex(),
                found: found.to_hex(),
            }),
            VerityState::Disabled | VerityState::Unsupported => {
                Err(Error::NoVerity(self.path().to_owned()))
            }
        }
    }

    fn open_readonly(&self, path: &str) -> Result<std::os::fd::OwnedFd> {
        rustix::fs::openat(
            self.dir(),
            path,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .io("opening", path)
    }
}
