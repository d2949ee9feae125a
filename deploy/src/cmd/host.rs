//! `install`, `upgrade`, `switch`, `rollback`, `status` and `gc`: the
//! commands that manage a host's deployments.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use cfs_erofs::digest::FsVerityDigest;
use cfs_images::Repository;

use super::print_json;
use crate::cli::{Args, DeployArgs, HostArgs, InstallCommand};
use crate::host::{self, origin::now_rfc3339, Deployment, EntryOptions, Host, Origin};
use crate::progress::PullDisplay;

/// GPT type of an EFI system partition.
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// GPT type of an x86-64 root partition (Discoverable Partitions).
const ROOT_TYPE: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
/// Size of the ESP made by `install to-disk`, MiB.
const ESP_MIB: u64 = 512;

/// The host `args` name; its boot directory was filled in by
/// [`crate::esp::locate`] when not given.
fn host_of(args: &HostArgs) -> Result<Host> {
    let boot = args
        .boot_dir
        .clone()
        .context("no boot directory: name it with --boot-dir")?;
    Ok(Host {
        root: args.sysroot.clone(),
        boot,
        cmdline: args.cmdline.clone(),
    })
}

/// Pulls `source` (an OCI image reference, or `ostree:REPO-PATH:REF`)
/// and describes it as an origin.
fn pull<H: FsVerityDigest>(
    args: &Args,
    repo: &Repository<H>,
    source: &str,
    insecure_registry: bool,
) -> Result<Origin> {
    let (manifest_digest, stream, image, boot_image) = match ostree_source(source)? {
        Some((path, rev)) => {
            // Keys stored for the location by `image pull` are enforced
            // here too; checking them takes the remote path (which reads
            // local archive repositories as well).
            let keys = cfs_ostree::remote::load_keys(repo, path)?;
            let report = if keys.is_empty() {
                cfs_ostree::pull::pull_local(repo, Path::new(path), rev, None)
            } else {
                let options = cfs_ostree::pull::RemoteOptions {
                    keys,
                    ..Default::default()
                };
                cfs_ostree::pull::pull_remote(repo, path, rev, None, &options).map(|(r, _)| r)
            }
            .with_context(|| format!("pulling {rev} from ostree repository {path}"))?;
            let stream = cfs_ostree::pull::commit_stream_id(&report.commit);
            (
                report.commit.to_hex(),
                stream,
                report.image,
                report.boot_image,
            )
        }
        None => {
            let mut options = cfs_oci::fetch::FetchOptions::default();
            options.insecure_tls = insecure_registry;
            let display = PullDisplay::new(args.quiet);
            let report = cfs_oci::pull::pull(repo, source, None, &options, &display)
                .with_context(|| format!("pulling {source}"))?;
            let stream = format!("oci-manifest-{}", report.manifest_digest);
            (
                report.manifest_digest,
                stream,
                report.image,
                report.boot_image,
            )
        }
    };
    let boot = boot_image.map_err(|why| anyhow::anyhow!("{source} has no boot image: {why}"))?;
    Ok(Origin {
        source: source.to_owned(),
        manifest_digest,
        stream,
        image: image.to_hex(),
        boot_image: boot.to_hex(),
        deployed: now_rfc3339(),
        generation: 0,
    })
}

/// `ostree:REPO-PATH:REF` split into path and ref; `None` for other
/// sources.
fn ostree_source(source: &str) -> Result<Option<(&str, &str)>> {
    let Some(rest) = source.strip_prefix("ostree:") else {
        return Ok(None);
    };
    match rest.rsplit_once(':') {
        Some((path, rev)) if !path.is_empty() && !rev.is_empty() => Ok(Some((path, rev))),
        _ => bail!("an ostree source is ostree:REPO-PATH:REF, not {source}"),
    }
}

