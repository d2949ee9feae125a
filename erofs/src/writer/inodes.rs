//! Numbering inodes and building directory entries, as the reference and
//! the C tool do: breadth-first for the C layout (with its root whiteout
//! stubs and escaped user whiteouts), depth-first pre-order for V2.

use std::collections::{BTreeMap, HashMap, VecDeque};

use zerocopy::IntoBytes;

use super::xattrs::InodeXattrs;
use super::{mtime_key, WriteError};
use crate::digest::FsVerityDigest;
use crate::format::{self, mode, FormatVersion, BLOCK_SIZE};
use crate::tree::{Directory, FileSystem, Inode, LeafContent, LeafId, Mode, RegularFile, Stat};

/// A directory entry; `target` is a node index once resolved.
#[derive(Clone, Copy)]
pub(super) struct Dirent<'a> {
    pub(super) name: &'a [u8],
    pub(super) target: Target,
    pub(super) file_type: u8,
}

#[derive(Clone, Copy)]
pub(super) enum Target {
    Node(usize),
    /// A hardlink whose first (depth-first) occurrence has no node yet.
    Leaf(LeafId),
}

impl Target {
    pub(super) fn node(self) -> usize {
        match self {
            Self::Node(i) => i,
            Self::Leaf(_) => unreachable!("hardlinks are resolved after collection"),
        }
    }
}

/// What an inode holds, with everything its layout depends on.
pub(super) enum Content<'a> {
    Directory {
        /// Entries packed into full blocks.
        blocks: Vec<Vec<Dirent<'a>>>,
        /// Entries stored after the inode.
        tail: Vec<Dirent<'a>>,
        size: u64,
    },
    /// A regular file carried in the image: `blocks` data blocks (C
    /// layout only) and the last `tail` bytes inline after the inode.
    Inline {
        data: &'a [u8],
        blocks: usize,
        tail: usize,
    },
    /// A regular file whose data is an object: a chunk index of holes.
    External {
        size: u64,
        chunk_format: u32,
        /// Chunk index entries inline after the inode.
        inline_chunks: usize,
        /// The C layout moves an index that does not fit into a block.
        in_block: bool,
    },
    Symlink {
        target: &'a [u8],
        in_block: bool,
    },
    /// Devices (`u` = rdev), FIFOs, sockets and escaped whiteouts.
    NoData {
        rdev: u32,
    },
}

pub(super) struct Node<'a, H> {
    pub(super) stat: &'a Stat,
    /// `S_IFMT` bits.
    pub(super) ifmt: u16,
    pub(super) nlink: u32,
    pub(super) content: Content<'a>,
    pub(super) xattrs: InodeXattrs,
    pub(super) _digest: std::marker::PhantomData<H>,
}

