//! The delta superblock: which commit a delta leads to, from where, the
//! parts that build its objects and the objects to fetch loose instead.
//!
//! Format `(a{sv}tayay(a{sv}aya(say)sstayay)aya(uayttay)a(yaytt))`
//! (`OSTREE_STATIC_DELTA_SUPERBLOCK_FORMAT`): metadata, timestamp (BE),
//! from (empty for a delta from scratch), to, the target commit object
//! itself, an unused list, part headers, fallbacks. Part-header and
//! fallback numbers are in the byte order the metadata's
//! `ostree.endianness` names (`'l'` or `'B'`); the generator has written
//! that key since 2016, and a superblock without it is refused rather
//! than guessed at as libostree does.
//!
//! A superblock signed by `ostree static-delta generate --sign` is wrapped
//! in `(taya{sv})` behind the magic `OSTSGNDT`. The wrapper is taken off
//! and its signatures are not checked, as libostree's pull does not: the
//! superblock is checked against the digest a summary or delta index
//! lists, and the commit it carries against its own checksum.

use std::collections::HashMap;

use gvariant::aligned_bytes::{AlignedBuf, AsAligned};
use gvariant::{gv, Marker, Structure};

use super::error::DeltaError;
use super::{bytes_within, naming};
use crate::checksum::Checksum;

/// The magic that starts a signed superblock.
pub const SIGNED_MAGIC: &[u8; 8] = b"OSTSGNDT";

/// The only part format there is (`OSTREE_DELTAPART_VERSION`).
const PART_VERSION: u32 = 0;

/// One object entry in a part header: type byte + 32-byte checksum.
const OBJECT_ENTRY_LEN: usize = 33;

/// The kinds of object a delta part builds (ostree's object type numbers
/// 1, 2 and 3; the commit travels in the superblock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectType {
    /// A content object: a regular file or a symlink.
    File,
    /// A directory listing.
    DirTree,
    /// A directory's metadata.
    DirMeta,
}

impl ObjectType {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::File),
            2 => Some(Self::DirTree),
            3 => Some(Self::DirMeta),
            _ => None,
        }
    }

    /// Its loose-object file extension (`file` for content, which a
    /// remote archive repository serves as `filez`).
    pub fn extension(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::DirTree => "dirtree",
            Self::DirMeta => "dirmeta",
        }
    }
}

/// What the superblock says about one part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartHeader {
    /// SHA-256 of the whole part file (compression byte included).
    pub checksum: Checksum,
    /// Size of the part file.
    pub compressed_size: u64,
    /// Total size of the objects the part builds.
    pub uncompressed_size: u64,
    /// The objects the part builds, in the order its operations build them.
    pub objects: Vec<(ObjectType, Checksum)>,
}

/// A content object the delta does not carry: fetch it loose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    /// The content object.
    pub checksum: Checksum,
    /// Its size as the server stores it.
    pub compressed_size: u64,
    /// Its content's size.
    pub uncompressed_size: u64,
}

/// A parsed superblock.
#[derive(Debug, Clone)]
pub struct Superblock {
    /// When the delta was generated, in seconds since the epoch.
    pub timestamp: u64,
    /// The commit the delta starts from; `None` for one from scratch.
    pub from: Option<Checksum>,
    /// The commit the delta leads to.
    pub to: Checksum,
    /// The bytes of the `to` commit object, checked against `to`.
    pub commit: Vec<u8>,
    /// The `to` commit's detached metadata (`a{sv}` bytes), if included.
    pub commitmeta: Option<Vec<u8>>,
    /// The parts, in order.
    pub parts: Vec<PartHeader>,
    /// Content objects to fetch loose.
    pub fallbacks: Vec<Fallback>,
    /// Whether it came in the `OSTSGNDT` wrapper.
    pub signed: bool,
    /// Parts stored inside the superblock, by index.
    inline_parts: HashMap<usize, Vec<u8>>,
}

fn bad(reason: impl Into<String>) -> DeltaError {
    DeltaError::Superblock(reason.into())
}

/// Reads a 32-byte checksum field.
fn checksum_field(bytes: &[u8], what: &str) -> Result<Checksum, DeltaError> {
    Checksum::from_bytes(bytes)
        .ok_or_else(|| bad(format!("{what} is {} bytes, not 32", bytes.len())))
}

/// The byte order of a superblock's part headers and fallbacks.
#[derive(Debug, Clone, Copy)]
enum ByteOrder {
    Little,
    Big,
}

impl ByteOrder {
    fn u32(self, raw: u32) -> u32 {
        match self {
            Self::Little => u32::from_le(raw),
            Self::Big => u32::from_be(raw),
        }
    }

    fn u64(self, raw: u64) -> u64 {
        match self {
            Self::Little => u64::from_le(raw),
            Self::Big => u64::from_be(raw),
        }
    }
}

