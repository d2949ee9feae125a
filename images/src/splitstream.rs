//! Split streams: one file (a tar layer, an OCI config or manifest) kept as
//! a compressed list of chunks, where large pieces of content are not
//! copied in but named by the fs-verity digest of a repository object.
//!
//! This is what lets a repository store a tar layer with every file body
//! shared with the images built from it, yet still give back the original
//! tar bit for bit. A stream also carries *named* references to other
//! streams (a config names its layers and images), which garbage
//! collection follows without decompressing anything.
//!
//! The stream file is itself a repository object named by the fs-verity
//! digest of its bytes, so what [`SplitStreamWriter`] produces must be
//! byte-identical to what composefs-rs 0.9.4 writes for the same input:
//! same layout, same record order, same zstd library, level and frame
//! options. This module is the format only; where the bytes are stored is
//! the repository's business.
//!
//! Layout (integers little-endian, ranges are half-open `[start, end)`
//! byte offsets in the file):
//!
//! ```text
//! 0x00  header, 32 bytes: b"SplitStream", version u8 = 0, flags u16 = 0,
//!       fs-verity algorithm u8 (1 sha256, 2 sha512), lg_blocksize u8 = 12,
//!       info range
//! 0x20  info, 80 bytes: ranges of the stream refs, object refs, stream and
//!       named refs sections; content type u64; stream size u64 (length
//!       of the reassembled file)
//! 0x70  stream refs: raw digests, uncompressed
//!       object refs: raw digests, uncompressed, in order of first use
//!       named refs: one zstd frame of "{index}:{name}\0" records, sorted
//!       by name, each index pointing into the stream refs
//!       stream: one zstd frame of chunks, each an i64: n < 0 is followed
//!       by |n| bytes of inline data, n >= 0 is object_refs[n]
//! ```
//!
//! Writers before composefs-rs added `repr(C)` to the header let the
//! compiler reorder it (info range at 0, flags at 16, magic at 18, version,
//! algorithm and block size at 29..32). Such files still exist on disk, so
//! [`SplitStream::parse`] accepts that layout too; nothing writes it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{self, Read, Write};
use std::ops::Range;

use cfs_erofs::digest::{Algorithm, FsVerityDigest};
use cfs_erofs::format::FormatVersion;
use zerocopy::little_endian::{U16, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};
use zstd::stream::{read::Decoder, write::Encoder};

const MAGIC: [u8; 11] = *b"SplitStream";
/// Where the magic sits in the old, compiler-ordered header.
const OLD_MAGIC_OFFSET: usize = 18;
const LG_BLOCKSIZE: u8 = 12;
const HEADER_SIZE: usize = 32;
const INFO_SIZE: usize = 80;
/// zstd level 0 selects libzstd's default level (3), as the reference does.
const ZSTD_LEVEL: i32 = 0;
/// The magic number opening every (non-skippable) zstd frame.
const ZSTD_FRAME_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// log2 of the largest zstd window we agree to allocate when decoding:
/// 16 MiB, more than any level short of zstd's "ultra" ones asks for.
const WINDOW_LOG_MAX: u32 = 24;

/// Largest decompressed named refs section [`SplitStream::parse`] accepts.
pub const NAMED_REFS_MAX: usize = 16 << 20;

/// Largest inline piece [`Chunks`] yields; longer inline runs come out in
/// several consecutive pieces, so memory stays bounded whatever the
/// stream claims.
pub const INLINE_PIECE_MAX: usize = 1 << 20;

/// The named ref by which a stream that keeps an image alive (an OCI
/// config, an ostree commit) names its plain EROFS image, by format epoch.
pub fn image_ref_key(format: FormatVersion) -> &'static str {
    if format.is_c_layout() {
        "composefs.image.v1"
    } else {
        "composefs.image"
    }
}

/// The named ref of such a stream to its boot EROFS image.
pub fn boot_image_ref_key(format: FormatVersion) -> &'static str {
    if format.is_c_layout() {
        "composefs.image.boot.v1"
    } else {
        "composefs.image.boot"
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct FileRange {
    start: U64,
    end: U64,
}

impl FileRange {
    fn new(range: Range<usize>) -> Self {
        Self {
            start: U64::new(range.start as u64),
            end: U64::new(range.end as u64),
        }
    }
}

/// The header as written since composefs-rs made it `repr(C)`.
#[repr(C)]
#[derive(Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct Header {
    magic: [u8; 11],
    version: u8,
    flags: U16,
    algorithm: u8,
    lg_blocksize: u8,
    info: FileRange,
}

/// The same fields in the order rustc chose for the old, plain struct.
#[repr(C)]
#[derive(Debug, FromBytes, Immutable, KnownLayout)]
struct OldHeader {
    info: FileRange,
    flags: U16,
    magic: [u8; 11],
    version: u8,
    algorithm: u8,
    lg_blocksize: u8,
}

#[repr(C)]
#[derive(Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct Info {
    stream_refs: FileRange,
    object_refs: FileRange,
    stream: FileRange,
    named_refs: FileRange,
    content_type: U64,
    stream_size: U64,
}

const _: () = {
    assert!(size_of::<Header>() == HEADER_SIZE);
    assert!(size_of::<OldHeader>() == HEADER_SIZE);
    assert!(std::mem::offset_of!(OldHeader, magic) == OLD_MAGIC_OFFSET);
    assert!(size_of::<Info>() == INFO_SIZE);
};

/// What a stream holds, as 8 ASCII bytes read as a little-endian `u64`;
/// it keeps a reader from taking, say, a manifest for a tar layer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentType(pub u64);

impl ContentType {
    /// A tar layer (`ocilayer`).
    pub const OCI_LAYER: Self = Self::from_ascii(*b"ocilayer");
    /// An OCI image config (`ociconfg`).
    pub const OCI_CONFIG: Self = Self::from_ascii(*b"ociconfg");
    /// An OCI image manifest (`ocimanif`).
    pub const OCI_MANIFEST: Self = Self::from_ascii(*b"ocimanif");
    /// An OCI image index (`ociindex`); ours, the reference keeps none.
    pub const OCI_INDEX: Self = Self::from_ascii(*b"ociindex");
    /// A non-tar OCI artifact blob (`oci_blob`).
    pub const OCI_BLOB: Self = Self::from_ascii(*b"oci_blob");

    /// The content type spelled by `tag`.
    pub const fn from_ascii(tag: [u8; 8]) -> Self {
        Self(u64::from_le_bytes(tag))
    }

    /// The 8 bytes of the tag.
    pub const fn to_bytes(self) -> [u8; 8] {
        self.0.to_le_bytes()
    }
}

impl fmt::Display for ContentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_bytes().escape_ascii())
    }
}

impl fmt::Debug for ContentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentType(\"{self}\")")
    }
}

/// A part of a split stream file, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// The info section.
    Info,
    /// The stream refs array.
    StreamRefs,
    /// The object refs array.
    ObjectRefs,
    /// The compressed named refs.
    NamedRefs,
    /// The compressed chunk stream.
    Stream,
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Info => "info",
            Self::StreamRefs => "stream refs",
            Self::ObjectRefs => "object refs",
            Self::NamedRefs => "named refs",
            Self::Stream => "stream",
        })
    }
}

