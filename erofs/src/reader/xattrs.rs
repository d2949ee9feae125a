//! Extended attributes: decoding an inode's local and shared entries,
//! and turning what the writer stored back into the tree's xattrs.

use xxhash_rust::xxh32::xxh32;
use zerocopy::FromBytes;

use super::layout::RawInode;
use super::{ReadError, Reader};
use crate::digest::FsVerityDigest;
use crate::format::{self, FormatVersion, InodeXattrHeader, XattrEntry};
use crate::tree::Xattrs;

/// An xattr as stored: full name (prefix included) and value.
pub(super) type RawXattrs = Vec<(Box<[u8]>, Box<[u8]>)>;

impl<'a, H: FsVerityDigest> Reader<'a, H> {
    /// An inode's xattrs with full names, shared ones included, checked
    /// against the name filter and for the encoding the writer uses.
    pub(super) fn read_xattrs(&mut self, inode: &RawInode<'a>) -> Result<RawXattrs, ReadError> {
        let nid = inode.nid;
        let area = inode.xattrs;
        let mut xattrs = RawXattrs::new();
        let Some((header, rest)) = InodeXattrHeader::read_from_prefix(area).ok() else {
            return Ok(xattrs);
        };
        let error = |what: String| ReadError::Inode { nid, what };
        let shared_len = 4 * usize::from(header.shared_count);
        let (shared, mut local) = rest
            .split_at_checked(shared_len)
            .ok_or_else(|| error("shared xattr references overflow the xattr area".into()))?;
        let mut entries = Vec::new();
        for reference in shared.chunks_exact(4) {
            let index = u32::from_le_bytes(reference.try_into().expect("chunks of 4"));
            let offset = self.xattr_base + 4 * u64::from(index);
            let rest = usize::try_from(offset)
                .ok()
                .and_then(|offset| self.image.get(offset..))
                .unwrap_or_default();
            let (entry, _) = parse_xattr(rest).ok_or(ReadError::OutOfBounds {
                nid,
                what: "shared xattr",
                offset,
                len: size_of::<XattrEntry>() as u64,
            })?;
            entries.push(entry);
        }
        while !local.is_empty() {
            let (entry, size) = parse_xattr(local)
                .ok_or_else(|| error("local xattr overflows the xattr area".into()))?;
            entries.push(entry);
            local = local.get(size..).unwrap_or_default();
        }
        for (index, suffix, value) in entries {
            let prefix = format::XATTR_PREFIXES
                .get(usize::from(index))
                .ok_or_else(|| error(format!("unknown xattr name index {index}")))?;
            let name: Box<[u8]> = [prefix, suffix].concat().into();
            let xattr_error = |what: &str| ReadError::Xattr {
                nid,
                name: String::from_utf8_lossy(&name).into_owned(),
                what: what.into(),
            };
            if name.is_empty() || name.contains(&0) {
                return Err(xattr_error("empty name or NUL in name"));
            }
            if prefix_index(&name, self.version) != usize::from(index) {
                return Err(xattr_error(
                    "name prefix is not encoded as the writer encodes it",
                ));
            }
            let bit = xxh32(suffix, format::XATTR_FILTER_SEED + u32::from(index)) % 32;
            if self.name_filter && header.name_filter.get() & (1 << bit) != 0 {
                return Err(xattr_error("the inode's name filter hides it"));
            }
            self.charge(nid, name.len() + value.len())?;
            xattrs.push((name, value.into()));
        }
        Ok(xattrs)
    }

    /// Turns the xattrs left after the writer's own were taken out into
    /// the tree's form: escaped overlay names unescaped, names unique.
    pub(super) fn finish_xattrs(&self, nid: u64, raw: RawXattrs) -> Result<Xattrs, ReadError> {
        let mut xattrs = Xattrs::new();
        for (name, value) in raw {
            let error = |name: &[u8], what: &str| ReadError::Xattr {
                nid,
                name: String::from_utf8_lossy(name).into_owned(),
                what: what.into(),
            };
            let name = match name.strip_prefix(format::XATTR_OVERLAY_ESCAPED_PREFIX) {
                Some(rest) => [format::XATTR_OVERLAY_PREFIX, rest].concat().into(),
                None if name.starts_with(format::XATTR_OVERLAY_PREFIX) => {
                    return Err(error(&name, "overlayfs xattr not expected on this inode"));
                }
                None => name,
            };
            if xattrs.contains_key(&name) {
                return Err(error(&name, "appears twice"));
            }
            xattrs.insert(name, value);
        }
        Ok(xattrs)
    }
}

/// An xattr entry as stored: name index, name suffix, value.
type RawEntry<'a> = (u8, &'a [u8], &'a [u8]);

/// One xattr entry at the start of `bytes`: (name index, name suffix,
/// value) and its size with padding.
fn parse_xattr(bytes: &[u8]) -> Option<(RawEntry<'_>, usize)> {
    let (entry, rest) = XattrEntry::read_from_prefix(bytes).ok()?;
    let name_len = usize::from(entry.name_len);
    let value_len = usize::from(entry.value_size.get());
    let suffix = rest.get(..name_len)?;
    let value = rest.get(name_len..name_len + value_len)?;
    let size = (size_of::<XattrEntry>() + name_len + value_len).next_multiple_of(4);
    (size <= bytes.len()).then_some(((entry.name_index, suffix, value), size))
}

/// The prefix index the writer picks for `name`: the longest prefix, with
/// no `lustre.` in the C layout.
fn prefix_index(name: &[u8], version: FormatVersion) -> usize {
    (1..format::XATTR_PREFIXES.len())
        .rev()
        .filter(|&i| !(version.is_c_layout() && i == 5))
        .find(|&i| name.starts_with(format::XATTR_PREFIXES[i]))
        .unwrap_or(0)
}

pub(super) fn find(xattrs: &RawXattrs, name: &[u8], value: &[u8]) -> Option<usize> {
    xattrs
        .iter()
        .position(|(n, v)| **n == *name && **v == *value)
}

/// Removes one `name=value`; says whether there was one.
pub(super) fn take(xattrs: &mut RawXattrs, name: &[u8], value: &[u8]) -> bool {
    find(xattrs, name, value)
        .map(|i| xattrs.remove(i))
        .is_some()
}

/// Removes the first xattr called `name` and returns its value.
pub(super) fn take_named(xattrs: &mut RawXattrs, name: &[u8]) -> Option<Box<[u8]>> {
    let i = xattrs.iter().position(|(n, _)| **n == *name)?;
    Some(xattrs.remove(i).1)
}
