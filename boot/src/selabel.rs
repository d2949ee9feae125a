//! SELinux labelling of a whole image tree from the policy inside it.
//!
//! A booted composefs root is read-only, so the `security.selinux` label of
//! every file must already be in the EROFS image. The labels come from the
//! image's own policy (`/etc/selinux/config` names the type, whose
//! `contexts/files/` holds the specs), never from the host, so that the
//! same image gives the same digest wherever it is built. An image without
//! a policy keeps no labels at all: any it carried from its build host are
//! stripped.
//!
//! The policy files are found in the tree, without following symlinks,
//! exactly as composefs-rs 0.9.4 does for repository images. Their bytes
//! are either inline in the tree or external objects, which a
//! [`ContentSource`] supplies: a repository, objects held in memory, or the
//! on-disk directory the tree was read from.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use cfs_erofs::digest::FsVerityDigest;
use cfs_erofs::tree::{
    Directory, FileName, FileSystem, Inode, Leaf, LeafContent, LeafId, RegularFile, Stat,
};

use crate::content::ContentSource;
use crate::policy::{policy_type, FileKind, Policy, PolicyBuilder, PolicyError};

/// The xattr that holds a file's SELinux label.
pub const SELINUX_XATTR: &[u8] = b"security.selinux";

/// Spec files, in the order their lines count (a later line wins).
const SPEC_FILES: [&str; 3] = [
    "file_contexts",
    "file_contexts.local",
    "file_contexts.homedirs",
];

/// Substitution files, in the order they are applied (later wins).
const SUBS_FILES: [&str; 2] = ["file_contexts.subs", "file_contexts.subs_dist"];

/// Why an image cannot be labelled.
#[derive(Debug, thiserror::Error)]
pub enum SelabelError {
    /// A path on the way to a policy file is not a directory.
    #[error("{path} is not a directory")]
    NotADirectory {
        /// The path in the image.
        path: PathBuf,
    },
    /// The policy type's `contexts/files` directory does not exist.
    #[error("SELinux policy directory {path} does not exist")]
    MissingPolicyDirectory {
        /// The first missing directory on the way, as a path in the image.
        path: PathBuf,
    },
    /// The policy type in `/etc/selinux/config` is not a usable path.
    #[error("SELinux policy type {name:?} in /etc/selinux/config is not a plain path")]
    BadPolicyType {
        /// The value of `SELINUXTYPE=`.
        name: String,
    },
    /// A policy file exists but is a directory or special file.
    #[error("{path} is not a regular file")]
    NotRegular {
        /// The path in the image.
        path: PathBuf,
    },
    /// The mandatory `file_contexts` does not exist.
    #[error("SELinux policy has no {path}")]
    MissingFileContexts {
        /// The path in the image.
        path: PathBuf,
    },
    /// An external policy file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The path in the image.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// A policy file is malformed.
    #[error("SELinux policy: {0}")]
    Policy(#[from] PolicyError),
}

/// What [`selabel`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Labelling {
    /// Every inode was labelled from the named policy type.
    Labelled {
        /// The `SELINUXTYPE` of the image.
        policy_type: String,
    },
    /// The image has no policy; every label was removed.
    Stripped,
}

/// A directory or file found at a path in the tree.
enum Found<'a> {
    Missing,
    Directory(&'a Directory),
    Leaf(LeafId),
}

fn find<'a>(dir: &'a Directory, name: &[u8]) -> Found<'a> {
    let Ok(name) = FileName::new(name) else {
        return Found::Missing;
    };
    match dir.entries.get(&name) {
        None => Found::Missing,
        Some(Inode::Directory(sub)) => Found::Directory(sub),
        Some(Inode::Leaf(id)) => Found::Leaf(*id),
    }
}

/// Reads policy files from the tree, with a source for external content.
struct PolicyFiles<'a, H, S> {
    fs: &'a FileSystem<H>,
    source: &'a S,
}