impl<H> Node<'_, H> {
    pub(super) fn size(&self) -> u64 {
        match &self.content {
            Content::Directory { size, .. } => *size,
            Content::Inline { data, .. } => data.len() as u64,
            Content::External { size, .. } => *size,
            Content::Symlink { target, .. } => target.len() as u64,
            Content::NoData { .. } => 0,
        }
    }

    /// Bytes stored right after the inode and its xattrs.
    pub(super) fn inline_size(&self) -> usize {
        match &self.content {
            Content::Directory { tail, .. } => dirents_size(tail),
            Content::Inline { tail, .. } => *tail,
            Content::External { inline_chunks, .. } => 4 * inline_chunks,
            Content::Symlink { target, in_block } => {
                if *in_block {
                    0
                } else {
                    target.len()
                }
            }
            Content::NoData { .. } => 0,
        }
    }

    /// The data layout field and whether `u` is the data block address.
    pub(super) fn data_layout(&self) -> u16 {
        match &self.content {
            Content::Directory { tail, .. } if tail.is_empty() => format::LAYOUT_FLAT_PLAIN,
            Content::Directory { .. } => format::LAYOUT_FLAT_INLINE,
            Content::Inline { tail: 0, .. } => format::LAYOUT_FLAT_PLAIN,
            Content::Inline { .. } => format::LAYOUT_FLAT_INLINE,
            Content::External { .. } => format::LAYOUT_CHUNK_BASED,
            Content::Symlink { in_block: true, .. } => format::LAYOUT_FLAT_PLAIN,
            Content::Symlink { .. } => format::LAYOUT_FLAT_INLINE,
            Content::NoData { .. } => format::LAYOUT_FLAT_PLAIN,
        }
    }

    /// The C layout's compact-inode test: everything fits in 16/32 bits and
    /// the mtime equals the image's minimum, which the superblock stores.
    pub(super) fn fits_compact(&self, version: FormatVersion, min_mtime: (u64, u32)) -> bool {
        version.is_c_layout()
            && mtime_key(self.stat) == min_mtime
            && self.nlink <= u32::from(u16::MAX)
            && self.stat.uid <= u32::from(u16::MAX)
            && self.stat.gid <= u32::from(u16::MAX)
            && self.size() <= u64::from(u32::MAX)
    }

    pub(super) fn header_size(&self, version: FormatVersion, min_mtime: (u64, u32)) -> usize {
        if self.fits_compact(version, min_mtime) {
            size_of::<format::CompactInode>()
        } else {
            size_of::<format::ExtendedInode>()
        }
    }
}

pub(super) fn dirents_size(entries: &[Dirent<'_>]) -> usize {
    entries
        .iter()
        .map(|e| size_of::<format::Dirent>() + e.name.len())
        .sum()
}

/// Packs sorted entries into 4096-byte blocks; what is left stays inline
/// unless it is over half a block.
pub(super) fn directory_content(mut entries: Vec<Dirent<'_>>) -> Content<'_> {
    entries.sort_unstable_by(|a, b| a.name.cmp(b.name));
    let mut blocks = Vec::new();
    let mut tail = Vec::new();
    let mut used = 0;
    for entry in entries {
        let size = size_of::<format::Dirent>() + entry.name.len();
        if used + size > BLOCK_SIZE {
            blocks.push(std::mem::take(&mut tail));
            used = 0;
        }
        used += size;
        tail.push(entry);
    }
    if used > BLOCK_SIZE / 2 {
        blocks.push(std::mem::take(&mut tail));
        used = 0;
    }
    let size = (blocks.len() * BLOCK_SIZE + used) as u64;
    Content::Directory { blocks, tail, size }
}

/// The chunk size exponent the C tool picks for an external file: the
/// smallest power of two covering the file, between 4 KiB and 2^43.
pub(super) fn chunk_bits(size: u64) -> u32 {
    let bits = if size > 1 {
        64 - (size - 1).leading_zeros()
    } else {
        1
    };
    bits.clamp(
        format::BLOCK_BITS.into(),
        u32::from(format::BLOCK_BITS) + 31,
    )
}

pub(super) fn dir_type(content: &LeafContent<impl FsVerityDigest>) -> u16 {
    match content {
        LeafContent::Regular(_) => mode::S_IFREG,
        LeafContent::Symlink(_) => mode::S_IFLNK,
        LeafContent::BlockDevice(_) => mode::S_IFBLK,
        LeafContent::CharacterDevice(_) => mode::S_IFCHR,
        LeafContent::Fifo => mode::S_IFIFO,
        LeafContent::Socket => mode::S_IFSOCK,
    }
}

/// The 256 names `00`..`ff` of the C layout's root whiteout stubs.
static STUB_NAMES: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut names = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        names[i] = [HEX[i >> 4], HEX[i & 15]];
        i += 1;
    }
    names
};

/// Stubs copy the root's owner and mtime, and only its SELinux label.
pub(super) fn whiteout_stub_stat(root: &Stat) -> Stat {
    let mut xattrs = BTreeMap::new();
    if let Some(label) = root.xattrs.get(&b"security.selinux"[..]) {
        xattrs.insert(Box::from(&b"security.selinux"[..]), label.clone());
    }
    Stat {
        mode: Mode::new(0o644),
        uid: root.uid,
        gid: root.gid,
        mtime: root.mtime,
        xattrs,
    }
}

