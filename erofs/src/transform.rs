//! The tree transforms applied to every OCI image before its EROFS is
//! written.
//!
//! The same container filesystem can reach us as tar layers or as a mounted
//! root directory, and both must give the same image id as the reference
//! tool (composefs-rs 0.9), because sealed boot images embed that id. The
//! two views disagree in places nobody controls: the root directory's
//! metadata (tar layers rarely carry it, runtimes ignore it), stubs that
//! build-time bind mounts leave under `/run`, and xattrs that leak from the
//! build host (overlayfs SELinux labels and the like). The reference
//! removes those differences with fixed rules, which we apply identically:
//!
//! 1. the root takes `/usr`'s mode, owner, mtime and xattrs;
//! 2. `/run`, if present, is emptied and takes `/usr`'s mtime;
//! 3. every inode keeps only the xattrs the chosen [`XattrFilter`] allows;
//! 4. leaves orphaned by step 2 are dropped.

use std::fmt;
use std::str::FromStr;

use crate::digest::FsVerityDigest;
use crate::tree::{Directory, FileName, FileSystem, Inode, Mtime, Stat};

/// Xattrs kept by every [`XattrFilter`]: file capabilities are part of what
/// an image means, unlike labels inherited from the machine that built it.
pub const CONTAINER_XATTR_ALLOWLIST: &[&[u8]] = &[b"security.capability"];

/// Which extended attributes survive [`transform_for_oci`].
///
/// The kebab-case names of [`fmt::Display`] and [`FromStr`] are the
/// reference's command-line and image-ref spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum XattrFilter {
    /// Keep only [`CONTAINER_XATTR_ALLOWLIST`] (`allowlist-only`), the
    /// reference's default.
    #[default]
    AllowlistOnly,
    /// Keep the allowlist and every `user.*` xattr (`keep-user-xattrs`).
    KeepUserXattrs,
}

impl XattrFilter {
    /// Every filter, default first.
    pub const ALL: [XattrFilter; 2] = [Self::AllowlistOnly, Self::KeepUserXattrs];

    /// The filter's kebab-case name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::AllowlistOnly => "allowlist-only",
            Self::KeepUserXattrs => "keep-user-xattrs",
        }
    }

    /// Whether an xattr called `name` (full name, e.g. `user.foo`) is kept.
    pub fn keeps(self, name: &[u8]) -> bool {
        CONTAINER_XATTR_ALLOWLIST.contains(&name)
            || (self == Self::KeepUserXattrs && name.starts_with(b"user."))
    }
}

impl fmt::Display for XattrFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A string that names no [`XattrFilter`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid xattr filter {0:?}: expected \"allowlist-only\" or \"keep-user-xattrs\"")]
pub struct ParseXattrFilterError(String);

impl FromStr for XattrFilter {
    type Err = ParseXattrFilterError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|filter| filter.name() == text)
            .ok_or_else(|| ParseXattrFilterError(text.chars().take(100).collect()))
    }
}

/// A top-level directory a transform needs is absent or of another type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    /// The entry does not exist.
    #[error("/{0} does not exist in the image")]
    Missing(String),
    /// The entry exists but is not a directory.
    #[error("/{0} is not a directory in the image")]
    NotADirectory(String),
}

/// Looks up the top-level directory `name`: `Ok(None)` when absent.
fn top_level_dir<'a, H>(
    fs: &'a FileSystem<H>,
    name: &str,
) -> Result<Option<&'a Directory>, TransformError> {
    let key = FileName::new(name.as_bytes()).expect("transform directory names are valid");
    match fs.root.entries.get(&key) {
        None => Ok(None),
        Some(Inode::Directory(dir)) => Ok(Some(dir)),
        Some(Inode::Leaf(_)) => Err(TransformError::NotADirectory(name.to_owned())),
    }
}

