//! The image as EROFS lays it out: the header and superblock, inodes
//! located and bounds-checked, directory blocks split into entries.

use std::collections::{HashMap, HashSet};

use zerocopy::FromBytes;

use super::{ReadError, Reader, BUDGET_BASE, BUDGET_PER_IMAGE_BYTE};
use crate::digest::FsVerityDigest;
use crate::format::{
    self, mode, CompactInode, ComposefsHeader, ExtendedInode, FormatVersion, InodeXattrHeader,
    Superblock, BLOCK_SIZE, INODE_SLOT,
};
use crate::tree::Mtime;

/// Offset of the first byte after the superblock, where inodes may start.
const FIRST_INODE_OFFSET: u64 = (format::SUPERBLOCK_OFFSET + size_of::<Superblock>()) as u64;
const DIRENT_SIZE: usize = size_of::<format::Dirent>();
const XATTR_HEADER_SIZE: usize = size_of::<InodeXattrHeader>();
pub(super) const NSEC_PER_SEC: u32 = 1_000_000_000;

/// `feature_compat` bits composefs images may carry.
const KNOWN_COMPAT: u32 = format::FEATURE_COMPAT_MTIME | format::FEATURE_COMPAT_XATTR_FILTER;
/// `feature_incompat` bit for chunk-based files; the only one accepted.
const INCOMPAT_CHUNKED_FILE: u32 = 0x4;

/// One inode's fields, with its xattr area and data located and
/// bounds-checked.
pub(super) struct RawInode<'a> {
    pub(super) nid: u64,
    /// `S_IFMT` bits.
    pub(super) ifmt: u16,
    pub(super) perm: u16,
    /// `format::LAYOUT_*`.
    pub(super) layout: u16,
    pub(super) nlink: u32,
    pub(super) size: u64,
    pub(super) u: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) mtime: Mtime,
    pub(super) xattrs: &'a [u8],
    /// Whole data blocks, for flat layouts: `size` bytes for FLAT_PLAIN
    /// (the rest of the last block is padding), the part before the tail
    /// for FLAT_INLINE.
    pub(super) blocks: &'a [u8],
    /// The tail stored after the inode (FLAT_INLINE).
    pub(super) tail: &'a [u8],
}

impl<'a> RawInode<'a> {
    /// The data as EROFS splits it: one piece per block, then the tail.
    pub(super) fn chunks(&self) -> impl Iterator<Item = &'a [u8]> {
        let (blocks, tail) = (self.blocks, self.tail);
        blocks
            .chunks(BLOCK_SIZE)
            .chain(Some(tail).filter(|t| !t.is_empty()))
    }

    pub(super) fn error(&self, what: impl Into<String>) -> ReadError {
        ReadError::Inode {
            nid: self.nid,
            what: what.into(),
        }
    }
}

/// A directory entry as read from a block.
pub(super) struct RawDirent<'a> {
    pub(super) name: &'a [u8],
    pub(super) nid: u64,
    pub(super) file_type: u8,
}

