//! The composefs EROFS writer.
//!
//! A sealed boot image names its root filesystem by the fs-verity digest of
//! this writer's output, so for the same tree we must produce exactly the
//! bytes composefs-rs 0.9 produces (and, for V0/V1, the C `mkcomposefs`).
//! Every layout rule below is there for that reason, including the odd ones
//! (padding, ordering and promotion rules), each noted where it is applied.
//!
//! The work is in three steps:
//! 1. [`collect`]: number the inodes (breadth-first for the C layout,
//!    depth-first pre-order for V2), build directory entry lists, attach
//!    the xattrs the overlay needs, and, for the C layout, add the 256
//!    whiteout stubs in the root and escape user whiteouts;
//! 2. plan: share repeated xattrs, pick compact or extended inodes, move
//!    large inline tails to data blocks;
//! 3. [`emit`] twice: once into a byte counter to learn every offset, once
//!    into the output with those offsets filled in.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, VecDeque};

use xxhash_rust::xxh32::xxh32;
use zerocopy::IntoBytes;

use crate::digest::FsVerityDigest;
use crate::format::{self, mode, FormatVersion, BLOCK_SIZE, INODE_SLOT};
use crate::tree::{Directory, FileSystem, Inode, LeafContent, LeafId, Mode, RegularFile, Stat};

/// A tree the writer cannot represent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The tree's leaf table and its entries disagree.
    #[error("invalid tree: {0}")]
    Tree(#[from] crate::tree::TreeError),
    /// An overlay whiteout linked from several entries.
    #[error("whiteout (leaf {0}) has more than one link")]
    HardlinkedWhiteout(usize),
    /// A device number wider than EROFS's 32 bits.
    #[error("device number {0:#x} does not fit in 32 bits")]
    DeviceNumber(u64),
    /// An xattr name or value beyond EROFS's limits.
    #[error("xattr {name:?}: {what}")]
    Xattr {
        /// The xattr's name.
        name: String,
        /// What is wrong with it.
        what: &'static str,
    },
    /// An inode with more shared xattrs than its header can count.
    #[error("an inode has {0} shared xattrs; at most 255 fit")]
    TooManySharedXattrs(usize),
    /// The image would exceed what 32-bit block addresses reach.
    #[error("image too large for 32-bit block addresses")]
    TooLarge,
}

/// Writes the image of `fs` in format `version`.
pub fn mkfs<H: FsVerityDigest>(
    fs: &FileSystem<H>,
    version: FormatVersion,
) -> Result<Vec<u8>, WriteError> {
    validate(fs)?;
    let stub_stat = whiteout_stub_stat(&fs.root.stat);
    let mut nodes = collect(fs, version, &stub_stat)?;
    let header_flags = acl_flag(&nodes, version);
    let shared = share_xattrs(&mut nodes, version)?;
    let min_mtime = nodes
        .iter()
        .map(|n| mtime_key(n.stat))
        .min()
        .unwrap_or((0, 0));
    let plan = Plan {
        version,
        min_mtime,
        header_flags,
        nodes,
        shared,
    };
    let plan = plan.promote_large_tails();

    let mut counter = Counter::default();
    let layout = emit(&plan, &mut counter, None)?;
    let mut image = Vec::with_capacity(layout.end);
    let second = emit(&plan, &mut image, Some(&layout))?;
    debug_assert_eq!(second.end, layout.end, "both passes agree on the size");
    Ok(image)
}

fn validate<H: FsVerityDigest>(fs: &FileSystem<H>) -> Result<(), WriteError> {
    fs.check()?;
    let nlinks = fs.nlinks();
    for (id, leaf) in fs.leaves.iter().enumerate() {
        match leaf.content {
            LeafContent::CharacterDevice(0) if nlinks[id] > 1 => {
                return Err(WriteError::HardlinkedWhiteout(id));
            }
            LeafContent::CharacterDevice(rdev) | LeafContent::BlockDevice(rdev)
                if u32::try_from(rdev).is_err() =>
            {
                return Err(WriteError::DeviceNumber(rdev));
            }
            _ => {}
        }
    }
    Ok(())
}