/// The metadata of `/usr`, which the transforms copy from.
///
/// # Errors
/// [`TransformError`] naming `usr` when it is missing or not a directory.
pub fn usr_stat<H>(fs: &FileSystem<H>) -> Result<&Stat, TransformError> {
    match top_level_dir(fs, "usr")? {
        Some(usr) => Ok(&usr.stat),
        None => Err(TransformError::Missing("usr".to_owned())),
    }
}

/// Gives the root directory `/usr`'s mode, uid, gid, mtime and all of its
/// xattrs, since a root's own metadata is not reproducible across
/// container tools.
///
/// # Errors
/// [`TransformError`] naming `usr` when it is missing or not a directory.
pub fn copy_root_metadata_from_usr<H>(fs: &mut FileSystem<H>) -> Result<(), TransformError> {
    let usr = usr_stat(fs)?.clone();
    fs.root.stat = usr;
    Ok(())
}

/// Removes every entry of the top-level directory `name` and sets its mtime
/// to `mtime`; its mode, owner and xattrs stay. Returns whether it existed.
///
/// Leaves linked only from inside it become orphans: call
/// [`FileSystem::compact`] afterwards.
///
/// # Errors
/// [`TransformError::NotADirectory`] when `name` exists as a non-directory.
pub fn empty_top_level_dir<H>(
    fs: &mut FileSystem<H>,
    name: &str,
    mtime: Mtime,
) -> Result<bool, TransformError> {
    if top_level_dir(fs, name)?.is_none() {
        return Ok(false);
    }
    let dir = fs
        .root
        .subdir_mut(name.as_bytes())
        .expect("the directory was just found");
    dir.entries.clear();
    dir.stat.mtime = mtime;
    Ok(true)
}

/// Empties `/run` if it exists and gives it `/usr`'s mtime, then drops the
/// leaves that were only linked from it. `/run` is a tmpfs at runtime, and
/// build tools leave mount-point stubs in it.
///
/// # Errors
/// [`TransformError`] when `/run` is not a directory, or when `/run`
/// exists and `/usr` is missing or not a directory.
pub fn canonicalize_run<H: FsVerityDigest>(fs: &mut FileSystem<H>) -> Result<(), TransformError> {
    if top_level_dir(fs, "run")?.is_none() {
        return Ok(());
    }
    let mtime = usr_stat(fs)?.mtime;
    empty_top_level_dir(fs, "run", mtime)?;
    fs.compact();
    Ok(())
}

/// Drops, on every directory and leaf, the xattrs `filter` does not keep.
pub fn filter_xattrs<H: FsVerityDigest>(fs: &mut FileSystem<H>, filter: XattrFilter) {
    fs.for_each_stat_mut(|stat| stat.xattrs.retain(|name, _| filter.keeps(name)));
}

