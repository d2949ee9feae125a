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

mod emit;
mod inodes;
mod xattrs;

use crate::digest::FsVerityDigest;
use crate::format::{FormatVersion, BLOCK_SIZE, INODE_SLOT};
use crate::tree::{FileSystem, LeafContent, RegularFile, Stat};
use emit::{emit, Counter};
use inodes::{collect, whiteout_stub_stat, Content, Node};
use xattrs::{acl_flag, share_xattrs, Xattr};

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
    /// V2 keeps inline files wholly after the inode, where the kernel
    /// reads only a partial block: larger ones would read wrong.
    #[error("inline file of {0} bytes does not fit V2's inline layout (under 4096 bytes)")]
    InlineTooLargeForV2(usize),
    /// An inode's xattrs beyond what the 16-bit `xattr_icount` can size.
    #[error("an inode has {0} bytes of xattrs; the format's limit is about 256 KiB")]
    XattrsTooLarge(usize),
}

/// Writes the image of `fs` in format `version`.
pub fn mkfs<H: FsVerityDigest>(
    fs: &FileSystem<H>,
    version: FormatVersion,
) -> Result<Vec<u8>, WriteError> {
    validate(fs, version)?;
    let stub_stat = whiteout_stub_stat(&fs.root.stat);
    let mut nodes = collect(fs, version, &stub_stat)?;
    let header_flags = acl_flag(&nodes, version);
    let shared = share_xattrs(&mut nodes, version)?;
    if let Some(size) = nodes
        .iter()
        .map(|n| n.xattrs.size())
        .find(|&size| size > xattrs::MAX_XATTR_AREA)
    {
        return Err(WriteError::XattrsTooLarge(size));
    }
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

/// Rejects trees the format cannot represent. The reference writes some
/// of these anyway, as images the kernel reads wrongly; we refuse them.
fn validate<H: FsVerityDigest>(
    fs: &FileSystem<H>,
    version: FormatVersion,
) -> Result<(), WriteError> {
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
            LeafContent::Regular(RegularFile::Inline(ref data))
                if !version.is_c_layout() && data.len() >= BLOCK_SIZE =>
            {
                return Err(WriteError::InlineTooLargeForV2(data.len()));
            }
            _ => {}
        }
    }
    Ok(())
}

/// mtimes compare as the reference compares them: seconds reinterpreted as
/// unsigned (a pre-1970 time sorts last), then nanoseconds.
pub(super) fn mtime_key(stat: &Stat) -> (u64, u32) {
    (stat.mtime.sec as u64, stat.mtime.nsec)
}

struct Plan<'a, H> {
    pub(super) version: FormatVersion,
    pub(super) min_mtime: (u64, u32),
    pub(super) header_flags: u32,
    pub(super) nodes: Vec<Node<'a, H>>,
    pub(super) shared: Vec<Xattr>,
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
