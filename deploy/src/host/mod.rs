//! The host: a physical root holding the repository and per-deployment
//! state, and an ESP holding the boot entries, laid out as bootc's
//! composefs backend does (see `../shared/facts/bootc-composefs.md`):
//!
//! - `composefs/`: the repository;
//! - `state/deploy/<ID>/`: a deployment's `etc/`, its `origin` and a
//!   `var` symlink to the one shared `state/os/default/var`;
//! - on the ESP, one boot entry per deployment naming
//!   `composefs=<ID>`, where ID is the digest of its boot image.
//!
//! The boot entries are the truth about which deployments exist and in
//! which order they boot. Every change is ordered so that an interruption
//! leaves the previous default bootable: repository content and tag
//! first, then the complete state directory (renamed into place), then
//! the entry, written atomically; cleanup comes last.

pub mod checkout;
pub mod etc_merge;
pub mod origin;
pub mod xattrs;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cap_std::ambient_authority;
use cap_std::fs::Dir;
use cfs_boot::entries::{BlsEntry, EntryName};
use cfs_boot::install::{
    install_type1, install_uki, promote, remove_leftovers, rewrite_entry, NewEntry, ENTRIES_DIR,
    KERNELS_DIR, STAGED_ENTRIES_DIR, UKI_DIR,
};
use cfs_boot::resources::{find_boot_resources, BootArtifact, BootResources};
use cfs_boot::uki::{ComposefsArg, Uki};
use cfs_erofs::digest::FsVerityDigest;
use cfs_erofs::tree::FileSystem;
use cfs_images::Repository;

pub use origin::Origin;

/// The repository, below the physical root.
pub const REPO_DIR: &str = "composefs";
/// Deployment state directories, below the physical root.
pub const STATE_DIR: &str = "state/deploy";
/// The `/var` all deployments share, below the physical root.
pub const SHARED_VAR: &str = "state/os/default/var";
/// Entry stems start with this, so other entries on the ESP are left
/// alone.
const STEM_PREFIX: &str = "cfs-";

/// A physical root and its ESP.
#[derive(Debug, Clone)]
pub struct Host {
    /// The physical root (`/sysroot` when booted).
    pub root: PathBuf,
    /// Where boot entries and kernels live: the ESP, or an XBOOTLDR
    /// partition (`/boot`) beside it; systemd-boot reads both.
    pub boot: PathBuf,
    /// The kernel command line that says which deployment is booted
    /// (`/proc/cmdline`; another file for tests).
    pub cmdline: PathBuf,
}

/// A file in a deployment's state directory that keeps it from pruning.
pub const PIN_FILE: &str = "pinned";

/// A deployment as its boot entry and state describe it.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// The boot image digest, hex: the deployment's identity.
    pub id: String,
    /// The entry's file below the ESP.
    pub entry_path: String,
    /// Its name, with the boot counter.
    pub entry: EntryName,
    /// The entry's fields (for a UKI, an `efi` line and no options).
    pub bls: BlsEntry,
    /// Ordering: higher boots first.
    pub generation: u64,
    /// Waiting for `finalize` (its entry is where the boot loader does
    /// not look).
    pub staged: bool,
    /// Kept by `gc` and pruning whatever its age.
    pub pinned: bool,
    /// What was deployed, if the state directory has it.
    pub origin: Option<Origin>,
}

impl Deployment {
    /// Whether systemd-boot gave up on it (no tries left).
    pub fn is_bad(&self) -> bool {
        self.entry.is_bad()
    }
}

/// The sort key that puts higher generations first (systemd-boot sorts
/// sort keys ascending).
fn sort_key(generation: u64) -> String {
    format!(
        "cfs-deploy-{:012}",
        999_999_999_999u64.saturating_sub(generation)
    )
}

fn generation_of(sort_key: &str) -> Option<u64> {
    let rank: u64 = sort_key.strip_prefix("cfs-deploy-")?.parse().ok()?;
    Some(999_999_999_999 - rank)
}

/// The stem of a deployment's entry.
pub fn entry_stem(id: &str) -> String {
    format!("{STEM_PREFIX}{}", &id[..id.len().min(32)])
}

impl Host {
    /// The repository.
    pub fn repo<H: FsVerityDigest>(&self) -> Result<Repository<H>> {
        let path = self.root.join(REPO_DIR);
        Repository::open(&path).with_context(|| format!("opening repository {}", path.display()))
    }

    fn boot_dir(&self) -> Result<Dir> {
        Dir::open_ambient_dir(&self.boot, ambient_authority())
            .with_context(|| format!("opening the boot directory {}", self.boot.display()))
    }

