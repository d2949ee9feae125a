//! Command-line arguments, grouped by noun (`image ...`, `repo ...`).

use std::path::PathBuf;

use cfs_erofs::format::FormatVersion;
use cfs_erofs::transform::XattrFilter;
use clap::{Parser, Subcommand, ValueEnum};

/// Deploy image-based operating systems on composefs.
#[derive(Debug, Parser)]
#[command(name = "cfs-deploy", version, about)]
pub struct Args {
    /// The repository (default: /sysroot/composefs as root, else
    /// ~/.var/lib/composefs, as cfsctl).
    #[arg(long, global = true)]
    pub repo: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress output (results and errors are still printed).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// fs-verity hash for new repositories and repository-less digests
    /// (an existing repository's own algorithm always wins).
    #[arg(long, global = true, value_enum, default_value_t = Hash::Sha512)]
    pub hash: Hash,
    /// EROFS format version of images written without a repository.
    #[arg(long, global = true, value_parser = parse_version, default_value = "1")]
    pub erofs_version: FormatVersion,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The hash algorithm of fs-verity digests.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Hash {
    /// SHA-256.
    Sha256,
    /// SHA-512.
    Sha512,
}

fn parse_version(text: &str) -> Result<FormatVersion, String> {
    text.parse()
        .ok()
        .and_then(FormatVersion::from_number)
        .ok_or_else(|| format!("{text:?} is not an EROFS format version (0, 1 or 2)"))
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the repository's images over varlink
    /// (`org.cfsdeploy.Images`) until killed.
    Serve {
        /// The unix socket to listen on (created; must not exist).
        #[arg(long, value_name = "SOCKET")]
        varlink: PathBuf,
    },
    /// Work with composefs images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Work with the repository itself.
    #[command(subcommand)]
    Repo(RepoCommand),
    /// Install a host: partitions, filesystems, boot loader, the image
    /// and its first deployment.
    #[command(subcommand)]
    Install(InstallCommand),
    /// Pull the newest version of the default deployment's image and
    /// make it the next boot's default (boot-counted: three failed boots
    /// fall back to the current one).
    Upgrade {
        /// Only say what would change (new digest, layers and bytes to
        /// fetch); change nothing.
        #[arg(long)]
        check: bool,
        /// Deployments to keep, newest first (pinned ones and the booted
        /// one are kept besides).
        #[arg(long, default_value_t = 3)]
        keep: usize,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Deploy another image as the next boot's default.
    Switch {
        /// The image reference, with its transport.
        source: String,
        /// Deployments to keep, newest first (pinned ones and the booted
        /// one are kept besides).
        #[arg(long, default_value_t = 3)]
        keep: usize,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Make the staged deployment the default: merge /etc again, move its
    /// entry live. Runs at shutdown (cfs-deploy-finalize.service).
    Finalize {
        #[command(flatten)]
        host: HostArgs,
    },
    /// Keep a deployment whatever its age (or, with --unpin, no longer).
    Pin {
        /// The deployment's id (or a unique prefix).
        id: String,
        /// Remove the pin.
        #[arg(long)]
        unpin: bool,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Make the previous deployment the next boot's default (again: undo).
    Rollback {
        #[command(flatten)]
        host: HostArgs,
    },
    /// Show the deployments: booted, default, rollback, boot counters.
    Status {
        #[command(flatten)]
        host: HostArgs,
    },
    /// Remove what no deployment uses: kernels, state, images, objects.
    Gc {
        #[command(flatten)]
        host: HostArgs,
    },
    /// Mark the booted boot entry good (drop its boot counter), once the
    /// system reached boot-complete.target.
    Bless {
        /// The ESP (default: the first of /boot, /efi, /boot/efi that
        /// holds loader/entries, else the ESP systemd-boot started from,
        /// mounted for this command only).
        #[arg(long)]
        esp: Option<PathBuf>,
    },
    /// In the initramfs: mount the deployment named by `composefs=` on the
    /// kernel command line over the physical root, with its /etc, the
    /// shared /var and the physical root read-only at /sysroot.
    SetupRoot {
        /// The physical root, as mounted by the initramfs.
        #[arg(long, default_value = "/sysroot")]
        sysroot: PathBuf,
        /// Where to read the kernel command line.
        #[arg(long, default_value = "/proc/cmdline")]
        cmdline: PathBuf,
    },
}

/// Where the host is.
#[derive(Debug, Clone, clap::Args)]
pub struct HostArgs {
    /// The physical root, holding composefs/ and state/.
    #[arg(long, default_value = "/sysroot")]
    pub sysroot: PathBuf,
    /// Where the boot entries and kernels are: the ESP or an XBOOTLDR
    /// partition (default: the first of /boot, /efi, /boot/efi that holds
    /// loader/entries, else the ESP systemd-boot started from, mounted
    /// for this command only).
    #[arg(long, alias = "esp")]
    pub boot_dir: Option<PathBuf>,
    /// The kernel command line that names the booted deployment.
    #[arg(long, default_value = "/proc/cmdline", hide = true)]
    pub cmdline: PathBuf,
}

/// What a new deployment boots with.
#[derive(Debug, Clone, clap::Args)]
pub struct DeployArgs {
    /// The image reference, with its transport.
    #[arg(long)]
    pub source: String,
    /// Extra kernel arguments.
    #[arg(long = "karg")]
    pub kargs: Vec<String>,
    /// A repository whose objects go without fs-verity (for filesystems
    /// without it): `composefs=?ID`.
    #[arg(long)]
    pub insecure: bool,
    /// Skip TLS verification and allow plain HTTP registries.
    #[arg(long)]
    pub insecure_registry: bool,
}

/// `install` subcommands.
#[derive(Debug, Subcommand)]
pub enum InstallCommand {
    /// Partition a disk (or disk image file), make an ESP and an ext4
    /// root (with the fs-verity feature), and install onto them.
    ToDisk {
        /// The block device or image file (created if missing).
        target: PathBuf,
        /// Size of a new image file.
        #[arg(long, default_value = "4G")]
        size: String,
        #[command(flatten)]
        deploy: DeployArgs,
    },
    /// Install onto mounted filesystems: ROOT gets composefs/ and state/,
    /// the ESP gets systemd-boot and the boot entry.
    ToFilesystem {
        /// The physical root.
        root: PathBuf,
        /// The ESP: systemd-boot goes there.
        #[arg(long)]
        esp: PathBuf,
        /// Where boot entries and kernels go, if not on the ESP: an
        /// XBOOTLDR partition (Boot Loader Specification), usually /boot.
        #[arg(long)]
        boot_dir: Option<PathBuf>,
        /// How the kernel finds ROOT (`root=UUID=...`); default: the
        /// filesystem UUID of ROOT.
        #[arg(long)]
        root_karg: Option<String>,
        #[command(flatten)]
        deploy: DeployArgs,
    },
}

/// `repo` subcommands.
#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Create a repository (or confirm one with the same configuration).
    Init {
        /// Objects without fs-verity, for filesystems that lack it:
        /// digests are then checked in userspace where it matters.
        #[arg(long)]
        insecure: bool,
    },
    /// Remove everything no ref reaches.
    Gc {
        /// Only list what would go, and how many bytes.
        #[arg(long, short = 'n')]
        dry_run: bool,
    },
    /// Check every object, stream, image and ref; exit 1 if anything is
    /// broken.
    Fsck {
        /// Remove corrupt objects, so the next pull fetches them again.
        #[arg(long)]
        repair: bool,
    },
    /// List image and stream refs.
    Ls,
    /// Give every object fs-verity (each checked against its name), then
    /// make the repository secure: for a host installed insecure from a
    /// machine without fs-verity, once booted on a kernel that has it.
    EnableVerity,
}

/// How a directory becomes a tree, as `cfsctl` reads one.
#[derive(Debug, clap::Args)]
pub struct TreeOptions {
    /// Apply the boot transform: empty /boot and /sysroot, SELinux labels
    /// from the tree's own policy.
    #[arg(long)]
    pub bootable: bool,
    /// Keep the root's own metadata instead of copying /usr's (skips the
    /// whole OCI transform, as cfsctl does).
    #[arg(long)]
    pub no_propagate_usr_to_root: bool,
    /// Which xattrs the OCI transform keeps.
    #[arg(long, default_value_t = XattrFilter::AllowlistOnly)]
    pub xattrs: XattrFilter,
}

/// The service a layer moves to or from, and its name there.
#[derive(Debug, clap::Args)]
pub struct LayerRemote {
    /// The service's unix socket (`serve --varlink SOCKET`).
    #[arg(long, value_name = "SOCKET")]
    pub varlink: PathBuf,
    /// The layer's name on the receiving side, as the stream ref
    /// `layers/NAME`, which keeps it from garbage collection (default:
    /// the diff_id).
    #[arg(long)]
    pub name: Option<String>,
}

/// `image` subcommands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Print the image id (fs-verity digest of the EROFS image) of a
    /// directory, as `cfsctl compute-id` does.
    ComputeId {
        /// A directory; or an OCI image: a reference with its transport
        /// (pulled into the repository, or into a temporary one without
        /// `--repo`) or a tag in the repository.
        path: PathBuf,
        #[command(flatten)]
        tree: TreeOptions,
    },
    /// Write the EROFS image of a directory or a dumpfile.
    Mkfs {
        /// A directory, or a composefs dumpfile.
        source: PathBuf,
        /// Where to write the image.
        output: PathBuf,
        #[command(flatten)]
        tree: TreeOptions,
    },
    /// Print an image as a composefs dumpfile.
    Dump {
        /// The EROFS image.
        image: PathBuf,
    },
    /// Store a directory's files as objects and its image under a name.
    Create {
        /// The directory.
        path: PathBuf,
        /// The image ref to create or replace.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        tree: TreeOptions,
    },
    /// Mount a stored image (by name or digest), read-only.
    Mount {
        /// Image ref or hex digest.
        name: String,
        /// Where.
        mountpoint: PathBuf,
    },
    /// Pull an OCI image (`docker://`, `oci:DIR[:TAG]`, `oci-archive:`,
    /// `docker-archive:`, `containers-storage:`, `dir:`), or a commit of
    /// an ostree repository (`ostree:REPO-PATH:REF` for a local one,
    /// `ostree:http[s]://HOST/PATH:REF` for a served archive one), into
    /// the repository, with its plain and boot EROFS images.
    Pull {
        /// The image reference, with its transport.
        reference: String,
        /// The tag to give it (default: the reference).
        #[arg(long)]
        name: Option<String>,
        /// The platform to pick from an index, `OS/ARCH[/VARIANT]`
        /// (default: this machine's).
        #[arg(long)]
        platform: Option<String>,
        /// Skip TLS verification and allow plain HTTP registries.
        #[arg(long)]
        insecure_registry: bool,
        /// The containers-storage graphroot for `containers-storage:`
        /// references that name no store (default: storage.conf's).
        #[arg(long)]
        storage_root: Option<std::path::PathBuf>,
        /// Read `containers-storage:` images through skopeo instead of
        /// straight from the store (no reflinks; for comparison).
        #[arg(long)]
        via_skopeo: bool,
        /// How many objects an ostree pull over HTTP fetches at a time.
        #[arg(long, value_name = "N", default_value_t = 8,
              value_parser = clap::value_parser!(u16).range(1..=256))]
        fetch_jobs: u16,
        /// Fetch an ostree commit object by object even when the server
        /// has a static delta to it.
        #[arg(long)]
        disable_static_deltas: bool,
        /// An Ed25519 public key ostree commits must be signed with
        /// (`ostree.sign.ed25519`): base64 of its 32 bytes, or a file of
        /// such lines; repeatable. With any key given, an unsigned or
        /// badly signed commit is refused, and so is a summary without a
        /// good `summary.sig`. Keys given are stored for the ostree
        /// location (replacing those stored before), and later pulls and
        /// upgrades from it use them without being told.
        #[arg(long, value_name = "BASE64|FILE")]
        ed25519_key: Vec<String>,
        /// A GPG keyring ostree commits must be signed with
        /// (`ostree.gpgsigs`, checked by gpgv): public keys as
        /// `gpg --export [--armor]` writes them; repeatable. Same rules
        /// as `--ed25519-key`, with which it combines.
        #[arg(long, value_name = "FILE")]
        gpg_keyring: Vec<PathBuf>,
    },
    /// List pulled OCI images by tag.
    Ls,
    /// Show a pulled image: manifest, config, layers, EROFS images.
    Inspect {
        /// The tag.
        name: String,
    },
    /// Give a pulled image another tag.
    Tag {
        /// The existing tag.
        source: String,
        /// The new tag (replaces what it named).
        new: String,
    },
    /// Copy a pulled image (layers, config, EROFS images, tag) from one
    /// repository to another; objects are reflinked when both share a
    /// filesystem. The tag is written last.
    Copy {
        /// The image's tag.
        name: String,
        /// The repository to copy from.
        #[arg(long)]
        from_repo: PathBuf,
        /// The repository to copy into.
        #[arg(long)]
        to_repo: PathBuf,
    },
    /// Send a stored layer to a `serve --varlink` service, which checks
    /// it whole before naming it `layers/NAME`. Only two descriptors
    /// travel: the split stream (a sealed memfd) and this repository's
    /// objects directory, from which the service reflinks or copies.
    PushLayer {
        /// The layer's diff_id (`sha256:...`).
        diff_id: String,
        #[command(flatten)]
        remote: LayerRemote,
    },
    /// Fetch a layer from a `serve --varlink` service into the
    /// repository, checked whole before it is named `layers/NAME`.
    PullLayer {
        /// The layer's diff_id (`sha256:...`).
        diff_id: String,
        #[command(flatten)]
        remote: LayerRemote,
    },
    /// Remove a tag; `repo gc` then reclaims what only it kept.
    Untag {
        /// The tag.
        name: String,
    },
    /// Remove an image ref; `repo gc` then reclaims what only it kept.
    Rm {
        /// The image ref.
        name: String,
    },
}
