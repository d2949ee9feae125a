//! On-disk structures of a composefs EROFS image.
//!
//! All integers are little-endian (`zerocopy::little_endian`), all structs
//! `#[repr(C)]` with their sizes asserted at compile time, so field order and
//! padding never depend on the compiler. Enumerated fields stay raw integers
//! here; the reader decodes and validates them.
//!
//! Image layout: a 32-byte composefs header padded to 1024 bytes, the
//! 128-byte EROFS superblock, the inode table (32-byte slots; a nid is a
//! byte offset / 32, counted from the image start because `meta_blkaddr`
//! is 0), the shared xattr table, then 4096-byte data blocks.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// log2 of the block size.
pub const BLOCK_BITS: u8 = 12;
/// The block size: 4096 bytes.
pub const BLOCK_SIZE: usize = 1 << BLOCK_BITS;
/// Inode slot size; nids count slots.
pub const INODE_SLOT: usize = 32;
/// Where the EROFS superblock starts.
pub const SUPERBLOCK_OFFSET: usize = 1024;

/// `ComposefsHeader::magic`.
pub const COMPOSEFS_MAGIC: u32 = 0xd078_629a;
/// `ComposefsHeader::version`.
pub const COMPOSEFS_HEADER_VERSION: u32 = 1;
/// `ComposefsHeader::flags` bit: some inode has a POSIX ACL xattr.
pub const COMPOSEFS_FLAG_HAS_ACL: u32 = 1;
/// `Superblock::magic`.
pub const EROFS_MAGIC: u32 = 0xe0f5_e1e2;
/// `feature_compat`: inodes carry mtimes.
pub const FEATURE_COMPAT_MTIME: u32 = 0x2;
/// `feature_compat`: inode xattr headers carry a bloom filter of names.
pub const FEATURE_COMPAT_XATTR_FILTER: u32 = 0x4;
/// Seed of the xattr name bloom filter hash (xxh32).
pub const XATTR_FILTER_SEED: u32 = 0x25bb_e08f;

/// `format` bit 0: 0 compact (32-byte) inode, 1 extended (64-byte).
pub const INODE_LAYOUT_EXTENDED: u16 = 1;
/// Data layout (`format` bits 1..3, value already shifted): data in whole
/// blocks at `u`.
pub const LAYOUT_FLAT_PLAIN: u16 = 0;
/// Data layout: blocks at `u` plus a tail inline after the inode.
pub const LAYOUT_FLAT_INLINE: u16 = 4;
/// Data layout: chunk index after the inode; composefs uses it for files
/// whose content is elsewhere (all chunks are holes, `u32::MAX`).
pub const LAYOUT_CHUNK_BASED: u16 = 8;

/// `S_IFMT` and the file type bits of `mode`.
pub mod mode {
    /// Mask of the type bits.
    pub const S_IFMT: u16 = 0o170000;
    /// Socket.
    pub const S_IFSOCK: u16 = 0o140000;
    /// Symbolic link.
    pub const S_IFLNK: u16 = 0o120000;
    /// Regular file.
    pub const S_IFREG: u16 = 0o100000;
    /// Block device.
    pub const S_IFBLK: u16 = 0o060000;
    /// Directory.
    pub const S_IFDIR: u16 = 0o040000;
    /// Character device.
    pub const S_IFCHR: u16 = 0o020000;
    /// FIFO.
    pub const S_IFIFO: u16 = 0o010000;
}

/// Directory entry `file_type` values.
pub mod file_type {
    /// Regular file.
    pub const REGULAR: u8 = 1;
    /// Directory.
    pub const DIRECTORY: u8 = 2;
    /// Character device.
    pub const CHARDEV: u8 = 3;
    /// Block device.
    pub const BLOCKDEV: u8 = 4;
    /// FIFO.
    pub const FIFO: u8 = 5;
    /// Socket.
    pub const SOCKET: u8 = 6;
    /// Symbolic link.
    pub const SYMLINK: u8 = 7;
}

/// The directory entry `file_type` for a mode's type bits.
pub const fn file_type_of_mode(mode: u16) -> Option<u8> {
    Some(match mode & mode::S_IFMT {
        mode::S_IFREG => file_type::REGULAR,
        mode::S_IFDIR => file_type::DIRECTORY,
        mode::S_IFCHR => file_type::CHARDEV,
        mode::S_IFBLK => file_type::BLOCKDEV,
        mode::S_IFIFO => file_type::FIFO,
        mode::S_IFSOCK => file_type::SOCKET,
        mode::S_IFLNK => file_type::SYMLINK,
        _ => return None,
    })
}