/// Builds the node list; see the module documentation.
pub(super) struct Collector<'a, H> {
    fs: &'a FileSystem<H>,
    version: FormatVersion,
    nlinks: Vec<u32>,
    nodes: Vec<Node<'a, H>>,
    /// Node of each leaf linked more than once, once it has one.
    linked: HashMap<LeafId, usize>,
}

pub(super) fn collect<'a, H: FsVerityDigest>(
    fs: &'a FileSystem<H>,
    version: FormatVersion,
    stub_stat: &'a Stat,
) -> Result<Vec<Node<'a, H>>, WriteError> {
    let mut collector = Collector {
        fs,
        version,
        nlinks: fs.nlinks(),
        nodes: Vec::new(),
        linked: HashMap::new(),
    };
    if version.is_c_layout() {
        collector.breadth_first(stub_stat)?;
        let opaque = &mut collector.nodes[0].xattrs;
        opaque.add(format::XATTR_OVERLAY_OPAQUE, b"y", version)?;
    } else {
        collector.depth_first(&fs.root, None)?;
    }
    Ok(collector.nodes)
}

impl<'a, H: FsVerityDigest> Collector<'a, H> {
    pub(super) fn push(
        &mut self,
        stat: &'a Stat,
        ifmt: u16,
        nlink: u32,
        content: Content<'a>,
        external: Option<&H>,
    ) -> Result<usize, WriteError> {
        let mut xattrs = InodeXattrs::default();
        if let Some(digest) = external {
            let header = format::MetacopyHeader {
                version: 0,
                len: (size_of::<format::MetacopyHeader>() + digest.as_ref().len()) as u8,
                flags: 0,
                digest_algo: H::ALGORITHM.kernel_id(),
            };
            let metacopy = [header.as_bytes(), digest.as_ref()].concat();
            xattrs.add(format::XATTR_OVERLAY_METACOPY, &metacopy, self.version)?;
            let redirect = format!("/{}", digest.object_pathname());
            xattrs.add(
                format::XATTR_OVERLAY_REDIRECT,
                redirect.as_bytes(),
                self.version,
            )?;
        }
        for (name, value) in &stat.xattrs {
            match name.strip_prefix(format::XATTR_OVERLAY_PREFIX) {
                Some(rest) => {
                    let escaped = [format::XATTR_OVERLAY_ESCAPED_PREFIX, rest].concat();
                    xattrs.add(&escaped, value, self.version)?;
                }
                None => xattrs.add(name, value, self.version)?,
            }
        }
        self.nodes.push(Node {
            stat,
            ifmt,
            nlink,
            content,
            xattrs,
            _digest: std::marker::PhantomData,
        });
        Ok(self.nodes.len() - 1)
    }

    /// A directory's node, with its entries filled in later.
    pub(super) fn push_dir(&mut self, dir: &'a Directory) -> Result<usize, WriteError> {
        let nlink = 2 + dir.subdir_count() as u32;
        let placeholder = Content::NoData { rdev: 0 };
        self.push(&dir.stat, mode::S_IFDIR, nlink, placeholder, None)
    }