impl<'a, H: FsVerityDigest> Reader<'a, H> {
    /// Checks the header and superblock.
    pub(super) fn new(image: &'a [u8]) -> Result<Self, ReadError> {
        let too_short = || ReadError::TooShort(image.len());
        let (header, _) = ComposefsHeader::read_from_prefix(image).map_err(|_| too_short())?;
        let superblock = image
            .get(format::SUPERBLOCK_OFFSET..)
            .and_then(|rest| Superblock::read_from_prefix(rest).ok())
            .ok_or_else(too_short)?
            .0;
        if header.magic.get() != format::COMPOSEFS_MAGIC {
            return Err(ReadError::Magic {
                what: "composefs",
                found: header.magic.get(),
            });
        }
        if superblock.magic.get() != format::EROFS_MAGIC {
            return Err(ReadError::Magic {
                what: "EROFS",
                found: superblock.magic.get(),
            });
        }
        let unsupported = |field, value: u64| Err(ReadError::Unsupported { field, value });
        if header.version.get() != format::COMPOSEFS_HEADER_VERSION {
            return unsupported("composefs header version", header.version.get().into());
        }
        let Some(version) = FormatVersion::from_number(header.composefs_version.get()) else {
            return unsupported(
                "composefs format version",
                header.composefs_version.get().into(),
            );
        };
        let sb = &superblock;
        let checks: [(&'static str, u64, bool); 12] = [
            (
                "header flags",
                header.flags.get().into(),
                header.flags.get() & !format::COMPOSEFS_FLAG_HAS_ACL == 0,
            ),
            (
                "block size bits",
                sb.blkszbits.into(),
                sb.blkszbits == format::BLOCK_BITS,
            ),
            (
                "feature_compat",
                sb.feature_compat.get().into(),
                sb.feature_compat.get() & !KNOWN_COMPAT == 0,
            ),
            (
                "feature_incompat",
                sb.feature_incompat.get().into(),
                sb.feature_incompat.get() & !INCOMPAT_CHUNKED_FILE == 0,
            ),
            ("extslots", sb.extslots.into(), sb.extslots == 0),
            (
                "meta_blkaddr",
                sb.meta_blkaddr.get().into(),
                sb.meta_blkaddr.get() == 0,
            ),
            (
                "available_compr_algs",
                sb.available_compr_algs.get().into(),
                sb.available_compr_algs.get() == 0,
            ),
            (
                "extra_devices",
                sb.extra_devices.get().into(),
                sb.extra_devices.get() == 0,
            ),
            ("dirblkbits", sb.dirblkbits.into(), sb.dirblkbits == 0),
            (
                "xattr_prefix_count",
                sb.xattr_prefix_count.into(),
                sb.xattr_prefix_count == 0,
            ),
            ("packed_nid", sb.packed_nid.get(), sb.packed_nid.get() == 0),
            (
                "build_time_nsec",
                sb.build_time_nsec.get().into(),
                sb.build_time_nsec.get() < NSEC_PER_SEC,
            ),
        ];
        if let Some(&(field, value, _)) = checks.iter().find(|(_, _, ok)| !ok) {
            return unsupported(field, value);
        }
        let blocks = sb.blocks.get();
        if u64::from(blocks) * BLOCK_SIZE as u64 != image.len() as u64 {
            return Err(ReadError::Length {
                len: image.len(),
                blocks,
            });
        }
        let len = image.len() as u64;
        Ok(Self {
            image,
            version,
            root_nid: sb.root_nid.get().into(),
            inode_count: sb.inos.get(),
            build_time: Mtime {
                sec: sb.build_time.get() as i64,
                nsec: sb.build_time_nsec.get(),
            },
            xattr_base: u64::from(sb.xattr_blkaddr.get()) * BLOCK_SIZE as u64,
            name_filter: sb.feature_compat.get() & format::FEATURE_COMPAT_XATTR_FILTER != 0
                && sb.xattr_filter_reserved == 0,
            bytes_left: BUDGET_BASE.saturating_add(len.saturating_mul(BUDGET_PER_IMAGE_BYTE)),
            dirents_left: len / DIRENT_SIZE as u64,
            leaves: Vec::new(),
            links: HashMap::new(),
            dirs: HashSet::new(),
        })
    }

    /// `len` bytes at `offset`, or an out-of-bounds error naming `what`.
    pub(super) fn bytes(
        &self,
        nid: u64,
        what: &'static str,
        offset: u64,
        len: u64,
    ) -> Result<&'a [u8], ReadError> {
        let image = self.image;
        usize::try_from(offset)
            .ok()
            .zip(usize::try_from(len).ok())
            .and_then(|(start, len)| image.get(start..start.checked_add(len)?))
            .ok_or(ReadError::OutOfBounds {
                nid,
                what,
                offset,
                len,
            })
    }