impl<'a, H: FsVerityDigest, S: ContentSource<H>> PolicyFiles<'a, H, S> {
    /// Walks `components` down from `dir` (at `path`); `None` if one is
    /// missing, an error if one is not a directory.
    fn directory(
        &self,
        mut dir: &'a Directory,
        path: &mut PathBuf,
        components: &[&[u8]],
    ) -> Result<Option<&'a Directory>, SelabelError> {
        for component in components {
            path.push(bytes_as_path(component));
            dir = match find(dir, component) {
                Found::Missing => return Ok(None),
                Found::Directory(sub) => sub,
                Found::Leaf(_) => {
                    return Err(SelabelError::NotADirectory { path: path.clone() });
                }
            };
        }
        Ok(Some(dir))
    }

    /// The content of regular file `name` in `dir` (at `dir_path`), or
    /// `None` if there is no such entry.
    fn file(
        &self,
        dir: &Directory,
        dir_path: &Path,
        name: &str,
    ) -> Result<Option<(PathBuf, Vec<u8>)>, SelabelError> {
        let path = dir_path.join(name);
        let id = match find(dir, name.as_bytes()) {
            Found::Missing => return Ok(None),
            Found::Directory(_) => return Err(SelabelError::NotRegular { path }),
            Found::Leaf(id) => id,
        };
        let leaf = self.fs.leaves.get(id.0).ok_or_else(|| SelabelError::Read {
            path: path.clone(),
            source: io::Error::new(io::ErrorKind::InvalidData, "dangling leaf reference"),
        })?;
        let bytes = match &leaf.content {
            LeafContent::Regular(RegularFile::Inline(data)) => data.to_vec(),
            LeafContent::Regular(RegularFile::External { digest, size }) => self
                .source
                .read_external(&path, digest, *size)
                .map_err(|source| SelabelError::Read {
                    path: path.clone(),
                    source,
                })?,
            _ => return Err(SelabelError::NotRegular { path }),
        };
        Ok(Some((path, bytes)))
    }

    /// The image's policy, or `None` if it has none.
    fn load(&self) -> Result<Option<(String, Policy)>, SelabelError> {
        let mut selinux_path = PathBuf::from("/");
        let Some(selinux) =
            self.directory(&self.fs.root, &mut selinux_path, &[b"etc", b"selinux"])?
        else {
            return Ok(None);
        };
        let Some((config_path, config)) = self.file(selinux, &selinux_path, "config")? else {
            return Ok(None);
        };
        let Some(name) = policy_type(&config_path.to_string_lossy(), &config)? else {
            return Ok(None);
        };

        let mut components = policy_type_components(&name)?;
        components.extend([&b"contexts"[..], b"files"]);
        let mut files_path = selinux_path.clone();
        let files = self
            .directory(selinux, &mut files_path, &components)?
            .ok_or_else(|| SelabelError::MissingPolicyDirectory {
                path: files_path.clone(),
            })?;

        let mut builder = PolicyBuilder::new();
        for (index, name) in SPEC_FILES.into_iter().enumerate() {
            match self.file(files, &files_path, name)? {
                Some((path, content)) => {
                    builder.add_specs(&path.to_string_lossy(), &content)?;
                }
                None if index == 0 => {
                    return Err(SelabelError::MissingFileContexts {
                        path: files_path.join(name),
                    });
                }
                None => {}
            }
        }
        for name in SUBS_FILES {
            if let Some((path, content)) = self.file(files, &files_path, name)? {
                builder.add_substitutions(&path.to_string_lossy(), &content)?;
            }
        }
        Ok(Some((name, builder.build()?)))
    }
}

/// The directories a `SELINUXTYPE` value names below `/etc/selinux`, read
/// as a relative path the way Rust's path components do: empty and inner
/// `.` components vanish, a leading `.` or any `..` is refused.
fn policy_type_components(name: &str) -> Result<Vec<&[u8]>, SelabelError> {
    let bad = || SelabelError::BadPolicyType {
        name: name.to_owned(),
    };
    if name == "." || name.starts_with("./") {
        return Err(bad());
    }
    let mut components = Vec::new();
    for component in name.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err(bad()),
            _ => components.push(component.as_bytes()),
        }
    }
    Ok(components)
}

fn bytes_as_path(bytes: &[u8]) -> &Path {
    use std::os::unix::ffi::OsStrExt;
    Path::new(std::ffi::OsStr::from_bytes(bytes))
}