/// mtimes compare as the reference compares them: seconds reinterpreted as
/// unsigned (a pre-1970 time sorts last), then nanoseconds.
fn mtime_key(stat: &Stat) -> (u64, u32) {
    (stat.mtime.sec as u64, stat.mtime.nsec)
}

// ---------------------------------------------------------------------------
// xattrs

/// One xattr as EROFS stores it: a prefix index and the rest of the name.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Xattr {
    prefix: u8,
    suffix: Box<[u8]>,
    value: Box<[u8]>,
}

impl Xattr {
    fn new(name: &[u8], value: &[u8], version: FormatVersion) -> Result<Self, WriteError> {
        let error = |what| WriteError::Xattr {
            name: String::from_utf8_lossy(name).into_owned(),
            what,
        };
        // The longest prefix wins; scanning from the highest index down finds
        // it because no prefix is a prefix of a later one. The C layout has
        // no `lustre.` prefix (index 5).
        let (prefix, suffix) = (1..format::XATTR_PREFIXES.len())
            .rev()
            .filter(|&i| !(version.is_c_layout() && i == 5))
            .find_map(|i| {
                name.strip_prefix(format::XATTR_PREFIXES[i])
                    .map(|s| (i as u8, s))
            })
            .unwrap_or((0, name));
        if suffix.len() > usize::from(u8::MAX) {
            return Err(error("name is longer than 255 bytes after its prefix"));
        }
        if value.len() > usize::from(u16::MAX) {
            return Err(error("value is longer than 65535 bytes"));
        }
        Ok(Self {
            prefix,
            suffix: suffix.into(),
            value: value.into(),
        })
    }

    /// The C tool's order: full name bytes, then value length, then value.
    fn cmp_c(&self, other: &Self) -> Ordering {
        fn name(x: &Xattr) -> impl Iterator<Item = u8> + '_ {
            let prefix = format::XATTR_PREFIXES[usize::from(x.prefix)];
            prefix.iter().chain(x.suffix.iter()).copied()
        }
        name(self)
            .cmp(name(other))
            .then(self.value.len().cmp(&other.value.len()))
            .then_with(|| self.value.cmp(&other.value))
    }

    /// Bit of the inode's name bloom filter.
    fn filter_bit(&self) -> u32 {
        1 << (xxh32(
            &self.suffix,
            format::XATTR_FILTER_SEED + u32::from(self.prefix),
        ) % 32)
    }

    fn entry_size(&self) -> usize {
        (4 + self.suffix.len() + self.value.len()).next_multiple_of(4)
    }

    fn emit(&self, out: &mut impl Sink) {
        out.write(
            format::XattrEntry {
                name_len: self.suffix.len() as u8,
                name_index: self.prefix,
                value_size: (self.value.len() as u16).into(),
            }
            .as_bytes(),
        );
        out.write(&self.suffix);
        out.write(&self.value);
        out.pad_to(4);
    }
}

/// An inode's xattrs: local entries and references into the shared table.
#[derive(Default)]
struct InodeXattrs {
    local: Vec<Xattr>,
    shared: Vec<usize>,
    /// Bloom filter over every name, local or shared.
    filter: u32,
}

impl InodeXattrs {
    fn add(&mut self, name: &[u8], value: &[u8], version: FormatVersion) -> Result<(), WriteError> {
        let xattr = Xattr::new(name, value, version)?;
        self.filter |= xattr.filter_bit();
        self.local.push(xattr);
        Ok(())
    }

    /// Bytes of the inode's xattr area: 0 when it has none.
    fn size(&self) -> usize {
        if self.filter == 0 {
            return 0;
        }
        size_of::<format::InodeXattrHeader>()
            + 4 * self.shared.len()
            + self.local.iter().map(Xattr::entry_size).sum::<usize>()
    }

    fn icount(&self) -> u16 {
        match self.size() {
            0 => 0,
            n => (1 + (n - size_of::<format::InodeXattrHeader>()) / 4) as u16,
        }
    }
}

