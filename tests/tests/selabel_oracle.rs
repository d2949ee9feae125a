//! Our boot transform (SELinux labelling included) against composefs-boot
//! 0.9.4's on the same trees: every label must be the same, and so must the
//! whole resulting tree and its EROFS image.
//!
//! Two policies: a handwritten one that exercises every rule (overlapping
//! regexes, every file-type qualifier, `<<none>>`, `.local`, `.homedirs`,
//! substitutions, hardlinks across labels), and the distribution's
//! `selinux-policy-default` (skipped with a reason if not installed) over
//! paths made from its own regexes plus the names of this machine's
//! filesystem. Both sides run with a repository (`transform_for_boot`) and
//! with the policy read back from a directory (`transform_for_boot_from_dir`).
//! For the real policy we also report how often libselinux's
//! `matchpathcon` disagrees with the reference; that is expected (its
//! precedence rules differ) and only printed.

mod reference;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use cfs_boot::policy::FileKind;
use cfs_boot::{transform_for_boot, DirectorySource};
use cfs_erofs::digest::{FsVerityDigest, Sha256Digest};
use cfs_erofs::format::FormatVersion;
use cfs_erofs::fsverity::FsVerityHasher;
use cfs_erofs::tree::{
    Directory, FileName, FileSystem, Inode, Leaf, LeafContent, LeafId, Mode, Mtime, RegularFile,
    Stat, INLINE_CONTENT_MAX,
};
use cfs_erofs::writer::mkfs;
use composefs::erofs::writer::{mkfs_erofs_versioned, ValidatedFileSystem};
use composefs::fsverity::{FsVerityHashValue, Sha256HashValue};
use composefs::repository::{Repository, RepositoryConfig};
use composefs_boot::BootOps;
use reference::{ref_version, to_reference};

type Fs = FileSystem<Sha256Digest>;
type RefFs = composefs::tree::FileSystem<Sha256HashValue>;
type Objects = HashMap<Sha256Digest, Vec<u8>>;

const SELINUX_XATTR: &[u8] = b"security.selinux";

/// Where the real policy comes from when `selinux-policy-default` is
/// installed.
const HOST_POLICY: &str = "/etc/selinux/default/contexts/files";

/// Builds one of our trees from paths, keeping external file contents.
struct Builder {
    fs: Fs,
    objects: Objects,
    counter: u32,
}

fn split(path: &[u8]) -> Vec<&[u8]> {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .collect()
}

impl Builder {
    fn new() -> Self {
        Self {
            fs: Fs::new(Self::stat_for(0, Some(b"host_t"))),
            objects: Objects::new(),
            counter: 0,
        }
    }

    /// Varied metadata; some inodes carry a stale label and other xattrs
    /// that must survive.
    fn stat_for(n: u32, stale: Option<&[u8]>) -> Stat {
        let mut stat = Stat {
            mode: Mode::new(0o644 + (n % 3) * 0o111),
            uid: n % 5,
            gid: n % 7,
            mtime: Mtime {
                sec: 1_700_000_000 + i64::from(n % 1000),
                nsec: n.wrapping_mul(7919) % 1_000_000_000,
            },
            ..Stat::default()
        };
        if let Some(stale) = stale {
            stat.xattrs.insert(SELINUX_XATTR.into(), stale.into());
        }
        if n.is_multiple_of(4) {
            stat.xattrs
                .insert(b"security.capability"[..].into(), b"\x01\x02"[..].into());
        }
        stat
    }

    fn next_stat(&mut self) -> Stat {
        self.counter += 1;
        let stale: Option<&[u8]> = (!self.counter.is_multiple_of(3)).then_some(b"stale_t");
        Self::stat_for(self.counter, stale)
    }

    /// The directory at `components`, created (replacing leaves in the way)
    /// as needed.
    fn dir(&mut self, components: &[&[u8]]) -> Option<&mut Directory> {
        let mut stats = Vec::new();
        for _ in components {
            stats.push(self.next_stat());
        }
        let mut dir = &mut self.fs.root;
        for (component, stat) in components.iter().zip(stats) {
            let name = FileName::new(component).ok()?;
            let slot = dir
                .entries
                .entry(name)
                .or_insert_with(|| Inode::Directory(Box::new(Directory::new(stat.clone()))));
            if matches!(slot, Inode::Leaf(_)) {
                *slot = Inode::Directory(Box::new(Directory::new(stat)));
            }
            dir = match slot {
                Inode::Directory(sub) => sub,
                Inode::Leaf(_) => unreachable!("just replaced"),
            };
        }
        Some(dir)
    }