/// Why a split stream could not be written, parsed or reassembled.
///
/// Offsets called "decompressed" count bytes from the start of the
/// decompressed section; the others are file offsets.
#[derive(Debug, thiserror::Error)]
pub enum SplitStreamError {
    /// The file cannot even hold the header.
    #[error("split stream is {len} bytes, shorter than its {HEADER_SIZE}-byte header")]
    TooShort {
        /// File length.
        len: usize,
    },
    /// Neither header layout has the magic.
    #[error("not a split stream: no \"SplitStream\" magic at offset 0 or {OLD_MAGIC_OFFSET}")]
    BadMagic,
    /// A format version other than 0.
    #[error("unsupported split stream version {version}")]
    Version {
        /// The version byte.
        version: u8,
    },
    /// The stream's digests are of another algorithm than the caller's.
    #[error("split stream uses fs-verity algorithm id {found}, expected {expected} (id {})", expected.kernel_id())]
    Algorithm {
        /// The algorithm byte in the header.
        found: u8,
        /// The algorithm the caller reads with.
        expected: Algorithm,
    },
    /// A block size other than 4096.
    #[error("unsupported split stream fs-verity block size 2^{lg_blocksize}")]
    BlockSize {
        /// log2 of the block size in the header.
        lg_blocksize: u8,
    },
    /// A section range that is reversed, overlaps the header or ends past
    /// the end of the file.
    #[error("{section} section [{start}, {end}) is not within bytes [{HEADER_SIZE}, {file_len}) of the file")]
    Range {
        /// Which section.
        section: Section,
        /// Range start.
        start: u64,
        /// Range end.
        end: u64,
        /// File length.
        file_len: usize,
    },
    /// The info section is too small for the fields we need.
    #[error("info section at offset {start} is {len} bytes, less than {INFO_SIZE}")]
    InfoTooSmall {
        /// File offset of the section.
        start: u64,
        /// Its length.
        len: usize,
    },
    /// A reference array whose length is not a whole number of digests.
    #[error("{section} section at offset {start} is {len} bytes, not a multiple of the {digest_len}-byte digest")]
    RefArray {
        /// Which section.
        section: Section,
        /// File offset of the section.
        start: u64,
        /// Its length.
        len: usize,
        /// Digest length.
        digest_len: usize,
    },
    /// A compressed section that is not exactly one well-formed zstd frame.
    #[error("{section} section at offset {start} is not a zstd frame: {reason}")]
    Frame {
        /// Which section.
        section: Section,
        /// File offset of the section.
        start: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Bytes after the zstd frame of a compressed section.
    #[error("{section} section at offset {start} has {extra} bytes after its zstd frame")]
    FrameTrailing {
        /// Which section.
        section: Section,
        /// File offset of the section.
        start: u64,
        /// Number of extra bytes.
        extra: usize,
    },
    /// Decompressing a section failed.
    #[error("decompressing the {section} section at decompressed offset {offset}: {source}")]
    Decompress {
        /// Which section.
        section: Section,
        /// How far decompression got.
        offset: u64,
        /// The decoder's error.
        source: io::Error,
    },
    /// The named refs section decompresses to too much.
    #[error("named refs section decompresses to more than {NAMED_REFS_MAX} bytes")]
    NamedRefsTooLarge,
    /// A malformed named ref record.
    #[error("named ref record at decompressed offset {offset}: {reason}")]
    NamedRef {
        /// Where the record starts.
        offset: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A named ref pointing past the stream refs array.
    #[error("named ref record at decompressed offset {offset} uses stream ref {index}, but there are {count}")]
    NamedRefIndex {
        /// Where the record starts.
        offset: usize,
        /// The index in the record.
        index: usize,
        /// Number of stream refs.
        count: usize,
    },
    /// The same name twice in the named refs.
    #[error("named ref {name:?} appears twice")]
    DuplicateName {
        /// The name.
        name: String,
    },
    /// A name the format cannot store.
    #[error("named ref {name:?} contains a NUL byte")]
    InvalidName {
        /// The name.
        name: String,
    },
    /// An external chunk whose index is past the object refs array.
    #[error("external chunk at decompressed offset {offset} uses object ref {index}, but there are {count}")]
    ExternalIndex {
        /// Where the chunk starts.
        offset: u64,
        /// The index in the chunk.
        index: u64,
        /// Number of object refs.
        count: usize,
    },
    /// An inline chunk longer than what is left of the declared size.
    #[error("inline chunk at decompressed offset {offset} is {len} bytes, but only {left} of the declared stream size are left")]
    InlineTooLong {
        /// Where the chunk starts.
        offset: u64,
        /// Its announced length.
        len: u64,
        /// Declared stream size minus all earlier inline chunks.
        left: u64,
    },
    /// The chunk stream ends inside a chunk.
    #[error("chunk stream ends inside a chunk at decompressed offset {offset}")]
    Truncated {
        /// Where the data stops.
        offset: u64,
    },
    /// Opening or reading a referenced object failed.
    #[error("reading object {digest}: {source}")]
    Object {
        /// The object's digest, in hex.
        digest: String,
        /// The error.
        source: io::Error,
    },
    /// Writing the reassembled stream failed.
    #[error("writing the reassembled stream: {0}")]
    Output(#[source] io::Error),
    /// The reassembled stream does not have the declared size.
    #[error("split stream declares {declared} bytes but reassembles to {actual}{}", if *.more { " or more" } else { "" })]
    StreamSize {
        /// `stream_size` from the info section.
        declared: u64,
        /// Bytes produced.
        actual: u64,
        /// Whether reassembly stopped early because it had already
        /// produced more than declared.
        more: bool,
    },
}

/// Digests in first-insertion order, each once.
#[derive(Debug)]
struct RefList<H> {
    list: Vec<H>,
    index: HashMap<H, usize>,
}

impl<H: FsVerityDigest> RefList<H> {
    fn new() -> Self {
        Self {
            list: Vec::new(),
            index: HashMap::new(),
        }
    }

    fn insert(&mut self, digest: H) -> usize {
        *self.index.entry(digest).or_insert_with(|| {
            self.list.push(digest);
            self.list.len() - 1
        })
    }

    fn byte_len(&self) -> usize {
        self.list.len() * H::ALGORITHM.digest_len()
    }
}

/// Builds a split stream in memory, compressing the chunk stream as the
/// data arrives.
///
/// Inline data is buffered only until the next external chunk (the format
/// puts a run's length before its bytes); the compressed output is kept.
pub struct SplitStreamWriter<H: FsVerityDigest> {
    content_type: ContentType,
    stream: Encoder<'static, Vec<u8>>,
    pending: Vec<u8>,
    object_refs: RefList<H>,
    stream_refs: RefList<H>,
    named_refs: BTreeMap<String, usize>,
    stream_size: u64,
}

impl<H: FsVerityDigest> fmt::Debug for SplitStreamWriter<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SplitStreamWriter")
            .field("content_type", &self.content_type)
            .field("pending", &self.pending.len())
            .field("object_refs", &self.object_refs.list.len())
            .field("stream_refs", &self.stream_refs.list)
            .field("named_refs", &self.named_refs)
            .field("stream_size", &self.stream_size)
            .finish_non_exhaustive()
    }
}

/// A zstd encoder configured as the reference configures its own.
fn encoder() -> Encoder<'static, Vec<u8>> {
    Encoder::new(Vec::new(), ZSTD_LEVEL).expect("libzstd accepts its default level")
}

/// Feeds `bytes` to an in-memory encoder. libzstd fails only on bad
/// parameters or allocation failure, neither of which can happen here.
fn compress(encoder: &mut Encoder<'static, Vec<u8>>, bytes: &[u8]) {
    encoder
        .write_all(bytes)
        .expect("compressing into memory does not fail");
}

fn finish_frame(encoder: Encoder<'static, Vec<u8>>) -> Vec<u8> {
    encoder
        .finish()
        .expect("compressing into memory does not fail")
}

