//! Installing a deployment's boot artefacts on the ESP, each write
//! atomic (temporary file, `fsync`, rename, `fsync` of the directory), so
//! that a crash leaves the previous entries bootable and never half an
//! entry or kernel.
//!
//! Layout on the ESP (systemd-boot's):
//! - `cfs-deploy/<sha256>/vmlinuz` and `initrd`: a kernel and its
//!   initramfs, named by the hash of both, so deployments with the same
//!   kernel share one copy;
//! - `loader/entries/<stem>[+N].conf`: Type 1 entries, for a kernel or
//!   for a UKI (an `efi` line);
//! - `EFI/cfs-deploy/<stem>.efi`: UKIs. Not in `EFI/Linux`, where
//!   systemd-boot would list them itself as Type 2 entries ordered by the
//!   sort key and version of their own `.osrel`, which a signed UKI
//!   cannot change: through a Type 1 entry our sort key orders them, so
//!   rollback works for UKIs too (bootc does the same).

use std::io::{self, Write};
use std::os::fd::AsFd;

use cap_std::fs::Dir;
use openssl::sha::Sha256;

use crate::entries::{BlsEntry, EntryName};
use crate::uki::Uki;

/// Where shared kernels live on the ESP.
pub const KERNELS_DIR: &str = "cfs-deploy";
/// Where Type 1 entries live on the ESP.
pub const ENTRIES_DIR: &str = "loader/entries";
/// Where UKIs live on the ESP, each named by a Type 1 entry.
pub const UKI_DIR: &str = "EFI/cfs-deploy";
/// Where a staged Type 1 entry waits for [`promote`]: systemd-boot does
/// not read it.
pub const STAGED_ENTRIES_DIR: &str = "loader/entries.staged";

/// What can stop an installation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    /// Writing to the ESP failed.
    #[error("{what} {path} on the ESP: {source}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The path below the ESP.
        path: String,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// A sealed UKI for another image.
    #[error(
        "the UKI's sealed command line names composefs={sealed}, but the image's boot \
         image is {image}: it was built for another image"
    )]
    SealedMismatch {
        /// The digest in the UKI's `.cmdline`.
        sealed: String,
        /// The boot image's digest.
        image: String,
    },
    /// A UKI that cannot find its root.
    #[error("the UKI's command line has no composefs= argument: it cannot boot a deployment")]
    NotSealed,
    /// No such entry to bless.
    #[error("{0} is not a boot entry file name")]
    NotAnEntry(String),
}

fn io_error<'a>(what: &'static str, path: &'a str) -> impl FnOnce(io::Error) -> InstallError + 'a {
    move |source| InstallError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// `fsync` of a directory, so that renames in it are durable. Through a
/// descriptor of our own: cap-std's may be `O_PATH`, which cannot sync.
fn sync_dir(dir: &Dir) -> io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::openat(
        dir.as_fd(),
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    rustix::fs::fsync(&fd).map_err(io::Error::from)
}

/// Writes `bytes` to `dir/name` atomically.
fn write_atomic(dir: &Dir, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = format!(".{name}.tmp");
    let mut file = dir.create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    dir.rename(&tmp, dir, name)?;
    sync_dir(dir)
}

fn open_or_create(esp: &Dir, path: &str) -> Result<Dir, InstallError> {
    esp.create_dir_all(path)
        .map_err(io_error("creating", path))?;
    esp.open_dir(path).map_err(io_error("opening", path))
}

/// A deployment's entry, before its artefacts are placed.
#[derive(Debug, Clone)]
pub struct NewEntry {
    /// Unique per deployment, stable across counter changes.
    pub stem: String,
    /// Menu title.
    pub title: String,
    /// Version shown.
    pub version: String,
    /// Orders entries (ascending): newest deployment first.
    pub sort_key: String,
    /// The kernel command line, `composefs=` included.
    pub options: String,
    /// Boot-counting tries, `None` for an uncounted entry.
    pub tries: Option<u32>,
    /// Written where the boot loader does not look, for [`promote`].
    pub staged: bool,
}

/// What was installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The entry file's path below the ESP.
    pub entry: String,
    /// The kernel directory (Type 1), below the ESP.
    pub kernel_dir: Option<String>,
    /// Whether that kernel was already there (shared with another
    /// deployment).
    pub kernel_shared: bool,
}