    /// A deployment's state directory.
    pub fn state_dir(&self, id: &str) -> PathBuf {
        self.root.join(STATE_DIR).join(id)
    }

    /// Our deployments, in boot order: systemd-boot's (bad entries last,
    /// then the newest generation first).
    pub fn deployments(&self) -> Result<Vec<Deployment>> {
        let mut found = Vec::new();
        for (dir, staged) in [(ENTRIES_DIR, false), (STAGED_ENTRIES_DIR, true)] {
            let path = self.boot.join(dir);
            let entries = match std::fs::read_dir(&path) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            };
            for entry in entries {
                let entry = entry?;
                let file = entry.file_name().to_string_lossy().into_owned();
                let Some(name) = EntryName::parse(&file) else {
                    continue;
                };
                if !name.stem.starts_with(STEM_PREFIX) || name.extension != "conf" {
                    continue;
                }
                let text = std::fs::read_to_string(entry.path())?;
                let bls = BlsEntry::parse(&text);
                let arg = match &bls.efi {
                    // A UKI: its sealed command line names the image.
                    Some(efi) => {
                        let path = self.boot.join(efi.trim_start_matches('/'));
                        Uki::inspect(&std::fs::read(&path)?)
                            .with_context(|| format!("reading {}", path.display()))?
                            .composefs()
                    }
                    None => ComposefsArg::find(&bls.options),
                };
                let Some(arg) = arg else {
                    continue;
                };
                let origin = Origin::read(&self.state_dir(&arg.digest)).ok();
                let pinned = self.state_dir(&arg.digest).join(PIN_FILE).exists();
                let generation = generation_of(&bls.sort_key)
                    .or(origin.as_ref().map(|o| o.generation))
                    .unwrap_or(0);
                found.push(Deployment {
                    id: arg.digest,
                    entry_path: format!("{dir}/{file}"),
                    entry: name,
                    bls,
                    generation,
                    staged,
                    pinned,
                    origin,
                });
            }
        }
        // Staged entries after all the boot loader sees.
        found.sort_by(|a, b| {
            (a.staged, a.is_bad())
                .cmp(&(b.staged, b.is_bad()))
                .then(b.generation.cmp(&a.generation))
        });
        Ok(found)
    }

    /// The deployment running now: `composefs=` of the kernel command
    /// line, when it names one of ours.
    pub fn booted(&self) -> Option<String> {
        let cmdline = std::fs::read_to_string(&self.cmdline).ok()?;
        ComposefsArg::find(&cmdline).map(|arg| arg.digest)
    }
}

/// How to make a deployment's boot entry.
#[derive(Debug, Clone)]
pub struct EntryOptions {
    /// Arguments before `composefs=` (the root device, `rw`, ...).
    pub kargs: Vec<String>,
    /// `composefs=?ID`: the repository does not require fs-verity.
    pub insecure: bool,
    /// Boot-counting tries; `None` for an entry that is known good.
    pub tries: Option<u32>,
    /// Stage the entry for `finalize` instead of making it live.
    pub staged: bool,
}

/// What [`deploy`] did.
#[derive(Debug)]
pub struct Deployed {
    /// The new deployment's id.
    pub id: String,
    /// Whether it existed already (nothing was changed).
    pub existing: bool,
    /// Which kernel or UKI version was chosen, and the others found.
    pub kernel: String,
    /// Other versions found.
    pub other_kernels: Vec<String>,
    /// `/etc` paths (relative to it) where the local version was kept
    /// over a change the new image made.
    pub etc_conflicts: Vec<PathBuf>,
}

/// The image's tree, from the repository.
pub fn image_tree<H: FsVerityDigest>(repo: &Repository<H>, image: &H) -> Result<FileSystem<H>> {
    let bytes = repo
        .read_object(image)
        .with_context(|| format!("reading image {}", image.to_hex()))?;
    let parsed = cfs_erofs::reader::read_image::<H>(&bytes)
        .with_context(|| format!("parsing image {}", image.to_hex()))?;
    Ok(parsed.fs)
}

/// The repository's objects, for reading files of a tree.
pub struct RepoContent<'a, H>(pub &'a Repository<H>);

impl<H: FsVerityDigest> cfs_boot::ContentSource<H> for RepoContent<'_, H> {
    fn read_external(&self, _path: &Path, digest: &H, _size: u64) -> std::io::Result<Vec<u8>> {
        self.0.read_object(digest).map_err(std::io::Error::other)
    }
}

impl<H> std::fmt::Debug for RepoContent<'_, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RepoContent")
    }
}