pub fn install<H: FsVerityDigest>(args: &Args, command: &InstallCommand) -> Result<()> {
    match command {
        InstallCommand::ToFilesystem {
            root,
            esp,
            boot_dir,
            root_karg,
            deploy,
        } => {
            let root_karg = match root_karg {
                Some(karg) => karg.clone(),
                None => format!("root=UUID={}", filesystem_uuid(root)?),
            };
            let boot = boot_dir.as_deref().unwrap_or(esp);
            to_filesystem::<H>(args, root, esp, boot, &root_karg, deploy)
        }
        InstallCommand::ToDisk {
            target,
            size,
            deploy,
        } => to_disk::<H>(args, target, size, deploy),
    }
}

fn filesystem_uuid(path: &Path) -> Result<String> {
    let output = Command::new("findmnt")
        .args(["--noheadings", "--output", "UUID", "--target"])
        .arg(path)
        .output()
        .context("running findmnt")?;
    let uuid = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !output.status.success() || uuid.is_empty() {
        bail!(
            "cannot tell the filesystem UUID of {}: give --root-karg",
            path.display()
        );
    }
    Ok(uuid)
}

/// Installs onto `root`, with systemd-boot on `esp` and the entries and
/// kernels in `boot` (the ESP itself, or an XBOOTLDR partition).
fn to_filesystem<H: FsVerityDigest>(
    args: &Args,
    root: &Path,
    esp: &Path,
    boot: &Path,
    root_karg: &str,
    deploy: &DeployArgs,
) -> Result<()> {
    let host = Host {
        root: root.to_owned(),
        boot: boot.to_owned(),
        // Nothing on the new root is booted.
        cmdline: PathBuf::new(),
    };
    let repo_path = root.join(host::REPO_DIR);
    let options = cfs_images::InitOptions {
        format: args.erofs_version,
        insecure: deploy.insecure,
    };
    let repo = Repository::<H>::init(&repo_path, &options)
        .with_context(|| format!("creating repository {}", repo_path.display()))?;
    let origin = pull(args, &repo, &deploy.source, deploy.insecure_registry)?;
    let mut kargs = vec![root_karg.to_owned(), "rw".to_owned()];
    kargs.extend(deploy.kargs.iter().cloned());
    let entry = EntryOptions {
        kargs,
        insecure: deploy.insecure,
        // Nothing to fall back to yet.
        tries: None,
        staged: false,
    };
    // The boot loader after the deployment, which refuses an image with
    // nothing to boot before touching the ESP.
    let deployed = host::deploy(&host, &repo, origin.clone(), &entry, None)?;
    install_boot_loader(&repo, &origin, esp)?;
    report(args, "installed", &deployed)
}

fn report(args: &Args, what: &str, deployed: &host::Deployed) -> Result<()> {
    if args.json {
        print_json(&serde_json::json!({
            "deployment": deployed.id,
            "existing": deployed.existing,
            "kernel": deployed.kernel,
            "otherKernels": deployed.other_kernels,
            "etcConflicts": deployed.etc_conflicts,
        }))?;
    } else if deployed.existing {
        println!("already deployed: {}", deployed.id);
    } else {
        println!("{what}: {}", deployed.id);
        print!("kernel {}", deployed.kernel);
        if !deployed.other_kernels.is_empty() {
            print!(
                " (also in the image: {})",
                deployed.other_kernels.join(", ")
            );
        }
        println!();
    }
    warn_conflicts(&deployed.etc_conflicts);
    Ok(())
}

/// Says where the administrator's `/etc` won over the new image.
fn warn_conflicts(conflicts: &[PathBuf]) {
    for path in conflicts {
        eprintln!(
            "note: /etc/{}: changed here and in the new image; the local version is kept",
            path.display()
        );
    }
}

