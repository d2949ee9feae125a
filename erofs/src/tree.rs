//! The in-memory filesystem tree that images are built from and read into.
//!
//! Directories own their children; every non-directory lives once in a flat
//! table of leaves and is named by [`LeafId`] from each directory entry that
//! links to it, so a hardlink is simply two entries naming one leaf. Names
//! are [`FileName`]s, which cannot hold `/`, NUL, `.` or `..`, so a tree
//! cannot express a path that escapes it.

use std::collections::BTreeMap;
use std::fmt;

use crate::digest::FsVerityDigest;

/// Longest file name EROFS (and Linux) allows.
pub const NAME_MAX: usize = 255;

/// Longest symlink target composefs accepts (the C library's limit).
pub const SYMLINK_MAX: usize = 1024;

/// Regular files up to this size are stored inside split streams and
/// images; larger ones become repository objects.
pub const INLINE_CONTENT_MAX: usize = 64;

/// A file name that is valid in a directory: 1..=255 bytes, no `/` or NUL,
/// and neither `.` nor `..`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileName(Box<[u8]>);

/// Why a byte string is not a valid [`FileName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileNameError {
    /// Zero-length name.
    #[error("empty file name")]
    Empty,
    /// `.` or `..`.
    #[error("file name {0:?} is reserved")]
    Reserved(String),
    /// Longer than [`NAME_MAX`].
    #[error("file name of {0} bytes is longer than {NAME_MAX}")]
    TooLong(usize),
    /// Contains `/` or NUL.
    #[error("file name {0:?} contains '/' or NUL")]
    BadByte(String),
}

impl FileName {
    /// Validates `name`.
    pub fn new(name: &[u8]) -> Result<Self, FileNameError> {
        let shown = || String::from_utf8_lossy(name).into_owned();
        match name {
            [] => Err(FileNameError::Empty),
            b"." | b".." => Err(FileNameError::Reserved(shown())),
            _ if name.len() > NAME_MAX => Err(FileNameError::TooLong(name.len())),
            _ if name.iter().any(|&b| b == b'/' || b == 0) => Err(FileNameError::BadByte(shown())),
            _ => Ok(Self(name.into())),
        }
    }

    /// The name's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

impl TryFrom<&[u8]> for FileName {
    type Error = FileNameError;
    fn try_from(name: &[u8]) -> Result<Self, FileNameError> {
        Self::new(name)
    }
}

impl TryFrom<&str> for FileName {
    type Error = FileNameError;
    fn try_from(name: &str) -> Result<Self, FileNameError> {
        Self::new(name.as_bytes())
    }
}

/// Permission bits of a mode (`0o7777`): the file type lives in the
/// content, so a mode can never disagree with it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Mode(u16);

impl Mode {
    /// Keeps the permission, setuid, setgid and sticky bits of `mode`.
    pub const fn new(mode: u32) -> Self {
        Self((mode & 0o7777) as u16)
    }

    /// The bits, at most `0o7777`.
    pub const fn bits(self) -> u16 {
        self.0
    }
}

impl fmt::Debug for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:o}", self.0)
    }
}

/// A modification time with nanoseconds, ordered as time.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
pub struct Mtime {
    /// Seconds since the epoch.
    pub sec: i64,
    /// Nanoseconds, below 1_000_000_000.
    pub nsec: u32,
}

/// Extended attributes by full name (`user.foo`), sorted by name bytes.
pub type Xattrs = BTreeMap<Box<[u8]>, Box<[u8]>>;

/// Metadata shared by every kind of inode.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Stat {
    /// Permission bits.
    pub mode: Mode,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time.
    pub mtime: Mtime,
    /// Extended attributes, any namespace.
    pub xattrs: Xattrs,
}

/// Where a regular file's bytes are.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum RegularFile<H> {
    /// Small content carried inside the image itself.
    Inline(Box<[u8]>),
    /// Content stored as a repository object named by its fs-verity digest.
    External {
        /// The object's fs-verity digest.
        digest: H,
        /// The file's size in bytes.
        size: u64,
    },
}

impl<H> RegularFile<H> {
    /// The file's size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            Self::Inline(data) => data.len() as u64,
            Self::External { size, .. } => *size,
        }
    }
}