impl Superblock {
    /// Parses a superblock file, signed or not.
    pub fn parse(data: &[u8]) -> Result<Self, DeltaError> {
        if data.starts_with(SIGNED_MAGIC) {
            let buf: AlignedBuf = data.to_vec().into();
            let (_magic, inner, _signatures) = gv!("(taya{sv})").cast(buf.as_aligned()).to_tuple();
            if inner.is_empty() {
                return Err(bad("signed wrapper holds no superblock"));
            }
            let mut superblock = Self::parse_unsigned(inner)?;
            superblock.signed = true;
            return Ok(superblock);
        }
        Self::parse_unsigned(data)
    }

    fn parse_unsigned(data: &[u8]) -> Result<Self, DeltaError> {
        let buf: AlignedBuf = data.to_vec().into();
        let (metadata, timestamp, from, to, commit, _recurse, headers, fallbacks) =
            gv!("(a{sv}tayay(a{sv}aya(say)sstayay)aya(uayttay)a(yaytt))")
                .cast(buf.as_aligned())
                .to_tuple();
        let from = match from.len() {
            0 => None,
            _ => Some(checksum_field(from, "from checksum")?),
        };
        let to = checksum_field(to, "to checksum")?;
        let commit = bytes_within(&buf, commit).to_vec();
        let actual = Checksum::of(&[&commit]);
        if actual != to {
            return Err(bad(format!(
                "the commit it carries hashes to {actual}, not to its target {to}"
            )));
        }

        let mut order = None;
        let mut entries = HashMap::new();
        for entry in metadata {
            let (key, value) = entry.to_tuple();
            let (kind, bytes) = value.split();
            match (key.to_str(), kind) {
                ("ostree.endianness", b"y") => {
                    order = match bytes.first() {
                        Some(b'l') => Some(ByteOrder::Little),
                        Some(b'B') => Some(ByteOrder::Big),
                        other => return Err(bad(format!("unknown ostree.endianness {other:?}"))),
                    }
                }
                (key, _) => {
                    entries.insert(key.to_owned(), (kind.to_vec(), bytes.to_vec()));
                }
            }
        }
        let order = order
            .ok_or_else(|| bad("no ostree.endianness key (written by every ostree since 2016)"))?;

        let mut parts = Vec::with_capacity(headers.len());
        for (index, header) in headers.iter().enumerate() {
            let (version, checksum, compressed, uncompressed, objects) = header.to_tuple();
            let version = order.u32(*version);
            if version != PART_VERSION {
                return Err(bad(format!("part {index} has unknown version {version}")));
            }
            if objects.len() % OBJECT_ENTRY_LEN != 0 {
                return Err(bad(format!(
                    "part {index} lists {} bytes of objects, not a multiple of {OBJECT_ENTRY_LEN}",
                    objects.len()
                )));
            }
            let objects = objects
                .chunks_exact(OBJECT_ENTRY_LEN)
                .map(|entry| {
                    let kind = ObjectType::from_byte(entry[0]).ok_or_else(|| {
                        bad(format!(
                            "part {index} builds an object of type {}, which deltas never carry",
                            entry[0]
                        ))
                    })?;
                    Ok((kind, checksum_field(&entry[1..], "object checksum")?))
                })
                .collect::<Result<Vec<_>, DeltaError>>()?;
            parts.push(PartHeader {
                checksum: checksum_field(checksum, "part checksum")?,
                compressed_size: order.u64(*compressed),
                uncompressed_size: order.u64(*uncompressed),
                objects,
            });
        }

        let fallbacks = fallbacks
            .iter()
            .map(|fallback| {
                let (kind, checksum, compressed, uncompressed) = fallback.to_tuple();
                if ObjectType::from_byte(*kind) != Some(ObjectType::File) {
                    return Err(bad(format!(
                        "fallback object of type {kind}: only content objects may be fetched loose"
                    )));
                }
                Ok(Fallback {
                    checksum: checksum_field(checksum, "fallback checksum")?,
                    compressed_size: order.u64(*compressed),
                    uncompressed_size: order.u64(*uncompressed),
                })
            })
            .collect::<Result<Vec<_>, DeltaError>>()?;

        let mut inline_parts = HashMap::new();
        for index in 0..parts.len() {
            let key = naming::part_path(from.as_ref(), &to, index);
            if let Some((kind, bytes)) = entries.remove(&key) {
                if kind != b"(yay)" {
                    return Err(bad(format!("inline part {index} is not of type (yay)")));
                }
                inline_parts.insert(index, bytes);
            }
        }
        let commitmeta_key = format!("{}/commitmeta", naming::delta_dir(from.as_ref(), &to));
        let commitmeta = match entries.remove(&commitmeta_key) {
            Some((kind, bytes)) if kind == b"a{sv}" => Some(bytes),
            Some(_) => return Err(bad("commit metadata is not of type a{sv}")),
            None => None,
        };

        Ok(Self {
            timestamp: u64::from_be(*timestamp),
            from,
            to,
            commit,
            commitmeta,
            parts,
            fallbacks,
            signed: false,
            inline_parts,
        })
    }

    /// The bytes of part `index` when the superblock carries it inline
    /// (`static-delta generate --inline`); they are a part file's bytes.
    pub fn inline_part(&self, index: usize) -> Option<&[u8]> {
        self.inline_parts.get(&index).map(Vec::as_slice)
    }
}