    /// Adds `path` as a leaf unless something is already there.
    fn leaf(&mut self, path: &[u8], content: LeafContent<Sha256Digest>) -> Option<LeafId> {
        let components = split(path);
        let (last, parents) = components.split_last()?;
        let name = FileName::new(last).ok()?;
        if self.dir(parents)?.entries.contains_key(&name) {
            return None;
        }
        let stat = self.next_stat();
        let id = self.fs.push_leaf(Leaf { stat, content });
        self.dir(parents)?.entries.insert(name, Inode::Leaf(id));
        Some(id)
    }

    fn file(&mut self, path: &[u8], data: &[u8]) -> Option<LeafId> {
        let content = if data.len() <= INLINE_CONTENT_MAX {
            RegularFile::Inline(data.into())
        } else {
            let digest = FsVerityHasher::<Sha256Digest>::digest(data);
            self.objects.insert(digest, data.to_vec());
            RegularFile::External {
                digest,
                size: data.len() as u64,
            }
        };
        self.leaf(path, LeafContent::Regular(content))
    }

    fn kind(&mut self, path: &[u8], kind: FileKind) {
        let content = match kind {
            FileKind::Directory => {
                self.dir(&split(path));
                return;
            }
            FileKind::Regular => {
                let data = path.to_vec();
                self.file(path, &data);
                return;
            }
            FileKind::Symlink => LeafContent::Symlink(b"../target"[..].into()),
            FileKind::BlockDevice => LeafContent::BlockDevice(0x0801),
            FileKind::CharacterDevice => LeafContent::CharacterDevice(0x0103),
            FileKind::Fifo => LeafContent::Fifo,
            FileKind::Socket => LeafContent::Socket,
        };
        self.leaf(path, content);
    }

    /// Links `path` to the leaf at `target` (both must be free / exist).
    fn link(&mut self, path: &[u8], target: LeafId) {
        let components = split(path);
        let Some((last, parents)) = components.split_last() else {
            return;
        };
        let Ok(name) = FileName::new(last) else {
            return;
        };
        if let Some(dir) = self.dir(parents) {
            dir.entries.entry(name).or_insert(Inode::Leaf(target));
        }
    }

    /// The tree, with orphans (leaves replaced by directories) dropped.
    fn finish(mut self) -> (Fs, Objects) {
        self.fs.compact();
        self.fs.check().expect("builder makes consistent trees");
        (self.fs, self.objects)
    }
}

/// Every inode's label by path, and the number of links of each leaf.
fn our_labels(fs: &Fs) -> BTreeMap<Vec<u8>, (Option<Vec<u8>>, char)> {
    fn walk(
        fs: &Fs,
        dir: &Directory,
        path: &mut Vec<u8>,
        out: &mut BTreeMap<Vec<u8>, (Option<Vec<u8>>, char)>,
    ) {
        let label = dir.stat.xattrs.get(SELINUX_XATTR).map(|v| v.to_vec());
        out.insert(path.clone(), (label, 'd'));
        for (name, inode) in &dir.entries {
            let len = path.len();
            if path.len() > 1 {
                path.push(b'/');
            }
            path.extend_from_slice(name.as_bytes());
            match inode {
                Inode::Directory(sub) => walk(fs, sub, path, out),
                Inode::Leaf(id) => {
                    let leaf = fs.leaf(*id);
                    let label = leaf.stat.xattrs.get(SELINUX_XATTR).map(|v| v.to_vec());
                    let kind = match leaf.content {
                        LeafContent::Regular(_) => '-',
                        LeafContent::Symlink(_) => 'l',
                        LeafContent::BlockDevice(_) => 'b',
                        LeafContent::CharacterDevice(_) => 'c',
                        LeafContent::Fifo => 'p',
                        LeafContent::Socket => 's',
                    };
                    out.insert(path.clone(), (label, kind));
                }
            }
            path.truncate(len);
        }
    }
    let mut out = BTreeMap::new();
    walk(fs, &fs.root, &mut b"/".to_vec(), &mut out);
    out
}