/// The kind-specific part of a non-directory inode.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum LeafContent<H> {
    /// A regular file.
    Regular(RegularFile<H>),
    /// A symbolic link and its target bytes.
    Symlink(Box<[u8]>),
    /// A block device and its `rdev`.
    BlockDevice(u64),
    /// A character device and its `rdev`; `rdev` 0 is an overlay whiteout.
    CharacterDevice(u64),
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
}

impl<H> LeafContent<H> {
    /// The `S_IFMT` bits of this kind of file.
    pub const fn type_bits(&self) -> u32 {
        match self {
            Self::Regular(_) => 0o100000,
            Self::Symlink(_) => 0o120000,
            Self::BlockDevice(_) => 0o060000,
            Self::CharacterDevice(_) => 0o020000,
            Self::Fifo => 0o010000,
            Self::Socket => 0o140000,
        }
    }

    /// An overlay whiteout: a character device numbered 0.
    pub const fn is_whiteout(&self) -> bool {
        matches!(self, Self::CharacterDevice(0))
    }
}

/// A non-directory inode: shared by every directory entry that links to it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Leaf<H> {
    /// Metadata.
    pub stat: Stat,
    /// Kind and content.
    pub content: LeafContent<H>,
}

/// Index of a leaf in [`FileSystem::leaves`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct LeafId(pub usize);

/// What a directory entry names.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Inode {
    /// A subdirectory, owned by its parent.
    Directory(Box<Directory>),
    /// A non-directory in the leaf table.
    Leaf(LeafId),
}

/// A directory: its metadata and its entries sorted by name bytes.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Directory {
    /// Metadata.
    pub stat: Stat,
    /// Entries, without `.` and `..`.
    pub entries: BTreeMap<FileName, Inode>,
}

impl Directory {
    /// An empty directory.
    pub fn new(stat: Stat) -> Self {
        Self {
            stat,
            entries: BTreeMap::new(),
        }
    }

    /// The subdirectory `name`, if there is one.
    pub fn subdir(&self, name: &[u8]) -> Option<&Directory> {
        match self.entries.get(&FileName::new(name).ok()?) {
            Some(Inode::Directory(dir)) => Some(dir),
            _ => None,
        }
    }

    /// The subdirectory `name`, mutably, if there is one.
    pub fn subdir_mut(&mut self, name: &[u8]) -> Option<&mut Directory> {
        match self.entries.get_mut(&FileName::new(name).ok()?) {
            Some(Inode::Directory(dir)) => Some(dir),
            _ => None,
        }
    }

    /// The number of subdirectories, for the directory's link count.
    pub fn subdir_count(&self) -> usize {
        self.entries
            .values()
            .filter(|inode| matches!(inode, Inode::Directory(_)))
            .count()
    }

    fn for_each_leaf_ref(&self, f: &mut impl FnMut(LeafId)) {
        for inode in self.entries.values() {
            match inode {
                Inode::Directory(dir) => dir.for_each_leaf_ref(f),
                Inode::Leaf(id) => f(*id),
            }
        }
    }

    fn remap_leaves(&mut self, map: &[Option<LeafId>]) {
        for inode in self.entries.values_mut() {
            match inode {
                Inode::Directory(dir) => dir.remap_leaves(map),
                Inode::Leaf(id) => {
                    *id = map[id.0].expect("a referenced leaf is kept by compaction");
                }
            }
        }
    }

    fn for_each_stat_mut(&mut self, f: &mut impl FnMut(&mut Stat)) {
        f(&mut self.stat);
        for inode in self.entries.values_mut() {
            if let Inode::Directory(dir) = inode {
                dir.for_each_stat_mut(f);
            }
        }
    }
}

/// A tree whose leaf references do not match its leaf table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// An entry names a leaf that does not exist.
    #[error("directory entry refers to leaf {0} but the tree has only {1} leaves")]
    DanglingLeaf(usize, usize),
    /// A leaf that no entry names.
    #[error("leaf {0} is not linked from any directory")]
    OrphanLeaf(usize),
}

/// A whole filesystem: the root directory and the table of leaves.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct FileSystem<H> {
    /// The root directory.
    pub root: Directory,
    /// Every non-directory inode, each linked from one or more entries.
    pub leaves: Vec<Leaf<H>>,
}

impl<H: FsVerityDigest> FileSystem<H> {
    /// An empty filesystem whose root has `stat`.
    pub fn new(stat: Stat) -> Self {
        Self {
            root: Directory::new(stat),
            leaves: Vec::new(),
        }
    }