fn path_bytes(path: &Path) -> &[u8] {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes()
}

fn leaf_kind<H>(leaf: &Leaf<H>) -> FileKind {
    match leaf.content {
        LeafContent::Regular(_) => FileKind::Regular,
        LeafContent::Symlink(_) => FileKind::Symlink,
        LeafContent::BlockDevice(_) => FileKind::BlockDevice,
        LeafContent::CharacterDevice(_) => FileKind::CharacterDevice,
        LeafContent::Fifo => FileKind::Fifo,
        LeafContent::Socket => FileKind::Socket,
    }
}

fn set_label(stat: &mut Stat, context: Option<&str>) {
    match context {
        Some(context) => {
            stat.xattrs
                .insert(SELINUX_XATTR.into(), context.as_bytes().into());
        }
        None => {
            stat.xattrs.remove(SELINUX_XATTR);
        }
    }
}

/// Labels a tree in depth-first, name order. A leaf linked from several
/// paths keeps the label of the first path that reached it; a later path
/// whose label differs gets its own copy of the leaf, so hardlinks across
/// label boundaries are broken rather than mislabelled.
struct Labeller<'a, H> {
    policy: &'a Policy,
    leaves: &'a mut Vec<Leaf<H>>,
    /// The label each leaf got when first reached (`None`: no label).
    first_label: HashMap<LeafId, Option<&'a str>>,
}

impl<'a, H: Clone> Labeller<'a, H> {
    /// Labels `dir`, whose (possibly substituted) path is `path`, and
    /// everything below it. `path` is extended and shortened again for
    /// each entry, the way a `PathBuf` walk does it, because the exact
    /// bytes matched depend on it when a substitution ends in `/`.
    fn directory(&mut self, dir: &mut Directory, path: &mut PathBuf) -> Result<(), PolicyError> {
        let policy = self.policy;
        let label = policy.lookup(path_bytes(path), FileKind::Directory)?;
        set_label(&mut dir.stat, label.context());
        for (name, inode) in &mut dir.entries {
            path.push(bytes_as_path(name.as_bytes()));
            let substituted = policy.substitute(path_bytes(path)).map(bytes_as_path);
            match inode {
                Inode::Directory(sub) => {
                    let mut sub_path = substituted.unwrap_or(path).to_path_buf();
                    self.directory(sub, &mut sub_path)?;
                }
                Inode::Leaf(id) => {
                    let effective = substituted.unwrap_or(path);
                    *id = self.leaf(*id, path_bytes(effective))?;
                }
            }
            path.pop();
        }
        Ok(())
    }

    /// Labels leaf `id` reached at `path`; returns the leaf the entry must
    /// name from now on (a copy if the hardlink had to be broken).
    fn leaf(&mut self, id: LeafId, path: &[u8]) -> Result<LeafId, PolicyError> {
        let policy: &'a Policy = self.policy;
        let Some(leaf) = self.leaves.get(id.0) else {
            // A dangling reference cannot be labelled; the writer's own
            // validation reports it.
            return Ok(id);
        };
        let context = policy.lookup(path, leaf_kind(leaf))?.context();
        let target = match self.first_label.get(&id) {
            Some(first) if *first != context => {
                let copy = leaf.clone();
                self.leaves.push(copy);
                LeafId(self.leaves.len() - 1)
            }
            _ => id,
        };
        if let Some(leaf) = self.leaves.get_mut(target.0) {
            set_label(&mut leaf.stat, context);
        }
        self.first_label.entry(target).or_insert(context);
        Ok(target)
    }
}

/// Removes every `security.selinux` xattr in the tree.
pub fn strip_labels<H: FsVerityDigest>(fs: &mut FileSystem<H>) {
    fs.for_each_stat_mut(|stat| {
        stat.xattrs.remove(SELINUX_XATTR);
    });
}

