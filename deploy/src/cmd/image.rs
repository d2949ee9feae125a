//! `cfs-deploy image ...`: images of directories and dumpfiles, and images
//! stored in the repository.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cap_std::ambient_authority;
use cap_std::fs::Dir;
use cfs_erofs::digest::FsVerityDigest;
use cfs_erofs::fsverity::FsVerityHasher;
use cfs_erofs::scan::ContentSink;
use cfs_erofs::tree::FileSystem;
use cfs_erofs::{dumpfile, reader, scan, transform, writer};
use cfs_oci::catalog;

use super::{open_repo, print_json};
use crate::cli::{Args, ImageCommand, TreeOptions};
use crate::progress::PullDisplay;

/// Not root, the files of a rootless containers-storage store belong to
/// the user's subordinate ids and many cannot be read as the user: run
/// this command again inside the user namespace podman keeps for the
/// store, as `podman unshare` does (where we are root, and the
/// repository's files still belong to the user outside). Returns only if
/// no namespace is needed (root, or inside one already).
fn enter_store_userns(args: &Args) -> Result<()> {
    use std::os::unix::process::CommandExt;
    if rustix::process::geteuid().is_root()
        || std::env::var_os("_CONTAINERS_USERNS_CONFIGURED").is_some()
    {
        return Ok(());
    }
    let exe = std::env::current_exe().context("finding our own executable")?;
    let mut command = std::process::Command::new("podman");
    command.arg("unshare").arg(exe);
    if args.repo.is_none() {
        // Root in there, we would look for the system's repository.
        command.arg("--repo").arg(super::repo_path(args));
    }
    let error = command.args(std::env::args_os().skip(1)).exec();
    Err(error).context("running again under `podman unshare` to read a rootless store")
}