/// systemd-boot from the image (else from this machine) as the ESP's
/// default boot program, and a loader.conf without a `default` (which
/// would break boot-count fallback).
fn install_boot_loader<H: FsVerityDigest>(
    repo: &Repository<H>,
    origin: &Origin,
    esp: &Path,
) -> Result<()> {
    const SD_BOOT: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";
    let tree = host::image_tree(repo, &H::from_hex(&origin.image)?)?;
    let from_image = SD_BOOT.rsplit_once('/').and_then(|(dir, name)| {
        let dir = dir
            .split('/')
            .try_fold(&tree.root, |d, c| d.subdir(c.as_bytes()))?;
        let name = cfs_erofs::tree::FileName::new(name.as_bytes()).ok()?;
        match dir.entries.get(&name)? {
            cfs_erofs::tree::Inode::Leaf(id) => match &tree.leaf(*id).content {
                cfs_erofs::tree::LeafContent::Regular(file) => Some(file.clone()),
                _ => None,
            },
            _ => None,
        }
    });
    let binary = match from_image {
        Some(file) => {
            cfs_boot::content::read_regular(&host::RepoContent(repo), Path::new(SD_BOOT), &file)?
        }
        None => std::fs::read(Path::new("/").join(SD_BOOT)).with_context(|| {
            format!("systemd-boot is neither in the image nor on this machine (/{SD_BOOT})")
        })?,
    };
    for path in ["EFI/BOOT/BOOTX64.EFI", "EFI/systemd/systemd-bootx64.efi"] {
        write_atomic(&esp.join(path), &binary)?;
    }
    let loader = esp.join("loader/loader.conf");
    if !loader.exists() {
        write_atomic(&loader, b"timeout 3\n")?;
    }
    Ok(())
}

/// Writes `path` whole or not at all (temporary file, fsync, rename,
/// fsync of the directory): an interrupted install leaves no half boot
/// loader.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().context("a file on the ESP has a directory")?;
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", path.display()))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

fn run(command: &mut Command) -> Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn random_uuid() -> Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/uuid")?
        .trim()
        .to_owned())
}

/// Builds the root and the ESP as directories, then writes them into a
/// GPT disk with mkfs from those directories: no mount, no loop device.
fn to_disk<H: FsVerityDigest>(
    args: &Args,
    target: &Path,
    size: &str,
    deploy: &DeployArgs,
) -> Result<()> {
    let is_device = std::fs::metadata(target)
        .map(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()))
        .unwrap_or(false);
    if !is_device {
        run(Command::new("truncate").args(["-s", size]).arg(target))?;
    }
    let bytes = disk_size(target)?;
    let work = tempfile::Builder::new()
        .prefix(".cfs-install-")
        .tempdir_in(
            target
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )
        .context("creating a staging directory")?;
    let (root, esp) = (work.path().join("root"), work.path().join("esp"));
    std::fs::create_dir_all(&root)?;
    std::fs::create_dir_all(&esp)?;
    let root_uuid = random_uuid()?;
    to_filesystem::<H>(
        args,
        &root,
        &esp,
        &esp,
        &format!("root=PARTUUID={root_uuid}"),
        deploy,
    )?;

    // GPT: the ESP at 1 MiB, the root after it to the end.
    let esp_sectors = ESP_MIB * 2048;
    let script = format!(
        "label: gpt\nstart=2048, size={esp_sectors}, type={ESP_TYPE}, name=ESP\n\
         start={}, type={ROOT_TYPE}, uuid={root_uuid}, name=root\n",
        2048 + esp_sectors
    );
    let mut sfdisk = Command::new("sfdisk");
    sfdisk
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(target);
    pipe(&mut sfdisk, &script)?;
    let esp_kib = ESP_MIB * 1024;
    run(Command::new("mkfs.vfat")
        .args(["-F", "32", "-n", "ESP", "--offset", "2048"])
        .arg(target)
        .arg(esp_kib.to_string()))?;
    let image = format!("{}@@1M", target.display());
    for entry in std::fs::read_dir(&esp)? {
        run(Command::new("mcopy")
            .args(["-s", "-p", "-Q", "-i", &image])
            .arg(entry?.path())
            .arg("::/"))?;
    }
    let root_offset = (1 + ESP_MIB) << 20;
    // Leave room for the backup GPT at the end.
    let root_kib = (bytes - root_offset - (1 << 20)) >> 10;
    // The verity feature even for an insecure repository: booted on a
    // kernel with fs-verity, `repo enable-verity` makes it secure.
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "root", "-O", "verity", "-E"])
        .arg(format!("offset={root_offset}"))
        .arg("-d")
        .arg(&root)
        .arg(target)
        .arg(format!("{root_kib}k")))?;
    println!(
        "disk {} ready: ESP {ESP_MIB} MiB, root PARTUUID {root_uuid}",
        target.display()
    );
    Ok(())
}