impl<H: FsVerityDigest> SplitStreamWriter<H> {
    /// An empty stream of the given content type.
    pub fn new(content_type: ContentType) -> Self {
        Self {
            content_type,
            stream: encoder(),
            pending: Vec::new(),
            object_refs: RefList::new(),
            stream_refs: RefList::new(),
            named_refs: BTreeMap::new(),
            stream_size: 0,
        }
    }

    /// Appends bytes stored in the stream itself. Consecutive inline
    /// writes become one chunk.
    pub fn write_inline(&mut self, data: &[u8]) {
        self.pending.extend_from_slice(data);
        self.stream_size += data.len() as u64;
    }

    /// Appends the content of the object `digest`, which is `size` bytes
    /// long. An object used several times is listed once in the object
    /// refs, at the place of its first use.
    pub fn write_external(&mut self, digest: H, size: u64) {
        self.flush_inline();
        let index = self.object_refs.insert(digest);
        let index = i64::try_from(index).expect("fewer than 2^63 objects fit in memory");
        compress(&mut self.stream, &index.to_le_bytes());
        self.stream_size += size;
    }

    /// Records that this stream refers to the stream `digest` under
    /// `name`. A name given twice keeps its last digest; every digest
    /// given stays in the stream refs (in order of first appearance), as
    /// with the reference writer. To reproduce the reference's
    /// `SplitStreamBuilder`, which replays its final name map, call this
    /// once per name in name order.
    pub fn add_stream_ref(&mut self, name: &str, digest: H) -> Result<(), SplitStreamError> {
        if name.contains('\0') {
            return Err(SplitStreamError::InvalidName {
                name: name.to_owned(),
            });
        }
        let index = self.stream_refs.insert(digest);
        self.named_refs.insert(name.to_owned(), index);
        Ok(())
    }

    /// Length of the stream written so far, as it will be reassembled.
    pub fn stream_size(&self) -> u64 {
        self.stream_size
    }

    fn flush_inline(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let len =
            i64::try_from(self.pending.len()).expect("a buffer in memory is below 2^63 bytes");
        compress(&mut self.stream, &(-len).to_le_bytes());
        compress(&mut self.stream, &self.pending);
        self.pending.clear();
    }

    /// The complete split stream file.
    pub fn finish(mut self) -> Vec<u8> {
        self.flush_inline();
        let stream = finish_frame(self.stream);
        let mut names = encoder();
        for (name, index) in &self.named_refs {
            compress(&mut names, format!("{index}:{name}\0").as_bytes());
        }
        let names = finish_frame(names);

        let info_start = HEADER_SIZE;
        let stream_refs_start = info_start + INFO_SIZE;
        let object_refs_start = stream_refs_start + self.stream_refs.byte_len();
        let named_refs_start = object_refs_start + self.object_refs.byte_len();
        let stream_start = named_refs_start + names.len();
        let end = stream_start + stream.len();

        let header = Header {
            magic: MAGIC,
            version: 0,
            flags: U16::ZERO,
            algorithm: H::ALGORITHM.kernel_id(),
            lg_blocksize: LG_BLOCKSIZE,
            info: FileRange::new(info_start..stream_refs_start),
        };
        let info = Info {
            stream_refs: FileRange::new(stream_refs_start..object_refs_start),
            object_refs: FileRange::new(object_refs_start..named_refs_start),
            stream: FileRange::new(stream_start..end),
            named_refs: FileRange::new(named_refs_start..stream_start),
            content_type: U64::new(self.content_type.0),
            stream_size: U64::new(self.stream_size),
        };
        let mut out = Vec::with_capacity(end);
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(info.as_bytes());
        for digest in self.stream_refs.list.iter().chain(&self.object_refs.list) {
            out.extend_from_slice(digest.as_ref());
        }
        out.extend_from_slice(&names);
        out.extend_from_slice(&stream);
        debug_assert_eq!(out.len(), end);
        out
    }
}

/// One piece of a stream, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk<'a, H> {
    /// Bytes stored in the stream; at most [`INLINE_PIECE_MAX`] of them.
    /// A long inline run comes as several consecutive pieces.
    Inline(Vec<u8>),
    /// The whole content of this object.
    External(&'a H),
}

/// A parsed split stream; the chunk stream is decompressed on demand by
/// [`SplitStream::chunks`].
pub struct SplitStream<H> {
    data: Vec<u8>,
    stream: Range<usize>,
    old_header: bool,
    content_type: ContentType,
    stream_size: u64,
    stream_refs: Vec<H>,
    object_refs: Vec<H>,
    named_refs: BTreeMap<String, H>,
}

impl<H: FsVerityDigest> fmt::Debug for SplitStream<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SplitStream")
            .field("len", &self.data.len())
            .field("old_header", &self.old_header)
            .field("content_type", &self.content_type)
            .field("stream_size", &self.stream_size)
            .field("stream_refs", &self.stream_refs)
            .field("object_refs", &self.object_refs.len())
            .field("named_refs", &self.named_refs)
            .finish_non_exhaustive()
    }
}

/// The header fields we check, from either layout, and whether it was the
/// old one.
fn read_header(data: &[u8]) -> Result<(Header, bool), SplitStreamError> {
    let too_short = || SplitStreamError::TooShort { len: data.len() };
    let (header, _) = Header::read_from_prefix(data).map_err(|_| too_short())?;
    if header.magic == MAGIC {
        return Ok((header, false));
    }
    let (old, _) = OldHeader::read_from_prefix(data).map_err(|_| too_short())?;
    if old.magic != MAGIC {
        return Err(SplitStreamError::BadMagic);
    }
    let header = Header {
        magic: old.magic,
        version: old.version,
        flags: old.flags,
        algorithm: old.algorithm,
        lg_blocksize: old.lg_blocksize,
        info: old.info,
    };
    Ok((header, true))
}

/// The bytes of `range`, which must lie after the header and inside the
/// file.
fn section(
    data: &[u8],
    section: Section,
    range: FileRange,
) -> Result<Range<usize>, SplitStreamError> {
    let (start, end) = (range.start.get(), range.end.get());
    let bad = || SplitStreamError::Range {
        section,
        start,
        end,
        file_len: data.len(),
    };
    let start_at = usize::try_from(start).map_err(|_| bad())?;
    let end_at = usize::try_from(end).map_err(|_| bad())?;
    if start_at < HEADER_SIZE || start_at > end_at || end_at > data.len() {
        return Err(bad());
    }
    Ok(start_at..end_at)
}

fn digests<H: FsVerityDigest>(
    data: &[u8],
    which: Section,
    range: FileRange,
) -> Result<Vec<H>, SplitStreamError> {
    let bytes = &data[section(data, which, range)?];
    let digest_len = H::ALGORITHM.digest_len();
    if !bytes.len().is_multiple_of(digest_len) {
        return Err(SplitStreamError::RefArray {
            section: which,
            start: range.start.get(),
            len: bytes.len(),
            digest_len,
        });
    }
    Ok(bytes
        .chunks_exact(digest_len)
        .map(|d| H::from_slice(d).expect("chunk has the digest length"))
        .collect())
}

/// Checks that `bytes` is exactly one complete zstd frame: a frame header
/// and block headers that add up, nothing after it. Block contents are
/// only checked when decompressed.
fn check_frame(bytes: &[u8], which: Section, start: u64) -> Result<(), SplitStreamError> {
    let frame_error = |reason| SplitStreamError::Frame {
        section: which,
        start,
        reason,
    };
    if !bytes.starts_with(&ZSTD_FRAME_MAGIC) {
        return Err(frame_error("no zstd frame magic"));
    }
    match zstd::zstd_safe::find_frame_compressed_size(bytes) {
        Ok(len) if len == bytes.len() => Ok(()),
        Ok(len) => Err(SplitStreamError::FrameTrailing {
            section: which,
            start,
            extra: bytes.len().saturating_sub(len),
        }),
        Err(code) => Err(frame_error(zstd::zstd_safe::get_error_name(code))),
    }
}