pub fn run<H: FsVerityDigest>(args: &Args, command: &ImageCommand) -> Result<()> {
    let version = args.erofs_version;
    match command {
        ImageCommand::ComputeId { path, tree } => {
            if path.is_dir() {
                let fs = tree_of_dir::<H>(path, tree, &scan::HashOnly)?;
                let image = writer::mkfs(&fs, version).context("writing the image")?;
                println!("{}", FsVerityHasher::<H>::digest(&image).to_hex());
            } else {
                let reference = path.to_str().context("an image reference must be UTF-8")?;
                println!(
                    "{}",
                    id_of_image::<H>(args, reference, tree.bootable)?.to_hex()
                );
            }
        }
        ImageCommand::Mkfs {
            source,
            output,
            tree,
        } => {
            let fs = if source.is_dir() {
                tree_of_dir::<H>(source, tree, &scan::HashOnly)?
            } else {
                if tree.bootable {
                    bail!("--bootable needs a directory: a dumpfile already describes the final image");
                }
                let text = std::fs::read(source)
                    .with_context(|| format!("reading dumpfile {}", source.display()))?;
                dumpfile::parse_dumpfile::<H>(&text)
                    .with_context(|| format!("parsing dumpfile {}", source.display()))?
            };
            let image = writer::mkfs(&fs, version).context("writing the image")?;
            std::fs::write(output, &image)
                .with_context(|| format!("writing {}", output.display()))?;
            println!("{}", FsVerityHasher::<H>::digest(&image).to_hex());
        }
        ImageCommand::Dump { image } => {
            let bytes =
                std::fs::read(image).with_context(|| format!("reading {}", image.display()))?;
            let parsed = reader::read_image::<H>(&bytes)
                .with_context(|| format!("reading image {}", image.display()))?;
            let mut stdout = std::io::stdout().lock();
            dumpfile::write_dumpfile(&mut stdout, &parsed.fs)?;
            stdout.flush()?;
        }
        ImageCommand::Create { path, name, tree } => {
            let repo = open_repo::<H>(args)?;
            let fs = tree_of_dir::<H>(path, tree, &repo)?;
            let image = writer::mkfs(&fs, repo.format()).context("writing the image")?;
            let digest = repo
                .write_image(&image, Some(name))
                .with_context(|| format!("storing image {name}"))?;
            if args.json {
                print_json(&serde_json::json!({ "name": name, "digest": digest.to_hex() }))?;
            } else {
                println!("{}:{}", H::ALGORITHM, digest.to_hex());
            }
        }
        ImageCommand::Mount { name, mountpoint } => {
            let repo = open_repo::<H>(args)?;
            repo.mount_image(name, mountpoint)
                .with_context(|| format!("mounting image {name} at {}", mountpoint.display()))?;
        }
        ImageCommand::Pull {
            reference,
            name,
            platform,
            insecure_registry,
            storage_root,
            via_skopeo,
            fetch_jobs,
            disable_static_deltas,
            ed25519_key,
            gpg_keyring,
        } => {
            if let Some(ostree) = reference.strip_prefix("ostree:") {
                if platform.is_some() || *insecure_registry {
                    bail!("--platform and --insecure-registry are for OCI images, not ostree:");
                }
                let options = cfs_ostree::pull::RemoteOptions {
                    fetch_jobs: usize::from(*fetch_jobs),
                    static_deltas: !*disable_static_deltas,
                    keys: trusted_keys(ed25519_key, gpg_keyring)?,
                };
                return pull_ostree::<H>(args, ostree, name.as_deref(), options);
            }
            if !ed25519_key.is_empty() || !gpg_keyring.is_empty() {
                bail!("--ed25519-key and --gpg-keyring are for ostree: sources");
            }
            if reference.starts_with("containers-storage:") {
                // skopeo's image proxy does not enter the namespace
                // itself (its other commands do), so both ways need it.
                enter_store_userns(args)?;
            }
            let repo = open_repo::<H>(args)?;
            let mut options = cfs_oci::fetch::FetchOptions::default();
            options.insecure_tls = *insecure_registry;
            options.storage_root = storage_root.clone();
            options.via_skopeo = *via_skopeo;
            options.platform = platform
                .as_deref()
                .map(str::parse)
                .transpose()
                .context("--platform")?;
            let display = PullDisplay::new(args.quiet);
            let report = cfs_oci::pull::pull(&repo, reference, name.as_deref(), &options, &display)
                .with_context(|| format!("pulling {reference}"))?;
            drop(display);
            let fetched = report.fetched;
            let boot = match &report.boot_image {
                Ok(digest) => digest.to_hex(),
                Err(why) => format!("none ({why})"),
            };
            if args.json {
                print_json(&serde_json::json!({
                    "tag": report.tag,
                    "manifest": report.manifest_digest,
                    "config": report.config_digest,
                    "index": report.index_digest,
                    "layersFetched": report.layers_fetched,
                    "layersPresent": report.layers_present,
                    "fetched": {
                        "documents": fetched.documents,
                        "layers": fetched.layers,
                        "layerBytes": fetched.layer_bytes,
                    },
                    "storeImport": report.store_import.map(|s| serde_json::json!({
                        "reflinkedFiles": s.reflinked_files,
                        "reflinkedBytes": s.reflinked_bytes,
                        "copiedFiles": s.copied_files,
                        "copiedBytes": s.copied_bytes,
                        "existingFiles": s.existing_files,
                        "existingBytes": s.existing_bytes,
                        "inlineBytes": s.inline_bytes,
                        "tarBytes": s.tar_bytes,
                    })),
                    "image": report.image.to_hex(),
                    "bootImage": report.boot_image.as_ref().ok().map(|d| d.to_hex()),
                    "departures": report.departures.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                }))?;
            } else {
                if let Some(index) = &report.index_digest {
                    println!("index {index}");
                }
                println!("manifest {}", report.manifest_digest);
                println!("config {}", report.config_digest);
                println!(
                    "layers {} fetched, {} already present",
                    report.layers_fetched, report.layers_present
                );
                println!(
                    "fetched {} documents, {} layer blobs, {} bytes",
                    fetched.documents, fetched.layers, fetched.layer_bytes
                );
                if let Some(s) = &report.store_import {
                    println!(
                        "files reflinked {} ({} bytes), copied {} ({} bytes), already stored {} ({} bytes), inline {} bytes",
                        s.reflinked_files,
                        s.reflinked_bytes,
                        s.copied_files,
                        s.copied_bytes,
                        s.existing_files,
                        s.existing_bytes,
                        s.inline_bytes
                    );
                }
                println!("image {}", report.image.to_hex());
                println!("boot image {boot}");
                for departure in &report.departures {
                    println!("note: {departure}");
                }
                println!("tagged {}", report.tag);
            }
        }
        ImageCommand::Ls => {
            let repo = open_repo::<H>(args)?;
            let images = catalog::list(&repo).context("listing images")?;
            if args.json {
                print_json(&images.iter().map(image_json).collect::<Vec<_>>())?;
            } else {
                for image in &images {
                    println!(
                        "{}\t{}\t{}\t{} layers\t{} bytes",
                        image.tag,
                        image.manifest_digest,
                        image.platform,
                        image.layers.len(),
                        image.size()
                    );
                }
            }
        }
        ImageCommand::Inspect { name } => {
            let repo = open_repo::<H>(args)?;
            let image = catalog::inspect(&repo, name)?;
            let departures = catalog::departures(&repo, name)?;
            if args.json {
                let mut json = image_json(&image);
                json["departures"] = departures.iter().map(|d| d.to_string()).collect();
                print_json(&json)?;
            } else {
                let hex = |d: &Option<H>| d.as_ref().map_or("none".to_owned(), |d| d.to_hex());
                println!("tag {}", image.tag);
                if let Some(index) = &image.index {
                    println!("index {} ({})", index.digest, index.platforms.join(", "));
                }
                println!("manifest {}", image.manifest_digest);
                println!("config {}", image.config_digest);
                println!("platform {}", image.platform);
                if let Some(created) = &image.created {
                    println!("created {created}");
                }
                println!("image {}", hex(&image.image));
                println!("boot image {}", hex(&image.boot_image));
                println!("size {}", image.size());
                for layer in &image.layers {
                    println!(
                        "layer {} {} {} {}",
                        layer.digest, layer.diff_id, layer.size, layer.media_type
                    );
                }
                for departure in &departures {
                    println!("note: {departure}");
                }
            }
        }
        ImageCommand::Tag { source, new } => {
            let repo = open_repo::<H>(args)?;
            catalog::tag(&repo, source, new)?;
        }
        ImageCommand::Copy {
            name,
            from_repo,
            to_repo,
        } => {
            let open = |path: &Path| {
                cfs_images::Repository::<H>::open(path)
                    .with_context(|| format!("opening repository {}", path.display()))
            };
            let (from, to) = (open(from_repo)?, open(to_repo)?);
            let stats = catalog::copy(&from, &to, name).with_context(|| {
                format!(
                    "copying {name} from {} to {}",
                    from_repo.display(),
                    to_repo.display()
                )
            })?;
            if args.json {
                print_json(&serde_json::json!({
                    "tag": name,
                    "reflinkedObjects": stats.reflinked,
                    "copiedObjects": stats.copied,
                    "presentObjects": stats.present,
                    "bytes": stats.bytes,
                }))?;
            } else {
                println!(
                    "copied {name}: {} objects reflinked, {} copied, {} already present, {} bytes",
                    stats.reflinked, stats.copied, stats.present, stats.bytes
                );
            }
        }
        ImageCommand::PushLayer { diff_id, remote } => {
            let repo = open_repo::<H>(args)?;
            let name = remote.name.as_deref().unwrap_or(diff_id);
            let moved = crate::varlink::push_layer(&repo, &remote.varlink, diff_id, name)
                .with_context(|| {
                    format!("pushing layer {diff_id} to {}", remote.varlink.display())
                })?;
            print_moved(args, "pushed", diff_id, &moved)?;
        }
        ImageCommand::PullLayer { diff_id, remote } => {
            let repo = open_repo::<H>(args)?;
            let name = remote.name.as_deref().unwrap_or(diff_id);
            let moved = crate::varlink::pull_layer(&repo, &remote.varlink, diff_id, name)
                .with_context(|| {
                    format!("pulling layer {diff_id} from {}", remote.varlink.display())
                })?;
            print_moved(args, "pulled", diff_id, &moved)?;
        }
        ImageCommand::Untag { name } => {
            let repo = open_repo::<H>(args)?;
            catalog::untag(&repo, name)?;
        }
        ImageCommand::Rm { name } => {
            let repo = open_repo::<H>(args)?;
            if !repo.remove_image_ref(name)? {
                bail!("no image named {name:?}");
            }
        }
    }
    Ok(())
}

