//! Layer tars with every feature container images use, and layers built
//! to attack the importer, pulled with `image pull` from `oci:` layouts.
//!
//! The corpus image is checked against umoci, an independent OCI unpacker:
//! our mounted plain image must show the tree `umoci unpack` extracts,
//! except for the differences the OCI transform makes on purpose, which
//! are applied to umoci's tree here one by one, each asserted to have
//! mattered. The hostile images must each fail with their own message and
//! leave the repository clean and without tags.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

use cfs_tests::oci_layout::{write_layout, ImageSpec, LayerBlob, LayerSpec};
use common::{assert_clean, assert_same_tree, cannot_mount, ok, ours, output, snapshot, Seen};
use tar::{EntryType, Header};

mod common;

/// `security.capability` granting `cap_net_bind_service` (permitted and
/// effective), as `struct vfs_cap_data` revision 2 (little-endian): the
/// kernel refuses malformed values, so it has to be a real one.
const NET_BIND_CAPABILITY: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, // VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE
    0x00, 0x04, 0x00, 0x00, // permitted[0]: bit 10
    0x00, 0x00, 0x00, 0x00, // inheritable[0]
    0x00, 0x00, 0x00, 0x00, // permitted[1]
    0x00, 0x00, 0x00, 0x00, // inheritable[1]
];

/// Mode, owner and mtime of an entry.
#[derive(Debug, Clone, Copy)]
struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
}

const fn meta(mode: u32, uid: u64, gid: u64, mtime: u64) -> Meta {
    Meta {
        mode,
        uid,
        gid,
        mtime,
    }
}

const T0: u64 = 1_600_000_000;
const T1: u64 = 1_650_000_000;
const T2: u64 = 1_700_000_000;
const DIR: Meta = meta(0o755, 0, 0, T0);
const FILE: Meta = meta(0o644, 0, 0, T0);

/// The records of a PAX extended header (`<len> <key>=<value>\n`, where
/// `len` counts itself).
fn pax_data(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut data = Vec::new();
    for (key, value) in records {
        let body = key.len() + value.len() + 3;
        let mut len = body + 1;
        while len != body + len.to_string().len() {
            len = body + len.to_string().len();
        }
        data.extend_from_slice(format!("{len} {key}=").as_bytes());
        data.extend_from_slice(value);
        data.push(b'\n');
    }
    data
}