/// Deploys the image tagged `tag` (pulled from `source`): state, kernel
/// and entry, as the newest generation. `merge_from` names the deployment
/// whose `/etc` changes carry over (none at install).
pub fn deploy<H: FsVerityDigest>(
    host: &Host,
    repo: &Repository<H>,
    origin: Origin,
    entry: &EntryOptions,
    merge_from: Option<&Deployment>,
) -> Result<Deployed> {
    let id = origin.boot_image.clone();
    let existing = host.deployments()?;
    let plain = H::from_hex(&origin.image)?;
    let boot = H::from_hex(&id)?;
    let tree = image_tree(repo, &plain)?;
    let resources: BootResources<H> =
        find_boot_resources(&tree, &RepoContent(repo), std::env::consts::ARCH)
            .context("finding what boots in the image")?;
    let kernel = resources.chosen.version.clone();
    let other_kernels = resources.others.clone();
    if existing.iter().any(|d| d.id == id) {
        return Ok(Deployed {
            id,
            existing: true,
            kernel,
            other_kernels,
            etc_conflicts: Vec::new(),
        });
    }
    // One staged deployment at a time: a newer upgrade replaces it.
    if entry.staged {
        unstage(host)?;
    }
    let generation = existing.iter().map(|d| d.generation).max().unwrap_or(0) + 1;
    let origin = Origin {
        generation,
        ..origin
    };

    // The deployment's own ref keeps its image alive through GC.
    repo.name_stream(&origin.stream, &deployment_ref(&id))?;

    // State, complete before it gets its name.
    let state = host.state_dir(&id);
    let staging = host.root.join(STATE_DIR).join(format!(".tmp-{id}"));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(staging.join("etc"))?;
    let boot_tree = image_tree(repo, &boot)?;
    let old_etc = match merge_from {
        Some(old) => Some(OldEtc::of(host, repo, old)?),
        None => None,
    };
    let etc_conflicts = build_etc(repo, &boot_tree, old_etc.as_ref(), &staging.join("etc"))?;
    std::os::unix::fs::symlink("../../os/default/var", staging.join("var"))?;
    let shared_var = host.root.join(SHARED_VAR);
    if !shared_var.exists() {
        // The image's /var seeds the shared one, once, at install.
        let var_staging = host.root.join("state/os/default/.tmp-var");
        if var_staging.exists() {
            std::fs::remove_dir_all(&var_staging)?;
        }
        std::fs::create_dir_all(&var_staging)?;
        if let Some(var) = boot_tree.root.subdir(b"var") {
            let target = Dir::open_ambient_dir(&var_staging, ambient_authority())?;
            checkout::checkout(repo, &boot_tree, var, &target).context("writing /var")?;
        }
        std::fs::rename(&var_staging, &shared_var)?;
    }
    origin.write(&staging)?;
    sync_tree(&staging)?;
    if state.exists() {
        // A leftover of an interrupted deploy of the same image: no entry
        // names it (checked above).
        std::fs::remove_dir_all(&state)?;
    }
    std::fs::rename(&staging, &state)?;
    sync_path(&host.root.join(STATE_DIR))?;

    // The entry last: from here on the deployment boots.
    let esp = host.boot_dir()?;
    let mut options = entry.kargs.clone();
    options.push(
        ComposefsArg {
            digest: id.clone(),
            insecure: entry.insecure,
        }
        .to_string(),
    );
    options.extend(resources.kargs.iter().cloned());
    let title = resources
        .os_release
        .title()
        .unwrap_or("composefs deployment")
        .to_owned();
    let version = resources
        .os_release
        .best_version()
        .map_or_else(|| kernel.clone(), str::to_owned);
    let mut new = NewEntry {
        stem: entry_stem(&id),
        title,
        version,
        sort_key: sort_key(generation),
        options: options.join(" "),
        tries: entry.tries,
        staged: entry.staged,
    };
    match &resources.chosen.artifact {
        BootArtifact::Kernel { vmlinuz, initramfs } => {
            let content = RepoContent(repo);
            install_type1(
                &esp,
                &new,
                &vmlinuz.read(&content)?,
                &initramfs.read(&content)?,
            )?;
        }
        BootArtifact::Uki { file, uki } => {
            // The menu shows what the UKI says of itself.
            if let Some(title) = uki.os_release.title() {
                new.title = title.to_owned();
            }
            if let Some(version) = uki.os_release.best_version() {
                new.version = version.to_owned();
            }
            let bytes = file.read(&RepoContent(repo))?;
            install_uki(&esp, &new, &bytes, uki, &id)?;
        }
    }
    Ok(Deployed {
        id,
        existing: false,
        kernel,
        other_kernels,
        etc_conflicts,
    })
}