/// Applies the reference's OCI transform (see the module docs): root
/// metadata from `/usr`, `/run` emptied, xattrs filtered, orphaned leaves
/// dropped. The result passes [`FileSystem::check`] if the input did.
///
/// # Errors
/// [`TransformError`] when `/usr` is missing or not a directory, or `/run`
/// is not a directory. The tree may then be partly transformed.
pub fn transform_for_oci<H: FsVerityDigest>(
    fs: &mut FileSystem<H>,
    filter: XattrFilter,
) -> Result<(), TransformError> {
    copy_root_metadata_from_usr(fs)?;
    canonicalize_run(fs)?;
    filter_xattrs(fs, filter);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Sha256Digest;
    use crate::tree::{Leaf, LeafContent, LeafId, Mode, RegularFile, Xattrs};

    fn xattrs(pairs: &[(&str, &str)]) -> Xattrs {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().into(), v.as_bytes().into()))
            .collect()
    }

    fn stat(mode: u32, sec: i64, pairs: &[(&str, &str)]) -> Stat {
        Stat {
            mode: Mode::new(mode),
            uid: 0,
            gid: 0,
            mtime: Mtime { sec, nsec: 0 },
            xattrs: xattrs(pairs),
        }
    }

    fn name(text: &str) -> FileName {
        FileName::new(text.as_bytes()).unwrap()
    }

    fn file(fs: &mut FileSystem<Sha256Digest>, pairs: &[(&str, &str)]) -> LeafId {
        fs.push_leaf(Leaf {
            stat: stat(0o644, 5, pairs),
            content: LeafContent::Regular(RegularFile::Inline(Box::new(*b"x"))),
        })
    }

    fn add_dir<'a>(parent: &'a mut Directory, text: &str, stat: Stat) -> &'a mut Directory {
        parent
            .entries
            .insert(name(text), Inode::Directory(Box::new(Directory::new(stat))));
        parent.subdir_mut(text.as_bytes()).unwrap()
    }

    /// A root with `/usr` (carrying metadata and xattrs), a `/run` holding
    /// a file hardlinked from `/etc` and a file only it links, and files
    /// with assorted xattrs.
    fn sample() -> FileSystem<Sha256Digest> {
        let mut fs = FileSystem::new(stat(0o700, 1, &[("user.root", "r")]));
        let shared = file(&mut fs, &[("security.selinux", "label")]);
        let run_only = file(&mut fs, &[]);
        let caps = file(
            &mut fs,
            &[("security.capability", "cap"), ("user.keep", "u")],
        );
        let mut usr_stat = stat(
            0o755,
            1_700_000_000,
            &[("security.selinux", "usr_t"), ("user.usr", "1")],
        );
        usr_stat.uid = 10;
        usr_stat.gid = 20;
        usr_stat.mtime.nsec = 123_456_789;
        let usr = add_dir(&mut fs.root, "usr", usr_stat);
        usr.entries.insert(name("caps"), Inode::Leaf(caps));
        let run = add_dir(&mut fs.root, "run", stat(0o1777, 7, &[("user.run", "x")]));
        run.entries.insert(name("shared"), Inode::Leaf(shared));
        add_dir(run, "lock", stat(0o755, 7, &[]))
            .entries
            .insert(name("only"), Inode::Leaf(run_only));
        add_dir(&mut fs.root, "etc", stat(0o755, 3, &[]))
            .entries
            .insert(name("shared"), Inode::Leaf(shared));
        fs.check().unwrap();
        fs
    }

    #[test]
    fn filter_names_round_trip() {
        for filter in XattrFilter::ALL {
            assert_eq!(filter.to_string().parse::<XattrFilter>(), Ok(filter));
        }
        assert_eq!(XattrFilter::default(), XattrFilter::AllowlistOnly);
        assert_eq!(
            "keep-user-xattrs".parse::<XattrFilter>(),
            Ok(XattrFilter::KeepUserXattrs)
        );
        let err = "allowlist".parse::<XattrFilter>().unwrap_err();
        assert!(err.to_string().contains("\"allowlist\""), "{err}");
    }

    #[test]
    fn filter_rules() {
        let only = XattrFilter::AllowlistOnly;
        let user = XattrFilter::KeepUserXattrs;
        assert!(only.keeps(b"security.capability"));
        assert!(user.keeps(b"security.capability"));
        assert!(!only.keeps(b"user.foo"));
        assert!(user.keeps(b"user.foo"));
        assert!(!user.keeps(b"user"));
        assert!(!user.keeps(b"security.selinux"));
        assert!(!user.keeps(b"trusted.overlay.opaque"));
        assert!(!only.keeps(b"security.capability2"));
    }

    #[test]
    fn oci_transform_allowlist_only() {
        let mut fs = sample();
        transform_for_oci(&mut fs, XattrFilter::AllowlistOnly).unwrap();
        fs.check().unwrap();

        // Root copied from /usr (mode, owner, full mtime), then filtered
        // like every inode.
        let usr = fs.root.subdir(b"usr").unwrap().stat.clone();
        assert_eq!(fs.root.stat.mode, Mode::new(0o755));
        assert_eq!((fs.root.stat.uid, fs.root.stat.gid), (10, 20));
        assert_eq!(
            fs.root.stat.mtime,
            Mtime {
                sec: 1_700_000_000,
                nsec: 123_456_789
            }
        );
        assert_eq!(fs.root.stat, usr);
        assert!(usr.xattrs.is_empty());

        // /run emptied, mtime from /usr, mode kept, xattrs filtered.
        let run = fs.root.subdir(b"run").unwrap();
        assert!(run.entries.is_empty());
        assert_eq!(run.stat.mode, Mode::new(0o1777));
        assert_eq!(run.stat.mtime, usr.mtime);
        assert!(run.stat.xattrs.is_empty());

        // The leaf only /run linked is gone; the shared one stays.
        assert_eq!(fs.leaves.len(), 2);
        assert_eq!(fs.nlinks(), vec![1, 1]);
        let Some(Inode::Leaf(caps)) = fs.root.subdir(b"usr").unwrap().entries.get(&name("caps"))
        else {
            panic!("/usr/caps is a leaf");
        };
        assert_eq!(
            fs.leaf(*caps).stat.xattrs,
            xattrs(&[("security.capability", "cap")])
        );
        let Some(Inode::Leaf(shared)) =
            fs.root.subdir(b"etc").unwrap().entries.get(&name("shared"))
        else {
            panic!("/etc/shared is a leaf");
        };
        assert!(fs.leaf(*shared).stat.xattrs.is_empty());
    }

    #[test]
    fn oci_transform_keep_user_xattrs() {
        let mut fs = sample();
        transform_for_oci(&mut fs, XattrFilter::KeepUserXattrs).unwrap();
        fs.check().unwrap();
        // The root has /usr's xattrs, not its own, minus the label.
        assert_eq!(fs.root.stat.xattrs, xattrs(&[("user.usr", "1")]));
        assert_eq!(
            fs.root.subdir(b"run").unwrap().stat.xattrs,
            xattrs(&[("user.run", "x")])
        );
        let kept: Vec<_> = fs.leaves.iter().map(|l| l.stat.xattrs.len()).collect();
        assert_eq!(kept, vec![0, 2]);
    }

    #[test]
    fn missing_or_wrong_usr_and_run() {
        let mut fs = FileSystem::<Sha256Digest>::new(stat(0o755, 1, &[]));
        let err = transform_for_oci(&mut fs, XattrFilter::AllowlistOnly).unwrap_err();
        assert_eq!(err, TransformError::Missing("usr".into()));
        assert_eq!(err.to_string(), "/usr does not exist in the image");

        let leaf = file(&mut fs, &[]);
        fs.root.entries.insert(name("usr"), Inode::Leaf(leaf));
        let err = copy_root_metadata_from_usr(&mut fs).unwrap_err();
        assert_eq!(err.to_string(), "/usr is not a directory in the image");

        // /run as a symlink-like leaf is refused, as the reference does.
        let mut fs = sample();
        let leaf = file(&mut fs, &[]);
        fs.root.entries.insert(name("run"), Inode::Leaf(leaf));
        assert_eq!(
            canonicalize_run(&mut fs),
            Err(TransformError::NotADirectory("run".into()))
        );

        // Without /run, /usr is not needed to canonicalize it.
        let mut fs = FileSystem::<Sha256Digest>::new(stat(0o755, 1, &[]));
        assert_eq!(canonicalize_run(&mut fs), Ok(()));
        add_dir(&mut fs.root, "run", stat(0o755, 1, &[]));
        assert_eq!(
            canonicalize_run(&mut fs),
            Err(TransformError::Missing("usr".into()))
        );
    }

    #[test]
    fn empty_dir_reports_presence() {
        let mut fs = sample();
        let mtime = Mtime { sec: 9, nsec: 8 };
        assert_eq!(empty_top_level_dir(&mut fs, "boot", mtime), Ok(false));
        assert_eq!(empty_top_level_dir(&mut fs, "etc", mtime), Ok(true));
        let etc = fs.root.subdir(b"etc").unwrap();
        assert!(etc.entries.is_empty());
        assert_eq!(etc.stat.mtime, mtime);
        assert_eq!(etc.stat.mode, Mode::new(0o755));
        fs.compact();
        fs.check().unwrap();
    }
}