fn disk_size(target: &Path) -> Result<u64> {
    let output = Command::new("blockdev")
        .arg("--getsize64")
        .arg(target)
        .output();
    if let Ok(output) = output {
        if output.status.success() {
            return Ok(String::from_utf8_lossy(&output.stdout).trim().parse()?);
        }
    }
    Ok(std::fs::metadata(target)?.len())
}

fn pipe(command: &mut Command, input: &str) -> Result<()> {
    use std::io::Write;
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {command:?}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The deployment changes start from: the booted one, else the default.
fn current(host: &Host) -> Result<Deployment> {
    let deployments = host.deployments()?;
    let booted = host.booted();
    deployments
        .iter()
        .find(|d| Some(&d.id) == booted.as_ref())
        .or(deployments.first())
        .cloned()
        .context("no deployment on this host")
}

/// Kernel arguments to carry to a new deployment: the current entry's,
/// without `composefs=` and without those its image's kargs.d gave (the
/// new image's are added).
fn carried_kargs<H: FsVerityDigest>(
    repo: &Repository<H>,
    current: &Deployment,
) -> Result<Vec<String>> {
    let mut image_kargs = Vec::new();
    if let Some(origin) = &current.origin {
        let tree = host::image_tree(repo, &H::from_hex(&origin.image)?)?;
        if let Ok(found) = cfs_boot::resources::find_boot_resources(
            &tree,
            &host::RepoContent(repo),
            std::env::consts::ARCH,
        ) {
            image_kargs = found.kargs;
        }
    }
    Ok(current
        .bls
        .options
        .split_ascii_whitespace()
        .filter(|a| !a.starts_with("composefs="))
        .filter(|a| !image_kargs.iter().any(|k| k == a))
        .map(str::to_owned)
        .collect())
}

pub fn upgrade<H: FsVerityDigest>(
    args: &Args,
    host_args: &HostArgs,
    source: Option<&str>,
    check: bool,
    keep: usize,
) -> Result<()> {
    let host = host_of(host_args)?;
    let repo = host.repo::<H>()?;
    let current = current(&host)?;
    let origin = current
        .origin
        .clone()
        .context("the current deployment has no origin file")?;
    let source = source.unwrap_or(&origin.source).to_owned();
    if check {
        return check_update(args, &repo, &origin, &source);
    }
    let new = pull(args, &repo, &source, false)?;
    // On a running host the new deployment is staged, and finalized at
    // shutdown so that /etc changes made meanwhile are merged too; on a
    // host that is not running (an image being prepared), at once.
    let running = host.booted().is_some_and(|id| id == current.id);
    let entry = EntryOptions {
        kargs: carried_kargs(&repo, &current)?,
        insecure: repo.is_insecure(),
        tries: Some(3),
        staged: running,
    };
    let deployed = host::deploy(&host, &repo, new, &entry, Some(&current))?;
    if deployed.existing {
        return report(args, "staged for the next boot", &deployed);
    }
    if running {
        let started = Command::new("systemctl")
            .args(["start", "cfs-deploy-finalize.service"])
            .status();
        if !started.is_ok_and(|s| s.success()) {
            eprintln!(
                "note: cfs-deploy-finalize.service did not start: run `cfs-deploy finalize` \
                 before rebooting, or the new deployment stays staged"
            );
        }
        report(args, "staged, finalized at shutdown", &deployed)
    } else {
        host::prune(&host, &repo, keep)?;
        repo.gc(false)?;
        report(args, "staged for the next boot", &deployed)
    }
}

pub fn finalize<H: FsVerityDigest>(args: &Args, host_args: &HostArgs) -> Result<()> {
    let host = host_of(host_args)?;
    let repo = host.repo::<H>()?;
    match host::finalize(&host, &repo)? {
        Some(done) => {
            if args.json {
                print_json(&serde_json::json!({
                    "finalized": done.id,
                    "etcConflicts": done.etc_conflicts,
                }))?;
            } else {
                println!("finalized: {}", done.id);
            }
            warn_conflicts(&done.etc_conflicts);
        }
        None if args.json => print_json(&serde_json::json!({ "finalized": null }))?,
        None => println!("nothing staged"),
    }
    Ok(())
}

pub fn pin(host_args: &HostArgs, id: &str, unpin: bool) -> Result<()> {
    let host = host_of(host_args)?;
    let matching: Vec<Deployment> = host
        .deployments()?
        .into_iter()
        .filter(|d| d.id.starts_with(id))
        .collect();
    let [deployment] = matching.as_slice() else {
        bail!(
            "{} deployments match {id:?}: name exactly one",
            matching.len()
        );
    };
    let marker = host.state_dir(&deployment.id).join(host::PIN_FILE);
    if unpin {
        match std::fs::remove_file(&marker) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => println!("unpinned {}", deployment.id),
        }
    } else {
        std::fs::write(&marker, "")?;
        println!("pinned {}", deployment.id);
    }
    Ok(())
}