/// The `/etc` of a deployment changes are carried from: its image's
/// pristine tree and the directory it runs with.
struct OldEtc<H> {
    tree: FileSystem<H>,
    current: PathBuf,
}

impl<H: FsVerityDigest> OldEtc<H> {
    fn of(host: &Host, repo: &Repository<H>, old: &Deployment) -> Result<OldEtc<H>> {
        let origin = old
            .origin
            .as_ref()
            .with_context(|| format!("deployment {} has no origin", old.id))?;
        Ok(OldEtc {
            tree: image_tree(repo, &H::from_hex(&origin.boot_image)?)?,
            current: host.state_dir(&old.id).join("etc"),
        })
    }
}

/// Writes a new deployment's `/etc` at `target` (which must not exist):
/// the image's, with the local changes of `old` merged in. Returns the
/// paths where a local change won over the new image's (see
/// [`etc_merge::conflicts`]).
fn build_etc<H: FsVerityDigest>(
    repo: &Repository<H>,
    image: &FileSystem<H>,
    old: Option<&OldEtc<H>>,
    target: &Path,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(target)?;
    let etc = image.root.subdir(b"etc");
    if let Some(etc) = etc {
        let dir = Dir::open_ambient_dir(target, ambient_authority())?;
        checkout::checkout(repo, image, etc, &dir).context("writing /etc")?;
    }
    let Some(old) = old else {
        return Ok(Vec::new());
    };
    let Some(pristine) = old.tree.root.subdir(b"etc") else {
        return Ok(Vec::new());
    };
    let changes = etc_merge::local_changes(&old.tree, pristine, &old.current)?;
    etc_merge::apply(&changes, &old.current, target)?;
    Ok(etc_merge::conflicts(
        &changes,
        &old.tree,
        Some(pristine),
        image,
        etc,
    ))
}

/// What [`finalize`] made live.
#[derive(Debug)]
pub struct Finalized {
    /// The deployment now the default.
    pub id: String,
    /// As [`Deployed::etc_conflicts`], for the merge done now.
    pub etc_conflicts: Vec<PathBuf>,
}

/// Makes the staged deployment live: merges `/etc` again from the
/// booted deployment (changes made since `upgrade` count), then moves its
/// entry where the boot loader reads it. Run at shutdown.
///
/// Each step is one atomic rename, and each state in between boots the
/// previous default with a complete staged deployment beside it: the new
/// `/etc` is built aside and exchanged with the staged one in one
/// `renameat2(RENAME_EXCHANGE)`, so the staged state always has an
/// `/etc`; then the entry moves into the boot loader's directory. An
/// interrupted finalize runs again from the start.
pub fn finalize<H: FsVerityDigest>(host: &Host, repo: &Repository<H>) -> Result<Option<Finalized>> {
    let deployments = host.deployments()?;
    let Some(staged) = deployments.iter().find(|d| d.staged) else {
        return Ok(None);
    };
    let mut etc_conflicts = Vec::new();
    let booted = host.booted();
    if let Some(from) = deployments
        .iter()
        .find(|d| !d.staged && Some(&d.id) == booted.as_ref())
    {
        let origin = staged
            .origin
            .as_ref()
            .context("the staged deployment has no origin")?;
        let image = image_tree(repo, &H::from_hex(&origin.boot_image)?)?;
        let state = host.state_dir(&staged.id);
        let fresh = state.join(".etc.new");
        if fresh.exists() {
            std::fs::remove_dir_all(&fresh)?;
        }
        etc_conflicts = build_etc(repo, &image, Some(&OldEtc::of(host, repo, from)?), &fresh)?;
        sync_tree(&fresh)?;
        exchange(&state, ".etc.new", "etc")?;
        sync_path(&state)?;
        // Now the /etc of the upgrade.
        std::fs::remove_dir_all(&fresh)?;
    }
    promote(&host.boot_dir()?, &staged.entry_path)?;
    Ok(Some(Finalized {
        id: staged.id.clone(),
        etc_conflicts,
    }))
}