/// xattr name prefixes by EROFS index; index 0 means "no prefix".
/// Index 5 (`lustre.`) is not used by the V0/V1 formats.
pub const XATTR_PREFIXES: [&[u8]; 7] = [
    b"",
    b"user.",
    b"system.posix_acl_access",
    b"system.posix_acl_default",
    b"trusted.",
    b"lustre.",
    b"security.",
];

/// Prefix of overlayfs's own xattrs; image xattrs with it are escaped.
pub const XATTR_OVERLAY_PREFIX: &[u8] = b"trusted.overlay.";
/// What an escaped `trusted.overlay.X` becomes: `trusted.overlay.overlay.X`.
pub const XATTR_OVERLAY_ESCAPED_PREFIX: &[u8] = b"trusted.overlay.overlay.";
/// Marks a file whose data comes from elsewhere; value is the digest.
pub const XATTR_OVERLAY_METACOPY: &[u8] = b"trusted.overlay.metacopy";
/// Names the object file holding the data (`/XX/rest`).
pub const XATTR_OVERLAY_REDIRECT: &[u8] = b"trusted.overlay.redirect";
/// Marks the root opaque so the object directory never shows through.
pub const XATTR_OVERLAY_OPAQUE: &[u8] = b"trusted.overlay.opaque";

/// The composefs header at offset 0.
#[derive(Debug, Default, Clone, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ComposefsHeader {
    /// [`COMPOSEFS_MAGIC`].
    pub magic: U32,
    /// [`COMPOSEFS_HEADER_VERSION`].
    pub version: U32,
    /// [`COMPOSEFS_FLAG_HAS_ACL`] or 0.
    pub flags: U32,
    /// The composefs format version (0, 1 or 2).
    pub composefs_version: U32,
    /// Zero.
    pub unused: [U32; 4],
}

/// The EROFS superblock at offset 1024.
#[derive(Debug, Default, Clone, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Superblock {
    /// [`EROFS_MAGIC`].
    pub magic: U32,
    /// Zero: no checksum.
    pub checksum: U32,
    /// `FEATURE_COMPAT_*` bits.
    pub feature_compat: U32,
    /// [`BLOCK_BITS`].
    pub blkszbits: u8,
    /// Zero.
    pub extslots: u8,
    /// nid of the root directory.
    pub root_nid: U16,
    /// Number of inodes.
    pub inos: U64,
    /// mtime of compact inodes, seconds.
    pub build_time: U64,
    /// mtime of compact inodes, nanoseconds.
    pub build_time_nsec: U32,
    /// Image size in blocks.
    pub blocks: U32,
    /// Block of the inode table (0: nids count from the image start).
    pub meta_blkaddr: U32,
    /// Block that shared xattr references count from.
    pub xattr_blkaddr: U32,
    /// Zero.
    pub uuid: [u8; 16],
    /// Zero.
    pub volume_name: [u8; 16],
    /// Zero: no incompatible features.
    pub feature_incompat: U32,
    /// Zero.
    pub available_compr_algs: U16,
    /// Zero.
    pub extra_devices: U16,
    /// Zero.
    pub devt_slotoff: U16,
    /// Zero.
    pub dirblkbits: u8,
    /// Zero.
    pub xattr_prefix_count: u8,
    /// Zero.
    pub xattr_prefix_start: U32,
    /// Zero.
    pub packed_nid: U64,
    /// Zero.
    pub xattr_filter_reserved: u8,
    /// Zero.
    pub reserved: [u8; 23],
}

/// A 32-byte inode; its mtime is the superblock's `build_time`.
#[derive(Debug, Default, Clone, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct CompactInode {
    /// Layout bits (see `INODE_LAYOUT_*`, `LAYOUT_*`).
    pub format: U16,
    /// Size of the xattr area in 4-byte words past its 12-byte header, plus 1.
    pub xattr_icount: U16,
    /// Type and permission bits.
    pub mode: U16,
    /// Link count.
    pub nlink: U16,
    /// Size in bytes.
    pub size: U32,
    /// Zero.
    pub reserved: U32,
    /// Block address, device number or chunk format, by layout and type.
    pub u: U32,
    /// Inode number reported by stat.
    pub ino: U32,
    /// Owner.
    pub uid: U16,
    /// Group.
    pub gid: U16,
    /// Zero.
    pub reserved2: [u8; 4],
}

