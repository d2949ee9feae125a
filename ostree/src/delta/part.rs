//! A delta part: checked against its header's checksum, decompressed,
//! and split into the tables and byte streams its operations use.
//!
//! A part file is one compression byte (`0` none, `x` xz, the only one
//! the generator writes) and the compressed `(a(uuu)aa(ayay)ayay)`:
//! (uid, gid, mode) triples (BE), xattr sets, the raw payload the
//! operations copy from, and the operations themselves.

use std::io::Read;

use gvariant::aligned_bytes::{AlignedBuf, AsAligned};
use gvariant::{gv, Marker, Structure};

use super::error::DeltaError;
use super::superblock::PartHeader;
use crate::checksum::Checksum;
use crate::object::OstreeXattr;

/// liblzma's memory limit for one part, as libostree sets it
/// (`OSTREE_LZMA_DECODER_MEMLIMIT`).
const XZ_MEMLIMIT: u64 = 100 << 20;

/// The decompressed payload may exceed the objects it builds (bsdiff
/// control words, tables, metadata), but not by this much: beyond it a
/// part is a decompression bomb, not a delta.
fn payload_limit(header: &PartHeader) -> u64 {
    header
        .uncompressed_size
        .saturating_mul(4)
        .saturating_add(64 << 20)
}

/// A decompressed part, ready to execute.
#[derive(Debug)]
pub struct Part {
    /// (uid, gid, mode) entries, already in host order.
    pub(crate) modes: Vec<(u32, u32, u32)>,
    /// Xattr sets, names NUL-terminated as ostree stores them.
    pub(crate) xattrs: Vec<Vec<OstreeXattr>>,
    /// The bytes the operations copy from.
    pub(crate) payload: Vec<u8>,
    /// The operations.
    pub(crate) ops: Vec<u8>,
}

impl Part {
    /// Checks the part file `data` (part `index`) against its header,
    /// decompresses and parses it.
    pub fn open(index: usize, header: &PartHeader, data: &[u8]) -> Result<Self, DeltaError> {
        let fail = |reason: String| DeltaError::Part {
            part: index,
            reason,
        };
        let actual = Checksum::of(&[data]);
        if actual != header.checksum {
            return Err(DeltaError::PartChecksum {
                part: index,
                expected: header.checksum,
                actual,
            });
        }
        let (&compression, compressed) = data
            .split_first()
            .ok_or_else(|| fail("empty part file".into()))?;
        let limit = payload_limit(header);
        let raw = match compression {
            0 => {
                if compressed.len() as u64 > limit {
                    return Err(fail(format!("payload over the {limit} byte limit")));
                }
                compressed.to_vec()
            }
            b'x' => {
                let stream = xz2::stream::Stream::new_stream_decoder(XZ_MEMLIMIT, 0)
                    .map_err(|e| fail(format!("starting the xz decoder: {e}")))?;
                let mut raw = Vec::new();
                xz2::read::XzDecoder::new_stream(compressed, stream)
                    .take(limit.saturating_add(1))
                    .read_to_end(&mut raw)
                    .map_err(|e| fail(format!("xz data is corrupt or truncated: {e}")))?;
                if raw.len() as u64 > limit {
                    return Err(fail(format!(
                        "decompresses to over {limit} bytes, past what its objects explain"
                    )));
                }
                raw
            }
            other => {
                return Err(fail(format!(
                    "compression byte {other:#04x} is neither 0 (none) nor 'x' (xz)"
                )))
            }
        };
        let buf: AlignedBuf = raw.into();
        let (modes, xattrs, payload, ops) = gv!("(a(uuu)aa(ayay)ayay)")
            .cast(buf.as_aligned())
            .to_tuple();
        let modes = modes
            .iter()
            .map(|m| {
                let (uid, gid, mode) = m.to_tuple();
                (u32::from_be(*uid), u32::from_be(*gid), u32::from_be(*mode))
            })
            .collect();
        let xattrs = xattrs
            .iter()
            .map(|set| {
                set.iter()
                    .map(|x| {
                        let (name, value) = x.to_tuple();
                        (name.to_vec(), value.to_vec())
                    })
                    .collect()
            })
            .collect();
        if ops.is_empty() && !header.objects.is_empty() {
            return Err(fail(format!(
                "no operations, yet its header lists {} objects (payload truncated or malformed)",
                header.objects.len()
            )));
        }
        Ok(Self {
            modes,
            xattrs,
            payload: payload.to_vec(),
            ops: ops.to_vec(),
        })
    }
}
