//! Tar header blocks: from a run of 512-byte blocks to one member's
//! metadata, with GNU long names and links and PAX records applied.
//!
//! Splitting a layer and reading it back both go through [`next_event`],
//! so a stream we split always reads back, and where a member's content
//! starts and how long it is are decided by one piece of code. Those two
//! facts fix the layout of the split stream, so this parser must agree
//! with the reference's (the `tar-core` crate) on every archive it
//! accepts: which blocks are extension headers (only in ustar or GNU
//! headers, except PAX globals), that a lone zero block between headers is
//! skipped, that PAX records override GNU extensions which override the
//! header, that a PAX `size` sets the content length, and that a GNU long
//! name loses one trailing NUL. Where it is merely lenient (a malformed
//! global header, ids or times that do not fit) we refuse instead.

use super::{shown, TarError};

/// Size of a tar block.
pub(super) const BLOCK: usize = 512;

/// Most bytes of GNU long name, long link and PAX data one member may
/// carry, and most bytes of one PAX global header (the reference's limit).
pub(super) const METADATA_MAX: u64 = 1 << 20;

/// Where the blocks of an archive come from.
pub(super) trait Blocks {
    /// Fills `block` with the next 512 bytes. Returns `false` when the
    /// input has ended before the first byte; ending inside the block is
    /// [`TarError::Truncated`].
    fn next_block(&mut self, block: &mut [u8; BLOCK]) -> Result<bool, TarError>;

    /// Offset in the tar of the next block.
    fn offset(&self) -> u64;
}

/// What comes next in an archive.
#[derive(Debug)]
pub(super) enum Event {
    /// A member; its content (`size` bytes, padded to a block) follows.
    Member(Header),
    /// The end-of-archive marker (two zero blocks) has been read.
    End,
    /// The input ended between members, without the marker.
    Eof,
}

/// The kinds of member a layer may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Regular file (`0`, NUL or contiguous `7`).
    File,
    /// Hard link (`1`).
    Hardlink,
    /// Symbolic link (`2`).
    Symlink,
    /// Character device (`3`).
    CharDevice,
    /// Block device (`4`).
    BlockDevice,
    /// Directory (`5`).
    Directory,
    /// Named pipe (`6`).
    Fifo,
}

impl Kind {
    /// How error messages name the kind.
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::File => "regular file",
            Self::Hardlink => "hard link",
            Self::Symlink => "symlink",
            Self::CharDevice => "character device",
            Self::BlockDevice => "block device",
            Self::Directory => "directory",
            Self::Fifo => "fifo",
        }
    }
}

/// One member's metadata with every extension applied, before any
/// validation of paths and ranges.
#[derive(Debug)]
pub(super) struct Header {
    pub kind: Kind,
    /// Path as stored (relative or not), never empty.
    pub path: Vec<u8>,
    /// Link target as stored; empty when there is none.
    pub link: Vec<u8>,
    pub mode: u64,
    pub uid: u64,
    pub gid: u64,
    /// Seconds; signed because base-256 fields can be negative.
    pub mtime: i128,
    /// Nanoseconds from the fraction of a PAX `mtime`.
    pub mtime_nsec: u32,
    /// Content length.
    pub size: u64,
    /// Device numbers (ustar and GNU headers only).
    pub device: Option<(u32, u32)>,
    /// `SCHILY.xattr.*` records, in order.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

// Field ranges of a ustar/GNU header block.
const NAME: std::ops::Range<usize> = 0..100;
const MODE: std::ops::Range<usize> = 100..108;
const UID: std::ops::Range<usize> = 108..116;
const GID: std::ops::Range<usize> = 116..124;
const SIZE: std::ops::Range<usize> = 124..136;
const MTIME: std::ops::Range<usize> = 136..148;
const CHECKSUM: std::ops::Range<usize> = 148..156;
const TYPE: usize = 156;
const LINKNAME: std::ops::Range<usize> = 157..257;
const MAGIC: std::ops::Range<usize> = 257..265;
const DEV_MAJOR: std::ops::Range<usize> = 329..337;
const DEV_MINOR: std::ops::Range<usize> = 337..345;
const PREFIX: std::ops::Range<usize> = 345..500;

const PAX_XATTR: &str = "SCHILY.xattr.";
const PAX_SPARSE: &str = "GNU.sparse.";

/// The bytes of a NUL-terminated field.
fn c_string(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(end) => &field[..end],
        None => field,
    }
}

fn is_tar_space(b: u8) -> bool {
    b.is_ascii_whitespace() || b == 0x0b
}

/// An octal field: digits between optional blanks, cut at the first NUL;
/// an empty field is 0.
fn octal(field: &[u8]) -> Option<u64> {
    let text = c_string(field);
    let start = text.iter().position(|&b| !is_tar_space(b));
    let Some(start) = start else { return Some(0) };
    let end = text.iter().rposition(|&b| !is_tar_space(b))? + 1;
    let digits = std::str::from_utf8(&text[start..end]).ok()?;
    u64::from_str_radix(digits, 8).ok()
}