fn check_update<H: FsVerityDigest>(
    args: &Args,
    repo: &Repository<H>,
    origin: &Origin,
    source: &str,
) -> Result<()> {
    if let Some((path, rev)) = ostree_source(source)? {
        let commit = cfs_ostree::repo::LocalRepo::open(Path::new(path))?
            .resolve(rev)?
            .to_hex();
        let update = commit != origin.manifest_digest;
        if args.json {
            print_json(&serde_json::json!({ "update": update, "commit": commit }))?;
        } else if update {
            println!("update available: {source}");
            println!("commit {} -> {commit}", origin.manifest_digest);
        } else {
            println!("no update: {source} is still {commit}");
        }
        return Ok(());
    }
    let source_image = cfs_oci::fetch::Source::open(source, &Default::default())
        .with_context(|| format!("opening {source}"))?;
    let manifest = source_image.manifest();
    let digest = manifest.digest.to_string();
    if digest == origin.manifest_digest {
        if args.json {
            print_json(&serde_json::json!({ "update": false, "manifest": digest }))?;
        } else {
            println!("no update: {source} is still {digest}");
        }
        return Ok(());
    }
    let config = source_image.config()?;
    let parsed = cfs_oci::fetch::oci_spec::image::ImageConfiguration::from_reader(&config.raw[..])?;
    let mut fetch = (0usize, 0u64);
    for (layer, diff_id) in manifest
        .manifest
        .layers()
        .iter()
        .zip(parsed.rootfs().diff_ids())
    {
        if repo.has_stream(&format!("oci-layer-{diff_id}"))?.is_none() {
            fetch.0 += 1;
            fetch.1 += layer.size();
        }
    }
    if args.json {
        print_json(&serde_json::json!({
            "update": true,
            "manifest": digest,
            "layersToFetch": fetch.0,
            "bytesToFetch": fetch.1,
        }))?;
    } else {
        println!("update available: {source}");
        println!("manifest {} -> {digest}", origin.manifest_digest);
        println!("to fetch: {} layers, {} bytes", fetch.0, fetch.1);
    }
    Ok(())
}