    /// The node of a leaf, made on first use; hardlinks share it.
    pub(super) fn leaf_node(
        &mut self,
        id: LeafId,
        escape_whiteout: bool,
    ) -> Result<usize, WriteError> {
        let nlink = self.nlinks[id.0];
        if let Some(&node) = self.linked.get(&id) {
            return Ok(node);
        }
        let leaf = self.fs.leaf(id);
        let c_layout = self.version.is_c_layout();
        let mut ifmt = dir_type(&leaf.content);
        let mut external = None;
        let content = match &leaf.content {
            LeafContent::Regular(RegularFile::Inline(data)) => {
                // The C layout keeps whole blocks out of the inode, and a
                // tail over half a block becomes one more block.
                let (mut blocks, mut tail) = (0, data.len());
                if c_layout {
                    (blocks, tail) = (data.len() / BLOCK_SIZE, data.len() % BLOCK_SIZE);
                    if tail > BLOCK_SIZE / 2 {
                        (blocks, tail) = (blocks + 1, 0);
                    }
                }
                Content::Inline { data, blocks, tail }
            }
            LeafContent::Regular(RegularFile::External { digest, size }) => {
                external = Some(digest);
                let (chunk_format, inline_chunks) = if c_layout {
                    let bits = chunk_bits(*size);
                    (bits - 12, size.div_ceil(1 << bits) as usize)
                } else {
                    (31, 1)
                };
                Content::External {
                    size: *size,
                    chunk_format,
                    inline_chunks,
                    in_block: false,
                }
            }
            LeafContent::Symlink(target) => Content::Symlink {
                target,
                in_block: false,
            },
            LeafContent::BlockDevice(rdev) | LeafContent::CharacterDevice(rdev) => {
                let rdev = u32::try_from(*rdev).map_err(|_| WriteError::DeviceNumber(*rdev))?;
                Content::NoData { rdev }
            }
            LeafContent::Fifo | LeafContent::Socket => Content::NoData { rdev: 0 },
        };
        if escape_whiteout {
            ifmt = mode::S_IFREG;
        }
        let node = self.push(&leaf.stat, ifmt, nlink, content, external)?;
        if escape_whiteout {
            // A user whiteout becomes an empty file overlayfs shows as a
            // whiteout in the mounted image.
            let xattrs = &mut self.nodes[node].xattrs;
            xattrs.add(b"trusted.overlay.overlay.whiteout", b"", self.version)?;
            xattrs.add(b"user.overlay.whiteout", b"", self.version)?;
        }
        if nlink > 1 {
            self.linked.insert(id, node);
        }
        Ok(node)
    }