/// A numeric field, octal or GNU base-256 (high bit of the first byte
/// set, then a big-endian two's complement number).
fn numeric(field: &[u8]) -> Option<i128> {
    match field.first() {
        Some(&first) if first & 0x80 != 0 => {
            // Bit 6 of the first byte is the sign of the 95-bit number.
            let mut value: i128 = if first & 0x40 != 0 { -1 } else { 0 };
            value = (value << 7) | i128::from(first & 0x7f);
            for &b in &field[1..] {
                value = (value << 8) | i128::from(b);
            }
            Some(value)
        }
        _ => octal(field).map(i128::from),
    }
}

fn is_extension_format(block: &[u8; BLOCK]) -> bool {
    let magic = &block[MAGIC];
    magic == b"ustar\x0000" || magic == b"ustar  \0"
}

fn is_ustar(block: &[u8; BLOCK]) -> bool {
    &block[MAGIC] == b"ustar\x0000"
}

/// Extension data gathered for the next member.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
    /// Sum of the extension sizes so far.
    total: u64,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.long_name.is_none() && self.long_link.is_none() && self.pax.is_none()
    }
}

/// One PAX record `"<len> <key>=<value>\n"`.
struct PaxRecord<'a> {
    key: &'a [u8],
    value: &'a [u8],
}

/// PAX records, read as the reference reads them: a missing length
/// field or one that is not a number ends the list quietly; a record
/// that does not fit, lacks its newline or its `=` is an error.
struct PaxRecords<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for PaxRecords<'a> {
    type Item = Result<PaxRecord<'a>, &'static str>;

    fn next(&mut self) -> Option<Self::Item> {
        let space = self.rest.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&self.rest[..space])
            .ok()?
            .parse()
            .ok()?;
        let Some(record) = self.rest.get(..len) else {
            self.rest = &[];
            return Some(Err("a record is longer than the data"));
        };
        let body = match record.split_last() {
            Some((b'\n', body)) if body.len() > space => &body[space + 1..],
            _ => {
                self.rest = &[];
                return Some(Err("a record does not end in a newline"));
            }
        };
        let Some(eq) = body.iter().position(|&b| b == b'=') else {
            self.rest = &[];
            return Some(Err("a record has no '='"));
        };
        self.rest = &self.rest[len..];
        Some(Ok(PaxRecord {
            key: &body[..eq],
            value: &body[eq + 1..],
        }))
    }
}

/// Nanoseconds of a PAX time `"<sec>.<fraction>"`: the first nine
/// fraction digits, or fewer scaled up; 0 when there is no fraction or it
/// does not parse (the reference's reading, including its quirks).
fn pax_nanoseconds(value: &[u8]) -> u32 {
    let Some(dot) = value.iter().position(|&b| b == b'.') else {
        return 0;
    };
    let fraction = &value[dot + 1..];
    let digits = fraction.len().min(9);
    std::str::from_utf8(&fraction[..digits])
        .ok()
        .and_then(|text| text.parse::<u32>().ok())
        .map_or(0, |n| n * 10u32.pow((9 - digits) as u32))
}

/// Reads `size` bytes of extension data (and its padding).
fn read_data(src: &mut impl Blocks, size: u64, what: &'static str) -> Result<Vec<u8>, TarError> {
    let mut data = Vec::with_capacity(size as usize);
    let mut block = [0u8; BLOCK];
    while (data.len() as u64) < size {
        if !src.next_block(&mut block)? {
            return Err(TarError::Truncated {
                offset: src.offset(),
                what,
            });
        }
        let take = (size - data.len() as u64).min(BLOCK as u64) as usize;
        data.extend_from_slice(&block[..take]);
    }
    Ok(data)
}

fn bad_number(offset: u64, field: &'static str, bytes: &[u8]) -> TarError {
    TarError::BadNumber {
        offset,
        field,
        text: bytes.escape_ascii().to_string(),
    }
}

