//! Finding what boots in an image: its kernels and initramfs images or
//! its UKIs, its os-release and the kernel arguments it asks for.
//!
//! Where things are (the layout bootc images use):
//! - `/usr/lib/modules/<version>/vmlinuz` with `initramfs.img` beside it
//!   (Boot Loader Specification Type 1);
//! - `/usr/lib/modules/<version>/*.efi` and `/boot/EFI/Linux/*.efi`: UKIs
//!   (Type 2).
//!
//! An image may hold several; the newest version wins (see
//! [`compare_versions`]) and the others are listed so a caller can say
//! which was chosen. Nothing is found through a symlink: the image is
//! hostile input, and a link could name any file of it.

use std::io;
use std::path::{Path, PathBuf};

use cfs_erofs::digest::FsVerityDigest;
use cfs_erofs::tree::{Directory, FileSystem, Inode, LeafContent, RegularFile};

use crate::content::{read_regular, ContentSource};
use crate::kargs::{kargs_from_files, KargsError, KARGS_DIR};
use crate::os_release::OsRelease;
use crate::uki::{Uki, UkiError};
use crate::version::compare_versions;

/// Why an image's boot resources cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResourceError {
    /// Nothing bootable in the image.
    #[error(
        "the image has no kernel: no /usr/lib/modules/<version>/vmlinuz, and no UKI in \
         /usr/lib/modules/<version>/ or /boot/EFI/Linux/"
    )]
    NoKernel,
    /// A kernel without its initramfs.
    #[error("{kernel} has no initramfs.img beside it")]
    NoInitramfs {
        /// The kernel's path.
        kernel: PathBuf,
    },
    /// A UKI that cannot be read as one.
    #[error("{path}: {source}")]
    Uki {
        /// The UKI's path.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: UkiError,
    },
    /// A `kargs.d` file that cannot be used.
    #[error("{KARGS_DIR}/{0}")]
    Kargs(#[from] KargsError),
    /// A file's content could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
}

/// A regular file of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile<H> {
    /// Its absolute path in the image.
    pub path: PathBuf,
    /// Where its bytes are.
    pub file: RegularFile<H>,
}

impl<H: FsVerityDigest> ImageFile<H> {
    /// Its bytes.
    pub fn read(&self, source: &impl ContentSource<H>) -> Result<Vec<u8>, ResourceError> {
        read_regular(source, &self.path, &self.file).map_err(|e| ResourceError::Read {
            path: self.path.clone(),
            source: e,
        })
    }
}

/// What boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootArtifact<H> {
    /// A kernel and its initramfs (Type 1).
    Kernel {
        /// The kernel.
        vmlinuz: ImageFile<H>,
        /// Its initramfs.
        initramfs: ImageFile<H>,
    },
    /// A unified kernel image (Type 2), already inspected.
    Uki {
        /// The file.
        file: ImageFile<H>,
        /// What its sections say.
        uki: Uki,
    },
}

/// One bootable thing found, before choosing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<H> {
    /// Its version: the modules directory name, or the UKI's file stem.
    pub version: String,
    /// What it is.
    pub artifact: BootArtifact<H>,
}

/// Everything an image offers a boot loader.
#[derive(Debug, Clone)]
pub struct BootResources<H> {
    /// The newest bootable thing.
    pub chosen: Candidate<H>,
    /// Versions of the others, newest first.
    pub others: Vec<String>,
    /// The image's os-release (`/usr/lib/os-release`, else
    /// `/etc/os-release`); empty if it has none.
    pub os_release: OsRelease,
    /// Kernel arguments from `kargs.d` for this machine's architecture.
    pub kargs: Vec<String>,
}

/// The entries of the directory at `path`, if it is one (no symlinks).
fn directory<'a>(root: &'a Directory, path: &str) -> Option<&'a Directory> {
    path.split('/')
        .filter(|c| !c.is_empty())
        .try_fold(root, |dir, name| dir.subdir(name.as_bytes()))
}

/// The regular files directly in `dir` (below image path `at`).
fn regular_files<'a, H: FsVerityDigest>(
    fs: &'a FileSystem<H>,
    dir: &'a Directory,
    at: &'a str,
) -> impl Iterator<Item = (String, ImageFile<H>)> + 'a {
    dir.entries.iter().filter_map(move |(name, inode)| {
        let Inode::Leaf(id) = inode else {
            return None;
        };
        let LeafContent::Regular(file) = &fs.leaf(*id).content else {
            return None;
        };
        let name = std::str::from_utf8(name.as_bytes()).ok()?.to_owned();
        let path = Path::new(at).join(&name);
        Some((
            name,
            ImageFile {
                path,
                file: file.clone(),
            },
        ))
    })
}