/// Header flag of the C layout: set when any inode has a POSIX ACL.
fn acl_flag<H>(nodes: &[Node<'_, H>], version: FormatVersion) -> u32 {
    let has_acl = nodes
        .iter()
        .flat_map(|n| &n.xattrs.local)
        .any(|x| x.prefix == 2 || x.prefix == 3);
    if version.is_c_layout() && has_acl {
        format::COMPOSEFS_FLAG_HAS_ACL
    } else {
        0
    }
}

/// Moves every (name, value) pair used by more than one inode into the
/// shared table, and returns the table in on-disk order.
///
/// The C layout sorts each inode's xattrs and the table by the C tool's
/// order and writes the table backwards; V2 keeps insertion order locally
/// and writes the table in (prefix, suffix, value) order. In both, an
/// entry's index is its position in the written table.
fn share_xattrs<H>(
    nodes: &mut [Node<'_, H>],
    version: FormatVersion,
) -> Result<Vec<Xattr>, WriteError> {
    if version.is_c_layout() {
        for node in nodes.iter_mut() {
            node.xattrs.local.sort_by(Xattr::cmp_c);
        }
    }
    let mut uses: BTreeMap<&Xattr, usize> = BTreeMap::new();
    for xattr in nodes.iter().flat_map(|n| &n.xattrs.local) {
        *uses.entry(xattr).or_default() += 1;
    }
    let mut table: Vec<Xattr> = uses
        .into_iter()
        .filter(|&(_, n)| n > 1)
        .map(|(x, _)| x.clone())
        .collect();
    if version.is_c_layout() {
        table.sort_by(|a, b| Xattr::cmp_c(b, a));
    }
    let index: HashMap<&Xattr, usize> = table.iter().enumerate().map(|(i, x)| (x, i)).collect();
    for node in nodes.iter_mut() {
        let xattrs = &mut node.xattrs;
        let mut local = Vec::with_capacity(xattrs.local.len());
        for xattr in std::mem::take(&mut xattrs.local) {
            match index.get(&xattr) {
                Some(&i) => xattrs.shared.push(i),
                None => local.push(xattr),
            }
        }
        xattrs.local = local;
        if xattrs.shared.len() > usize::from(u8::MAX) {
            return Err(WriteError::TooManySharedXattrs(xattrs.shared.len()));
        }
    }
    Ok(table)
}

// ---------------------------------------------------------------------------
// Inodes

/// A directory entry; `target` is a node index once resolved.
#[derive(Clone, Copy)]
struct Dirent<'a> {
    name: &'a [u8],
    target: Target,
    file_type: u8,
}

#[derive(Clone, Copy)]
enum Target {
    Node(usize),
    /// A hardlink whose first (depth-first) occurrence has no node yet.
    Leaf(LeafId),
}

impl Target {
    fn node(self) -> usize {
        match self {
            Self::Node(i) => i,
            Self::Leaf(_) => unreachable!("hardlinks are resolved after collection"),
        }
    }
}

/// What an inode holds, with everything its layout depends on.
enum Content<'a> {
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

struct Node<'a, H> {
    stat: &'a Stat,
    /// `S_IFMT` bits.
    ifmt: u16,
    nlink: u32,
    content: Content<'a>,
    xattrs: InodeXattrs,
    _digest: std::marker::PhantomData<H>,
}

