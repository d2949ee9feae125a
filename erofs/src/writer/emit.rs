//! Writing the image: one function run twice, first into a byte counter
//! to learn every offset, then into the output with those offsets known.
//! Sharing the code makes it impossible for the passes to disagree on
//! where anything is.

use zerocopy::IntoBytes;

use super::inodes::{Content, Dirent, Node};
use super::xattrs::InodeXattrs;
use super::{Plan, WriteError};
use crate::digest::FsVerityDigest;
use crate::format::{self, BLOCK_SIZE, INODE_SLOT};

/// Where bytes go: a counter in the first pass, the image in the second.
pub(super) trait Sink {
    fn write(&mut self, bytes: &[u8]);
    fn zeros(&mut self, n: usize);
    fn position(&self) -> usize;

    fn pad_to(&mut self, alignment: usize) {
        let pos = self.position();
        self.zeros(pos.next_multiple_of(alignment) - pos);
    }
}

#[derive(Default)]
pub(super) struct Counter(usize);

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
pub(super) struct Layout {
    pub(super) inodes: Vec<usize>,
    pub(super) inodes_end: usize,
    pub(super) shared: Vec<usize>,
    pub(super) blocks: Vec<usize>,
    pub(super) end: usize,
}

impl Layout {
    pub(super) fn nid(&self, node: usize) -> u64 {
        (self.inodes[node] / INODE_SLOT) as u64
    }
}

/// Bytes from `pos` to the next block boundary; `None` if on one.
pub(super) fn to_block_boundary(pos: usize) -> Option<usize> {
    match pos % BLOCK_SIZE {
        0 => None,
        r => Some(BLOCK_SIZE - r),
    }
}

/// Writes the image. With `known = None` it only measures: every value
/// that depends on a later offset is written as 0, which has the same size.
pub(super) fn emit<H: FsVerityDigest>(
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
pub(super) fn emit_inode<H: FsVerityDigest>(
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

pub(super) fn emit_xattrs<H>(
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

pub(super) fn emit_dirents(out: &mut impl Sink, known: Option<&Layout>, entries: &[Dirent<'_>]) {
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

pub(super) fn emit_blocks<H>(node: &Node<'_, H>, out: &mut impl Sink, known: Option<&Layout>) {
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