/// Installs a kernel and initramfs (once per distinct pair) and a Type 1
/// entry for them.
pub fn install_type1(
    esp: &Dir,
    entry: &NewEntry,
    vmlinuz: &[u8],
    initramfs: &[u8],
) -> Result<Installed, InstallError> {
    let mut hasher = Sha256::new();
    for part in [vmlinuz, initramfs] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let name = hex(&hasher.finish());
    let kernels = open_or_create(esp, KERNELS_DIR)?;
    let kernel_dir = format!("{KERNELS_DIR}/{name}");
    let shared = kernels.is_dir(&name);
    if !shared {
        // Filled under a temporary name, then renamed whole.
        let tmp = format!(".{name}.tmp");
        match kernels.remove_dir_all(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_error("clearing", &kernel_dir)(e))
            }
            _ => {}
        }
        kernels
            .create_dir(&tmp)
            .map_err(io_error("creating", &kernel_dir))?;
        let staging = kernels
            .open_dir(&tmp)
            .map_err(io_error("opening", &kernel_dir))?;
        write_atomic(&staging, "vmlinuz", vmlinuz).map_err(io_error("writing", &kernel_dir))?;
        write_atomic(&staging, "initrd", initramfs).map_err(io_error("writing", &kernel_dir))?;
        kernels
            .rename(&tmp, &kernels, &name)
            .and_then(|()| sync_dir(&kernels))
            .map_err(io_error("renaming", &kernel_dir))?;
    }
    let bls = BlsEntry {
        title: entry.title.clone(),
        version: entry.version.clone(),
        sort_key: entry.sort_key.clone(),
        linux: format!("/{kernel_dir}/vmlinuz"),
        initrd: vec![format!("/{kernel_dir}/initrd")],
        efi: None,
        options: entry.options.clone(),
    };
    let path = write_entry(esp, entry, &bls)?;
    Ok(Installed {
        entry: path,
        kernel_dir: Some(kernel_dir),
        kernel_shared: shared,
    })
}

/// Installs a UKI, after checking that its sealed command line boots
/// `boot_image` (hex), and a Type 1 entry running it: the UKI first, so
/// that an entry never names a missing file. The entry has no `options`:
/// the UKI's sealed command line is the one used.
pub fn install_uki(
    esp: &Dir,
    entry: &NewEntry,
    bytes: &[u8],
    uki: &Uki,
    boot_image: &str,
) -> Result<Installed, InstallError> {
    let sealed = uki.composefs().ok_or(InstallError::NotSealed)?;
    if !sealed.digest.eq_ignore_ascii_case(boot_image) {
        return Err(InstallError::SealedMismatch {
            sealed: sealed.digest,
            image: boot_image.to_owned(),
        });
    }
    let file = format!("{}.efi", entry.stem);
    let ukis = open_or_create(esp, UKI_DIR)?;
    let uki_path = format!("{UKI_DIR}/{file}");
    write_atomic(&ukis, &file, bytes).map_err(io_error("writing", &uki_path))?;
    let bls = BlsEntry {
        title: entry.title.clone(),
        version: entry.version.clone(),
        sort_key: entry.sort_key.clone(),
        efi: Some(format!("/{uki_path}")),
        ..BlsEntry::default()
    };
    let path = write_entry(esp, entry, &bls)?;
    Ok(Installed {
        entry: path,
        kernel_dir: None,
        kernel_shared: false,
    })
}