impl<H> Node<'_, H> {
    fn size(&self) -> u64 {
        match &self.content {
            Content::Directory { size, .. } => *size,
            Content::Inline { data, .. } => data.len() as u64,
            Content::External { size, .. } => *size,
            Content::Symlink { target, .. } => target.len() as u64,
            Content::NoData { .. } => 0,
        }
    }

    /// Bytes stored right after the inode and its xattrs.
    fn inline_size(&self) -> usize {
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
    fn data_layout(&self) -> u16 {
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
    fn fits_compact(&self, version: FormatVersion, min_mtime: (u64, u32)) -> bool {
        version.is_c_layout()
            && mtime_key(self.stat) == min_mtime
            && self.nlink <= u32::from(u16::MAX)
            && self.stat.uid <= u32::from(u16::MAX)
            && self.stat.gid <= u32::from(u16::MAX)
            && self.size() <= u64::from(u32::MAX)
    }

    fn header_size(&self, version: FormatVersion, min_mtime: (u64, u32)) -> usize {
        if self.fits_compact(version, min_mtime) {
            size_of::<format::CompactInode>()
        } else {
            size_of::<format::ExtendedInode>()
        }
    }
}

fn dirents_size(entries: &[Dirent<'_>]) -> usize {
    entries
        .iter()
        .map(|e| size_of::<format::Dirent>() + e.name.len())
        .sum()
}

/// Packs sorted entries into 4096-byte blocks; what is left stays inline
/// unless it is over half a block.
fn directory_content(mut entries: Vec<Dirent<'_>>) -> Content<'_> {
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
fn chunk_bits(size: u64) -> u32 {
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

fn dir_type(content: &LeafContent<impl FsVerityDigest>) -> u16 {
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
fn whiteout_stub_stat(root: &Stat) -> Stat {
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
struct Collector<'a, H> {
    fs: &'a FileSystem<H>,
    version: FormatVersion,
    nlinks: Vec<u32>,
    nodes: Vec<Node<'a, H>>,
    /// Node of each leaf linked more than once, once it has one.
    linked: HashMap<LeafId, usize>,
}

fn collect<'a, H: FsVerityDigest>(
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
    fn push(
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
    fn push_dir(&mut self, dir: &'a Directory) -> Result<usize, WriteError> {
        let nlink = 2 + dir.subdir_count() as u32;
        let placeholder = Content::NoData { rdev: 0 };
        self.push(&dir.stat, mode::S_IFDIR, nlink, placeholder, None)
    }

    /// The node of a leaf, made on first use; hardlinks share it.
    fn leaf_node(&mut self, id: LeafId, escape_whiteout: bool) -> Result<usize, WriteError> {
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

    fn dirent(&self, name: &'a [u8], node: usize) -> Dirent<'a> {
        Dirent {
            name,
            target: Target::Node(node),
            file_type: format::file_type_of_mode(self.nodes[node].ifmt)
                .expect("nodes have a valid type"),
        }
    }

    /// V2: depth-first pre-order; a directory's node precedes its children.
    fn depth_first(
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
    fn breadth_first(&mut self, stub_stat: &'a Stat) -> Result<(), WriteError> {
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
fn first_links_depth_first<'a>(
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
fn entries_with_stubs(dir: &Directory, with_stubs: bool) -> Vec<(&[u8], Option<&Inode>)> {
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
fn looks_like_stub(name: &[u8], stat: &Stat, stub: &Stat) -> bool {
    name.len() == 2 && name.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) && stat == stub
}

// ---------------------------------------------------------------------------
// Planning

struct Plan<'a, H> {
    version: FormatVersion,
    min_mtime: (u64, u32),
    header_flags: u32,
    nodes: Vec<Node<'a, H>>,
    shared: Vec<Xattr>,
}

impl<H> Plan<'_, H> {
    /// The C layout moves a symlink target that would fill the inode's
    /// block, and a chunk index that does not fit, into a data block.
    fn promote_large_tails(mut self) -> Self {
        if !self.version.is_c_layout() {
            return self;
        }
        let (version, min_mtime) = (self.version, self.min_mtime);
        for node in &mut self.nodes {
            let header = node.header_size(version, min_mtime);
            let xattrs = node.xattrs.size();
            match &mut node.content {
                Content::Symlink { target, in_block }
                    if !target.is_empty() && header + xattrs + target.len() >= BLOCK_SIZE =>
                {
                    *in_block = true;
                }
                Content::External {
                    inline_chunks,
                    in_block,
                    ..
                } if *inline_chunks > 0
                    && 4 * *inline_chunks + xattrs % INODE_SLOT > BLOCK_SIZE =>
                {
                    *inline_chunks = 0;
                    *in_block = true;
                }
                _ => {}
            }
        }
        self
    }
}

// ---------------------------------------------------------------------------
// Emission

/// Where bytes go: a counter in the first pass, the image in the second.
trait Sink {
    fn write(&mut self, bytes: &[u8]);
    fn zeros(&mut self, n: usize);
    fn position(&self) -> usize;

    fn pad_to(&mut self, alignment: usize) {
        let pos = self.position();
        self.zeros(pos.next_multiple_of(alignment) - pos);
    }
}

#[derive(Default)]
struct Counter(usize);

impl Sink for Counter {
    fn write(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
    fn zeros(&mut self, n: usize) {
        self.0 += n;
    }
    fn position(&self) -> usize {
        self.0
    }
}

impl Sink for Vec<u8> {
    fn write(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    fn zeros(&mut self, n: usize) {
        self.resize(self.len() + n, 0);
    }
    fn position(&self) -> usize {
        self.len()
    }
}

/// Offsets learnt in the first pass.
#[derive(Default)]
struct Layout {
    inodes: Vec<usize>,
    inodes_end: usize,
    shared: Vec<usize>,
    blocks: Vec<usize>,
    end: usize,
}

impl Layout {
    fn nid(&self, node: usize) -> u64 {
        (self.inodes[node] / INODE_SLOT) as u64
    }
}

/// Bytes from `pos` to the next block boundary; `None` if on one.
fn to_block_boundary(pos: usize) -> Option<usize> {
    match pos % BLOCK_SIZE {
        0 => None,
        r => Some(BLOCK_SIZE - r),
    }
}

/// Writes the image. With `known = None` it only measures: every value
/// that depends on a later offset is written as 0, which has the same size.
fn emit<H: FsVerityDigest>(
    plan: &Plan<'_, H>,
    out: &mut impl Sink,
    known: Option<&Layout>,
) -> Result<Layout, WriteError> {
    let version = plan.version;
    let mut layout = Layout::default();
    let c_layout = version.is_c_layout();
    let get = |f: &dyn Fn(&Layout) -> usize| known.map_or(0, f);

    let (build_time, build_time_nsec) = if c_layout { plan.min_mtime } else { (0, 0) };
    let header = format::ComposefsHeader {
        magic: format::COMPOSEFS_MAGIC.into(),
        version: format::COMPOSEFS_HEADER_VERSION.into(),
        flags: plan.header_flags.into(),
        composefs_version: version.header_version().into(),
        unused: Default::default(),
    };
    out.write(header.as_bytes());
    out.pad_to(format::SUPERBLOCK_OFFSET);
    let blocks = u32::try_from(get(&|l| l.end) / BLOCK_SIZE).map_err(|_| WriteError::TooLarge)?;
    let superblock = format::Superblock {
        magic: format::EROFS_MAGIC.into(),
        feature_compat: (format::FEATURE_COMPAT_MTIME | format::FEATURE_COMPAT_XATTR_FILTER).into(),
        blkszbits: format::BLOCK_BITS,
        root_nid: (get(&|l| l.nid(0) as usize) as u16).into(),
        inos: (plan.nodes.len() as u64).into(),
        build_time: build_time.into(),
        build_time_nsec: build_time_nsec.into(),
        blocks: blocks.into(),
        xattr_blkaddr: if c_layout {
            (get(&|l| l.inodes_end) / BLOCK_SIZE) as u32
        } else {
            0
        }
        .into(),
        ..Default::default()
    };
    out.write(superblock.as_bytes());

    for (index, node) in plan.nodes.iter().enumerate() {
        let pos = emit_inode(plan, out, known, index, node)?;
        layout.inodes.push(pos);
    }
    out.pad_to(INODE_SLOT);
    layout.inodes_end = out.position();

    for xattr in &plan.shared {
        layout.shared.push(out.position());
        xattr.emit(out);
    }
    out.pad_to(BLOCK_SIZE);

    for node in &plan.nodes {
        layout.blocks.push(out.position());
        emit_blocks(node, out, known);
    }
    layout.end = out.position();
    Ok(layout)
}

/// Writes one inode with the padding before it; returns its offset.
fn emit_inode<H: FsVerityDigest>(
    plan: &Plan<'_, H>,
    out: &mut impl Sink,
    known: Option<&Layout>,
    index: usize,
    node: &Node<'_, H>,
) -> Result<usize, WriteError> {
    let version = plan.version;
    let c_layout = version.is_c_layout();
    let compact = node.fits_compact(version, plan.min_mtime);
    let header_size = node.header_size(version, plan.min_mtime);
    let meta_size = header_size + node.xattrs.size();
    let size = node.size();
    let layout_bits = node.data_layout();

    out.pad_to(INODE_SLOT);
    // Padding rules that keep inline data from crossing a block boundary
    // (older kernels reject that), each as the reference applies it.
    let pos = out.position();
    match &node.content {
        // The check uses the target's length as if it were still inline.
        Content::Symlink { in_block: true, .. }
            if c_layout
                && pos / BLOCK_SIZE != (pos + meta_size + size as usize - 1) / BLOCK_SIZE =>
        {
            out.zeros(to_block_boundary(pos).unwrap_or(0));
        }
        Content::Symlink { in_block: true, .. } if c_layout => {}
        Content::External { in_block: true, .. } if c_layout => {
            out.zeros(to_block_boundary(pos).unwrap_or(0));
        }
        _ if c_layout
            && (layout_bits == format::LAYOUT_FLAT_INLINE
                || layout_bits == format::LAYOUT_CHUNK_BASED) =>
        {
            let inline = match node.content {
                Content::External { .. } => node.inline_size(),
                _ => (size % BLOCK_SIZE as u64) as usize,
            };
            if matches!(node.content, Content::Symlink { .. }) {
                if pos % BLOCK_SIZE + meta_size + inline > BLOCK_SIZE {
                    out.zeros(to_block_boundary(pos).unwrap_or(0));
                }
            } else if let Some(room) = to_block_boundary(pos + meta_size) {
                if room < inline {
                    out.zeros(room.next_multiple_of(INODE_SLOT));
                }
            }
        }
        _ if layout_bits == format::LAYOUT_FLAT_INLINE => {
            let start = pos + meta_size;
            let end = start + (size % BLOCK_SIZE as u64) as usize;
            if (start - 1) / BLOCK_SIZE != end / BLOCK_SIZE {
                out.zeros(BLOCK_SIZE - (start - 1) % BLOCK_SIZE);
                out.pad_to(INODE_SLOT);
            }
        }
        _ => {}
    }
    let pos = out.position();

    let block_addr = || known.map_or(0, |l| (l.blocks[index] / BLOCK_SIZE) as u32);
    let u = match &node.content {
        Content::Directory { blocks, .. } if !blocks.is_empty() => block_addr(),
        Content::Directory { .. } => 0,
        Content::Inline { blocks, .. } if *blocks > 0 => block_addr(),
        Content::Inline { .. } => 0,
        Content::External {
            chunk_format,
            in_block,
            ..
        } => {
            if *in_block {
                (block_addr() & 0xffff_0000) | chunk_format
            } else {
                *chunk_format
            }
        }
        Content::Symlink { in_block: true, .. } => block_addr(),
        Content::Symlink { .. } => 0,
        Content::NoData { rdev } => *rdev,
    };
    let mode = node.ifmt | node.stat.mode.bits();
    let ino = if c_layout {
        index as u32
    } else {
        (pos / INODE_SLOT) as u32
    };
    if compact {
        let inode = format::CompactInode {
            format: layout_bits.into(),
            xattr_icount: node.xattrs.icount().into(),
            mode: mode.into(),
            nlink: (node.nlink as u16).into(),
            size: (size as u32).into(),
            reserved: 0.into(),
            u: u.into(),
            ino: ino.into(),
            uid: (node.stat.uid as u16).into(),
            gid: (node.stat.gid as u16).into(),
            reserved2: [0; 4],
        };
        out.write(inode.as_bytes());
    } else {
        let inode = format::ExtendedInode {
            format: (format::INODE_LAYOUT_EXTENDED | layout_bits).into(),
            xattr_icount: node.xattrs.icount().into(),
            mode: mode.into(),
            reserved: 0.into(),
            size: size.into(),
            u: u.into(),
            ino: ino.into(),
            uid: node.stat.uid.into(),
            gid: node.stat.gid.into(),
            mtime: (node.stat.mtime.sec as u64).into(),
            mtime_nsec: if c_layout { node.stat.mtime.nsec } else { 0 }.into(),
            nlink: node.nlink.into(),
            reserved2: [0; 16],
        };
        out.write(inode.as_bytes());
    }
    emit_xattrs(plan, out, known, &node.xattrs);

    match &node.content {
        Content::Directory { tail, .. } => emit_dirents(out, known, tail),
        Content::Inline { data, tail, .. } => out.write(&data[data.len() - tail..]),
        Content::External { inline_chunks, .. } => {
            for _ in 0..*inline_chunks {
                out.write(&u32::MAX.to_le_bytes());
            }
        }
        Content::Symlink {
            target,
            in_block: false,
        } => out.write(target),
        Content::Symlink { .. } | Content::NoData { .. } => {}
    }
    out.pad_to(INODE_SLOT);
    Ok(pos)
}

fn emit_xattrs<H>(
    plan: &Plan<'_, H>,
    out: &mut impl Sink,
    known: Option<&Layout>,
    xattrs: &InodeXattrs,
) {
    if xattrs.filter == 0 {
        return;
    }
    let header = format::InodeXattrHeader {
        name_filter: (!xattrs.filter).into(),
        shared_count: xattrs.shared.len() as u8,
        reserved: [0; 7],
    };
    out.write(header.as_bytes());
    for &index in &xattrs.shared {
        // The C layout counts from the start of the block holding the end
        // of the inode table (`xattr_blkaddr`), V2 from the image start.
        let reference = known.map_or(0, |l| {
            let offset = l.shared[index];
            if plan.version.is_c_layout() {
                (l.inodes_end % BLOCK_SIZE + (offset - l.inodes_end)) / 4
            } else {
                offset / 4
            }
        });
        out.write(&(reference as u32).to_le_bytes());
    }
    for xattr in &xattrs.local {
        xattr.emit(out);
    }
}

fn emit_dirents(out: &mut impl Sink, known: Option<&Layout>, entries: &[Dirent<'_>]) {
    let mut name_offset = size_of::<format::Dirent>() * entries.len();
    for entry in entries {
        let dirent = format::Dirent {
            nid: known.map_or(0, |l| l.nid(entry.target.node())).into(),
            name_offset: (name_offset as u16).into(),
            file_type: entry.file_type,
            reserved: 0,
        };
        out.write(dirent.as_bytes());
        name_offset += entry.name.len();
    }
    for entry in entries {
        out.write(entry.name);
    }
}

fn emit_blocks<H>(node: &Node<'_, H>, out: &mut impl Sink, known: Option<&Layout>) {
    match &node.content {
        Content::Directory { blocks, .. } => {
            for block in blocks {
                emit_dirents(out, known, block);
                out.pad_to(BLOCK_SIZE);
            }
        }
        Content::Inline { data, blocks, .. } if *blocks > 0 => {
            out.write(&data[..(blocks * BLOCK_SIZE).min(data.len())]);
            out.pad_to(BLOCK_SIZE);
        }
        Content::External { in_block: true, .. } => {
            for _ in 0..BLOCK_SIZE / 4 {
                out.write(&u32::MAX.to_le_bytes());
            }
        }
        Content::Symlink {
            target,
            in_block: true,
        } => {
            out.write(&target[..target.len().min(BLOCK_SIZE)]);
            out.pad_to(BLOCK_SIZE);
        }
        _ => {}
    }
}