/// Swaps the names `a` and `b` in `dir` in one step.
fn exchange(dir: &Path, a: &str, b: &str) -> Result<()> {
    let fd = rustix::fs::open(
        dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .with_context(|| format!("opening {}", dir.display()))?;
    rustix::fs::renameat_with(&fd, a, &fd, b, rustix::fs::RenameFlags::EXCHANGE).with_context(
        || {
            format!(
                "exchanging {a} and {b} in {} (the filesystem must support RENAME_EXCHANGE)",
                dir.display()
            )
        },
    )
}

/// Drops a staged deployment's entry (its state goes at the next prune).
pub fn unstage(host: &Host) -> Result<Option<String>> {
    let Some(staged) = host.deployments()?.into_iter().find(|d| d.staged) else {
        return Ok(None);
    };
    std::fs::remove_file(host.boot.join(&staged.entry_path))?;
    Ok(Some(staged.id))
}

/// The ref (below `streams/refs/`) that keeps a deployment's image alive,
/// whatever kind of source it came from.
pub fn deployment_ref(id: &str) -> String {
    format!("{DEPLOYMENT_REFS}/{id}")
}

const DEPLOYMENT_REFS: &str = "cfs-deploy";

fn sync_path(path: &Path) -> Result<()> {
    std::fs::File::open(path)?.sync_all()?;
    Ok(())
}

/// `fsync` of every file and directory below `path`.
fn sync_tree(path: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            sync_tree(&entry?.path())?;
        }
        sync_path(path)
    } else if meta.is_file() {
        sync_path(path)
    } else {
        Ok(())
    }
}

/// Makes `target` the default for the next boot by giving it the newest
/// generation (one atomic write of its entry; a UKI's entry too, whose
/// sort key orders it).
pub fn make_default(host: &Host, target: &Deployment) -> Result<()> {
    // As bootc does: a rollback drops what was staged.
    unstage(host)?;
    let generation = host
        .deployments()?
        .iter()
        .map(|d| d.generation)
        .max()
        .unwrap_or(0)
        + 1;
    let bls = BlsEntry {
        sort_key: sort_key(generation),
        ..target.bls.clone()
    };
    rewrite_entry(&host.boot_dir()?, &target.entry_path, &bls)?;
    Ok(())
}

/// Removes the entries (and then the state) of deployments beyond the
/// first `keep` in boot order, never the booted, staged or pinned ones; then kernels no
/// entry names, state no entry names, and deployment tags no entry names.
/// Returns the ids removed.
pub fn prune<H: FsVerityDigest>(
    host: &Host,
    repo: &Repository<H>,
    keep: usize,
) -> Result<Vec<String>> {
    let booted = host.booted();
    let mut removed = Vec::new();
    let live: Vec<Deployment> = host
        .deployments()?
        .into_iter()
        .filter(|d| !d.staged)
        .collect();
    for (index, deployment) in live.into_iter().enumerate() {
        if index < keep || deployment.pinned || booted.as_deref() == Some(&deployment.id) {
            continue;
        }
        std::fs::remove_file(host.boot.join(&deployment.entry_path))?;
        removed.push(deployment.id);
    }
    remove_leftovers(&host.boot_dir()?)?;
    let live = host.deployments()?;
    // Kernels no entry names.
    let kernels = host.boot.join(KERNELS_DIR);
    if let Ok(dirs) = std::fs::read_dir(&kernels) {
        for dir in dirs {
            let name = dir?.file_name().to_string_lossy().into_owned();
            let needle = format!("/{KERNELS_DIR}/{name}/");
            if !live.iter().any(|d| d.bls.linux.starts_with(&needle)) {
                std::fs::remove_dir_all(kernels.join(&name))?;
            }
        }
    }
    // UKIs no entry names.
    let ukis = host.boot.join(UKI_DIR);
    if let Ok(files) = std::fs::read_dir(&ukis) {
        for file in files {
            let name = file?.file_name().to_string_lossy().into_owned();
            let path = format!("/{UKI_DIR}/{name}");
            if !live
                .iter()
                .any(|d| d.bls.efi.as_deref() == Some(path.as_str()))
            {
                std::fs::remove_file(ukis.join(&name))?;
            }
        }
    }
    // State directories no entry names (and leftovers of interruptions).
    if let Ok(dirs) = std::fs::read_dir(host.root.join(STATE_DIR)) {
        for dir in dirs {
            let name = dir?.file_name().to_string_lossy().into_owned();
            if !live.iter().any(|d| d.id == name) {
                std::fs::remove_dir_all(host.root.join(STATE_DIR).join(&name))?;
            }
        }
    }
    // Deployment refs no entry names.
    for (name, _) in repo.list_refs("streams")? {
        let Some(id) = name.strip_prefix(&format!("{DEPLOYMENT_REFS}/")) else {
            continue;
        };
        if !live.iter().any(|d| d.id == id) {
            repo.remove_stream_ref(&name)?;
        }
    }
    Ok(removed)
}