/// The regular file at `path`, if there is one (no symlinks).
fn regular_file<H: FsVerityDigest>(fs: &FileSystem<H>, path: &str) -> Option<ImageFile<H>> {
    let (parent, name) = path.rsplit_once('/')?;
    let dir = directory(&fs.root, parent)?;
    regular_files(fs, dir, parent).find_map(|(n, f)| (n == name).then_some(f))
}

fn inspect_uki<H: FsVerityDigest>(
    file: ImageFile<H>,
    source: &impl ContentSource<H>,
) -> Result<BootArtifact<H>, ResourceError> {
    let bytes = file.read(source)?;
    let uki = Uki::inspect(&bytes).map_err(|e| ResourceError::Uki {
        path: file.path.clone(),
        source: e,
    })?;
    Ok(BootArtifact::Uki { file, uki })
}

/// Every bootable thing in the image, newest first.
pub fn find_candidates<H: FsVerityDigest>(
    fs: &FileSystem<H>,
    source: &impl ContentSource<H>,
) -> Result<Vec<Candidate<H>>, ResourceError> {
    let mut found = Vec::new();
    if let Some(modules) = directory(&fs.root, "/usr/lib/modules") {
        for (name, inode) in &modules.entries {
            let (Inode::Directory(dir), Ok(version)) =
                (inode, std::str::from_utf8(name.as_bytes()))
            else {
                continue;
            };
            let at = format!("/usr/lib/modules/{version}");
            let files: Vec<_> = regular_files(fs, dir, &at).collect();
            let ukis: Vec<_> = files.iter().filter(|(n, _)| n.ends_with(".efi")).collect();
            if let Some((_, uki)) = ukis.last() {
                found.push(Candidate {
                    version: version.to_owned(),
                    artifact: inspect_uki(uki.clone(), source)?,
                });
                continue;
            }
            let Some((_, vmlinuz)) = files.iter().find(|(n, _)| n == "vmlinuz") else {
                continue;
            };
            let initramfs = files
                .iter()
                .find_map(|(n, f)| (n == "initramfs.img").then(|| f.clone()))
                .ok_or_else(|| ResourceError::NoInitramfs {
                    kernel: vmlinuz.path.clone(),
                })?;
            found.push(Candidate {
                version: version.to_owned(),
                artifact: BootArtifact::Kernel {
                    vmlinuz: vmlinuz.clone(),
                    initramfs,
                },
            });
        }
    }
    if let Some(linux) = directory(&fs.root, "/boot/EFI/Linux") {
        for (name, file) in regular_files(fs, linux, "/boot/EFI/Linux") {
            if let Some(stem) = name.strip_suffix(".efi") {
                found.push(Candidate {
                    version: stem.to_owned(),
                    artifact: inspect_uki(file, source)?,
                });
            }
        }
    }
    found.sort_by(|a, b| compare_versions(&b.version, &a.version));
    Ok(found)
}

/// What the image boots, its os-release and its kernel arguments for
/// `architecture` (Rust's name, as `std::env::consts::ARCH`).
pub fn find_boot_resources<H: FsVerityDigest>(
    fs: &FileSystem<H>,
    source: &impl ContentSource<H>,
    architecture: &str,
) -> Result<BootResources<H>, ResourceError> {
    let mut candidates = find_candidates(fs, source)?.into_iter();
    let chosen = candidates.next().ok_or(ResourceError::NoKernel)?;
    let others = candidates.map(|c| c.version).collect();
    let os_release = match regular_file(fs, "/usr/lib/os-release")
        .or_else(|| regular_file(fs, "/etc/os-release"))
    {
        Some(file) => OsRelease::parse(&String::from_utf8_lossy(&file.read(source)?)),
        None => OsRelease::default(),
    };
    let mut files = Vec::new();
    if let Some(dir) = directory(&fs.root, KARGS_DIR) {
        for (name, file) in regular_files(fs, dir, KARGS_DIR) {
            let text = String::from_utf8_lossy(&file.read(source)?).into_owned();
            files.push((name, text));
        }
    }
    let kargs = kargs_from_files(&mut files, architecture)?;
    Ok(BootResources {
        chosen,
        others,
        os_release,
        kargs,
    })
}