/// A layer tar under construction: ustar headers unless an entry needs
/// something else, which each method says.
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Self {
        Self(tar::Builder::new(Vec::new()))
    }

    fn header(kind: EntryType, meta: Meta) -> Header {
        let mut header = Header::new_ustar();
        header.set_entry_type(kind);
        header.set_mode(meta.mode);
        header.set_uid(meta.uid);
        header.set_gid(meta.gid);
        header.set_mtime(meta.mtime);
        header.set_size(0);
        header
    }

    /// A PAX extended header for the next entry.
    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let data = pax_data(records);
        let mut header = Self::header(EntryType::XHeader, FILE);
        header.set_path("PaxHeaders/entry").expect("short path");
        header.set_size(data.len() as u64);
        header.set_cksum();
        self.0.append(&header, &data[..]).expect("in memory");
        self
    }

    /// An entry whose header holds `path` as given, for paths the
    /// preceding PAX header overrides (the tar crate would otherwise write
    /// a GNU long name).
    fn raw(&mut self, mut header: Header, path: &str, content: &[u8]) -> &mut Self {
        header.set_path(path).expect("short path");
        header.set_size(content.len() as u64);
        header.set_cksum();
        self.0.append(&header, content).expect("in memory");
        self
    }

    /// A regular file whose name field holds `path` byte for byte: the
    /// tar crate refuses to write absolute paths or `..`, hostile tools
    /// do not.
    fn file_named_exactly(&mut self, path: &str, content: &[u8]) -> &mut Self {
        let mut header = Self::header(EntryType::Regular, FILE);
        let name = &mut header.as_old_mut().name;
        name.fill(0);
        name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_size(content.len() as u64);
        header.set_cksum();
        self.0.append(&header, content).expect("in memory");
        self
    }

    fn dir(&mut self, path: &str, meta: Meta) -> &mut Self {
        let mut header = Self::header(EntryType::Directory, meta);
        self.0
            .append_data(&mut header, path, std::io::empty())
            .expect("in memory");
        self
    }

    fn file(&mut self, path: &str, meta: Meta, content: &[u8]) -> &mut Self {
        let mut header = Self::header(EntryType::Regular, meta);
        header.set_size(content.len() as u64);
        self.0
            .append_data(&mut header, path, content)
            .expect("in memory");
        self
    }

    /// A regular file whose path goes into a GNU `././@LongLink` entry
    /// when it is longer than 100 bytes.
    fn gnu_file(&mut self, path: &str, meta: Meta, content: &[u8]) -> &mut Self {
        let mut header = Header::new_gnu();
        header.set_entry_type(EntryType::Regular);
        header.set_mode(meta.mode);
        header.set_uid(meta.uid);
        header.set_gid(meta.gid);
        header.set_mtime(meta.mtime);
        header.set_size(content.len() as u64);
        self.0
            .append_data(&mut header, path, content)
            .expect("in memory");
        self
    }

    /// A symlink; a target over 100 bytes goes into a GNU long link
    /// (`K`) entry.
    fn symlink(&mut self, path: &str, meta: Meta, target: &str) -> &mut Self {
        let mut header = Header::new_gnu();
        header.set_entry_type(EntryType::Symlink);
        header.set_mode(meta.mode);
        header.set_mtime(meta.mtime);
        header.set_size(0);
        self.0
            .append_link(&mut header, path, target)
            .expect("in memory");
        self
    }

    fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut header = Self::header(EntryType::Link, FILE);
        self.0
            .append_link(&mut header, path, target)
            .expect("in memory");
        self
    }

    fn special(&mut self, path: &str, kind: EntryType, meta: Meta, dev: (u32, u32)) -> &mut Self {
        let mut header = Self::header(kind, meta);
        header.set_device_major(dev.0).expect("ustar");
        header.set_device_minor(dev.1).expect("ustar");
        self.0
            .append_data(&mut header, path, std::io::empty())
            .expect("in memory");
        self
    }

    /// A whiteout (`.wh.NAME`) or opaque marker: an empty regular file.
    fn whiteout(&mut self, path: &str) -> &mut Self {
        self.file(path, FILE, b"")
    }

    fn finish(&mut self) -> Vec<u8> {
        let builder = std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()));
        builder.into_inner().expect("in memory")
    }
}

/// Bytes that differ from every other file's, `len` long.
fn content(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add((i % 251) as u8))
        .collect()
}

/// Paths that need PAX, ustar prefixes or GNU extensions.
struct LongNames {
    /// A directory path over 100 bytes, stored with a ustar prefix.
    dir: String,
    /// A file in it whose last component alone is 120 bytes (PAX path).
    pax_file: String,
    /// A file path over 100 bytes in a GNU long name.
    gnu_file: String,
    /// A symlink target of 150 bytes in a PAX linkpath.
    pax_target: String,
    /// A symlink target of 130 bytes in a GNU long link.
    gnu_target: String,
}

fn long_names() -> LongNames {
    let dir = format!("usr/share/{}/", "p".repeat(95));
    LongNames {
        pax_file: format!("{dir}{}", "f".repeat(120)),
        gnu_file: format!("{dir}{}", "g".repeat(110)),
        pax_target: format!("../{}", "t".repeat(147)),
        gnu_target: format!("/usr/share/{}", "k".repeat(119)),
        dir,
    }
}