/// Reads the next member's header blocks (with their extensions), or the
/// end of the archive.
pub(super) fn next_event(src: &mut impl Blocks) -> Result<Event, TarError> {
    let mut pending = Pending::default();
    let mut block = [0u8; BLOCK];
    loop {
        let mut offset = src.offset();
        if !src.next_block(&mut block)? {
            if pending.is_empty() {
                return Ok(Event::Eof);
            }
            return Err(TarError::Truncated {
                offset,
                what: "the headers of a member",
            });
        }
        if block.iter().all(|&b| b == 0) {
            if !src.next_block(&mut block)? {
                return Err(TarError::Truncated {
                    offset: src.offset(),
                    what: "the end-of-archive marker",
                });
            }
            if block.iter().all(|&b| b == 0) {
                if !pending.is_empty() {
                    return Err(TarError::OrphanedExtension { offset });
                }
                return Ok(Event::End);
            }
            // A lone zero block is skipped.
            offset += BLOCK as u64;
        }

        let stored = octal(&block[CHECKSUM])
            .ok_or_else(|| bad_number(offset, "checksum", &block[CHECKSUM]))?;
        let computed: u64 = block
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if CHECKSUM.contains(&i) {
                    32
                } else {
                    u64::from(b)
                }
            })
            .sum();
        if stored != computed {
            return Err(TarError::Checksum {
                offset,
                stored,
                computed,
            });
        }

        let size = numeric(&block[SIZE])
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| bad_number(offset, "size", &block[SIZE]))?;
        if size.checked_next_multiple_of(BLOCK as u64).is_none() {
            return Err(TarError::SizeTooLarge { offset, size });
        }
        let type_flag = block[TYPE];
        let extension = is_extension_format(&block);
        match type_flag {
            b'L' | b'K' | b'x' if extension => {
                let (slot, kind) = match type_flag {
                    b'L' => (&mut pending.long_name, "GNU long name"),
                    b'K' => (&mut pending.long_link, "GNU long link"),
                    _ => (&mut pending.pax, "PAX header"),
                };
                if slot.is_some() {
                    return Err(TarError::DuplicateExtension { offset, kind });
                }
                pending.total = pending.total.saturating_add(size);
                if pending.total > METADATA_MAX {
                    return Err(TarError::MetadataTooLarge {
                        offset,
                        size: pending.total,
                    });
                }
                let mut data = read_data(src, size, "extension header data")?;
                if type_flag != b'x' && data.last() == Some(&0) {
                    data.pop();
                }
                *slot = Some(data);
            }
            b'g' => {
                if size > METADATA_MAX {
                    return Err(TarError::MetadataTooLarge { offset, size });
                }
                read_data(src, size, "a PAX global header")?;
                // The reference applies no global records and forgets
                // the extensions that came before one.
                pending = Pending::default();
            }
            _ => return member(offset, &block, pending, size),
        }
    }
}