/// The plain or boot image id of an OCI image: a tag in the repository,
/// or a reference with a transport, pulled into the repository (or, with
/// no `--repo`, into a temporary one that is removed afterwards).
fn id_of_image<H: FsVerityDigest>(args: &Args, reference: &str, bootable: bool) -> Result<H> {
    let is_reference = reference.parse::<cfs_oci::fetch::ImageReference>().is_ok();
    let scratch;
    let repo = if args.repo.is_none() && is_reference {
        scratch = tempfile::tempdir().context("creating a temporary repository")?;
        let options = cfs_images::InitOptions {
            format: args.erofs_version,
            insecure: true,
        };
        cfs_images::Repository::<H>::init(scratch.path(), &options)
            .context("creating a temporary repository")?
    } else {
        open_repo::<H>(args)?
    };
    let (image, boot_image) = if is_reference {
        let report = cfs_oci::pull::pull(
            &repo,
            reference,
            None,
            &cfs_oci::fetch::FetchOptions::default(),
            &PullDisplay::new(args.quiet),
        )
        .with_context(|| format!("pulling {reference}"))?;
        (Some(report.image), report.boot_image.ok())
    } else {
        let info = catalog::inspect(&repo, reference).with_context(|| {
            format!("{reference:?} is neither a directory, an image reference nor a tag")
        })?;
        (info.image, info.boot_image)
    };
    let which = if bootable { boot_image } else { image };
    which.with_context(|| {
        let kind = if bootable { "boot" } else { "plain" };
        format!("{reference} has no {kind} image")
    })
}