    /// Charges `n` decoded bytes to the budget.
    pub(super) fn charge(&mut self, nid: u64, n: usize) -> Result<(), ReadError> {
        self.bytes_left = self
            .bytes_left
            .checked_sub(n as u64)
            .ok_or(ReadError::TooMuch {
                nid,
                image_len: self.image.len(),
                what: "bytes",
            })?;
        Ok(())
    }

    /// Parses the inode `nid` and locates its xattrs and data.
    pub(super) fn inode(&self, nid: u64) -> Result<RawInode<'a>, ReadError> {
        let error = |what: String| ReadError::Inode { nid, what };
        let offset = nid
            .checked_mul(INODE_SLOT as u64)
            .filter(|&offset| offset >= FIRST_INODE_OFFSET)
            .ok_or_else(|| error("nid points into the superblock".into()))?;
        let first = self.bytes(nid, "inode", offset, 1)?;
        let compact = first.first().is_some_and(|b| b & 1 == 0);
        let (header_len, f) = if compact {
            let len = size_of::<CompactInode>();
            let i = CompactInode::read_from_bytes(self.bytes(nid, "inode", offset, len as u64)?)
                .map_err(|_| error("short inode".into()))?;
            let fields = Fields {
                format: i.format.get(),
                icount: i.xattr_icount.get(),
                mode: i.mode.get(),
                nlink: i.nlink.get().into(),
                size: i.size.get().into(),
                u: i.u.get(),
                uid: i.uid.get().into(),
                gid: i.gid.get().into(),
                mtime: self.build_time,
            };
            (len, fields)
        } else {
            let len = size_of::<ExtendedInode>();
            let i = ExtendedInode::read_from_bytes(self.bytes(nid, "inode", offset, len as u64)?)
                .map_err(|_| error("short inode".into()))?;
            let fields = Fields {
                format: i.format.get(),
                icount: i.xattr_icount.get(),
                mode: i.mode.get(),
                nlink: i.nlink.get(),
                size: i.size.get(),
                u: i.u.get(),
                uid: i.uid.get(),
                gid: i.gid.get(),
                mtime: Mtime {
                    sec: i.mtime.get() as i64,
                    nsec: i.mtime_nsec.get(),
                },
            };
            (len, fields)
        };

        let layout = f.format & 0b1110;
        let known_layouts = [
            format::LAYOUT_FLAT_PLAIN,
            format::LAYOUT_FLAT_INLINE,
            format::LAYOUT_CHUNK_BASED,
        ];
        if f.format & !0b1111 != 0 || !known_layouts.contains(&layout) {
            return Err(error(format!("unsupported format field {:#x}", f.format)));
        }
        if format::file_type_of_mode(f.mode).is_none() {
            return Err(error(format!("unknown file type in mode {:#o}", f.mode)));
        }
        if f.mtime.nsec >= NSEC_PER_SEC {
            return Err(error(format!(
                "mtime nanoseconds {} out of range",
                f.mtime.nsec
            )));
        }
        if self.version == FormatVersion::V2 && (compact || f.mtime.nsec != 0) {
            return Err(error(
                "V2 images have only extended inodes, without nanoseconds".into(),
            ));
        }