/// Writes `bls` as `entry`'s file, staged or live; returns its path.
fn write_entry(esp: &Dir, entry: &NewEntry, bls: &BlsEntry) -> Result<String, InstallError> {
    let file = EntryName::new(&entry.stem, entry.tries, "conf").to_string();
    let dir = if entry.staged {
        STAGED_ENTRIES_DIR
    } else {
        ENTRIES_DIR
    };
    let entries = open_or_create(esp, dir)?;
    let path = format!("{dir}/{file}");
    write_atomic(&entries, &file, bls.to_text().as_bytes()).map_err(io_error("writing", &path))?;
    Ok(path)
}

/// Rewrites the entry at `path` (below the ESP) with `bls`, in one
/// atomic replace: how a rollback reorders entries (a new sort key)
/// without the boot loader ever seeing a missing or partial entry.
pub fn rewrite_entry(esp: &Dir, path: &str, bls: &BlsEntry) -> Result<(), InstallError> {
    let (dir, file) = path
        .rsplit_once('/')
        .ok_or_else(|| InstallError::NotAnEntry(path.to_owned()))?;
    EntryName::parse(file).ok_or_else(|| InstallError::NotAnEntry(path.to_owned()))?;
    let dir = esp.open_dir(dir).map_err(io_error("opening", dir))?;
    write_atomic(&dir, file, bls.to_text().as_bytes()).map_err(io_error("writing", path))
}

/// Removes the temporary files that interrupted writes left in the entry
/// directories (the kernel and UKI directories hold nothing an entry
/// does not name, so their leftovers go with the unnamed ones).
pub fn remove_leftovers(esp: &Dir) -> Result<(), InstallError> {
    for dir_path in [ENTRIES_DIR, STAGED_ENTRIES_DIR] {
        let dir = match esp.open_dir(dir_path) {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error("opening", dir_path)(e)),
        };
        for entry in dir.entries().map_err(io_error("reading", dir_path))? {
            let name = entry.map_err(io_error("reading", dir_path))?.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.ends_with(".tmp") {
                dir.remove_file(&*name)
                    .map_err(io_error("removing", dir_path))?;
            }
        }
    }
    Ok(())
}

/// Moves a staged entry (at `path` below the ESP) to where the boot
/// loader reads it; returns its new path. One rename: the entry is either
/// staged or live.
pub fn promote(esp: &Dir, path: &str) -> Result<String, InstallError> {
    let (dir, file) = path
        .rsplit_once('/')
        .ok_or_else(|| InstallError::NotAnEntry(path.to_owned()))?;
    if dir != STAGED_ENTRIES_DIR {
        return Err(InstallError::NotAnEntry(path.to_owned()));
    }
    let live = ENTRIES_DIR;
    let from = esp.open_dir(dir).map_err(io_error("opening", dir))?;
    let to = open_or_create(esp, live)?;
    from.rename(file, &to, file)
        .and_then(|()| sync_dir(&to))
        .and_then(|()| sync_dir(&from))
        .map_err(io_error("moving", path))?;
    Ok(format!("{live}/{file}"))
}

/// Marks the entry at `path` (below the ESP, `/` or `\` separated, as
/// systemd-boot's `LoaderBootCountPath` gives it) good: drops its
/// counter. Returns the new path, or `None` if it had no counter.
pub fn bless(esp: &Dir, path: &str) -> Result<Option<String>, InstallError> {
    let path = path.replace('\\', "/");
    let path = path.trim_start_matches('/');
    let (parent, file) = path.rsplit_once('/').unwrap_or(("", path));
    let name = EntryName::parse(file).ok_or_else(|| InstallError::NotAnEntry(path.to_owned()))?;
    if name.tries.is_none() {
        return Ok(None);
    }
    let dir = if parent.is_empty() {
        esp.try_clone().map_err(io_error("opening", "."))?
    } else {
        esp.open_dir(parent).map_err(io_error("opening", parent))?
    };
    let blessed = name.blessed().to_string();
    dir.rename(file, &dir, &blessed)
        .and_then(|()| sync_dir(&dir))
        .map_err(io_error("renaming", path))?;
    Ok(Some(if parent.is_empty() {
        blessed
    } else {
        format!("{parent}/{blessed}")
    }))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