/// `image pull ostree:REPO-PATH:REF`: a commit of a local ostree
/// repository, or of an archive repository served over HTTP(S) when the
/// path is an `http://` or `https://` URL. The path is everything before
/// the last `:`, so it may itself hold colons; ostree refs cannot.
fn pull_ostree<H: FsVerityDigest>(
    args: &Args,
    source: &str,
    tag: Option<&str>,
    mut options: cfs_ostree::pull::RemoteOptions,
) -> Result<()> {
    let Some((path, rev)) = source
        .rsplit_once(':')
        .filter(|(p, r)| !p.is_empty() && !r.is_empty())
    else {
        bail!("an ostree source is ostree:REPO-PATH:REF (or :COMMIT), not ostree:{source}");
    };
    let repo = open_repo::<H>(args)?;
    // Keys given are the remote's from now on, even if this pull is
    // refused: a retry without them must not go unchecked.
    if options.keys.is_empty() {
        options.keys = cfs_ostree::remote::load_keys(&repo, path)?;
    } else {
        cfs_ostree::remote::save_keys(&repo, path, &options.keys)?;
    }
    // Signatures are checked on the remote path, which also reads local
    // archive repositories.
    let remote =
        path.starts_with("http://") || path.starts_with("https://") || !options.keys.is_empty();
    let (report, fetched) = if remote {
        let (report, fetched) = cfs_ostree::pull::pull_remote(&repo, path, rev, tag, &options)
            .with_context(|| format!("pulling {rev} from ostree repository {path}"))?;
        (report, Some(fetched))
    } else {
        let report = cfs_ostree::pull::pull_local(&repo, Path::new(path), rev, tag)
            .with_context(|| format!("pulling {rev} from ostree repository {path}"))?;
        (report, None)
    };
    let boot = match &report.boot_image {
        Ok(digest) => digest.to_hex(),
        Err(why) => format!("none ({why})"),
    };
    let stats = report.stats;
    if args.json {
        print_json(&serde_json::json!({
            "tag": report.tag,
            "commit": report.commit.to_hex(),
            "subject": report.subject,
            "directories": stats.directories,
            "files": stats.files,
            "externalBytes": stats.external_bytes,
            "fetched": fetched.map(|f| serde_json::json!({
                "files": f.files,
                "metadataObjects": f.metadata_objects,
                "contentObjects": f.content_objects,
                "bytes": f.bytes,
                "held": f.held,
                "deltaSuperblocks": f.delta_superblocks,
                "deltaParts": f.delta_parts,
            })),
            "image": report.image.to_hex(),
            "bootImage": report.boot_image.as_ref().ok().map(|d| d.to_hex()),
            "signedBy": report.signed_by.as_ref().map(ToString::to_string),
        }))?;
    } else {
        println!("commit {}", report.commit);
        println!("subject {}", report.subject);
        if let Some(signer) = &report.signed_by {
            println!("signed by {signer}");
        }
        println!(
            "read {} directories, {} files; {} bytes stored as objects",
            stats.directories, stats.files, stats.external_bytes
        );
        if let Some(f) = fetched {
            println!(
                "fetched {} metadata and {} content objects, {} other files, {} bytes; {} objects already held",
                f.metadata_objects, f.content_objects, f.files, f.bytes, f.held
            );
            if f.delta_superblocks > 0 {
                println!(
                    "static delta: {} superblock, {} parts",
                    f.delta_superblocks, f.delta_parts
                );
            }
        }
        println!("image {}", report.image.to_hex());
        println!("boot image {boot}");
        println!("tagged {}", report.tag);
    }
    Ok(())
}