/// The three corpus layers, bottom first.
fn corpus_layers() -> Vec<Vec<u8>> {
    let long = long_names();
    let mut base = Layer::new();
    base.dir("./", DIR)
        .dir("usr/", DIR)
        .dir("usr/bin/", DIR)
        .file("usr/bin/tool", meta(0o755, 0, 0, T0), &content(1, 6000))
        .file("usr/bin/setuid", meta(0o4755, 0, 0, T1), &content(2, 40))
        .pax(&[
            ("SCHILY.xattr.user.comment", b"a user xattr"),
            ("SCHILY.xattr.security.capability", &NET_BIND_CAPABILITY),
        ])
        .file("usr/bin/bind", meta(0o755, 0, 0, T0), &content(3, 300))
        .dir("usr/lib/", DIR)
        .file("usr/lib/hl-target", FILE, &content(4, 2000))
        .file("usr/lib/libx.so.1", meta(0o755, 0, 0, T1), &content(5, 100))
        .symlink("usr/lib/libx.so", meta(0o777, 0, 0, T1), "libx.so.1")
        .dir("etc/", DIR)
        .file("etc/passwd", FILE, b"root:x:0:0:root:/root:/bin/sh\n")
        .file(
            "etc/shadow",
            meta(0o640, 0, 42, T0),
            b"root:*:19000::::::\n",
        )
        .file("etc/gone.conf", FILE, b"deleted by layer 2")
        .dir("var/", DIR)
        .dir("var/cache/", DIR)
        .dir("var/cache/a/", meta(0o700, 1000, 1000, T1))
        .file(
            "var/cache/a/b",
            meta(0o600, 1000, 1000, T1),
            b"in a whited-out dir",
        )
        .dir("var/cache/keep/", DIR)
        .file("var/cache/keep/k", FILE, b"replaced by a file in layer 3")
        .special(
            "var/fifo",
            EntryType::Fifo,
            meta(0o620, 1000, 1000, T1),
            (0, 0),
        )
        .dir("opt/", DIR)
        .dir("opt/app/", DIR)
        .file("opt/app/old1", FILE, b"hidden by the opaque marker")
        .dir("opt/app/sub/", DIR)
        .file("opt/app/sub/old2", FILE, &content(6, 1000))
        .dir("home/", DIR)
        .dir("home/user/", meta(0o700, 1000, 1000, T1))
        .file(
            "home/user/.profile",
            meta(0o600, 1000, 1000, T1),
            b"PS1=$\n",
        )
        .dir("tmp/", meta(0o1777, 0, 0, T0))
        .dir("srv/", meta(0o2750, 0, 50, T1))
        .dir("dev/", DIR)
        .special("dev/null", EntryType::Char, meta(0o666, 0, 0, T0), (1, 3))
        .dir("run/", meta(0o755, 0, 0, T1))
        .file("run/stub", FILE, b"a build-time leftover");

    let mut update = Layer::new();
    update
        .dir("etc/", meta(0o755, 0, 0, T2))
        .whiteout("etc/.wh.gone.conf")
        .file(
            "etc/passwd",
            meta(0o644, 0, 0, T2),
            b"root:x:0:0::/root:/bin/bash\n",
        )
        .dir("var/cache/", meta(0o755, 0, 0, T2))
        .whiteout("var/cache/.wh.a")
        .dir("opt/app/", meta(0o750, 0, 0, T2))
        .whiteout("opt/app/.wh..wh..opq")
        .file("opt/app/new", FILE, b"beside the opaque marker")
        .dir("usr/bin/", meta(0o755, 0, 0, T2))
        .hardlink("usr/bin/tool-link", "usr/lib/hl-target")
        .dir("usr/share/", meta(0o755, 0, 0, T2))
        .file("usr/share/pair-a", meta(0o640, 0, 0, T2), &content(7, 500))
        .hardlink("usr/share/pair-b", "usr/share/pair-a")
        .dir(&long.dir, meta(0o755, 0, 0, T2))
        .pax(&[("path", long.pax_file.as_bytes())])
        .raw(
            Layer::header(EntryType::Regular, meta(0o644, 0, 0, T2)),
            "pax-placeholder",
            b"a file named by a PAX path",
        )
        .gnu_file(
            &long.gnu_file,
            meta(0o644, 0, 0, T2),
            b"named by a GNU long name",
        )
        .pax(&[("linkpath", long.pax_target.as_bytes())])
        .raw(
            {
                let mut header = Layer::header(EntryType::Symlink, meta(0o777, 0, 0, T2));
                header.set_link_name("x").expect("short");
                header
            },
            "usr/share/pax-link",
            b"",
        )
        .symlink(
            "usr/share/gnu-link",
            meta(0o777, 0, 0, T2),
            &long.gnu_target,
        )
        .pax(&[("mtime", b"1700000000.123456789")])
        .file("usr/share/nanos", FILE, b"mtime with nanoseconds")
        .pax(&[("uid", b"3000000"), ("gid", b"3000001")])
        .file(
            "usr/share/big-ids",
            meta(0o444, 0, 0, T2),
            b"ids beyond ustar",
        )
        .file(
            "usr/share/nobody",
            meta(0o444, 65534, 65534, T1),
            b"nobody's",
        );

    let mut last = Layer::new();
    last.dir("home/user/", meta(0o750, 1000, 1000, T2))
        .whiteout("home/user/.wh..wh..opq")
        .file(
            "home/user/fresh",
            meta(0o600, 1000, 1000, T2),
            b"after opaque",
        )
        .dir("usr/lib/", meta(0o755, 0, 0, T2))
        .file("usr/lib/libx.so", FILE, b"a file where a symlink was")
        .dir("var/cache/", meta(0o755, 0, 0, T2))
        .file("var/cache/keep", FILE, b"a file where a directory was");

    vec![base.finish(), update.finish(), last.finish()]
}

