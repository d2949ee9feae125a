//! xattrs as EROFS stores them: prefix indexes, the name bloom filter,
//! and the shared table that holds every (name, value) used more than once.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use xxhash_rust::xxh32::xxh32;
use zerocopy::IntoBytes;

use super::emit::Sink;
use super::inodes::Node;
use super::WriteError;
use crate::format::{self, FormatVersion};

/// Largest xattr area whose size `xattr_icount` (a u16 of 4-byte words
/// past the 12-byte header, plus one) can express.
pub(super) const MAX_XATTR_AREA: usize = 12 + 4 * (u16::MAX as usize - 1);

/// One xattr as EROFS stores it: a prefix index and the rest of the name.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Xattr {
    pub(super) prefix: u8,
    pub(super) suffix: Box<[u8]>,
    pub(super) value: Box<[u8]>,
}

impl Xattr {
    pub(super) fn new(
        name: &[u8],
        value: &[u8],
        version: FormatVersion,
    ) -> Result<Self, WriteError> {
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
    pub(super) fn cmp_c(&self, other: &Self) -> Ordering {
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
    pub(super) fn filter_bit(&self) -> u32 {
        1 << (xxh32(
            &self.suffix,
            format::XATTR_FILTER_SEED + u32::from(self.prefix),
        ) % 32)
    }

    pub(super) fn entry_size(&self) -> usize {
        (4 + self.suffix.len() + self.value.len()).next_multiple_of(4)
    }

    pub(super) fn emit(&self, out: &mut impl Sink) {
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
pub(super) struct InodeXattrs {
    pub(super) local: Vec<Xattr>,
    pub(super) shared: Vec<usize>,
    /// Bloom filter over every name, local or shared.
    pub(super) filter: u32,
}

impl InodeXattrs {
    pub(super) fn add(
        &mut self,
        name: &[u8],
        value: &[u8],
        version: FormatVersion,
    ) -> Result<(), WriteError> {
        let xattr = Xattr::new(name, value, version)?;
        self.filter |= xattr.filter_bit();
        self.local.push(xattr);
        Ok(())
    }

    /// Bytes of the inode's xattr area: 0 when it has none.
    pub(super) fn size(&self) -> usize {
        if self.filter == 0 {
            return 0;
        }
        size_of::<format::InodeXattrHeader>()
            + 4 * self.shared.len()
            + self.local.iter().map(Xattr::entry_size).sum::<usize>()
    }

    /// The header's `xattr_icount` as u16.
    pub(super) fn icount(&self) -> u16 {
        match self.size() {
            0 => 0,
            n => (1 + (n - size_of::<format::InodeXattrHeader>()) / 4) as u16,
        }
    }
}

/// Header flag of the C layout: set when any inode has a POSIX ACL.
pub(super) fn acl_flag<H>(nodes: &[Node<'_, H>], version: FormatVersion) -> u32 {
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
pub(super) fn share_xattrs<H>(
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