/// The keys given on the command line: Ed25519 keys inline or in files,
/// GPG keyring files.
fn trusted_keys(
    ed25519: &[String],
    gpg_keyrings: &[PathBuf],
) -> Result<cfs_ostree::sign::TrustedKeys> {
    let mut keys = cfs_ostree::sign::TrustedKeys::default();
    for path in gpg_keyrings {
        let data = std::fs::read(path)
            .with_context(|| format!("reading --gpg-keyring {}", path.display()))?;
        keys.add_gpg_keyring(&data)
            .with_context(|| format!("--gpg-keyring {}", path.display()))?;
    }
    for given in ed25519 {
        let path = Path::new(given);
        let text = if path.is_file() {
            std::fs::read_to_string(path)
                .with_context(|| format!("reading --ed25519-key {given}"))?
        } else {
            given.clone()
        };
        keys.add_ed25519(&text)
            .with_context(|| format!("--ed25519-key {given}"))?;
    }
    Ok(keys)
}

/// The JSON form of a pulled image, shared by `image ls` and `inspect`.
fn image_json<H: FsVerityDigest>(image: &catalog::ImageInfo<H>) -> serde_json::Value {
    serde_json::json!({
        "tag": image.tag,
        "manifest": image.manifest_digest,
        "config": image.config_digest,
        "platform": image.platform,
        "index": image.index.as_ref().map(|i| serde_json::json!({
            "digest": i.digest,
            "platforms": i.platforms,
        })),
        "created": image.created,
        "image": image.image.as_ref().map(|d| d.to_hex()),
        "bootImage": image.boot_image.as_ref().map(|d| d.to_hex()),
        "size": image.size(),
        "layers": image.layers.iter().map(|l| serde_json::json!({
            "digest": l.digest,
            "diffId": l.diff_id,
            "size": l.size,
            "mediaType": l.media_type,
        })).collect::<Vec<_>>(),
    })
}

/// Reads a directory the way `cfsctl` does for the same options, handing
/// large files to `sink`.
fn tree_of_dir<H: FsVerityDigest>(
    path: &Path,
    options: &TreeOptions,
    sink: &impl ContentSink<H>,
) -> Result<FileSystem<H>> {
    let dir = Dir::open_ambient_dir(path, ambient_authority())
        .with_context(|| format!("opening directory {}", path.display()))?;
    let mut fs =
        scan::scan_dir::<H>(&dir, sink).with_context(|| format!("reading {}", path.display()))?;
    if !options.no_propagate_usr_to_root {
        transform::transform_for_oci(&mut fs, options.xattrs)
            .with_context(|| format!("applying the OCI transform to {}", path.display()))?;
    }
    if options.bootable {
        let policy = cfs_boot::DirectorySource::new(dir.try_clone()?);
        cfs_boot::transform_for_boot(&mut fs, &policy)
            .with_context(|| format!("applying the boot transform to {}", path.display()))?;
    }
    Ok(fs)
}

/// Reports a layer moved over varlink.
fn print_moved(
    args: &Args,
    verb: &str,
    diff_id: &str,
    moved: &crate::varlink::Moved,
) -> Result<()> {
    let stats = &moved.stats;
    if args.json {
        print_json(&serde_json::json!({
            "diffId": diff_id,
            "streamDigest": moved.stream_digest,
            "streamRef": moved.stream_ref,
            "reflinkedObjects": stats.reflinked,
            "copiedObjects": stats.copied,
            "presentObjects": stats.present,
            "bytes": stats.bytes,
        }))
    } else {
        println!(
            "{verb} {diff_id} as {}: {} objects reflinked, {} copied, {} already present, {} bytes",
            moved.stream_ref, stats.reflinked, stats.copied, stats.present, stats.bytes
        );
        Ok(())
    }
}