fn their_labels(fs: &RefFs) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
    fn walk(
        fs: &RefFs,
        dir: &composefs::tree::Directory<Sha256HashValue>,
        path: &mut Vec<u8>,
        out: &mut BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    ) {
        let key = OsStr::from_bytes(SELINUX_XATTR);
        out.insert(path.clone(), dir.stat.xattrs.get(key).map(|v| v.to_vec()));
        for (name, inode) in dir.sorted_entries() {
            let len = path.len();
            if path.len() > 1 {
                path.push(b'/');
            }
            path.extend_from_slice(name.as_bytes());
            match inode {
                composefs::tree::Inode::Directory(sub) => walk(fs, sub, path, out),
                composefs::tree::Inode::Leaf(id, _) => {
                    let stat = &fs.leaf(*id).stat;
                    out.insert(path.clone(), stat.xattrs.get(key).map(|v| v.to_vec()));
                }
            }
            path.truncate(len);
        }
    }
    let mut out = BTreeMap::new();
    walk(fs, &fs.root, &mut b"/".to_vec(), &mut out);
    out
}

fn dumpfile(fs: &RefFs) -> String {
    let mut out = Vec::new();
    composefs::dumpfile::write_dumpfile(&mut out, fs).expect("dumpfile of a valid tree");
    String::from_utf8_lossy(&out).into_owned()
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What one comparison found.
#[derive(Debug, Default)]
struct Outcome {
    ours_took: std::time::Duration,
    theirs_took: std::time::Duration,
    inodes: usize,
    labelled: usize,
    mismatches: Vec<String>,
}

/// Compares label by label, then the whole trees (dumpfiles) and their
/// EROFS images.
fn compare(what: &str, ours: &Fs, theirs: &RefFs) -> Outcome {
    let our_map = our_labels(ours);
    let their_map = their_labels(theirs);
    let mut outcome = Outcome {
        inodes: our_map.len(),
        labelled: our_map.values().filter(|(l, _)| l.is_some()).count(),
        ..Outcome::default()
    };
    for (path, (label, _)) in &our_map {
        match their_map.get(path) {
            Some(theirs) if theirs == label => {}
            Some(theirs) => outcome.mismatches.push(format!(
                "{what}: {}: ours {:?}, reference {:?}",
                show(path),
                label.as_deref().map(show),
                theirs.as_deref().map(show)
            )),
            None => outcome
                .mismatches
                .push(format!("{what}: {} only in ours", show(path))),
        }
    }
    for path in their_map.keys().filter(|p| !our_map.contains_key(*p)) {
        outcome
            .mismatches
            .push(format!("{what}: {} only in the reference", show(path)));
    }

    let ours_as_ref = to_reference(ours);
    let (a, b) = (dumpfile(&ours_as_ref), dumpfile(theirs));
    if a != b {
        let line = a
            .lines()
            .zip(b.lines())
            .find(|(x, y)| x != y)
            .map(|(x, y)| format!("ours {x:?} / reference {y:?}"))
            .unwrap_or_else(|| "one dumpfile is a prefix of the other".to_owned());
        outcome
            .mismatches
            .push(format!("{what}: dumpfiles differ: {line}"));
    }
    for version in [FormatVersion::V1, FormatVersion::V2] {
        let our_image = mkfs(ours, version).expect("our writer accepts the tree");
        let validated = ValidatedFileSystem::new(theirs.clone()).expect("valid reference tree");
        let their_image = mkfs_erofs_versioned(&validated, ref_version(version));
        if our_image[..] != their_image[..] {
            outcome
                .mismatches
                .push(format!("{what}: {version:?} EROFS images differ"));
        }
    }
    outcome
}

/// Runs both transforms with a repository (ours: objects in memory).
fn with_repository(fs: &Fs, objects: &Objects) -> Outcome {
    let mut ours = fs.clone();
    let started = std::time::Instant::now();
    transform_for_boot(&mut ours, objects).expect("our transform");
    let ours_took = started.elapsed();

    let dir = tempfile::tempdir().expect("temporary directory");
    let (repo, _) = Repository::<Sha256HashValue>::init_path(
        rustix::fs::CWD,
        dir.path().join("repo"),
        RepositoryConfig::new(Sha256HashValue::ALGORITHM).set_insecure(),
    )
    .expect("reference repository");
    for (digest, data) in objects {
        let id = repo.ensure_object(data).expect("store object");
        assert_eq!(id.to_hex(), digest.to_hex(), "same fs-verity digest");
    }
    let mut theirs = to_reference(fs);
    let started = std::time::Instant::now();
    theirs
        .transform_for_boot(&repo)
        .expect("reference transform");
    let theirs_took = started.elapsed();
    Outcome {
        ours_took,
        theirs_took,
        ..compare("repository", &ours, &theirs)
    }
}

/// Writes the regular files below `dir` in the tree (at `path`) under
/// `target` on disk.
fn write_out(fs: &Fs, objects: &Objects, dir: &Directory, target: &Path) {
    std::fs::create_dir_all(target).expect("mkdir");
    for (name, inode) in &dir.entries {
        let path = target.join(OsStr::from_bytes(name.as_bytes()));
        match inode {
            Inode::Directory(sub) => write_out(fs, objects, sub, &path),
            Inode::Leaf(id) => match &fs.leaf(*id).content {
                LeafContent::Regular(RegularFile::Inline(data)) => {
                    std::fs::write(&path, data).expect("write file");
                }
                LeafContent::Regular(RegularFile::External { digest, .. }) => {
                    std::fs::write(&path, &objects[digest]).expect("write file");
                }
                _ => {}
            },
        }
    }
}

/// Runs both transforms with policy files read back from a directory that
/// holds the tree's `/etc/selinux`.
fn with_directory(fs: &Fs, objects: &Objects) -> Outcome {
    let dir = tempfile::tempdir().expect("temporary directory");
    if let Some(selinux) = fs
        .root
        .subdir(b"etc")
        .and_then(|etc| etc.subdir(b"selinux"))
    {
        write_out(fs, objects, selinux, &dir.path().join("etc/selinux"));
    }
    let root = cap_std::fs::Dir::open_ambient_dir(dir.path(), cap_std::ambient_authority())
        .expect("open directory");
    let mut ours = fs.clone();
    let started = std::time::Instant::now();
    transform_for_boot(&mut ours, &DirectorySource::new(root)).expect("our transform");
    let ours_took = started.elapsed();

    let mut theirs = to_reference(fs);
    let rootfd = std::fs::File::open(dir.path()).expect("open directory");
    let started = std::time::Instant::now();
    theirs
        .transform_for_boot_from_dir(&rootfd)
        .expect("reference transform");
    let theirs_took = started.elapsed();
    Outcome {
        ours_took,
        theirs_took,
        ..compare("directory", &ours, &theirs)
    }
}

fn check(name: &str, outcomes: [Outcome; 2]) {
    let mut failures = Vec::new();
    for outcome in &outcomes {
        println!(
            "{name}: {} inodes, {} labelled, {} mismatches; transform took {:?} (reference {:?})",
            outcome.inodes,
            outcome.labelled,
            outcome.mismatches.len(),
            outcome.ours_took,
            outcome.theirs_took,
        );
        failures.extend(outcome.mismatches.iter().cloned());
    }
    for failure in failures.iter().take(30) {
        eprintln!("{failure}");
    }
    assert!(failures.is_empty(), "{name}: {} mismatches", failures.len());
}

/// The skeleton every test image needs: `/usr`, `/boot` and `/sysroot`
/// with content to drop, and a config naming `type_name`.
fn skeleton(builder: &mut Builder, type_name: &str) {
    builder.file(b"/usr/bin/sh", &[0x7f; 100]);
    builder.file(b"/boot/grub/grub.cfg", b"set timeout=5\n");
    builder.file(b"/boot/vmlinuz-6.1", &[1; 300]);
    builder.file(b"/sysroot/ostree/repo/config", b"[core]\n");
    let config = format!("# comment\nSELINUX=enforcing\nSELINUXTYPE={type_name}\n");
    builder.file(b"/etc/selinux/config", config.as_bytes());
}

const HANDWRITTEN: &str = r#"
# Overlapping rules: the last matching line wins.
/(.*)?                      system_u:object_r:default_t:s0
/                   -d      system_u:object_r:root_t:s0
/usr(/.*)?                  system_u:object_r:usr_t:s0
/usr/bin/exact      --      system_u:object_r:exact_t:s0
/usr/bin(/.*)?              system_u:object_r:bin_t:s0
/usr/bin/special    --      system_u:object_r:special_exec_t:s0
/usr/bin/.*\.sh             system_u:object_r:script_t:s0
/usr/bin(/.*)?      -l      system_u:object_r:bin_link_t:s0
/usr/lib/[^/]+\.so(\.[0-9]+)*   --  system_u:object_r:lib_t:s0
/etc(/.*)?                  system_u:object_r:etc_t:s0
/etc/shadow.*       --      system_u:object_r:shadow_t:s0
/etc/selinux(/.*)?          system_u:object_r:selinux_config_t:s0
/dev(/.*)?                  system_u:object_r:device_t:s0
/dev/null           -c      system_u:object_r:null_device_t:s0
/dev/sd[a-z]+[0-9]* -b      system_u:object_r:fixed_disk_device_t:s0
/dev/log            -s      system_u:object_r:devlog_t:s0
/dev/initctl        -p      system_u:object_r:initctl_t:s0
/dev/.*             -l      system_u:object_r:device_link_t:s0
/tmp(/.*)?                  <<none>>
/tmp/keep           --      system_u:object_r:tmp_keep_t:s0
/var(/.*)?                  system_u:object_r:var_t:s0
/var/log(/.*)?              system_u:object_r:var_log_t:s0
/var/log/[^/]*\.log --      system_u:object_r:log_file_t:s0
/var/lib/(a|b)[0-9]{2}(/.*)?    system_u:object_r:ab_t:s0
/opt/app(/.*)?              system_u:object_r:app_t:s0
/opt/app/data(/.*)? -d      system_u:object_r:app_data_dir_t:s0
/home/[^/]+(/.*)?           unconfined_u:object_r:user_home_t:s0
/usr/bin/(?i:UPPER)         system_u:object_r:caseless_t:s0
/usr/share/q)|(/qq  --      system_u:object_r:unbalanced_t:s0
"#;

/// The handwritten line whose groups only balance inside the reference's
/// `^(...)T$` wrapping.
const UNBALANCED: &str = "/usr/share/q)|(/qq";

const LOCAL: &str = "/usr/bin/local-override -- system_u:object_r:local_t:s0\n\
                     /etc/shadow-local -- system_u:object_r:local_shadow_t:s0\n";

const HOMEDIRS: &str = "/home/[^/]+/\\.ssh(/.*)? unconfined_u:object_r:ssh_home_t:s0\n\
                        /usr/bin/local-override -- system_u:object_r:homedirs_wins_t:s0\n";

const SUBS: &str = "/srv /opt/app\n/web /var/log\n# comment\n/alias /usr/bin\n";
const SUBS_DIST: &str = "/web /var\n/data /opt/app/data/\n";

#[test]
fn handwritten_policy_matches_reference() {
    let mut b = Builder::new();
    skeleton(&mut b, "handwritten");
    let dir = "/etc/selinux/handwritten/contexts/files/";
    // Long enough to be external objects, read through the source.
    let padding = format!("# {}\n", "-".repeat(80));
    let mut policy = BTreeMap::new();
    for (name, content) in [
        ("file_contexts", HANDWRITTEN),
        ("file_contexts.local", LOCAL),
        ("file_contexts.homedirs", HOMEDIRS),
        ("file_contexts.subs", SUBS),
        ("file_contexts.subs_dist", SUBS_DIST),
    ] {
        let data = format!("{padding}{content}").into_bytes();
        b.file(format!("{dir}{name}").as_bytes(), &data);
        policy.insert(name, data);
    }
    let regular = [
        "/usr/bin/ls",
        "/usr/bin/special",
        "/usr/bin/exact",
        "/usr/bin/run.sh",
        "/usr/bin/UPPER",
        "/usr/bin/upper",
        "/usr/bin/local-override",
        "/usr/lib/libc.so.6",
        "/usr/lib/libz.so",
        "/usr/lib/sub/libq.so",
        "/etc/shadow",
        "/etc/shadow-",
        "/etc/shadow-local",
        "/etc/passwd",
        "/tmp/x",
        "/tmp/keep",
        "/var/log/syslog",
        "/var/log/app.log",
        "/var/log/sub/app.log",
        "/var/lib/a12/f",
        "/var/lib/c12/f",
        "/opt/app/bin/tool",
        "/opt/app/data/file",
        "/opt/other",
        "/home/joe/.profile",
        "/home/joe/.ssh/authorized_keys",
        "/srv/bin/tool",
        "/srv/data/file",
        "/web/app.log",
        "/web/log/app.log",
        "/data/x",
        "/alias/run.sh",
        "/weird name/\u{e9}t\u{e9}",
        "/usr/share/qfoo",
        "/usr/share/q/deeper",
        "/qq",
        "/x/qq",
    ];
    for path in regular {
        b.kind(path.as_bytes(), FileKind::Regular);
    }
    b.file(b"/usr/bin/bytes\xff\xfe", b"non-UTF-8 name");
    b.file(b"/var/log/new\nline.log", b"newline in a name");
    for (path, kind) in [
        ("/dev/null", FileKind::CharacterDevice),
        ("/dev/sda1", FileKind::BlockDevice),
        ("/dev/sdb", FileKind::BlockDevice),
        ("/dev/log", FileKind::Socket),
        ("/dev/initctl", FileKind::Fifo),
        ("/dev/stdin", FileKind::Symlink),
        ("/dev/null2", FileKind::CharacterDevice),
        ("/usr/bin/link", FileKind::Symlink),
        ("/tmp/fifo", FileKind::Fifo),
        ("/opt/app/data/sub", FileKind::Directory),
        ("/empty", FileKind::Directory),
    ] {
        b.kind(path.as_bytes(), kind);
    }
    // Hardlinks: same label, different labels, <<none>>, through a
    // substitution, and into /boot (dropped with it).
    let tool = b.file(b"/usr/bin/tool", &[9; 200]).expect("new file");
    b.link(b"/usr/bin/tool2", tool);
    b.link(b"/etc/tool", tool);
    b.link(b"/etc/tool2", tool);
    b.link(b"/tmp/tool", tool);
    b.link(b"/alias/tool", tool);
    b.link(b"/boot/tool", tool);
    let conf = b.file(b"/etc/app.conf", b"x=1\n").expect("new file");
    b.link(b"/var/log/app.conf", conf);
    b.link(b"/srv/app.conf", conf);
    let only_boot = b.file(b"/boot/only", b"dropped").expect("new file");
    b.link(b"/sysroot/only", only_boot);

    let (fs, objects) = b.finish();
    let outcomes = [
        with_repository(&fs, &objects),
        with_directory(&fs, &objects),
    ];
    let mut ours = fs.clone();
    transform_for_boot(&mut ours, &objects).expect("our transform");
    compare_with_matchpathcon("handwritten policy", &ours, &policy, &HashSet::new());
    check("handwritten policy", outcomes);
}

#[test]
fn no_policy_strips_labels_like_reference() {
    for config in [None, Some("SELINUX=disabled\n")] {
        let mut b = Builder::new();
        b.file(b"/usr/bin/sh", &[0x7f; 100]);
        b.kind(b"/boot/efi", FileKind::Directory);
        b.kind(b"/sysroot", FileKind::Directory);
        b.kind(b"/etc/selinux", FileKind::Directory);
        b.kind(b"/dev/null", FileKind::CharacterDevice);
        if let Some(config) = config {
            b.file(b"/etc/selinux/config", config.as_bytes());
        }
        let (fs, objects) = b.finish();
        let outcomes = [
            with_repository(&fs, &objects),
            with_directory(&fs, &objects),
        ];
        assert!(outcomes.iter().all(|o| o.labelled == 0));
        check("no policy", outcomes);
    }
}

/// A path the regex matches, roughly: literal parts kept, classes and
/// wildcards replaced by one plausible byte, the first alternative of a
/// group taken; optional parts and repetitions dropped, or kept once with
/// `expand`.
fn witness(regex: &str, expand: bool) -> Vec<u8> {
    fn class(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> u8 {
        let negated = chars.peek() == Some(&'^');
        if negated {
            chars.next();
        }
        let mut first = None;
        let mut previous = None;
        while let Some(c) = chars.next() {
            if c == ']' && previous.is_some() {
                break;
            }
            let c = if c == '\\' {
                chars.next().unwrap_or('x')
            } else {
                c
            };
            first.get_or_insert(c);
            previous = Some(c);
        }
        match (negated, first) {
            (false, Some(c)) if c.is_ascii() => c as u8,
            _ => b'x',
        }
    }
    fn sequence(
        chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
        expand: bool,
        out: &mut Vec<u8>,
    ) {
        let mut skipping_alternatives = false;
        while let Some(c) = chars.next() {
            let start = out.len();
            match c {
                ')' => return,
                '|' => skipping_alternatives = true,
                '(' => {
                    if chars.peek() == Some(&'?') {
                        chars.next();
                        while chars.next_if(|c| *c != ':' && *c != ')').is_some() {}
                        chars.next_if_eq(&':');
                    }
                    sequence(chars, expand, out);
                }
                '[' => out.push(class(chars)),
                '.' => out.push(b'x'),
                '^' | '$' => {}
                '\\' => match chars.next() {
                    Some('d') => out.push(b'0'),
                    Some('w') => out.push(b'a'),
                    Some('s') => out.push(b' '),
                    Some(other) => out.extend_from_slice(other.to_string().as_bytes()),
                    None => {}
                },
                other => out.extend_from_slice(other.to_string().as_bytes()),
            }
            if skipping_alternatives {
                out.truncate(start);
            }
            // Quantifiers on what was just added.
            match chars.peek() {
                Some('?' | '*') => {
                    chars.next();
                    if !expand {
                        out.truncate(start);
                    }
                }
                Some('+') => {
                    chars.next();
                }
                Some('{') => while chars.next().is_some_and(|c| c != '}') {},
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    sequence(&mut regex.chars().peekable(), expand, &mut out);
    out
}

/// Paths and kinds from the spec lines of a `file_contexts` file.
fn spec_paths(text: &str) -> Vec<(Vec<u8>, FileKind)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(regex) = fields.first().filter(|r| !r.starts_with('#')) else {
            continue;
        };
        let kind = match fields.get(1).and_then(|f| f.strip_prefix('-')) {
            Some("d") => FileKind::Directory,
            Some("l") => FileKind::Symlink,
            Some("b") => FileKind::BlockDevice,
            Some("c") => FileKind::CharacterDevice,
            Some("p") => FileKind::Fifo,
            Some("s") => FileKind::Socket,
            Some(_) => FileKind::Regular,
            None if regex.ends_with("(/.*)?") => FileKind::Directory,
            None => FileKind::Regular,
        };
        for expand in [false, true] {
            let path = witness(regex, expand);
            if path.starts_with(b"/") && path.len() > 1 {
                let kind = if expand { FileKind::Regular } else { kind };
                out.push((path, kind));
            }
        }
    }
    out
}

/// A path, its kind, and its (device, inode) if it has several links.
type HostPath = (Vec<u8>, FileKind, Option<(u64, u64)>);

/// Paths and kinds (and hardlinks) from this machine's filesystem, names
/// only: no file is read.
fn host_paths(limit: usize) -> Vec<HostPath> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = [
        "/usr", "/etc", "/var", "/opt", "/srv", "/home", "/root", "/dev",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    stack.reverse();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries.into_iter().rev() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let file_type = meta.file_type();
            let kind = if file_type.is_dir() {
                stack.push(path.clone());
                FileKind::Directory
            } else if file_type.is_symlink() {
                FileKind::Symlink
            } else if file_type.is_block_device() {
                FileKind::BlockDevice
            } else if file_type.is_char_device() {
                FileKind::CharacterDevice
            } else if file_type.is_fifo() {
                FileKind::Fifo
            } else if file_type.is_socket() {
                FileKind::Socket
            } else {
                FileKind::Regular
            };
            let inode =
                (kind != FileKind::Directory && meta.nlink() > 1).then(|| (meta.dev(), meta.ino()));
            out.push((path.as_os_str().as_bytes().to_vec(), kind, inode));
            if out.len() >= limit {
                return out;
            }
        }
    }
    out
}

/// Paths the reference's boot-entry discovery would try to parse as boot
/// entries; our transform does not look at them and they are not what is
/// under test.
fn boot_entry_like(path: &[u8]) -> bool {
    let name = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
    path.starts_with(b"/boot")
        || path.starts_with(b"/usr/lib/modules")
        || name.ends_with(b".efi")
        || name.starts_with(b"aboot-")
}

fn read_host_policy() -> Option<BTreeMap<&'static str, Vec<u8>>> {
    let mut files = BTreeMap::new();
    for name in [
        "file_contexts",
        "file_contexts.local",
        "file_contexts.homedirs",
        "file_contexts.subs",
        "file_contexts.subs_dist",
    ] {
        if let Ok(data) = std::fs::read(Path::new(HOST_POLICY).join(name)) {
            files.insert(name, data);
        }
    }
    files.contains_key("file_contexts").then_some(files)
}

