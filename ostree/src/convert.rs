//! An ostree commit as a composefs filesystem tree.
//!
//! The mapping follows composefs-rs's `composefs-ostree`, because a
//! sealed image's digest must not depend on which tool pulled it: every
//! mtime is 0 (ostree stores none), the same content object linked from
//! several places becomes one inode with several links, and regular files
//! up to two digests long stay inline. One deliberate difference: xattr
//! names lose ostree's trailing NUL, as the kernel names them; the
//! reference keeps it, so its images name `user.x\0` where a checkout
//! (and ours) has `user.x`.

use std::collections::HashMap;

use cfs_erofs::digest::FsVerityDigest;
use cfs_erofs::tree::{
    Directory, FileSystem, Inode, Leaf, LeafContent, LeafId, Mode, RegularFile, Stat, Xattrs,
};
use cfs_images::Repository;

use crate::checksum::Checksum;
use crate::error::OstreeError;
use crate::object::{xattr_name, Commit, DirTree, FileHeader, Meta, OstreeXattr};
use crate::repo::LocalRepo;

/// Deeper than any real tree; keeps a hostile commit from exhausting
/// the stack.
pub const MAX_DEPTH: usize = 1024;

/// What converting a commit stored and found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConvertStats {
    /// Directories (dirtree + dirmeta pairs) walked.
    pub directories: usize,
    /// Distinct content objects read.
    pub files: usize,
    /// Bytes of content written as repository objects.
    pub external_bytes: u64,
}

/// The largest regular file kept inside the image rather than stored as
/// an object: two digests' worth, as composefs-rs decides for ostree
/// content (128 bytes for SHA-512 repositories, 64 for SHA-256).
pub fn inline_max<H: FsVerityDigest>() -> usize {
    2 * H::ALGORITHM.digest_len()
}

/// Where a commit's objects are read from while it is turned into a
/// tree: a local ostree repository, or the index of objects a remote
/// pull fetched. Each hands out verified objects only.
pub trait CommitObjects<H: FsVerityDigest> {
    /// A directory listing.
    fn dirtree(&self, checksum: &Checksum) -> Result<DirTree, OstreeError>;
    /// A directory's metadata.
    fn dirmeta(&self, checksum: &Checksum) -> Result<Meta, OstreeError>;
    /// A content object as a leaf, its content stored in `repo` when too
    /// large to inline; also the bytes newly stored there.
    fn file(
        &self,
        checksum: &Checksum,
        repo: &Repository<H>,
    ) -> Result<(Leaf<H>, u64), OstreeError>;
}

impl<H: FsVerityDigest> CommitObjects<H> for LocalRepo {
    fn dirtree(&self, checksum: &Checksum) -> Result<DirTree, OstreeError> {
        self.read_dirtree(checksum)
    }

    fn dirmeta(&self, checksum: &Checksum) -> Result<Meta, OstreeError> {
        self.read_dirmeta(checksum)
    }

    fn file(
        &self,
        checksum: &Checksum,
        repo: &Repository<H>,
    ) -> Result<(Leaf<H>, u64), OstreeError> {
        let mut reader = self.open_content(checksum)?;
        let size = reader.size();
        if reader.header().is_symlink() || size <= inline_max::<H>() as u64 {
            let (header, data) = reader.read_verified()?;
            return Ok((leaf_of(&header, data, None), 0));
        }
        let stored = repo.ensure_object_from_reader(&mut reader);
        let digest = reader.check(stored)?;
        Ok((
            leaf_of(reader.header(), Vec::new(), Some((digest, size))),
            size,
        ))
    }
}

/// The leaf for a content object: a symlink, inline `data`, or an
/// `external` object of the given size.
pub fn leaf_of<H>(header: &FileHeader, data: Vec<u8>, external: Option<(H, u64)>) -> Leaf<H> {
    let content = if header.is_symlink() {
        LeafContent::Symlink(header.symlink_target.as_bytes().into())
    } else if let Some((digest, size)) = external {
        LeafContent::Regular(RegularFile::External { digest, size })
    } else {
        LeafContent::Regular(RegularFile::Inline(data.into()))
    };
    Leaf {
        stat: stat_of(&header.meta),
        content,
    }
}

/// Reads the tree of `commit` from `source`, storing file contents too
/// large to inline as objects of `repo`, and returns it as a filesystem.
pub fn commit_to_filesystem<H: FsVerityDigest>(
    source: &dyn CommitObjects<H>,
    commit: &Commit,
    repo: &Repository<H>,
) -> Result<(FileSystem<H>, ConvertStats), OstreeError> {
    let mut walk = Walk {
        source,
        repo,
        fs: FileSystem::new(Stat::default()),
        dirmetas: HashMap::new(),
        leaves: HashMap::new(),
        stats: ConvertStats::default(),
    };
    let root = walk.directory(&commit.root_tree, &commit.root_meta, 0)?;
    walk.fs.root = root;
    Ok((walk.fs, walk.stats))
}

struct Walk<'a, H: FsVerityDigest> {
    source: &'a dyn CommitObjects<H>,
    repo: &'a Repository<H>,
    fs: FileSystem<H>,
    dirmetas: HashMap<Checksum, Stat>,
    leaves: HashMap<Checksum, LeafId>,
    stats: ConvertStats,
}

impl<H: FsVerityDigest> Walk<'_, H> {
    fn directory(
        &mut self,
        tree: &Checksum,
        meta: &Checksum,
        depth: usize,
    ) -> Result<Directory, OstreeError> {
        if depth > MAX_DEPTH {
            return Err(OstreeError::TooDeep(MAX_DEPTH));
        }
        self.stats.directories += 1;
        let stat = match self.dirmetas.get(meta) {
            Some(stat) => stat.clone(),
            None => {
                let stat = stat_of(&self.source.dirmeta(meta)?);
                self.dirmetas.insert(*meta, stat.clone());
                stat
            }
        };
        let listing = self.source.dirtree(tree)?;
        let mut dir = Directory::new(stat);
        for (name, content) in listing.files {
            let leaf = self.leaf(&content)?;
            dir.entries.insert(name, Inode::Leaf(leaf));
        }
        for (name, tree, meta) in listing.dirs {
            let sub = self.directory(&tree, &meta, depth + 1)?;
            dir.entries.insert(name, Inode::Directory(Box::new(sub)));
        }
        Ok(dir)
    }

    /// The leaf of a content object; one already seen is linked again.
    fn leaf(&mut self, checksum: &Checksum) -> Result<LeafId, OstreeError> {
        if let Some(id) = self.leaves.get(checksum) {
            return Ok(*id);
        }
        self.stats.files += 1;
        let (leaf, stored) = self.source.file(checksum, self.repo)?;
        self.stats.external_bytes += stored;
        let id = self.fs.push_leaf(leaf);
        self.leaves.insert(*checksum, id);
        Ok(id)
    }
}

/// ostree metadata as a composefs stat: mtime 0, xattr names without
/// their trailing NUL.
fn stat_of(meta: &Meta) -> Stat {
    Stat {
        mode: Mode::new(meta.mode),
        uid: meta.uid,
        gid: meta.gid,
        mtime: Default::default(),
        xattrs: xattrs_of(&meta.xattrs),
    }
}

fn xattrs_of(xattrs: &[OstreeXattr]) -> Xattrs {
    xattrs
        .iter()
        .map(|(name, value)| (xattr_name(name).into(), value.as_slice().into()))
        .collect()
}