/// A decoder for one frame of in-memory data, with bounded window memory.
fn decoder(bytes: &[u8]) -> io::Result<Decoder<'static, &[u8]>> {
    let mut decoder = Decoder::with_buffer(bytes)?.single_frame();
    decoder.window_log_max(WINDOW_LOG_MAX)?;
    Ok(decoder)
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn parse_named_refs<H: FsVerityDigest>(
    compressed: &[u8],
    stream_refs: &[H],
) -> Result<BTreeMap<String, H>, SplitStreamError> {
    let mut text = Vec::new();
    decoder(compressed)
        .and_then(|d| d.take(NAMED_REFS_MAX as u64 + 1).read_to_end(&mut text))
        .map_err(|source| SplitStreamError::Decompress {
            section: Section::NamedRefs,
            offset: text.len() as u64,
            source,
        })?;
    if text.len() > NAMED_REFS_MAX {
        return Err(SplitStreamError::NamedRefsTooLarge);
    }
    let mut names = BTreeMap::new();
    let mut offset = 0;
    while offset < text.len() {
        let malformed = |reason| SplitStreamError::NamedRef { offset, reason };
        let rest = &text[offset..];
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| malformed("no NUL terminator"))?;
        let record = &rest[..end];
        let colon = record
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| malformed("no ':' after the index"))?;
        let (digits, name) = (&record[..colon], &record[colon + 1..]);
        let index: usize = std::str::from_utf8(digits)
            .ok()
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| malformed("the index is not a decimal number"))?;
        let digest = stream_refs
            .get(index)
            .ok_or(SplitStreamError::NamedRefIndex {
                offset,
                index,
                count: stream_refs.len(),
            })?;
        let name = std::str::from_utf8(name).map_err(|_| malformed("the name is not UTF-8"))?;
        if names.insert(name.to_owned(), *digest).is_some() {
            return Err(SplitStreamError::DuplicateName {
                name: name.to_owned(),
            });
        }
        offset += end + 1;
    }
    Ok(names)
}

impl<H: FsVerityDigest> SplitStream<H> {
    /// Parses and checks a whole split stream file: header (either
    /// layout), info, reference arrays and named refs, and the framing of
    /// the chunk stream. The chunks themselves are checked as
    /// [`chunks`](Self::chunks) decodes them.
    pub fn parse(bytes: impl Into<Vec<u8>>) -> Result<Self, SplitStreamError> {
        let data = bytes.into();
        let (header, old_header) = read_header(&data)?;
        if header.version != 0 {
            return Err(SplitStreamError::Version {
                version: header.version,
            });
        }
        if header.algorithm != H::ALGORITHM.kernel_id() {
            return Err(SplitStreamError::Algorithm {
                found: header.algorithm,
                expected: H::ALGORITHM,
            });
        }
        if header.lg_blocksize != LG_BLOCKSIZE {
            return Err(SplitStreamError::BlockSize {
                lg_blocksize: header.lg_blocksize,
            });
        }
        let info_bytes = &data[section(&data, Section::Info, header.info)?];
        let (info, _) =
            Info::read_from_prefix(info_bytes).map_err(|_| SplitStreamError::InfoTooSmall {
                start: header.info.start.get(),
                len: info_bytes.len(),
            })?;
        let stream_refs = digests(&data, Section::StreamRefs, info.stream_refs)?;
        let object_refs = digests(&data, Section::ObjectRefs, info.object_refs)?;

        let names_at = section(&data, Section::NamedRefs, info.named_refs)?;
        check_frame(
            &data[names_at.clone()],
            Section::NamedRefs,
            info.named_refs.start.get(),
        )?;
        let named_refs = parse_named_refs(&data[names_at], &stream_refs)?;

        let stream = section(&data, Section::Stream, info.stream)?;
        check_frame(
            &data[stream.clone()],
            Section::Stream,
            info.stream.start.get(),
        )?;

        Ok(Self {
            data,
            stream,
            old_header,
            content_type: ContentType(info.content_type.get()),
            stream_size: info.stream_size.get(),
            stream_refs,
            object_refs,
            named_refs,
        })
    }

    /// What the stream holds.
    pub fn content_type(&self) -> ContentType {
        self.content_type
    }

    /// The declared length of the reassembled stream.
    pub fn stream_size(&self) -> u64 {
        self.stream_size
    }

    /// Whether the file has the old, compiler-ordered header layout.
    pub fn has_old_header(&self) -> bool {
        self.old_header
    }

    /// The objects the chunks refer to, each once, in order of first use.
    pub fn object_refs(&self) -> &[H] {
        &self.object_refs
    }

    /// The streams this one refers to (what garbage collection follows),
    /// including any no longer named.
    pub fn stream_refs(&self) -> &[H] {
        &self.stream_refs
    }

    /// The named references, sorted by name.
    pub fn named_refs(&self) -> impl Iterator<Item = (&str, &H)> {
        self.named_refs
            .iter()
            .map(|(name, digest)| (name.as_str(), digest))
    }

    /// The stream named `name`, if any.
    pub fn named_ref(&self, name: &str) -> Option<&H> {
        self.named_refs.get(name)
    }

    /// The chunks in order, decompressed lazily. After an error the
    /// iterator ends.
    pub fn chunks(&self) -> Chunks<'_, H> {
        let (decoder, error) = match decoder(&self.data[self.stream.clone()]) {
            Ok(decoder) => (Some(decoder), None),
            Err(source) => (
                None,
                Some(SplitStreamError::Decompress {
                    section: Section::Stream,
                    offset: 0,
                    source,
                }),
            ),
        };
        Chunks {
            decoder,
            error,
            object_refs: &self.object_refs,
            offset: 0,
            inline_left: 0,
            inline_budget: self.stream_size,
        }
    }

    /// Writes the original bytes to `out`, reading each external chunk
    /// from `open_object`; returns the length, which must equal the
    /// declared [`stream_size`](Self::stream_size).
    pub fn reassemble<R: Read>(
        &self,
        mut open_object: impl FnMut(&H) -> io::Result<R>,
        out: &mut impl Write,
    ) -> Result<u64, SplitStreamError> {
        let mut total = 0u64;
        let mut buf = vec![0u8; 64 << 10];
        let too_long = |actual| SplitStreamError::StreamSize {
            declared: self.stream_size,
            actual,
            more: true,
        };
        for chunk in self.chunks() {
            match chunk? {
                Chunk::Inline(bytes) => {
                    out.write_all(&bytes).map_err(SplitStreamError::Output)?;
                    total += bytes.len() as u64;
                }
                Chunk::External(digest) => {
                    let object_error = |source| SplitStreamError::Object {
                        digest: digest.to_hex(),
                        source,
                    };
                    let mut object = open_object(digest).map_err(object_error)?;
                    loop {
                        let n = match object.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => n,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Err(e) => return Err(object_error(e)),
                        };
                        total += n as u64;
                        if total > self.stream_size {
                            return Err(too_long(total));
                        }
                        out.write_all(&buf[..n]).map_err(SplitStreamError::Output)?;
                    }
                }
            }
            if total > self.stream_size {
                return Err(too_long(total));
            }
        }
        if total != self.stream_size {
            return Err(SplitStreamError::StreamSize {
                declared: self.stream_size,
                actual: total,
                more: false,
            });
        }
        Ok(total)
    }
}