    /// Adds a leaf to the table; link it from a directory entry.
    pub fn push_leaf(&mut self, leaf: Leaf<H>) -> LeafId {
        self.leaves.push(leaf);
        LeafId(self.leaves.len() - 1)
    }

    /// The leaf `id`. Panics if it is out of range, which [`Self::check`]
    /// rules out.
    pub fn leaf(&self, id: LeafId) -> &Leaf<H> {
        &self.leaves[id.0]
    }

    /// How many directory entries link to each leaf.
    pub fn nlinks(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.leaves.len()];
        self.root.for_each_leaf_ref(&mut |id| {
            if let Some(count) = counts.get_mut(id.0) {
                *count = count.saturating_add(1);
            }
        });
        counts
    }

    /// Checks that every entry names an existing leaf and every leaf is
    /// linked at least once.
    pub fn check(&self) -> Result<(), TreeError> {
        let mut dangling = None;
        let total = self.leaves.len();
        self.root.for_each_leaf_ref(&mut |id| {
            if id.0 >= total {
                dangling.get_or_insert(id.0);
            }
        });
        if let Some(id) = dangling {
            return Err(TreeError::DanglingLeaf(id, total));
        }
        match self.nlinks().iter().position(|&n| n == 0) {
            Some(orphan) => Err(TreeError::OrphanLeaf(orphan)),
            None => Ok(()),
        }
    }

    /// Drops leaves no entry links to any more (after removing entries) and
    /// renumbers the rest, keeping their order.
    pub fn compact(&mut self) {
        let nlinks = self.nlinks();
        let mut map = Vec::with_capacity(self.leaves.len());
        let mut next = 0;
        for &n in &nlinks {
            if n > 0 {
                map.push(Some(LeafId(next)));
                next += 1;
            } else {
                map.push(None);
            }
        }
        let mut index = 0;
        self.leaves.retain(|_| {
            index += 1;
            nlinks[index - 1] > 0
        });
        self.root.remap_leaves(&map);
    }

    /// Calls `f` on the metadata of every directory and every leaf, once each.
    pub fn for_each_stat_mut(&mut self, mut f: impl FnMut(&mut Stat)) {
        self.root.for_each_stat_mut(&mut f);
        for leaf in &mut self.leaves {
            f(&mut leaf.stat);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Sha256Digest;

    #[test]
    fn file_names() {
        assert!(FileName::new(b"a").is_ok());
        assert!(FileName::new(&[0xff; 255]).is_ok());
        assert_eq!(FileName::new(b""), Err(FileNameError::Empty));
        assert!(matches!(
            FileName::new(b".."),
            Err(FileNameError::Reserved(_))
        ));
        assert!(matches!(
            FileName::new(b"a/b"),
            Err(FileNameError::BadByte(_))
        ));
        assert!(matches!(
            FileName::new(b"a\0"),
            Err(FileNameError::BadByte(_))
        ));
        assert_eq!(
            FileName::new(&[b'x'; 256]),
            Err(FileNameError::TooLong(256))
        );
        assert_eq!(Mode::new(0o104755).bits(), 0o4755);
    }

    #[test]
    fn compact_and_check() {
        let mut fs = FileSystem::<Sha256Digest>::new(Stat::default());
        let leaf = |n: u8| Leaf {
            stat: Stat::default(),
            content: LeafContent::Regular(RegularFile::Inline(Box::new([n]))),
        };
        let a = fs.push_leaf(leaf(1));
        let _orphan = fs.push_leaf(leaf(2));
        let c = fs.push_leaf(leaf(3));
        fs.root
            .entries
            .insert(FileName::new(b"a").unwrap(), Inode::Leaf(a));
        fs.root
            .entries
            .insert(FileName::new(b"c").unwrap(), Inode::Leaf(c));
        fs.root
            .entries
            .insert(FileName::new(b"c2").unwrap(), Inode::Leaf(c));
        assert_eq!(fs.check(), Err(TreeError::OrphanLeaf(1)));
        fs.compact();
        assert_eq!(fs.check(), Ok(()));
        assert_eq!(fs.leaves.len(), 2);
        assert_eq!(fs.nlinks(), vec![1, 2]);
        fs.root
            .entries
            .insert(FileName::new(b"z").unwrap(), Inode::Leaf(LeafId(9)));
        assert_eq!(fs.check(), Err(TreeError::DanglingLeaf(9, 2)));
    }
}