#[test]
fn real_policy_matches_reference() {
    let Some(policy) = read_host_policy() else {
        println!(
            "SKIPPED: {HOST_POLICY}/file_contexts not found \
             (apt-get install selinux-policy-default policycoreutils)"
        );
        return;
    };
    let mut b = Builder::new();
    skeleton(&mut b, "default");
    for (name, data) in &policy {
        b.file(
            format!("/etc/selinux/default/contexts/files/{name}").as_bytes(),
            data,
        );
    }
    let mut spec_paths_in_tree = HashSet::new();
    for name in [
        "file_contexts",
        "file_contexts.homedirs",
        "file_contexts.local",
    ] {
        if let Some(data) = policy.get(name) {
            for (path, kind) in spec_paths(&String::from_utf8_lossy(data)) {
                if !boot_entry_like(&path) {
                    b.kind(&path, kind);
                    spec_paths_in_tree.insert(path);
                }
            }
        }
    }
    let mut host_count = 0;
    let mut inodes: HashMap<(u64, u64), LeafId> = HashMap::new();
    for (path, kind, inode) in host_paths(40_000) {
        if boot_entry_like(&path) {
            continue;
        }
        host_count += 1;
        match inode.and_then(|i| inodes.get(&i).copied()) {
            Some(target) => b.link(&path, target),
            None if kind == FileKind::Regular => {
                if let (Some(id), Some(inode)) = (b.file(&path, &path.clone()), inode) {
                    inodes.insert(inode, id);
                }
            }
            None => b.kind(&path, kind),
        }
    }
    // Hardlinks across label domains, whatever the host has.
    let shared = b
        .file(b"/usr/bin/shared-tool", &[3; 500])
        .expect("new file");
    for path in [
        &b"/etc/shared-tool"[..],
        b"/var/log/shared-tool",
        b"/tmp/shared-tool",
        b"/home/user/shared-tool",
        b"/usr/sbin/shared-tool",
    ] {
        b.link(path, shared);
    }
    println!(
        "real policy: {} spec lines turned into {} paths, {host_count} host paths",
        policy
            .get("file_contexts")
            .map_or(0, |d| d.split(|&c| c == b'\n').count()),
        spec_paths_in_tree.len()
    );
    let (fs, objects) = b.finish();

    let mut ours = fs.clone();
    transform_for_boot(&mut ours, &objects).expect("our transform");
    let outcomes = [
        with_repository(&fs, &objects),
        with_directory(&fs, &objects),
    ];
    compare_with_matchpathcon("real policy", &ours, &policy, &spec_paths_in_tree);
    check("real policy", outcomes);
}