/// Iterator over the chunks of a [`SplitStream`].
pub struct Chunks<'a, H> {
    decoder: Option<Decoder<'static, &'a [u8]>>,
    error: Option<SplitStreamError>,
    object_refs: &'a [H],
    /// Decompressed bytes consumed so far.
    offset: u64,
    /// Bytes of the current inline run not yet yielded.
    inline_left: u64,
    /// Declared stream size minus every inline run announced so far.
    inline_budget: u64,
}

impl<H: FsVerityDigest> fmt::Debug for Chunks<'_, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunks")
            .field("offset", &self.offset)
            .field("inline_left", &self.inline_left)
            .field("finished", &self.decoder.is_none())
            .finish_non_exhaustive()
    }
}

impl<'a, H: FsVerityDigest> Chunks<'a, H> {
    fn step(&mut self) -> Result<Option<Chunk<'a, H>>, SplitStreamError> {
        let Some(decoder) = self.decoder.as_mut() else {
            return Ok(None);
        };
        let at = self.offset;
        let decompress_error = |source| SplitStreamError::Decompress {
            section: Section::Stream,
            offset: at,
            source,
        };
        if self.inline_left == 0 {
            let mut word = [0u8; 8];
            match read_full(decoder, &mut word).map_err(decompress_error)? {
                0 => return Ok(None),
                8 => self.offset += 8,
                n => {
                    return Err(SplitStreamError::Truncated {
                        offset: at + n as u64,
                    })
                }
            }
            let value = i64::from_le_bytes(word);
            if value >= 0 {
                let refs = self.object_refs;
                let digest = usize::try_from(value)
                    .ok()
                    .and_then(|index| refs.get(index))
                    .ok_or(SplitStreamError::ExternalIndex {
                        offset: at,
                        index: value.unsigned_abs(),
                        count: refs.len(),
                    })?;
                return Ok(Some(Chunk::External(digest)));
            }
            let len = value.unsigned_abs();
            if len > self.inline_budget {
                return Err(SplitStreamError::InlineTooLong {
                    offset: at,
                    len,
                    left: self.inline_budget,
                });
            }
            self.inline_budget -= len;
            self.inline_left = len;
        }
        let at = self.offset;
        let piece =
            usize::try_from(self.inline_left).map_or(INLINE_PIECE_MAX, |n| n.min(INLINE_PIECE_MAX));
        let mut bytes = vec![0u8; piece];
        let got =
            read_full(decoder, &mut bytes).map_err(|source| SplitStreamError::Decompress {
                section: Section::Stream,
                offset: at,
                source,
            })?;
        if got < piece {
            return Err(SplitStreamError::Truncated {
                offset: at + got as u64,
            });
        }
        self.offset += piece as u64;
        self.inline_left -= piece as u64;
        Ok(Some(Chunk::Inline(bytes)))
    }
}