    pub(super) fn dirent(&self, name: &'a [u8], node: usize) -> Dirent<'a> {
        Dirent {
            name,
            target: Target::Node(node),
            file_type: format::file_type_of_mode(self.nodes[node].ifmt)
                .expect("nodes have a valid type"),
        }
    }

    /// V2: depth-first pre-order; a directory's node precedes its children.
    pub(super) fn depth_first(
        &mut self,
        dir: &'a Directory,
        parent: Option<usize>,
    ) -> Result<usize, WriteError> {
        let me = self.push_dir(dir)?;
        let parent = parent.unwrap_or(me);
        let mut entries = vec![self.dirent(b".", me), self.dirent(b"..", parent)];
        for (name, inode) in &dir.entries {
            let child = match inode {
                Inode::Directory(sub) => self.depth_first(sub, Some(me))?,
                Inode::Leaf(id) => self.leaf_node(*id, false)?,
            };
            entries.push(self.dirent(name.as_bytes(), child));
        }
        self.nodes[me].content = directory_content(entries);
        Ok(me)
    }

    /// The C layout: breadth-first, as `mkcomposefs` numbers inodes.
    pub(super) fn breadth_first(&mut self, stub_stat: &'a Stat) -> Result<(), WriteError> {
        let fs = self.fs;
        // A hardlinked leaf gets its node where it first appears in
        // depth-first order (the order of the dumpfile the C tool reads),
        // which breadth-first order may reach after other links to it.
        let first_seen = first_links_depth_first(&fs.root, &self.nlinks);
        let root = self.push_dir(&fs.root)?;
        let mut queue = VecDeque::from([(&fs.root, root, root)]);
        let mut pending: Vec<(usize, Vec<Dirent<'a>>)> = Vec::new();

        while let Some((dir, me, parent)) = queue.pop_front() {
            let mut entries = vec![self.dirent(b".", me), self.dirent(b"..", parent)];
            let mut has_whiteout = false;
            for (name, inode) in entries_with_stubs(dir, me == root) {
                let Some(inode) = inode else {
                    let stub = Content::NoData { rdev: 0 };
                    let node = self.push(stub_stat, mode::S_IFCHR, 1, stub, None)?;
                    entries.push(self.dirent(name, node));
                    continue;
                };
                match inode {
                    Inode::Directory(sub) => {
                        let child = self.push_dir(sub)?;
                        queue.push_back((sub, child, me));
                        entries.push(self.dirent(name, child));
                    }
                    Inode::Leaf(id) => {
                        let first_here = self.nlinks[id.0] <= 1
                            || first_seen.get(id).is_some_and(|&d| std::ptr::eq(d, dir));
                        let leaf = fs.leaf(*id);
                        let escape = leaf.content.is_whiteout()
                            && !(me == root && looks_like_stub(name, &leaf.stat, stub_stat));
                        if first_here || self.linked.contains_key(id) {
                            let child = self.leaf_node(*id, escape)?;
                            has_whiteout |= escape;
                            entries.push(self.dirent(name, child));
                        } else {
                            entries.push(Dirent {
                                name,
                                target: Target::Leaf(*id),
                                file_type: format::file_type::REGULAR,
                            });
                        }
                    }
                }
            }
            if has_whiteout {
                let version = self.version;
                let xattrs = &mut self.nodes[me].xattrs;
                xattrs.add(b"trusted.overlay.overlay.whiteouts", b"", version)?;
                xattrs.add(b"user.overlay.whiteouts", b"", version)?;
                if version == FormatVersion::V1 {
                    xattrs.add(b"trusted.overlay.overlay.opaque", b"x", version)?;
                    xattrs.add(b"user.overlay.opaque", b"x", version)?;
                }
            }
            pending.push((me, entries));
        }

        for (me, mut entries) in pending {
            for entry in &mut entries {
                if let Target::Leaf(id) = entry.target {
                    let node = *self
                        .linked
                        .get(&id)
                        .expect("every leaf gets a node where it is first linked");
                    *entry = self.dirent(entry.name, node);
                }
            }
            self.nodes[me].content = directory_content(entries);
        }
        Ok(())
    }
}

/// For each leaf linked more than once, the directory of its first link
/// in depth-first, name-sorted order.
pub(super) fn first_links_depth_first<'a>(
    root: &'a Directory,
    nlinks: &[u32],
) -> HashMap<LeafId, &'a Directory> {
    let mut first = HashMap::new();
    // An explicit stack of entry iterators: depth is not bounded by the
    // thread's stack.
    let mut stack = vec![(root, root.entries.values())];
    while let Some((dir, entries)) = stack.last_mut() {
        let dir: &'a Directory = dir;
        match entries.next() {
            None => {
                stack.pop();
            }
            Some(Inode::Directory(sub)) => stack.push((sub, sub.entries.values())),
            Some(Inode::Leaf(id)) => {
                if nlinks[id.0] > 1 {
                    first.entry(*id).or_insert(dir);
                }
            }
        }
    }
    first
}

/// A directory's entries in name order; in the root, the names `00`..`ff`
/// it lacks are merged in as `None`: the C layout's whiteout stubs, which
/// take inode numbers in that order.
pub(super) fn entries_with_stubs(
    dir: &Directory,
    with_stubs: bool,
) -> Vec<(&[u8], Option<&Inode>)> {
    let mut entries: Vec<(&[u8], Option<&Inode>)> = dir
        .entries
        .iter()
        .map(|(name, inode)| (name.as_bytes(), Some(inode)))
        .collect();
    if with_stubs {
        let real = entries.len();
        for stub in &STUB_NAMES {
            let name = &stub[..];
            if entries[..real]
                .binary_search_by(|(n, _)| n.cmp(&name))
                .is_err()
            {
                entries.push((name, None));
            }
        }
        entries.sort_by(|a, b| a.0.cmp(b.0));
    }
    entries
}

/// Whether a root entry would pass for one of the writer's own whiteout
/// stubs; the reference does not escape those, so neither do we.
pub(super) fn looks_like_stub(name: &[u8], stat: &Stat, stub: &Stat) -> bool {
    name.len() == 2 && name.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) && stat == stub
}