        let xattrs_len = match f.icount {
            0 => 0,
            n => XATTR_HEADER_SIZE as u64 + 4 * (u64::from(n) - 1),
        };
        let xattrs_at = offset + header_len as u64;
        let xattrs = self.bytes(nid, "xattrs", xattrs_at, xattrs_len)?;
        let (mut blocks, mut tail): (&[u8], &[u8]) = (&[], &[]);
        if layout != format::LAYOUT_CHUNK_BASED {
            if f.size > self.image.len() as u64 {
                return Err(error(format!("size {} exceeds the image", f.size)));
            }
            let block = BLOCK_SIZE as u64;
            let (blocks_len, tail_len) = match layout {
                format::LAYOUT_FLAT_PLAIN => (f.size, 0),
                _ => (f.size - f.size % block, f.size % block),
            };
            if blocks_len > 0 {
                if f.u == 0 {
                    return Err(error("data in block 0, which holds the superblock".into()));
                }
                let start = u64::from(f.u) * block;
                // Whole blocks must be in the image, padding included.
                self.bytes(nid, "data", start, blocks_len.next_multiple_of(block))?;
                blocks = self.bytes(nid, "data", start, blocks_len)?;
            }
            tail = self.bytes(nid, "inline data", xattrs_at + xattrs_len, tail_len)?;
        }
        Ok(RawInode {
            nid,
            ifmt: f.mode & mode::S_IFMT,
            perm: f.mode & !mode::S_IFMT,
            layout,
            nlink: f.nlink,
            size: f.size,
            u: f.u,
            uid: f.uid,
            gid: f.gid,
            mtime: f.mtime,
            xattrs,
            blocks,
            tail,
        })
    }

    /// Parses every entry of a directory, checking names, order and the
    /// `.` and `..` entries; returns the other entries.
    pub(super) fn dirents(
        &mut self,
        dir: &RawInode<'a>,
        parent: u64,
    ) -> Result<Vec<RawDirent<'a>>, ReadError> {
        let nid = dir.nid;
        let error = |what: String| ReadError::Directory { nid, what };
        let mut entries: Vec<RawDirent<'a>> = Vec::new();
        let (mut dot, mut dotdot) = (false, false);
        let mut previous: Option<&[u8]> = None;
        for block in dir.chunks() {
            let header = |i: usize| {
                let bytes = block.get(i * DIRENT_SIZE..(i + 1) * DIRENT_SIZE)?;
                format::Dirent::read_from_bytes(bytes).ok()
            };
            let first = header(0).ok_or_else(|| error("directory block too short".into()))?;
            let names_at = usize::from(first.name_offset.get());
            if names_at == 0 || names_at % DIRENT_SIZE != 0 || names_at > block.len() {
                return Err(error(format!("bad first name offset {names_at}")));
            }
            let count = names_at / DIRENT_SIZE;
            self.dirents_left =
                self.dirents_left
                    .checked_sub(count as u64)
                    .ok_or(ReadError::TooMuch {
                        nid,
                        image_len: self.image.len(),
                        what: "directory entries",
                    })?;
            for i in 0..count {
                let dirent = header(i).expect("headers lie before the first name");
                let start = usize::from(dirent.name_offset.get());
                let end = match header(i + 1).filter(|_| i + 1 < count) {
                    Some(next) => usize::from(next.name_offset.get()),
                    None => block.len(),
                };
                let name = block
                    .get(start..end)
                    .filter(|_| start >= names_at)
                    .ok_or_else(|| error(format!("bad name offsets {start}..{end}")))?;
                // The last name of a block runs to the first NUL.
                let name = match (i + 1 == count, name.iter().position(|&b| b == 0)) {
                    (true, Some(nul)) => &name[..nul],
                    _ => name,
                };
                if previous.is_some_and(|p| p >= name) {
                    return Err(error(format!(
                        "entry {:?} is out of order or repeated",
                        String::from_utf8_lossy(name)
                    )));
                }
                previous = Some(name);
                let target = dirent.nid.get();
                let is_dir_type = dirent.file_type == format::file_type::DIRECTORY;
                match name {
                    b"." if target == nid && is_dir_type => dot = true,
                    b".." if target == parent && is_dir_type => dotdot = true,
                    b"." | b".." => {
                        return Err(error(format!(
                            "{:?} names inode {target}",
                            String::from_utf8_lossy(name)
                        )))
                    }
                    _ => entries.push(RawDirent {
                        name,
                        nid: target,
                        file_type: dirent.file_type,
                    }),
                }
            }
            self.charge(nid, block.len())?;
        }
        if !(dot && dotdot) {
            return Err(error("missing \".\" or \"..\"".into()));
        }
        Ok(entries)
    }
}

/// Header fields common to both inode sizes.
pub(super) struct Fields {
    format: u16,
    icount: u16,
    mode: u16,
    nlink: u32,
    size: u64,
    u: u32,
    uid: u32,
    gid: u32,
    mtime: Mtime,
}