impl<'a, H: FsVerityDigest> Iterator for Chunks<'a, H> {
    type Item = Result<Chunk<'a, H>, SplitStreamError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(error) = self.error.take() {
            return Some(Err(error));
        }
        match self.step() {
            Ok(Some(chunk)) => Some(Ok(chunk)),
            Ok(None) => {
                self.decoder = None;
                None
            }
            Err(error) => {
                self.decoder = None;
                Some(Err(error))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use cfs_erofs::digest::{Sha256Digest, Sha512Digest};

    use super::*;

    fn d(n: u8) -> Sha256Digest {
        Sha256Digest([n; 32])
    }

    fn collect(stream: &SplitStream<Sha256Digest>) -> Vec<Chunk<'_, Sha256Digest>> {
        stream.chunks().collect::<Result<_, _>>().unwrap()
    }

    fn decompress(bytes: &[u8]) -> Vec<u8> {
        zstd::decode_all(bytes).unwrap()
    }

    /// The decompressed chunk stream of a file we wrote.
    fn raw_stream(file: &[u8]) -> Vec<u8> {
        let info = Info::read_from_prefix(&file[HEADER_SIZE..]).unwrap().0;
        let range = info.stream.start.get() as usize..info.stream.end.get() as usize;
        decompress(&file[range])
    }

    fn compressed(bytes: &[u8]) -> Vec<u8> {
        let mut e = encoder();
        compress(&mut e, bytes);
        finish_frame(e)
    }

    /// A file made from raw parts, for feeding the parser what our writer
    /// never produces.
    fn build(
        stream_refs: &[Sha256Digest],
        object_refs: &[Sha256Digest],
        names: &[u8],
        stream: &[u8],
        stream_size: u64,
    ) -> Vec<u8> {
        let names = compressed(names);
        let stream = compressed(stream);
        let a = HEADER_SIZE + INFO_SIZE;
        let b = a + 32 * stream_refs.len();
        let c = b + 32 * object_refs.len();
        let e = c + names.len();
        let f = e + stream.len();
        let header = Header {
            magic: MAGIC,
            version: 0,
            flags: U16::ZERO,
            algorithm: 1,
            lg_blocksize: 12,
            info: FileRange::new(HEADER_SIZE..a),
        };
        let info = Info {
            stream_refs: FileRange::new(a..b),
            object_refs: FileRange::new(b..c),
            stream: FileRange::new(e..f),
            named_refs: FileRange::new(c..e),
            content_type: U64::new(ContentType::OCI_LAYER.0),
            stream_size: U64::new(stream_size),
        };
        let mut out = header.as_bytes().to_vec();
        out.extend_from_slice(info.as_bytes());
        for digest in stream_refs.iter().chain(object_refs) {
            out.extend_from_slice(&digest.0);
        }
        out.extend_from_slice(&names);
        out.extend_from_slice(&stream);
        out
    }

    /// The same file with the old, compiler-ordered header.
    fn to_old_header(file: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&file[16..32]); // info range
        out.extend_from_slice(&file[12..14]); // flags
        out.extend_from_slice(&file[0..11]); // magic
        out.push(file[11]); // version
        out.extend_from_slice(&file[14..16]); // algorithm, lg_blocksize
        out.extend_from_slice(&file[32..]);
        out
    }

    fn objects(data: &[&[u8]]) -> HashMap<Sha256Digest, Vec<u8>> {
        data.iter()
            .enumerate()
            .map(|(i, bytes)| (d(i as u8 + 1), bytes.to_vec()))
            .collect()
    }

    fn reassemble(
        stream: &SplitStream<Sha256Digest>,
        objects: &HashMap<Sha256Digest, Vec<u8>>,
    ) -> Result<Vec<u8>, SplitStreamError> {
        let mut out = Vec::new();
        let len = stream.reassemble(
            |digest| {
                objects
                    .get(digest)
                    .map(|b| io::Cursor::new(b.clone()))
                    .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
            },
            &mut out,
        )?;
        assert_eq!(len, out.len() as u64);
        Ok(out)
    }

    fn parse_err(file: &[u8]) -> SplitStreamError {
        SplitStream::<Sha256Digest>::parse(file).unwrap_err()
    }

    /// Every chunk of a parsed file; the first error if there is one.
    fn chunk_err(file: &[u8]) -> SplitStreamError {
        let stream = SplitStream::<Sha256Digest>::parse(file).unwrap();
        let error = stream.chunks().find_map(Result::err).expect("an error");
        let mut chunks = stream.chunks();
        while let Some(Ok(_)) = chunks.next() {}
        assert!(chunks.next().is_none(), "iterator ends after an error");
        error
    }

    #[test]
    fn content_types() {
        assert_eq!(ContentType::OCI_LAYER.0, u64::from_le_bytes(*b"ocilayer"));
        assert_eq!(ContentType::OCI_CONFIG.to_string(), "ociconfg");
        assert_eq!(ContentType::OCI_MANIFEST.to_string(), "ocimanif");
        assert_eq!(ContentType::OCI_BLOB.to_string(), "oci_blob");
        assert_eq!(
            ContentType(1).to_string(),
            "\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00"
        );
        assert_eq!(
            format!("{:?}", ContentType::OCI_LAYER),
            "ContentType(\"ocilayer\")"
        );
    }

    #[test]
    fn empty_stream() {
        let file = SplitStreamWriter::<Sha256Digest>::new(ContentType::OCI_BLOB).finish();
        assert_eq!(&file[..11], b"SplitStream");
        assert_eq!(&file[11..16], &[0, 0, 0, 1, 12]);
        let info = Info::read_from_prefix(&file[HEADER_SIZE..]).unwrap().0;
        assert_eq!(info.stream_refs.start.get(), 0x70);
        assert_eq!(info.named_refs.start.get(), 0x70);
        // The empty named refs frame is 9 bytes, as the reference's.
        assert_eq!(info.named_refs.end.get(), 0x70 + 9);
        assert_eq!(info.stream.start.get(), 0x70 + 9);
        assert_eq!(info.stream.end.get(), file.len() as u64);
        let stream = SplitStream::<Sha256Digest>::parse(&file[..]).unwrap();
        assert_eq!(stream.content_type(), ContentType::OCI_BLOB);
        assert_eq!(stream.stream_size(), 0);
        assert!(stream.object_refs().is_empty() && stream.stream_refs().is_empty());
        assert_eq!(stream.named_refs().count(), 0);
        assert!(!stream.has_old_header());
        assert!(collect(&stream).is_empty());
        assert!(reassemble(&stream, &HashMap::new()).unwrap().is_empty());
    }

    #[test]
    fn inline_only() {
        let mut w = SplitStreamWriter::<Sha256Digest>::new(ContentType::OCI_LAYER);
        w.write_inline(b"hello ");
        w.write_inline(b"");
        w.write_inline(b"world");
        assert_eq!(w.stream_size(), 11);
        let file = w.finish();
        let mut expected = (-11i64).to_le_bytes().to_vec();
        expected.extend_from_slice(b"hello world");
        assert_eq!(raw_stream(&file), expected);
        let stream = SplitStream::<Sha256Digest>::parse(file).unwrap();
        assert_eq!(collect(&stream), [Chunk::Inline(b"hello world".to_vec())]);
        assert_eq!(
            reassemble(&stream, &HashMap::new()).unwrap(),
            b"hello world"
        );
    }

    #[test]
    fn external_only_dedups_in_first_use_order() {
        let objects = objects(&[b"one", b"two!"]);
        let mut w = SplitStreamWriter::new(ContentType::OCI_CONFIG);
        w.write_external(d(2), 4);
        w.write_external(d(1), 3);
        w.write_external(d(2), 4);
        let file = w.finish();
        let expected: Vec<u8> = [0i64, 1, 0].iter().flat_map(|i| i.to_le_bytes()).collect();
        assert_eq!(raw_stream(&file), expected);
        let stream = SplitStream::<Sha256Digest>::parse(file).unwrap();
        assert_eq!(stream.object_refs(), [d(2), d(1)]);
        assert_eq!(
            collect(&stream),
            [
                Chunk::External(&d(2)),
                Chunk::External(&d(1)),
                Chunk::External(&d(2))
            ]
        );
        assert_eq!(reassemble(&stream, &objects).unwrap(), b"two!onetwo!");
        assert_eq!(stream.stream_size(), 11);
    }

    #[test]
    fn mixed_chunks_coalesce_inline_runs() {
        let objects = objects(&[b"AAAA", b"BB"]);
        let mut w = SplitStreamWriter::new(ContentType::OCI_LAYER);
        w.write_inline(b"ab");
        w.write_inline(b"cd");
        w.write_external(d(1), 4);
        w.write_inline(b"");
        w.write_external(d(2), 2);
        w.write_inline(b"x");
        let file = w.finish();
        let mut expected = (-4i64).to_le_bytes().to_vec();
        expected.extend_from_slice(b"abcd");
        expected.extend_from_slice(&0i64.to_le_bytes());
        expected.extend_from_slice(&1i64.to_le_bytes());
        expected.extend_from_slice(&(-1i64).to_le_bytes());
        expected.push(b'x');
        assert_eq!(raw_stream(&file), expected);
        let stream = SplitStream::<Sha256Digest>::parse(file).unwrap();
        assert_eq!(
            collect(&stream),
            [
                Chunk::Inline(b"abcd".to_vec()),
                Chunk::External(&d(1)),
                Chunk::External(&d(2)),
                Chunk::Inline(b"x".to_vec()),
            ]
        );
        assert_eq!(reassemble(&stream, &objects).unwrap(), b"abcdAAAABBx");
    }

    #[test]
    fn named_refs_sorted_and_last_name_wins() {
        let mut w = SplitStreamWriter::new(ContentType::OCI_CONFIG);
        w.add_stream_ref("b", d(1)).unwrap();
        w.add_stream_ref("a", d(2)).unwrap();
        w.add_stream_ref("config:sha256:00", d(1)).unwrap();
        w.add_stream_ref("b", d(3)).unwrap();
        w.add_stream_ref("", d(2)).unwrap();
        assert!(matches!(
            w.add_stream_ref("x\0y", d(4)),
            Err(SplitStreamError::InvalidName { .. })
        ));
        let file = w.finish();
        let info = Info::read_from_prefix(&file[HEADER_SIZE..]).unwrap().0;
        let names = &file[info.named_refs.start.get() as usize..info.named_refs.end.get() as usize];
        assert_eq!(
            decompress(names),
            b"1:\x001:a\x002:b\x000:config:sha256:00\x00"
        );
        let stream = SplitStream::<Sha256Digest>::parse(file).unwrap();
        assert_eq!(stream.stream_refs(), [d(1), d(2), d(3)]);
        let named: Vec<_> = stream.named_refs().collect();
        assert_eq!(
            named,
            [
                ("", &d(2)),
                ("a", &d(2)),
                ("b", &d(3)),
                ("config:sha256:00", &d(1))
            ]
        );
        assert_eq!(stream.named_ref("b"), Some(&d(3)));
        assert_eq!(stream.named_ref("c"), None);
    }

    #[test]
    fn sha512_round_trip_and_algorithm_check() {
        let digest = Sha512Digest([7; 64]);
        let mut w = SplitStreamWriter::new(ContentType::OCI_MANIFEST);
        w.add_stream_ref("x", digest).unwrap();
        w.write_inline(b"{}");
        w.write_external(digest, 10);
        let file = w.finish();
        assert_eq!(file[14], 2);
        let stream = SplitStream::<Sha512Digest>::parse(&file[..]).unwrap();
        assert_eq!(stream.object_refs(), [digest]);
        assert_eq!(stream.stream_refs(), [digest]);
        assert_eq!(stream.stream_size(), 12);
        assert!(matches!(
            parse_err(&file),
            SplitStreamError::Algorithm {
                found: 2,
                expected: Algorithm::Sha256
            }
        ));
    }

    #[test]
    fn old_header_layout_is_read() {
        let objects = objects(&[b"0123456789"]);
        let mut w = SplitStreamWriter::new(ContentType::OCI_LAYER);
        w.add_stream_ref("layer", d(9)).unwrap();
        w.write_inline(b"head");
        w.write_external(d(1), 10);
        let file = w.finish();
        let old = to_old_header(&file);
        assert_eq!(
            &old[OLD_MAGIC_OFFSET..OLD_MAGIC_OFFSET + 11],
            b"SplitStream"
        );
        let stream = SplitStream::<Sha256Digest>::parse(old.clone()).unwrap();
        assert!(stream.has_old_header());
        assert_eq!(stream.named_ref("layer"), Some(&d(9)));
        assert_eq!(reassemble(&stream, &objects).unwrap(), b"head0123456789");
        // The old layout's header checks apply too.
        let mut bad = old.clone();
        bad[29] = 1;
        assert!(matches!(
            parse_err(&bad),
            SplitStreamError::Version { version: 1 }
        ));
        let mut bad = old;
        bad[31] = 16;
        assert!(matches!(
            parse_err(&bad),
            SplitStreamError::BlockSize { lg_blocksize: 16 }
        ));
    }

    #[test]
    fn long_inline_runs_come_in_bounded_pieces() {
        let data: Vec<u8> = (0..INLINE_PIECE_MAX * 2 + 100)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut w = SplitStreamWriter::<Sha256Digest>::new(ContentType::OCI_LAYER);
        w.write_inline(&data);
        let stream = SplitStream::<Sha256Digest>::parse(w.finish()).unwrap();
        let lens: Vec<usize> = collect(&stream)
            .iter()
            .map(|c| match c {
                Chunk::Inline(b) => b.len(),
                Chunk::External(_) => panic!("no externals"),
            })
            .collect();
        assert_eq!(lens, [INLINE_PIECE_MAX, INLINE_PIECE_MAX, 100]);
        assert_eq!(reassemble(&stream, &HashMap::new()).unwrap(), data);
    }

    #[test]
    fn reassembly_checks_objects_and_size() {
        let mut w = SplitStreamWriter::new(ContentType::OCI_LAYER);
        w.write_inline(b"ab");
        w.write_external(d(1), 3);
        let stream = SplitStream::<Sha256Digest>::parse(w.finish()).unwrap();
        assert!(matches!(
            reassemble(&stream, &HashMap::new()),
            Err(SplitStreamError::Object { .. })
        ));
        assert!(matches!(
            reassemble(&stream, &objects(&[b"xy"])),
            Err(SplitStreamError::StreamSize {
                declared: 5,
                actual: 4,
                more: false
            })
        ));
        assert!(matches!(
            reassemble(&stream, &objects(&[b"wxyz"])),
            Err(SplitStreamError::StreamSize {
                declared: 5,
                actual: 6,
                more: true
            })
        ));
        let mut out = Vec::new();
        let failing = stream.reassemble(
            |_| Ok(io::Cursor::new(b"xyz".to_vec())),
            &mut io::Cursor::new(&mut [0u8; 3][..]),
        );
        assert!(matches!(failing, Err(SplitStreamError::Output(_))));
        assert_eq!(stream.reassemble(|_| Ok(&b"xyz"[..]), &mut out).unwrap(), 5);
        assert_eq!(out, b"abxyz");
    }

    #[test]
    fn header_rejections() {
        let good = {
            let mut w = SplitStreamWriter::<Sha256Digest>::new(ContentType::OCI_LAYER);
            w.write_inline(b"data");
            w.finish()
        };
        assert!(matches!(
            parse_err(&good[..31]),
            SplitStreamError::TooShort { len: 31 }
        ));
        let mut bad = good.clone();
        bad[0] = b's';
        assert!(matches!(parse_err(&bad), SplitStreamError::BadMagic));
        let mut bad = good.clone();
        bad[11] = 1;
        assert!(matches!(
            parse_err(&bad),
            SplitStreamError::Version { version: 1 }
        ));
        let mut bad = good.clone();
        bad[14] = 3;
        assert!(matches!(
            parse_err(&bad),
            SplitStreamError::Algorithm { found: 3, .. }
        ));
        let mut bad = good.clone();
        bad[15] = 16;
        assert!(matches!(
            parse_err(&bad),
            SplitStreamError::BlockSize { lg_blocksize: 16 }
        ));

        let set = |file: &mut Vec<u8>, at: usize, value: u64| {
            file[at..at + 8].copy_from_slice(&value.to_le_bytes());
        };
        // The info range: overlapping the header, past the end, reversed,
        // absurd, too small.
        for (start, end) in [
            (16, 96),
            (32, good.len() as u64 + 1),
            (40, 32),
            (u64::MAX, u64::MAX),
        ] {
            let mut bad = good.clone();
            set(&mut bad, 16, start);
            set(&mut bad, 24, end);
            assert!(
                matches!(
                    parse_err(&bad),
                    SplitStreamError::Range {
                        section: Section::Info,
                        ..
                    }
                ),
                "{start}..{end}"
            );
        }
        let mut bad = good.clone();
        set(&mut bad, 24, 32 + 79);
        assert!(matches!(
            parse_err(&bad),
            SplitStreamError::InfoTooSmall { len: 79, .. }
        ));
        // A larger info section is fine: the extra bytes are ignored.
        let mut larger = good.clone();
        set(&mut larger, 24, 32 + 90);
        assert!(SplitStream::<Sha256Digest>::parse(larger).is_ok());
    }

    #[test]
    fn section_rejections() {
        let good = build(&[d(1)], &[d(2)], b"0:x\0", &0i64.to_le_bytes(), 3);
        assert!(SplitStream::<Sha256Digest>::parse(&good[..]).is_ok());
        let set = |file: &mut Vec<u8>, at: usize, value: u64| {
            file[at..at + 8].copy_from_slice(&value.to_le_bytes());
        };
        // Info fields: stream refs at 0x20, object refs 0x30, stream 0x40,
        // named refs 0x50.
        let cases: [(usize, Section); 4] = [
            (0x20, Section::StreamRefs),
            (0x30, Section::ObjectRefs),
            (0x40, Section::Stream),
            (0x50, Section::NamedRefs),
        ];
        for (field, which) in cases {
            let mut bad = good.clone();
            set(&mut bad, field + 8, good.len() as u64 + 1);
            assert!(
                matches!(parse_err(&bad), SplitStreamError::Range { section, .. } if section == which),
                "{which}"
            );
            let mut bad = good.clone();
            set(&mut bad, field, 8);
            assert!(
                matches!(parse_err(&bad), SplitStreamError::Range { .. }),
                "{which}"
            );
        }
        // Reference arrays must hold whole digests.
        let mut bad = good.clone();
        set(&mut bad, 0x28, 0x70 + 31);
        assert!(matches!(
            parse_err(&bad),
            SplitStreamError::RefArray {
                section: Section::StreamRefs,
                len: 31,
                digest_len: 32,
                ..
            }
        ));
        let mut bad = good.clone();
        set(&mut bad, 0x38, 0x90 + 33);
        assert!(matches!(
            parse_err(&bad),
            SplitStreamError::RefArray {
                section: Section::ObjectRefs,
                ..
            }
        ));
        // Compressed sections: cut short, not zstd, extra bytes.
        let stream_end = u64::from_le_bytes(good[0x48..0x50].try_into().unwrap());
        let mut bad = good.clone();
        set(&mut bad, 0x48, stream_end - 1);
        assert!(matches!(
            parse_err(&bad),
            SplitStreamError::Frame {
                section: Section::Stream,
                ..
            }
        ));
        let mut bad = good.clone();
        bad.push(0);
        set(&mut bad, 0x48, stream_end + 1);
        assert!(matches!(
            parse_err(&bad),
            SplitStreamError::FrameTrailing {
                section: Section::Stream,
                extra: 1,
                ..
            }
        ));
        let named_start = u64::from_le_bytes(good[0x50..0x58].try_into().unwrap()) as usize;
        let mut bad = good.clone();
        bad[named_start] ^= 0xff;
        assert!(matches!(
            parse_err(&bad),
            SplitStreamError::Frame {
                section: Section::NamedRefs,
                reason: "no zstd frame magic",
                ..
            }
        ));
        let mut bad = good.clone();
        set(&mut bad, 0x40, stream_end);
        assert!(matches!(
            parse_err(&bad),
            SplitStreamError::Frame {
                section: Section::Stream,
                ..
            }
        ));
    }

    #[test]
    fn named_ref_rejections() {
        let parse = |names: &[u8]| {
            SplitStream::<Sha256Digest>::parse(build(&[d(1), d(2)], &[], names, b"", 0))
        };
        assert_eq!(parse(b"0:a\x001:b\x00").unwrap().named_refs().count(), 2);
        assert_eq!(parse(b"01:a\0").unwrap().named_ref("a"), Some(&d(2)));
        for (names, offset, reason) in [
            (&b"0:a\x001:b"[..], 4, "no NUL terminator"),
            (b"0a\0", 0, "no ':' after the index"),
            (b"0:a\0:b\0", 4, "the index is not a decimal number"),
            (b"+1:a\0", 0, "the index is not a decimal number"),
            (b"-1:a\0", 0, "the index is not a decimal number"),
            (
                b"99999999999999999999999:a\0",
                0,
                "the index is not a decimal number",
            ),
            (b"0:\xff\0", 0, "the name is not UTF-8"),
        ] {
            match parse(names) {
                Err(SplitStreamError::NamedRef {
                    offset: o,
                    reason: r,
                }) => {
                    assert_eq!((o, r), (offset, reason), "{}", names.escape_ascii())
                }
                other => panic!("{}: {other:?}", names.escape_ascii()),
            }
        }
        assert!(matches!(
            parse(b"0:a\x002:b\0"),
            Err(SplitStreamError::NamedRefIndex {
                offset: 4,
                index: 2,
                count: 2
            })
        ));
        assert!(matches!(
            parse(b"0:a\x001:a\0"),
            Err(SplitStreamError::DuplicateName { name }) if name == "a"
        ));
        let huge = vec![b'a'; NAMED_REFS_MAX + 1];
        assert!(matches!(
            parse(&huge),
            Err(SplitStreamError::NamedRefsTooLarge)
        ));
    }

    #[test]
    fn chunk_rejections() {
        let mut stream = 5i64.to_le_bytes().to_vec();
        let e = chunk_err(&build(&[], &[d(1)], b"", &stream, 10));
        assert!(matches!(
            e,
            SplitStreamError::ExternalIndex {
                offset: 0,
                index: 5,
                count: 1
            }
        ));
        // An inline length past the declared size, up to the largest.
        for len in [11i64, i64::MAX] {
            stream = (-len).to_le_bytes().to_vec();
            let e = chunk_err(&build(&[], &[], b"", &stream, 10));
            assert!(
                matches!(
                    e,
                    SplitStreamError::InlineTooLong {
                        offset: 0,
                        left: 10,
                        ..
                    }
                ),
                "{e}"
            );
        }
        // With a declared size that allows it, the largest length is read
        // in bounded pieces and found missing.
        stream = i64::MIN.to_le_bytes().to_vec();
        let e = chunk_err(&build(&[], &[], b"", &stream, u64::MAX));
        assert!(
            matches!(e, SplitStreamError::Truncated { offset: 8 }),
            "{e}"
        );
        // The second inline run exceeds what the first left.
        stream = (-6i64).to_le_bytes().to_vec();
        stream.extend_from_slice(b"abcdef");
        stream.extend_from_slice(&0i64.to_le_bytes());
        stream.extend_from_slice(&(-5i64).to_le_bytes());
        let e = chunk_err(&build(&[], &[d(1)], b"", &stream, 10));
        assert!(
            matches!(
                e,
                SplitStreamError::InlineTooLong {
                    offset: 22,
                    len: 5,
                    left: 4
                }
            ),
            "{e}"
        );
        // Inline data cut short, and a cut chunk header.
        stream = (-10i64).to_le_bytes().to_vec();
        stream.extend_from_slice(b"abcde");
        let e = chunk_err(&build(&[], &[], b"", &stream, 10));
        assert!(
            matches!(e, SplitStreamError::Truncated { offset: 13 }),
            "{e}"
        );
        stream = vec![0, 0, 0];
        let e = chunk_err(&build(&[], &[d(1)], b"", &stream, 10));
        assert!(
            matches!(e, SplitStreamError::Truncated { offset: 3 }),
            "{e}"
        );
    }

    #[test]
    fn corrupt_compressed_data_is_an_error() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * i % 253) as u8).collect();
        let mut w = SplitStreamWriter::<Sha256Digest>::new(ContentType::OCI_LAYER);
        w.write_inline(&data);
        let good = w.finish();
        let info = Info::read_from_prefix(&good[HEADER_SIZE..]).unwrap().0;
        let (start, end) = (
            info.stream.start.get() as usize,
            info.stream.end.get() as usize,
        );
        let mut failures = 0;
        // Corrupt each byte of the block contents in turn (not the frame
        // and block headers, which parse checks).
        for at in start + 9..end {
            let mut bad = good.clone();
            bad[at] ^= 0x55;
            let Ok(stream) = SplitStream::<Sha256Digest>::parse(bad) else {
                continue;
            };
            match reassemble(&stream, &HashMap::new()) {
                Ok(out) => assert_ne!(out, data, "corruption at {at} went unnoticed"),
                Err(_) => failures += 1,
            }
        }
        assert!(failures > 0);
    }

    #[test]
    fn oversized_window_is_refused() {
        let mut e = Encoder::new(Vec::new(), 3).unwrap();
        e.window_log(WINDOW_LOG_MAX + 1).unwrap();
        e.write_all(&(-3i64).to_le_bytes()).unwrap();
        e.write_all(b"abc").unwrap();
        let frame = e.finish().unwrap();
        let mut file = build(&[], &[], b"", b"", 3);
        let info = Info::read_from_prefix(&file[HEADER_SIZE..]).unwrap().0;
        file.truncate(info.stream.start.get() as usize);
        file.extend_from_slice(&frame);
        let end = file.len() as u64;
        file[0x48..0x50].copy_from_slice(&end.to_le_bytes());
        let e = chunk_err(&file);
        assert!(
            matches!(
                e,
                SplitStreamError::Decompress {
                    section: Section::Stream,
                    ..
                }
            ),
            "{e}"
        );
    }

    /// Random damage never panics, hangs or allocates without bound.
    #[test]
    fn mutations_never_panic() {
        let mut w = SplitStreamWriter::new(ContentType::OCI_LAYER);
        w.add_stream_ref("a", d(1)).unwrap();
        w.add_stream_ref("b", d(2)).unwrap();
        for i in 0..20u8 {
            w.write_inline(&vec![i; usize::from(i) * 37]);
            w.write_external(d(i % 5), u64::from(i));
        }
        let good = w.finish();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..3000 {
            let mut bad = good.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() % bad.len() as u64) as usize;
                bad[at] = next() as u8;
            }
            if next() % 8 == 0 {
                bad.truncate((next() % bad.len() as u64) as usize);
            }
            if let Ok(stream) = SplitStream::<Sha256Digest>::parse(bad) {
                for chunk in stream.chunks() {
                    if chunk.is_err() {
                        break;
                    }
                }
            }
        }
    }
}