/// Resolves a member from its header block and pending extensions.
fn member(
    offset: u64,
    block: &[u8; BLOCK],
    pending: Pending,
    header_size: u64,
) -> Result<Event, TarError> {
    let mut path = c_string(&block[NAME]).to_vec();
    if is_ustar(block) {
        let prefix = c_string(&block[PREFIX]);
        if !prefix.is_empty() {
            path = [prefix, b"/", &path].concat();
        }
    }
    if let Some(long_name) = pending.long_name {
        path = long_name;
    }
    let mut link = match pending.long_link {
        Some(long_link) => long_link,
        None => c_string(&block[LINKNAME]).to_vec(),
    };
    let field = |range: std::ops::Range<usize>, name| {
        numeric(&block[range.clone()]).ok_or_else(|| bad_number(offset, name, &block[range]))
    };
    let unsigned = |range: std::ops::Range<usize>, name| {
        field(range.clone(), name)
            .and_then(|n| u64::try_from(n).map_err(|_| bad_number(offset, name, &block[range])))
    };
    let mode = unsigned(MODE, "mode")?;
    let mut uid = unsigned(UID, "uid")?;
    let mut gid = unsigned(GID, "gid")?;
    let mut mtime = field(MTIME, "mtime")?;
    let mut mtime_nsec = None;
    let mut size = header_size;
    let mut xattrs = Vec::new();
    let mut sparse = false;

    let pax_number = |key: &str, value: &[u8]| -> Result<u64, TarError> {
        std::str::from_utf8(value)
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| TarError::BadPaxValue {
                offset,
                key: key.to_owned(),
                value: value.escape_ascii().to_string(),
            })
    };
    let records = PaxRecords {
        rest: pending.pax.as_deref().unwrap_or_default(),
    };
    for record in records {
        let record = record.map_err(|reason| TarError::BadPaxRecord { offset, reason })?;
        let key = std::str::from_utf8(record.key).map_err(|_| TarError::BadPaxRecord {
            offset,
            reason: "a key is not UTF-8",
        })?;
        let value = record.value;
        match key {
            "path" => path = value.to_vec(),
            "linkpath" => link = value.to_vec(),
            "size" => size = pax_number(key, value)?,
            "uid" => uid = pax_number(key, value)?,
            "gid" => gid = pax_number(key, value)?,
            "mtime" => {
                // Seconds are what comes before the first '.', but the
                // whole value must be text.
                let seconds = match std::str::from_utf8(value) {
                    Ok(text) => text.split('.').next().unwrap_or_default().as_bytes(),
                    Err(_) => value,
                };
                mtime = i128::from(pax_number(key, seconds)?);
                // The reference takes the fraction of the first record
                // and the seconds of the last.
                mtime_nsec.get_or_insert_with(|| pax_nanoseconds(value));
            }
            _ if key.starts_with(PAX_SPARSE) => sparse = true,
            _ => {
                if let Some(name) = key.strip_prefix(PAX_XATTR) {
                    xattrs.push((name.as_bytes().to_vec(), value.to_vec()));
                }
            }
        }
    }

    if path.is_empty() {
        return Err(TarError::EmptyPath { offset });
    }
    let type_flag = block[TYPE];
    if sparse || type_flag == b'S' {
        return Err(TarError::Sparse {
            offset,
            path: shown(&path),
        });
    }
    let kind = match type_flag {
        b'0' | 0 | b'7' => Kind::File,
        b'1' => Kind::Hardlink,
        b'2' => Kind::Symlink,
        b'3' => Kind::CharDevice,
        b'4' => Kind::BlockDevice,
        b'5' => Kind::Directory,
        b'6' => Kind::Fifo,
        other => {
            return Err(TarError::UnknownEntryType {
                offset,
                path: shown(&path),
                type_flag: other,
            })
        }
    };
    let device = if is_extension_format(block) {
        let number = |range: std::ops::Range<usize>, name| {
            octal(&block[range.clone()])
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| bad_number(offset, name, &block[range]))
        };
        Some((
            number(DEV_MAJOR, "device major")?,
            number(DEV_MINOR, "device minor")?,
        ))
    } else {
        None
    };
    Ok(Event::Member(Header {
        kind,
        path,
        link,
        mode,
        uid,
        gid,
        mtime,
        mtime_nsec: mtime_nsec.unwrap_or(0),
        size,
        device,
        xattrs,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_fields() {
        assert_eq!(octal(b"0000644\0"), Some(0o644));
        assert_eq!(octal(b"  755 \0"), Some(0o755));
        assert_eq!(octal(b"\0\0\0"), Some(0));
        assert_eq!(octal(b"   "), Some(0));
        assert_eq!(octal(b"12\x0b"), Some(0o12));
        assert_eq!(octal(b"0009"), None);
        assert_eq!(octal(b"1 2"), None);
        assert_eq!(octal(b"\xff"), None);
        assert_eq!(octal(b"7777777777777777777777777"), None);
    }

    #[test]
    fn base_256_fields() {
        let mut field = [0u8; 12];
        field[0] = 0x80;
        field[4..].copy_from_slice(&(1u64 << 40).to_be_bytes());
        assert_eq!(numeric(&field), Some(1 << 40));
        // -1 and -1000 as GNU writes them.
        assert_eq!(numeric(&[0xff; 12]), Some(-1));
        let mut field = [0xffu8; 12];
        field[4..].copy_from_slice(&(-1000i64).to_be_bytes());
        assert_eq!(numeric(&field), Some(-1000));
        // More than 64 bits is kept exactly, for the caller to refuse.
        let mut field = [0u8; 12];
        field[0] = 0x80;
        field[3] = 1;
        assert_eq!(numeric(&field), Some(1 << 64));
    }

    #[test]
    fn pax_records() {
        let data = b"20 path=foo/bar.txt\n12 uid=1000\n";
        let records: Vec<_> = PaxRecords { rest: data }
            .map(|r| r.map(|r| (r.key.to_vec(), r.value.to_vec())))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            records,
            [
                (b"path".to_vec(), b"foo/bar.txt".to_vec()),
                (b"uid".to_vec(), b"1000".to_vec())
            ]
        );
        // No length: the list ends quietly.
        assert_eq!(PaxRecords { rest: b"junk" }.count(), 0);
        assert_eq!(PaxRecords { rest: b"\0\0\0" }.count(), 0);
        for bad in [
            &b"99 a=b\n"[..],
            b"6 a=b\0",
            b"6 abc\n",
            b"0 a=b\n",
            b"3 \n",
        ] {
            assert!(
                matches!(PaxRecords { rest: bad }.next(), Some(Err(_))),
                "{}",
                bad.escape_ascii()
            );
        }
    }

    #[test]
    fn pax_fraction() {
        assert_eq!(pax_nanoseconds(b"1234567890.123456789"), 123_456_789);
        assert_eq!(pax_nanoseconds(b"1234567890.5"), 500_000_000);
        assert_eq!(pax_nanoseconds(b"1234567890.000000001"), 1);
        assert_eq!(pax_nanoseconds(b"1234567890.1234567899"), 123_456_789);
        assert_eq!(pax_nanoseconds(b"1234567890"), 0);
        assert_eq!(pax_nanoseconds(b"1234567890."), 0);
        assert_eq!(pax_nanoseconds(b"1.5x"), 0);
    }
}
