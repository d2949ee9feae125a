//! Helpers shared by the repository tests (`repo_*.rs`): running the
//! binary and the reference `cfsctl`, scratch filesystems, source trees,
//! mounts, and the checks every test repeats (fsck is clean, every ref
//! resolves, a mounted image shows exactly its source directory).
//!
//! Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cfs_erofs::digest::{FsVerityDigest, Sha512Digest};
use cfs_erofs::fsverity::FsVerityHasher;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Our binary.
pub const OURS: &str = env!("CARGO_BIN_EXE_cfs-deploy");

/// The reference tool, if installed (`./dev` installs it).
pub fn cfsctl() -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let path = home.join("bin/cfsctl");
    path.exists().then_some(path)
}

/// Whether we may mount and write owners and devices.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Why this machine cannot mount composefs images, if it cannot.
pub fn cannot_mount() -> Option<String> {
    if !is_root() {
        return Some("not running as root".into());
    }
    for fs in ["erofs", "overlay"] {
        let known = || {
            std::fs::read_to_string("/proc/filesystems")
                .unwrap_or_default()
                .contains(fs)
        };
        if !known() {
            // The module may just not be loaded yet.
            let _ = Command::new("modprobe").arg(fs).status();
            if !known() {
                return Some(format!("kernel has no {fs} filesystem"));
            }
        }
    }
    None
}

/// `cfs-deploy --repo REPO ARGS...`
pub fn ours(repo: &Path) -> Command {
    let mut cmd = Command::new(OURS);
    cmd.arg("--repo").arg(repo);
    cmd
}

/// Runs `cmd` and returns its output, whatever the exit status.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"))
}

/// Runs `cmd`, which must succeed; returns its standard output.
pub fn ok(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Our `repo fsck --json`: the exit code and the report.
pub fn fsck(repo: &Path, repair: bool) -> (i32, serde_json::Value) {
    let mut cmd = ours(repo);
    cmd.args(["--json", "repo", "fsck"]);
    if repair {
        cmd.arg("--repair");
    }
    let out = output(&mut cmd);
    let code = out.status.code().unwrap_or_else(|| {
        panic!("fsck died: {}", String::from_utf8_lossy(&out.stderr));
    });
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "fsck printed no JSON report ({e}); exit {code}, stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, report)
}

/// Our fsck must find nothing wrong; returns its report.
pub fn assert_clean(repo: &Path, when: &str) -> serde_json::Value {
    let (code, report) = fsck(repo, false);
    assert!(
        code == 0 && report["problems"].as_array().is_some_and(Vec::is_empty),
        "fsck {when}: exit {code}, {report:#}"
    );
    report
}

/// The image refs of `repo` (name -> digest named by the link), read from
/// disk.
pub fn image_refs(repo: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let refs = repo.join("images/refs");
    let Ok(entries) = std::fs::read_dir(&refs) else {
        return out;
    };
    for entry in entries {
        let entry = entry.expect("listing refs");
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let target = std::fs::read_link(entry.path()).expect("a ref is a symlink");
        let hex = target
            .file_name()
            .expect("a ref names an image")
            .to_string_lossy()
            .into_owned();
        out.insert(name, hex);
    }
    out
}

/// Every image ref resolves to an image whose content has the digest its
/// link names. Returns how many refs were checked.
pub fn assert_refs_resolve(repo: &Path) -> usize {
    let refs = image_refs(repo);
    for (name, hex) in &refs {
        let path = repo.join("images/refs").join(name);
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("ref {name} -> {hex} does not resolve: {e}"));
        let found = FsVerityHasher::<Sha512Digest>::digest(&bytes).to_hex();
        assert_eq!(&found, hex, "ref {name} names an image with other content");
    }
    refs.len()
}

/// Names starting with `.link-` anywhere under `images/` and `streams/`:
/// link renames a killed process left behind.
pub fn leftover_links(repo: &Path) -> usize {
    fn walk(dir: &Path) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .map(|e| {
                let e = e.expect("entry");
                if e.file_type().expect("type").is_dir() {
                    walk(&e.path())
                } else {
                    usize::from(e.file_name().as_bytes().starts_with(b".link-"))
                }
            })
            .sum()
    }
    walk(&repo.join("images")) + walk(&repo.join("streams"))
}