/// The corpus's features are in umoci's tree, so that comparing with it
/// means something: long names of each kind, whiteouts, the opaque
/// directory, hard links, special files, nanoseconds and large ids.
fn corpus_features_reached(tree: &BTreeMap<Vec<u8>, Seen>) {
    let long = long_names();
    let get = |path: &str| {
        tree.get(path.trim_end_matches('/').as_bytes())
            .unwrap_or_else(|| panic!("umoci's tree has no {path}"))
    };
    for gone in [
        "etc/gone.conf",
        "var/cache/a",
        "opt/app/old1",
        "opt/app/sub",
        "home/user/.profile",
    ] {
        assert!(!tree.contains_key(gone.as_bytes()), "{gone} is hidden");
    }
    get(&long.pax_file);
    get(&long.gnu_file);
    let target = |path: &str| get(path).target.clone().expect("a symlink");
    assert_eq!(target("usr/share/pax-link"), long.pax_target.as_bytes());
    assert_eq!(target("usr/share/gnu-link"), long.gnu_target.as_bytes());
    assert_eq!(get("usr/lib/hl-target").nlink, Some(2));
    assert_eq!(get("usr/share/pair-b").nlink, Some(2));
    assert_eq!(get("usr/share/nanos").mtime, (T2 as i64, 123_456_789));
    assert_eq!(
        (get("usr/share/big-ids").uid, get("usr/share/big-ids").gid),
        (3_000_000, 3_000_001)
    );
    assert_eq!(get("dev/null").rdev, Some(rustix::fs::makedev(1, 3)));
    assert_eq!(get("var/fifo").kind, 0o010000);
    assert_eq!(get("usr/bin/setuid").perm, 0o4755);
    assert_eq!(get("tmp").perm, 0o1777);
    assert_eq!(get("var/cache/keep").kind, 0o100000);
    assert_eq!(get("usr/lib/libx.so").kind, 0o100000);
}

/// Every extended attribute of `path` (not following symlinks).
fn xattrs(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut names = vec![0u8; 65536];
    let len = rustix::fs::llistxattr(path, &mut names[..])
        .unwrap_or_else(|e| panic!("listxattr {}: {e}", path.display()));
    names[..len]
        .split(|&b| b == 0)
        .filter(|name| !name.is_empty())
        .map(|name| {
            let mut value = vec![0u8; 65536];
            let c_name = std::ffi::CString::new(name).expect("no NUL in a listed name");
            let len = rustix::fs::lgetxattr(path, &c_name, &mut value[..])
                .unwrap_or_else(|e| panic!("getxattr {}: {e}", path.display()));
            value.truncate(len);
            (name.to_vec(), value)
        })
        .collect()
}

/// The xattrs of everything under `root` that has any, by relative path.
fn all_xattrs(root: &Path, paths: &BTreeMap<Vec<u8>, Seen>) -> BTreeMap<Vec<u8>, Xattrs> {
    paths
        .keys()
        .map(|rel| {
            (
                rel.clone(),
                xattrs(&root.join(std::ffi::OsStr::from_bytes(rel))),
            )
        })
        .filter(|(_, x)| !x.is_empty())
        .collect()
}