/// Labels every inode of `fs` from the SELinux policy inside it, or strips
/// all labels if it has none (no `/etc/selinux/config` or no `SELINUXTYPE`
/// in it). The root is labelled as `/`; `source` supplies the content of
/// policy files stored as objects.
pub fn selabel<H: FsVerityDigest>(
    fs: &mut FileSystem<H>,
    source: &impl ContentSource<H>,
) -> Result<Labelling, SelabelError> {
    let loaded = PolicyFiles { fs, source }.load()?;
    let Some((policy_type, policy)) = loaded else {
        strip_labels(fs);
        return Ok(Labelling::Stripped);
    };
    let FileSystem { root, leaves } = fs;
    let mut labeller = Labeller {
        policy: &policy,
        leaves,
        first_label: HashMap::new(),
    };
    labeller.directory(root, &mut PathBuf::from("/"))?;
    Ok(Labelling::Labelled { policy_type })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::DirectorySource;
    use cfs_erofs::digest::Sha256Digest;
    use cfs_erofs::tree::{Mode, Xattrs};

    type Fs = FileSystem<Sha256Digest>;

    fn stat_with_label(label: Option<&str>) -> Stat {
        let mut xattrs = Xattrs::new();
        if let Some(label) = label {
            xattrs.insert(SELINUX_XATTR.into(), label.as_bytes().into());
        }
        xattrs.insert(b"user.keep"[..].into(), b"1"[..].into());
        Stat {
            mode: Mode::new(0o755),
            xattrs,
            ..Stat::default()
        }
    }

    fn parent<'a>(root: &'a mut Directory, path: &str) -> (&'a mut Directory, FileName) {
        let (dir, name) = path
            .trim_matches('/')
            .rsplit_once('/')
            .unwrap_or(("", path.trim_matches('/')));
        let mut d = root;
        for part in dir.split('/').filter(|p| !p.is_empty()) {
            d = d.subdir_mut(part.as_bytes()).unwrap();
        }
        (d, FileName::new(name.as_bytes()).unwrap())
    }

    /// Builds a tree from `(path, content)`, `None` content making a
    /// directory; everything starts with a stale label.
    fn tree(entries: &[(&str, Option<LeafContent<Sha256Digest>>)]) -> Fs {
        let mut fs = Fs::new(stat_with_label(Some("stale")));
        for (path, content) in entries {
            let inode = match content {
                None => Inode::Directory(Box::new(Directory::new(stat_with_label(Some("stale"))))),
                Some(content) => Inode::Leaf(fs.push_leaf(Leaf {
                    stat: stat_with_label(Some("stale")),
                    content: content.clone(),
                })),
            };
            let (dir, name) = parent(&mut fs.root, path);
            dir.entries.insert(name, inode);
        }
        fs
    }

    fn inline(text: &str) -> Option<LeafContent<Sha256Digest>> {
        Some(LeafContent::Regular(RegularFile::Inline(
            text.as_bytes().into(),
        )))
    }

    fn link(fs: &mut Fs, from: &str, to: &str) {
        let id = entry(fs, to).unwrap();
        let (dir, name) = parent(&mut fs.root, from);
        dir.entries.insert(name, Inode::Leaf(id));
    }

    fn entry(fs: &Fs, path: &str) -> Option<LeafId> {
        let (dir, name) = path
            .trim_start_matches('/')
            .rsplit_once('/')
            .unwrap_or(("", path));
        let mut d = &fs.root;
        for part in dir.split('/').filter(|p| !p.is_empty()) {
            d = d.subdir(part.as_bytes())?;
        }
        match d
            .entries
            .get(&FileName::new(name.trim_start_matches('/').as_bytes()).ok()?)?
        {
            Inode::Leaf(id) => Some(*id),
            Inode::Directory(_) => None,
        }
    }

    fn stat<'a>(fs: &'a Fs, path: &str) -> &'a Stat {
        if path == "/" {
            return &fs.root.stat;
        }
        if let Some(id) = entry(fs, path) {
            return &fs.leaves[id.0].stat;
        }
        let mut d = &fs.root;
        for part in path.trim_start_matches('/').split('/') {
            d = d.subdir(part.as_bytes()).unwrap();
        }
        &d.stat
    }

    fn label(fs: &Fs, path: &str) -> Option<String> {
        stat(fs, path)
            .xattrs
            .get(SELINUX_XATTR)
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
    }

    const CONFIG: &str = "SELINUX=enforcing\nSELINUXTYPE=test\n";
    const POLICY_DIR: &str = "/etc/selinux/test/contexts/files/";

    fn with_policy(
        specs: &str,
        subs: Option<&str>,
        rest: &[(&str, Option<LeafContent<Sha256Digest>>)],
    ) -> Fs {
        let mut entries = vec![
            ("/etc/", None),
            ("/etc/selinux/", None),
            ("/etc/selinux/config", inline(CONFIG)),
            ("/etc/selinux/test/", None),
            ("/etc/selinux/test/contexts/", None),
            ("/etc/selinux/test/contexts/files/", None),
        ];
        let fc = format!("{POLICY_DIR}file_contexts");
        entries.push((&fc, inline(specs)));
        let subs_path = format!("{POLICY_DIR}file_contexts.subs");
        if let Some(subs) = subs {
            entries.push((&subs_path, inline(subs)));
        }
        entries.extend(rest.iter().cloned());
        tree(&entries)
    }

    fn run(fs: &mut Fs) -> Labelling {
        selabel(fs, &HashMap::<Sha256Digest, Vec<u8>>::new()).unwrap()
    }

    #[test]
    fn labels_every_inode_and_keeps_other_xattrs() {
        let specs = "/(.*)? u:r:default_t:s0\n\
                     / -d u:r:root_t:s0\n\
                     /dev(/.*)? u:r:dev_t:s0\n\
                     /dev/null -c u:r:null_t:s0\n\
                     /dev/sda -b u:r:disk_t:s0\n\
                     /dev/log -s u:r:log_t:s0\n\
                     /dev/fifo -p u:r:fifo_t:s0\n\
                     /dev/link -l u:r:link_t:s0\n\
                     /tmp(/.*)? <<none>>\n";
        let mut fs = with_policy(
            specs,
            None,
            &[
                ("/dev/", None),
                ("/dev/null", Some(LeafContent::CharacterDevice(0x103))),
                ("/dev/sda", Some(LeafContent::BlockDevice(0x800))),
                ("/dev/log", Some(LeafContent::Socket)),
                ("/dev/fifo", Some(LeafContent::Fifo)),
                ("/dev/link", Some(LeafContent::Symlink(b"null"[..].into()))),
                ("/dev/other", inline("x")),
                ("/tmp/", None),
                ("/tmp/x", inline("x")),
            ],
        );
        assert_eq!(
            run(&mut fs),
            Labelling::Labelled {
                policy_type: "test".into()
            }
        );
        let expect = [
            ("/", Some("u:r:root_t:s0")),
            ("/etc", Some("u:r:default_t:s0")),
            ("/etc/selinux/config", Some("u:r:default_t:s0")),
            ("/dev", Some("u:r:dev_t:s0")),
            ("/dev/null", Some("u:r:null_t:s0")),
            ("/dev/sda", Some("u:r:disk_t:s0")),
            ("/dev/log", Some("u:r:log_t:s0")),
            ("/dev/fifo", Some("u:r:fifo_t:s0")),
            ("/dev/link", Some("u:r:link_t:s0")),
            ("/dev/other", Some("u:r:dev_t:s0")),
            ("/tmp", None),
            ("/tmp/x", None),
        ];
        for (path, want) in expect {
            assert_eq!(label(&fs, path).as_deref(), want, "{path}");
            assert!(stat(&fs, path).xattrs.contains_key(&b"user.keep"[..]));
        }
    }

    #[test]
    fn missing_config_strips() {
        for config in [None, Some("SELINUX=disabled\n")] {
            let mut entries = vec![("/etc/", None), ("/etc/selinux/", None), ("/usr/", None)];
            if let Some(config) = config {
                entries.push(("/etc/selinux/config", inline(config)));
            }
            entries.push(("/usr/f", inline("f")));
            let mut fs = tree(&entries);
            assert_eq!(run(&mut fs), Labelling::Stripped);
            for path in ["/", "/etc", "/usr", "/usr/f"] {
                assert_eq!(label(&fs, path), None);
                assert!(stat(&fs, path).xattrs.contains_key(&b"user.keep"[..]));
            }
        }
        let mut fs = tree(&[("/usr/", None)]);
        assert_eq!(run(&mut fs), Labelling::Stripped);
        assert_eq!(label(&fs, "/usr"), None);
    }

    #[test]
    fn policy_errors() {
        let err = |fs: &mut Fs| run_err(fs).to_string();
        // Config names a type without a policy directory.
        let mut fs = tree(&[
            ("/etc/", None),
            ("/etc/selinux/", None),
            ("/etc/selinux/config", inline(CONFIG)),
        ]);
        assert_eq!(
            err(&mut fs),
            "SELinux policy directory /etc/selinux/test does not exist"
        );
        // Directory present, file_contexts missing.
        let mut fs = with_policy("", None, &[]);
        remove(&mut fs, &format!("{POLICY_DIR}file_contexts"));
        assert_eq!(
            err(&mut fs),
            "SELinux policy has no /etc/selinux/test/contexts/files/file_contexts"
        );
        // /etc/selinux is a file.
        let mut fs = tree(&[("/etc/", None), ("/etc/selinux", inline("x"))]);
        assert_eq!(err(&mut fs), "/etc/selinux is not a directory");
        // config is a symlink: not followed.
        let mut fs = tree(&[
            ("/etc/", None),
            ("/etc/selinux/", None),
            (
                "/etc/selinux/config",
                Some(LeafContent::Symlink(b"x"[..].into())),
            ),
        ]);
        assert_eq!(err(&mut fs), "/etc/selinux/config is not a regular file");
        // A type that climbs out.
        let mut fs = tree(&[
            ("/etc/", None),
            ("/etc/selinux/", None),
            ("/etc/selinux/config", inline("SELINUXTYPE=../x\n")),
        ]);
        assert!(err(&mut fs).contains("is not a plain path"));
        // A malformed spec names its file and line.
        let mut fs = with_policy("/a u:r:a_t:s0\n/b -z u:r:b_t:s0\n", None, &[]);
        assert_eq!(
            err(&mut fs),
            "SELinux policy: /etc/selinux/test/contexts/files/file_contexts line 2: \
             unknown file type -z"
        );
        // An external file the source does not have.
        let mut fs = with_policy("", None, &[]);
        let id = entry(&fs, &format!("{POLICY_DIR}file_contexts")).unwrap();
        let digest = Sha256Digest::from_slice(&[7; 32]).unwrap();
        fs.leaves[id.0].content = LeafContent::Regular(RegularFile::External { digest, size: 9 });
        assert!(err(&mut fs).starts_with("reading /etc/selinux/test/contexts/files/file_contexts"));
        let objects = HashMap::from([(digest, b"/ u:r:r_t:s0\n".to_vec())]);
        assert!(selabel(&mut fs, &objects).is_ok());
        assert_eq!(label(&fs, "/").as_deref(), Some("u:r:r_t:s0"));
    }

    fn run_err(fs: &mut Fs) -> SelabelError {
        selabel(fs, &HashMap::<Sha256Digest, Vec<u8>>::new()).unwrap_err()
    }

    fn remove(fs: &mut Fs, path: &str) {
        let (dir, name) = parent(&mut fs.root, path);
        dir.entries.remove(&name);
        fs.compact();
    }

    #[test]
    fn policy_type_paths() {
        let ok = |name: &str| -> Vec<Vec<u8>> {
            policy_type_components(name)
                .unwrap()
                .into_iter()
                .map(<[u8]>::to_vec)
                .collect()
        };
        assert_eq!(ok("targeted"), vec![b"targeted".to_vec()]);
        assert_eq!(ok("/a//./b/"), vec![b"a".to_vec(), b"b".to_vec()]);
        assert!(ok("").is_empty());
        for bad in [".", "./a", "a/../b", ".."] {
            assert!(policy_type_components(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn substitutions_apply_to_subtrees() {
        let specs = "/(.*)? u:r:default_t:s0\n\
                     /opt(/.*)? u:r:opt_t:s0\n\
                     /opt/deep(/.*)? u:r:deep_t:s0\n\
                     /home/user(/.*)? u:r:home_t:s0\n";
        let mut fs = with_policy(
            specs,
            Some("/srv /opt\n/srv/x /home/user\n/web /opt/\n"),
            &[
                ("/srv/", None),
                ("/srv/a", inline("a")),
                ("/srv/deep/", None),
                ("/srv/deep/f", inline("f")),
                ("/srv/x/", None),
                ("/srv/x/f", inline("f")),
                ("/web/", None),
                ("/web/deep/", None),
                ("/srvx", inline("x")),
            ],
        );
        run(&mut fs);
        let expect = [
            ("/srv", "u:r:opt_t:s0"),
            ("/srv/a", "u:r:opt_t:s0"),
            ("/srv/deep", "u:r:deep_t:s0"),
            ("/srv/deep/f", "u:r:deep_t:s0"),
            // Not substituted again: /srv/x became /opt/x before the
            // alias for /srv/x could be looked at.
            ("/srv/x", "u:r:opt_t:s0"),
            ("/srv/x/f", "u:r:opt_t:s0"),
            // The alias target keeps its trailing slash: `/opt/` is matched
            // as is, and its children as `/opt/deep`.
            ("/web", "u:r:opt_t:s0"),
            ("/web/deep", "u:r:deep_t:s0"),
            ("/srvx", "u:r:default_t:s0"),
        ];
        for (path, want) in expect {
            assert_eq!(label(&fs, path).as_deref(), Some(want), "{path}");
        }
    }

    #[test]
    fn hardlinks_split_only_across_labels() {
        let specs = "/(.*)? u:r:default_t:s0\n\
                     /a(/.*)? u:r:a_t:s0\n\
                     /b(/.*)? u:r:b_t:s0\n\
                     /n(/.*)? <<none>>\n";
        let mut fs = with_policy(
            specs,
            None,
            &[
                ("/a/", None),
                ("/b/", None),
                ("/n/", None),
                ("/a/f", inline("shared")),
                ("/a/g", inline("same")),
            ],
        );
        link(&mut fs, "/a/f2", "/a/f");
        link(&mut fs, "/b/f", "/a/f");
        link(&mut fs, "/b/f2", "/a/f");
        link(&mut fs, "/n/f", "/a/f");
        link(&mut fs, "/n/f2", "/a/f");
        let before = fs.leaves.len();
        run(&mut fs);
        let id = |p: &str| entry(&fs, p).unwrap();
        // Same label: still one inode.
        assert_eq!(id("/a/f"), id("/a/f2"));
        // Each later path whose label differs from the first one gets its
        // own copy, even if two of them agree with each other.
        assert_ne!(id("/b/f"), id("/a/f"));
        assert_ne!(id("/b/f2"), id("/b/f"));
        assert_ne!(id("/n/f"), id("/n/f2"));
        assert_eq!(fs.leaves.len(), before + 4);
        assert_eq!(label(&fs, "/a/f").as_deref(), Some("u:r:a_t:s0"));
        assert_eq!(label(&fs, "/b/f").as_deref(), Some("u:r:b_t:s0"));
        assert_eq!(label(&fs, "/b/f2").as_deref(), Some("u:r:b_t:s0"));
        assert_eq!(label(&fs, "/n/f"), None);
        assert_eq!(fs.check(), Ok(()));
        let nlinks = fs.nlinks();
        assert_eq!(nlinks[id("/a/f").0], 2);
        assert_eq!(nlinks[id("/b/f").0], 1);
        // The copies are the same file apart from the label.
        assert_eq!(
            fs.leaves[id("/b/f").0].content,
            fs.leaves[id("/a/f").0].content
        );
    }

    #[test]
    fn directory_source_reads_below_its_root() {
        let dir = std::env::temp_dir().join(format!("cfs-boot-selabel-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(dir.join("etc/file"), b"content").unwrap();
        let root = cap_std::fs::Dir::open_ambient_dir(&dir, cap_std::ambient_authority()).unwrap();
        let source = DirectorySource::new(root);
        let digest = Sha256Digest::from_slice(&[0; 32]).unwrap();
        let read = |p: &str| source.read_external(Path::new(p), &digest, 7);
        assert_eq!(read("/etc/file").unwrap(), b"content");
        assert!(read("/../etc/file").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