/// A mount point that is unmounted (lazily, so a failed assertion with an
/// open file cannot keep it) when dropped.
#[derive(Debug)]
pub struct Mounted(pub PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Whether `tool` is on the PATH.
pub fn installed(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A filesystem in a sparse file, loop-mounted; unmounted on drop.
#[derive(Debug)]
pub struct LoopFs {
    mount: Option<Mounted>,
    dir: tempfile::TempDir,
}

impl LoopFs {
    /// `mkfs_args` makes the filesystem in the image file.
    pub fn new(mkfs: &[&str], size: u64) -> Result<LoopFs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let image = dir.path().join("fs.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(size))
            .map_err(|e| e.to_string())?;
        let made = output(Command::new(mkfs[0]).args(&mkfs[1..]).arg(&image));
        if !made.status.success() {
            return Err(format!(
                "{mkfs:?}: {}",
                String::from_utf8_lossy(&made.stderr).trim()
            ));
        }
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).map_err(|e| e.to_string())?;
        let mounted = output(
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&mountpoint),
        );
        if !mounted.status.success() {
            return Err(format!(
                "mount -o loop: {}",
                String::from_utf8_lossy(&mounted.stderr).trim()
            ));
        }
        Ok(LoopFs {
            mount: Some(Mounted(mountpoint)),
            dir,
        })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// Bytes free for us, after writing everything out.
    pub fn available(&self) -> u64 {
        ok(Command::new("sync").arg("-f").arg(self.path()));
        let stat = rustix::fs::statvfs(self.path()).expect("statvfs");
        stat.f_bavail * stat.f_frsize
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        self.mount.take();
    }
}

/// A tmpfs on a fresh temporary directory, unmounted on drop.
#[derive(Debug)]
pub struct Tmpfs {
    mount: Option<Mounted>,
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs with `options` (`size=8m`, ...). Needs root.
    pub fn new(options: &str) -> std::io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .status()?;
        if !status.success() {
            return Err(std::io::Error::other(format!(
                "mount -t tmpfs -o {options} failed: {status}"
            )));
        }
        Ok(Self {
            mount: Some(Mounted(dir.path().to_owned())),
            dir,
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Changes the mount options (`size=`, `nr_inodes=`).
    pub fn remount(&self, options: &str) {
        ok(Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(self.path()));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Unmount before the directory is removed.
        self.mount.take();
    }
}

/// Scratch space for repositories: a tmpfs of `size` when we are root
/// (fast, and independent of how busy the disk is), else a temporary
/// directory on disk. The second value says which.
pub fn scratch(size: &str) -> (Scratch, &'static str) {
    if is_root() {
        if let Ok(fs) = Tmpfs::new(&format!("size={size}")) {
            return (Scratch::Tmpfs(fs), "tmpfs");
        }
    }
    (
        Scratch::Dir(tempfile::tempdir().expect("tempdir")),
        "temporary directory",
    )
}

/// See [`scratch`].
#[derive(Debug)]
pub enum Scratch {
    /// A tmpfs of our own.
    Tmpfs(Tmpfs),
    /// A plain temporary directory.
    Dir(tempfile::TempDir),
}

impl Scratch {
    /// Its root.
    pub fn path(&self) -> &Path {
        match self {
            Self::Tmpfs(fs) => fs.path(),
            Self::Dir(dir) => dir.path(),
        }
    }
}

/// Writes `count` regular files of `min..=max` random bytes under
/// `root/usr/dNN/fNNN` (20 files a directory); the same seed gives the
/// same files. Returns their paths relative to `root`.
pub fn write_files(
    root: &Path,
    count: usize,
    (min, max): (usize, usize),
    seed: u64,
) -> Vec<PathBuf> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut paths = Vec::with_capacity(count);
    for i in 0..count {
        let rel = PathBuf::from(format!("usr/d{:02}/f{i:04}", i / 20));
        let path = root.join(&rel);
        std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
        let len = rng.random_range(min..=max);
        let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        std::fs::write(&path, data).expect("write file");
        paths.push(rel);
    }
    paths
}

/// Gives `count` of `files` (relative to `root`) new random content of
/// `min..=max` bytes, so that the next image of `root` needs new objects.
pub fn rewrite_some(
    root: &Path,
    files: &[PathBuf],
    count: usize,
    (min, max): (usize, usize),
    rng: &mut StdRng,
) {
    for _ in 0..count {
        let path = root.join(&files[rng.random_range(0..files.len())]);
        let len = rng.random_range(min..=max);
        let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        std::fs::write(&path, data).expect("rewrite file");
    }
}

/// What a reader sees of one path: type, permissions, owner, times, size,
/// content digest, link target, device number, link count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// `S_IFMT` bits.
    pub kind: u32,
    /// Permission bits, with set-id and sticky.
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds and nanoseconds.
    pub mtime: (i64, i64),
    /// Size of files and symlinks (directories' sizes are the
    /// filesystem's business).
    pub size: Option<u64>,
    /// The fs-verity digest of a regular file's content.
    pub content: Option<String>,
    /// A symlink's target.
    pub target: Option<Vec<u8>>,
    /// A device's number.
    pub rdev: Option<u64>,
    /// Hard link count of non-directories.
    pub nlink: Option<u64>,
}

/// Everything under `root` (not `root` itself) by relative path, as
/// `lstat`, `readlink` and `read` show it.
pub fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, Seen> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("entry").path();
            let meta = std::fs::symlink_metadata(&path)
                .unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
            let ft = meta.file_type();
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .as_os_str()
                .as_bytes()
                .to_vec();
            let content = ft.is_file().then(|| {
                let data = std::fs::read(&path)
                    .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
                FsVerityHasher::<Sha512Digest>::digest(&data).to_hex()
            });
            let target = ft.is_symlink().then(|| {
                std::fs::read_link(&path)
                    .expect("readlink")
                    .as_os_str()
                    .as_bytes()
                    .to_vec()
            });
            let device = ft.is_block_device() || ft.is_char_device();
            out.insert(
                rel,
                Seen {
                    kind: meta.mode() & 0o170000,
                    perm: meta.mode() & 0o7777,
                    uid: meta.uid(),
                    gid: meta.gid(),
                    mtime: (meta.mtime(), meta.mtime_nsec()),
                    size: (!ft.is_dir()).then_some(meta.size()),
                    content,
                    target,
                    rdev: device.then_some(meta.rdev()),
                    nlink: (!ft.is_dir()).then_some(meta.nlink()),
                },
            );
            if ft.is_dir() {
                stack.push(path);
            }
        }
    }
    out
}