/// Asks libselinux (`matchpathcon`) for every path made from the spec
/// lines and a sample of the others, and prints how often it disagrees
/// with our (and so the reference's) label.
fn compare_with_matchpathcon(
    name: &str,
    labelled: &Fs,
    policy: &BTreeMap<&str, Vec<u8>>,
    spec_paths: &HashSet<Vec<u8>>,
) {
    if Command::new("matchpathcon").arg("-V").output().is_err() {
        println!("{name}: matchpathcon SKIPPED, not installed (apt-get install policycoreutils)");
        return;
    }
    // Its own copy of the policy files, so the host's config is not used.
    // Without the deliberately unbalanced regex, which libselinux (anchoring
    // with `^...$` and no group) cannot compile and which then breaks every
    // lookup under `/usr`.
    let dir = tempfile::tempdir().expect("temporary directory");
    for (name, data) in policy {
        let kept: Vec<&[u8]> = data
            .split_inclusive(|&b| b == b'\n')
            .filter(|line| !line.starts_with(UNBALANCED.as_bytes()))
            .collect();
        std::fs::write(dir.path().join(name), kept.concat()).expect("write policy file");
    }
    let file_contexts = dir.path().join("file_contexts");
    let labels = our_labels(labelled);
    let printable = |p: &[u8]| p.iter().all(|b| b.is_ascii_graphic());
    let step = (labels.len() / 3000).max(1);
    // Path and our label, by kind.
    type Asked<'a> = Vec<(&'a Vec<u8>, Option<&'a Vec<u8>>)>;
    let mut by_kind: BTreeMap<char, Asked> = BTreeMap::new();
    for (index, (path, (label, kind))) in labels.iter().enumerate() {
        if printable(path) && (index % step == 0 || spec_paths.contains(path)) {
            by_kind
                .entry(*kind)
                .or_default()
                .push((path, label.as_ref()));
        }
    }
    let mut asked = 0;
    let mut differ = Vec::new();
    let mut unanswered = 0;
    for (kind, entries) in &by_kind {
        let type_name = match kind {
            'd' => "dir",
            '-' => "file",
            'l' => "lnk_file",
            'b' => "blk_file",
            'c' => "chr_file",
            'p' => "pipe",
            _ => "sock_file",
        };
        for chunk in entries.chunks(300) {
            let output = Command::new("matchpathcon")
                .arg("-f")
                .arg(&file_contexts)
                .args(["-m", type_name])
                .args(chunk.iter().map(|(p, _)| OsStr::from_bytes(p)))
                .output()
                .expect("run matchpathcon");
            let stdout = String::from_utf8_lossy(&output.stdout);
            let answers: HashMap<&str, &str> =
                stdout.lines().filter_map(|l| l.split_once('\t')).collect();
            for (path, ours) in chunk {
                asked += 1;
                let path = show(path);
                let ours = ours.map_or("<<none>>".to_owned(), |l| show(l));
                match answers.get(path.as_str()) {
                    None => unanswered += 1,
                    Some(theirs) if *theirs == ours => {}
                    Some(theirs) => {
                        differ.push(format!("{kind} {path}: ours {ours}, libselinux {theirs}"))
                    }
                }
            }
        }
    }
    println!(
        "{name}: matchpathcon: {asked} paths asked, {} differ from the reference's labels, {unanswered} unanswered",
        differ.len()
    );
    for line in differ.iter().take(40) {
        println!("  {line}");
    }
}