/// A 64-byte inode.
#[derive(Debug, Default, Clone, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ExtendedInode {
    /// Layout bits (see `INODE_LAYOUT_*`, `LAYOUT_*`).
    pub format: U16,
    /// Size of the xattr area in 4-byte words past its 12-byte header, plus 1.
    pub xattr_icount: U16,
    /// Type and permission bits.
    pub mode: U16,
    /// Zero.
    pub reserved: U16,
    /// Size in bytes.
    pub size: U64,
    /// Block address, device number or chunk format, by layout and type.
    pub u: U32,
    /// Inode number reported by stat.
    pub ino: U32,
    /// Owner.
    pub uid: U32,
    /// Group.
    pub gid: U32,
    /// Modification time, seconds.
    pub mtime: U64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: U32,
    /// Link count.
    pub nlink: U32,
    /// Zero.
    pub reserved2: [u8; 16],
}

/// Header of an inode's xattr area.
#[derive(Debug, Default, Clone, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct InodeXattrHeader {
    /// Inverted bloom filter of the inode's xattr names.
    pub name_filter: U32,
    /// Number of 4-byte shared xattr references that follow.
    pub shared_count: u8,
    /// Zero.
    pub reserved: [u8; 7],
}

/// Header of one xattr entry; name suffix and value follow, padded to 4.
#[derive(Debug, Default, Clone, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XattrEntry {
    /// Length of the name suffix.
    pub name_len: u8,
    /// Index into [`XATTR_PREFIXES`].
    pub name_index: u8,
    /// Length of the value.
    pub value_size: U16,
}

/// A directory entry header; names follow all headers of a block.
#[derive(Debug, Default, Clone, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Dirent {
    /// nid of the entry's inode.
    pub nid: U64,
    /// Offset of the name within the directory block.
    pub name_offset: U16,
    /// One of [`file_type`].
    pub file_type: u8,
    /// Zero.
    pub reserved: u8,
}

/// The overlayfs `metacopy` xattr value (`struct ovl_metacopy`) for a
/// file whose data is in an fs-verity checked object.
#[derive(Debug, Clone, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct MetacopyHeader {
    /// Zero.
    pub version: u8,
    /// Length of the whole value: 4 + digest length.
    pub len: u8,
    /// Zero.
    pub flags: u8,
    /// Kernel id of the digest's hash algorithm.
    pub digest_algo: u8,
}

const _: () = assert!(size_of::<ComposefsHeader>() == 32);
const _: () = assert!(size_of::<Superblock>() == 128);
const _: () = assert!(size_of::<CompactInode>() == 32);
const _: () = assert!(size_of::<ExtendedInode>() == 64);
const _: () = assert!(size_of::<InodeXattrHeader>() == 12);
const _: () = assert!(size_of::<XattrEntry>() == 4);
const _: () = assert!(size_of::<Dirent>() == 12);
const _: () = assert!(size_of::<MetacopyHeader>() == 4);

/// The composefs image format versions.
///
/// V0 and V1 share one layout (that of the C `mkcomposefs`) and differ only
/// in the header's version number and in V1 marking directories that hold
/// whiteouts opaque; V2 is composefs-rs's older layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FormatVersion {
    /// The C tool's default output.
    V0,
    /// The C tool with `--min-version=1`; the reference's default.
    #[default]
    V1,
    /// composefs-rs's original layout.
    V2,
}

impl FormatVersion {
    /// Every version, default first.
    pub const ALL: [FormatVersion; 3] = [Self::V1, Self::V0, Self::V2];

    /// The value of the header's `composefs_version`.
    pub const fn header_version(self) -> u32 {
        match self {
            Self::V0 => 0,
            Self::V1 => 1,
            Self::V2 => 2,
        }
    }

    /// Whether this is the C tool's layout (V0, V1) rather than V2's.
    pub const fn is_c_layout(self) -> bool {
        matches!(self, Self::V0 | Self::V1)
    }

    /// Parses `0`, `1` or `2`.
    pub fn from_number(n: u32) -> Option<Self> {
        match n {
            0 => Some(Self::V0),
            1 => Some(Self::V1),
            2 => Some(Self::V2),
            _ => None,
        }
    }
}