/// Panics, listing the first differences, unless the two snapshots are
/// equal. Returns the number of paths compared.
pub fn assert_same_tree(
    source: &BTreeMap<Vec<u8>, Seen>,
    mounted: &BTreeMap<Vec<u8>, Seen>,
    what: &str,
) -> usize {
    let show = |p: &[u8]| OsStr::from_bytes(p).to_string_lossy().into_owned();
    let mut diffs = Vec::new();
    for (path, seen) in source {
        match mounted.get(path) {
            None => diffs.push(format!("{} missing", show(path))),
            Some(m) if m != seen => diffs.push(format!("{}: {seen:?} != {m:?}", show(path))),
            Some(_) => {}
        }
    }
    for path in mounted.keys().filter(|p| !source.contains_key(*p)) {
        diffs.push(format!("{} extra", show(path)));
    }
    assert!(
        diffs.is_empty(),
        "{what}: {} differences, first: {:#?}",
        diffs.len(),
        &diffs[..diffs.len().min(10)]
    );
    source.len()
}

/// The digest of the regular file content `data` as an object path
/// (`objects/XX/rest`), for SHA-512 repositories.
pub fn object_of(data: &[u8]) -> String {
    format!(
        "objects/{}",
        FsVerityHasher::<Sha512Digest>::digest(data).object_pathname()
    )
}

/// A seeded generator for a test.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Digest length check: tests assume SHA-512 repositories (the default).
pub fn hex_len() -> usize {
    2 * <Sha512Digest as FsVerityDigest>::ALGORITHM.digest_len()
}

/// A GnuPG home with one signing key made by `gpg` itself; its agent is
/// stopped when dropped.
pub struct GpgKey {
    /// Its GnuPG home.
    pub home: PathBuf,
    /// The key's fingerprint, as gpg lists it.
    pub fingerprint: String,
}

impl GpgKey {
    pub fn new(home: PathBuf, name: &str) -> Self {
        std::fs::create_dir_all(&home).expect("mkdir");
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        ok(Command::new("gpg")
            .arg("--homedir")
            .arg(&home)
            .args(["--batch", "--passphrase", "", "--quick-gen-key"])
            .arg(format!("{name} <{name}@example.test>"))
            .args(["ed25519", "sign", "never"]));
        let listing = ok(Command::new("gpg")
            .arg("--homedir")
            .arg(&home)
            .args(["--with-colons", "--list-keys"]));
        let fingerprint = listing
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .and_then(|l| l.split(':').nth(8))
            .expect("a fingerprint")
            .to_owned();
        Self { home, fingerprint }
    }

    /// `gpg --export [--armor]` of the key, written to `path`.
    pub fn export(&self, path: &Path, armor: bool) -> String {
        let mut cmd = Command::new("gpg");
        cmd.arg("--homedir").arg(&self.home).arg("--export");
        if armor {
            cmd.arg("--armor");
        }
        std::fs::write(path, output(cmd.arg(&self.fingerprint)).stdout).expect("write keyring");
        format!("--gpg-keyring={}", path.display())
    }

    /// The `ostree` options that sign with this key.
    pub fn sign_args(&self) -> [String; 2] {
        [
            format!("--gpg-sign={}", self.fingerprint),
            format!("--gpg-homedir={}", self.home.display()),
        ]
    }
}

impl Drop for GpgKey {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(&self.home)
            .args(["--kill", "gpg-agent"])
            .output();
    }
}