type Xattrs = BTreeMap<Vec<u8>, Vec<u8>>;

fn corpus_layout(dir: &Path) {
    // umoci 0.4 reads no zstd layers; the hostile test covers zstd.
    let blobs = [LayerBlob::Gzip, LayerBlob::GzipTwoMembers, LayerBlob::Plain];
    let layers = corpus_layers()
        .into_iter()
        .zip(blobs)
        .map(|(tar, blob)| LayerSpec { tar, blob })
        .collect();
    write_layout(dir, "corpus", &[ImageSpec::linux("amd64", layers)]).expect("write layout");
}

fn pull_json(repo: &Path, reference: &str) -> serde_json::Value {
    let text = ok(ours(repo).args(["--json", "image", "pull", reference]));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn merged_tree_equals_umoci_unpack() {
    if let Some(why) = cannot_mount() {
        println!("SKIPPED merged_tree_equals_umoci_unpack: {why}");
        return;
    }
    if Command::new("umoci").arg("--version").output().is_err() {
        println!("SKIPPED merged_tree_equals_umoci_unpack: umoci is not installed");
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let layout = work.path().join("layout");
    corpus_layout(&layout);
    let reference = format!("oci:{}:corpus", layout.display());

    let repo = work.path().join("repo");
    ok(ours(&repo).args(["repo", "init", "--insecure"]));
    let pulled = pull_json(&repo, &reference);
    // Every parent has its entry and every opaque marker comes first:
    // nothing here where we depart from composefs-rs.
    assert_eq!(pulled["departures"], serde_json::json!([]), "{pulled}");
    let image = pulled["image"].as_str().expect("image digest").to_owned();
    let mountpoint = work.path().join("mnt");
    std::fs::create_dir(&mountpoint).expect("mkdir");
    ok(ours(&repo)
        .args(["image", "mount", &image])
        .arg(&mountpoint));
    let _mounted = common::Mounted(mountpoint.clone());

    let bundle = work.path().join("bundle");
    ok(Command::new("umoci")
        .args(["unpack", "--image", &format!("{}:corpus", layout.display())])
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");

    let theirs = snapshot(&rootfs);
    corpus_features_reached(&theirs);
    let mine = snapshot(&mountpoint);
    let mut expected = theirs.clone();

    // Intended difference 1: the OCI transform empties /run (build-time
    // bind-mount stubs) and gives it /usr's mtime.
    let usr = theirs[b"usr".as_slice()].clone();
    let run_children: Vec<Vec<u8>> = expected
        .keys()
        .filter(|p| p.starts_with(b"run/"))
        .cloned()
        .collect();
    assert_eq!(run_children, [b"run/stub".to_vec()], "umoci's /run");
    for child in &run_children {
        expected.remove(child);
    }
    let run = expected.get_mut(b"run".as_slice()).expect("umoci has /run");
    assert_ne!(
        run.mtime, usr.mtime,
        "the corpus must make /run's mtime matter"
    );
    run.mtime = usr.mtime;

    let compared = assert_same_tree(
        &expected,
        &mine,
        "umoci's rootfs (transformed) vs our mount",
    );

    // Intended difference 2: the root takes /usr's metadata (the layer's
    // `./` entry says 0755, root, T0 like /usr; umoci applies it too, but
    // ours comes from /usr whatever the layer says).
    let root_of = |path: &Path| {
        let meta = std::fs::symlink_metadata(path).expect("stat root");
        use std::os::unix::fs::MetadataExt;
        (meta.mode() & 0o7777, meta.uid(), meta.gid(), meta.mtime())
    };
    assert_eq!(
        root_of(&mountpoint),
        (usr.perm, usr.uid, usr.gid, usr.mtime.0),
        "our root has /usr's metadata"
    );

    // Intended difference 3: only allowlisted xattrs survive
    // (`XattrFilter::AllowlistOnly`: security.capability); umoci keeps
    // every one the layer has.
    let their_xattrs = all_xattrs(&rootfs, &theirs);
    let my_xattrs = all_xattrs(&mountpoint, &mine);
    let bind = b"usr/bin/bind".to_vec();
    assert_eq!(
        their_xattrs
            .get(&bind)
            .map(|x| x.keys().cloned().collect::<Vec<_>>()),
        Some(vec![
            b"security.capability".to_vec(),
            b"user.comment".to_vec()
        ]),
        "umoci's xattrs"
    );
    let mut expected_xattrs = their_xattrs.clone();
    for attrs in expected_xattrs.values_mut() {
        attrs.retain(|name, _| name == b"security.capability");
    }
    expected_xattrs.retain(|_, attrs| !attrs.is_empty());
    assert_eq!(my_xattrs, expected_xattrs, "xattrs after the allowlist");
    assert_eq!(
        my_xattrs[&bind][&b"security.capability".to_vec()],
        NET_BIND_CAPABILITY
    );

    let hardlinked = mine.values().filter(|s| s.nlink > Some(1)).count();
    println!(
        "corpus: {compared} paths equal to umoci's unpack ({hardlinked} hard-linked, {} with \
         xattrs); differences as intended: /run emptied (1 entry), root from /usr, \
         user.comment dropped",
        my_xattrs.len()
    );
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).expect("in memory");
    encoder.finish().expect("in memory")
}

/// A base layer with the directories the hostile layers aim at.
fn base_layer() -> Vec<u8> {
    Layer::new()
        .dir("usr/", DIR)
        .dir("etc/", DIR)
        .file("etc/passwd", FILE, b"root:x:0:0::/root:/bin/sh\n")
        .finish()
}

/// One hostile image: its layers (bottom first, stored as given) and a
/// substring only its error message has.
struct Hostile {
    name: &'static str,
    layers: Vec<LayerSpec>,
    message: &'static str,
}

fn plain(tar: Vec<u8>) -> LayerSpec {
    LayerSpec {
        tar,
        blob: LayerBlob::Plain,
    }
}

fn hostile_images() -> Vec<Hostile> {
    let one_file = Layer::new().file("usr/x", FILE, &content(9, 3000)).finish();
    let mut absurd = Layer::new();
    absurd.dir("usr/", DIR);
    // The header promises 8 GiB; the archive has 3000 bytes of it.
    let mut header = Layer::header(EntryType::Regular, FILE);
    header.set_path("usr/huge").expect("short");
    header.set_size(0o77_777_777_777);
    header.set_cksum();
    let mut absurd = absurd.finish();
    absurd.truncate(absurd.len() - 1024); // drop the end-of-archive marker
    absurd.extend_from_slice(header.as_bytes());
    absurd.extend_from_slice(&content(8, 3000));
    absurd.resize(absurd.len().next_multiple_of(512), 0);

    let mut truncated_gzip = gzip(&one_file);
    truncated_gzip.truncate(truncated_gzip.len() / 2);
    // With a content checksum, as the zstd tool writes by default: the
    // decoder, not only the diff_id, must notice.
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).expect("in memory");
    encoder.include_checksum(true).expect("in memory");
    encoder.write_all(&one_file).expect("in memory");
    let mut corrupt_zstd = encoder.finish().expect("in memory");
    let middle = corrupt_zstd.len() / 2;
    corrupt_zstd[middle..middle + 16].fill(0xff);
    let other = Layer::new()
        .file("usr/y", FILE, b"not the config's")
        .finish();

    // Hard link targets are checked like paths; the tar crate would
    // refuse to write this one.
    let mut absolute_link = Layer::header(EntryType::Link, FILE);
    absolute_link.set_path("usr/link").expect("short");
    absolute_link
        .set_link_name_literal("/etc/passwd")
        .expect("short");
    absolute_link.set_size(0);
    absolute_link.set_cksum();
    let mut absolute_hardlink = Layer::new();
    absolute_hardlink.dir("usr/", DIR);
    absolute_hardlink
        .0
        .append(&absolute_link, std::io::empty())
        .expect("in memory");

    vec![
        Hostile {
            name: "absolute-path",
            layers: vec![plain(
                Layer::new()
                    .dir("etc/", DIR)
                    .file_named_exactly("/etc/x", b"out")
                    .finish(),
            )],
            message: "tar entry path /etc/x is absolute",
        },
        Hostile {
            name: "absolute-hardlink",
            layers: vec![plain(base_layer()), plain(absolute_hardlink.finish())],
            message: "tar entry /usr/link is a hard link to the absolute path /etc/passwd",
        },
        Hostile {
            name: "dotdot",
            layers: vec![plain(
                Layer::new().file_named_exactly("a/../../x", b"up").finish(),
            )],
            message: r#"contains a ".." component"#,
        },
        Hostile {
            name: "symlink-same-layer",
            layers: vec![plain(
                Layer::new()
                    .dir("usr/", DIR)
                    .symlink("d", meta(0o777, 0, 0, T0), "/etc")
                    .file("d/passwd", FILE, b"evil::0:0::/:/bin/sh\n")
                    .finish(),
            )],
            message: "layer 0: cannot add /d/passwd: /d is a symlink, not a directory",
        },
        Hostile {
            name: "symlink-lower-layer",
            layers: vec![
                plain(
                    Layer::new()
                        .dir("usr/", DIR)
                        .dir("etc/", DIR)
                        .symlink("conf", meta(0o777, 0, 0, T0), "etc")
                        .finish(),
                ),
                plain(Layer::new().file("conf/passwd", FILE, b"evil").finish()),
            ],
            message: "layer 1: cannot add /conf/passwd: /conf is a symlink, not a directory",
        },
        Hostile {
            name: "absurd-size",
            layers: vec![plain(absurd)],
            message: "inside the content of a file",
        },
        Hostile {
            name: "truncated-gzip",
            layers: vec![LayerSpec {
                tar: one_file.clone(),
                blob: LayerBlob::Custom {
                    media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                    blob: truncated_gzip,
                },
            }],
            message: "gzip layer stream is corrupt or truncated",
        },
        Hostile {
            name: "corrupt-zstd",
            layers: vec![LayerSpec {
                tar: one_file.clone(),
                blob: LayerBlob::Custom {
                    media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
                    blob: corrupt_zstd,
                },
            }],
            message: "zstd layer stream is corrupt or truncated",
        },
        Hostile {
            name: "wrong-diff-id",
            layers: vec![
                plain(base_layer()),
                LayerSpec {
                    tar: one_file.clone(),
                    blob: LayerBlob::Custom {
                        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                        blob: gzip(&other),
                    },
                },
            ],
            message: "hashes to",
        },
        Hostile {
            name: "hardlink-missing",
            layers: vec![
                plain(base_layer()),
                plain(
                    Layer::new()
                        .hardlink("usr/link", "etc/nonexistent")
                        .finish(),
                ),
            ],
            message: "hard link /usr/link points to /etc/nonexistent, which does not exist",
        },
    ]
}

#[test]
fn hostile_layers_are_rejected_and_repo_stays_clean() {
    let work = tempfile::tempdir().expect("tempdir");
    let repo = work.path().join("repo");
    ok(ours(&repo).args(["repo", "init", "--insecure"]));
    let cases = hostile_images();
    let mut messages = Vec::new();
    for case in &cases {
        let layout = work.path().join(case.name);
        write_layout(
            &layout,
            "bad",
            &[ImageSpec::linux("amd64", case.layers.clone())],
        )
        .expect("write layout");
        let reference = format!("oci:{}:bad", layout.display());
        let out = output(ours(&repo).args(["image", "pull", &reference]));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{}: pull succeeded", case.name);
        assert!(
            stderr.contains(case.message),
            "{}: expected {:?} in:\n{stderr}",
            case.name,
            case.message
        );
        messages.push((case.name, stderr));
    }
    // Each substring names its own case only.
    for case in &cases {
        let matching: Vec<_> = messages
            .iter()
            .filter(|(_, stderr)| stderr.contains(case.message))
            .map(|(name, _)| *name)
            .collect();
        assert_eq!(matching, [case.name], "{:?}", case.message);
    }

    assert_clean(&repo, "after the hostile pulls");
    let listed = ok(ours(&repo).args(["--json", "image", "ls"]));
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("json");
    assert_eq!(listed, serde_json::json!([]), "no image is tagged");
    println!(
        "hostile: {} images refused, each with its own message; fsck clean, no tags",
        cases.len()
    );
    for (name, stderr) in &messages {
        println!("  {name}: {}", stderr.lines().last().unwrap_or_default());
    }
}