pub fn rollback(args: &Args, host_args: &HostArgs) -> Result<()> {
    let host = host_of(host_args)?;
    let deployments: Vec<Deployment> = host
        .deployments()?
        .into_iter()
        .filter(|d| !d.staged)
        .collect();
    let [first, second, ..] = deployments.as_slice() else {
        bail!("there is no other deployment to roll back to");
    };
    if second.is_bad() {
        bail!(
            "the other deployment {} failed to boot (no tries left): not rolling back to it",
            second.id
        );
    }
    host::make_default(&host, second)?;
    if args.json {
        print_json(&serde_json::json!({ "default": second.id, "previous": first.id }))?;
    } else {
        println!("next boot: {} (was {})", second.id, first.id);
    }
    Ok(())
}

pub fn status(args: &Args, host_args: &HostArgs) -> Result<()> {
    let host = host_of(host_args)?;
    let deployments = host.deployments()?;
    let booted = host.booted();
    let role = |index: usize, d: &Deployment| -> Vec<&'static str> {
        let mut roles = Vec::new();
        if Some(&d.id) == booted.as_ref() {
            roles.push("booted");
        }
        match (d.staged, index) {
            (true, _) => roles.push("staged"),
            (false, 0) => roles.push("default"),
            (false, 1) => roles.push("rollback"),
            _ => {}
        }
        if d.pinned {
            roles.push("pinned");
        }
        roles
    };
    if args.json {
        let list: Vec<_> = deployments
            .iter()
            .enumerate()
            .map(|(index, d)| {
                serde_json::json!({
                    "id": d.id,
                    "roles": role(index, d),
                    "title": d.bls.title,
                    "version": d.bls.version,
                    "entry": d.entry_path,
                    "bootCounter": d.entry.tries.map(|t| serde_json::json!({
                        "left": t.left, "done": t.done,
                    })),
                    "bad": d.is_bad(),
                    "source": d.origin.as_ref().map(|o| &o.source),
                    "manifest": d.origin.as_ref().map(|o| &o.manifest_digest),
                    "deployed": d.origin.as_ref().map(|o| &o.deployed),
                })
            })
            .collect();
        print_json(&serde_json::json!({
            "apiVersion": "cfs-deploy/v1",
            "booted": booted,
            "deployments": list,
        }))?;
        return Ok(());
    }
    if deployments.is_empty() {
        println!("no deployments");
    }
    for (index, d) in deployments.iter().enumerate() {
        let roles = role(index, d);
        let marker = if roles.contains(&"booted") { "*" } else { " " };
        println!("{marker} {} [{}]", d.bls.title, roles.join(", "));
        println!("    version  {}", d.bls.version);
        println!("    id       {}", d.id);
        if let Some(origin) = &d.origin {
            println!("    source   {}", origin.source);
            println!("    manifest {}", origin.manifest_digest);
            println!("    deployed {}", origin.deployed);
        }
        match d.entry.tries {
            Some(t) if t.left == 0 => println!("    boot     failed ({} tries used)", t.done),
            Some(t) => println!("    boot     {} tries left, {} used", t.left, t.done),
            None => println!("    boot     good"),
        }
    }
    Ok(())
}

pub fn gc<H: FsVerityDigest>(args: &Args, host_args: &HostArgs) -> Result<()> {
    let host = host_of(host_args)?;
    let repo = host.repo::<H>()?;
    // The default and the rollback; booted, staged and pinned ones besides.
    let removed = host::prune(&host, &repo, 2)?;
    let report = repo.gc(false)?;
    if args.json {
        print_json(&serde_json::json!({
            "deploymentsRemoved": removed,
            "objectsRemoved": report.objects_removed,
        }))?;
    } else {
        for id in &removed {
            println!("removed deployment {id}");
        }
        println!("removed {} objects", report.objects_removed);
    }
    Ok(())
}
