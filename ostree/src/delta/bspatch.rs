//! Applying the bsdiff patches of `B` operations.
//!
//! ostree links Matthew Endsley's bsdiff and stores its raw stream in
//! the part payload: no `ENDSLEY/BSDIFF43` header and no bzip2 (the part
//! as a whole is xz-compressed). The stream is a run of entries, each
//! three 8-byte sign-magnitude little-endian integers (diff length, extra
//! length, seek in the old file) followed by that many diff bytes, added
//! bytewise to the old file at the current position, and that many extra
//! bytes, copied as they are. Old bytes outside the old file add nothing.
//! Applying stops once the declared new size is reached; bytes left in
//! the stream are ignored, as `bspatch()` ignores them.
//!
//! Written here rather than taken from the `bsdiff` crate: its `patch`
//! runs to the end of the stream instead of to the declared size, so it
//! would build a different file from a stream ostree accepts, and it
//! grows its output without a bound of our choosing.

/// Why a patch could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The stream ends before the new file is complete.
    #[error("patch ends after {produced} of {size} bytes")]
    Truncated {
        /// Bytes built.
        produced: u64,
        /// Bytes declared.
        size: u64,
    },
    /// An entry that runs past the new file or cannot be a length.
    #[error("patch entry at byte {offset} is invalid: {reason}")]
    BadEntry {
        /// Where the entry starts in the stream.
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Reads an 8-byte sign-magnitude little-endian integer (`offtin`).
fn read_offset(bytes: [u8; 8]) -> i64 {
    let magnitude = (u64::from_le_bytes(bytes) & !(1 << 63)) as i64;
    if bytes[7] & 0x80 != 0 {
        -magnitude
    } else {
        magnitude
    }
}

/// Builds the `size`-byte file that `patch` makes of `old`.
///
/// Every byte of the output is read from the patch, so the output never
/// outgrows the patch: a hostile `size` costs nothing until the patch
/// backs it with bytes.
pub fn apply(old: &[u8], patch: &[u8], size: u64) -> Result<Vec<u8>, PatchError> {
    let mut new = Vec::with_capacity(usize::try_from(size.min(patch.len() as u64)).unwrap_or(0));
    let mut pos = 0usize;
    let mut old_pos: i64 = 0;
    let truncated = |new: &Vec<u8>| PatchError::Truncated {
        produced: new.len() as u64,
        size,
    };
    let take = |pos: &mut usize, len: usize| -> Option<&[u8]> {
        let bytes = patch.get(*pos..pos.checked_add(len)?)?;
        *pos += len;
        Some(bytes)
    };
    while (new.len() as u64) < size {
        let entry = pos;
        let bad = |reason| PatchError::BadEntry {
            offset: entry,
            reason,
        };
        let mut control = [0i64; 3];
        for value in &mut control {
            let bytes = take(&mut pos, 8).ok_or_else(|| truncated(&new))?;
            *value = read_offset(bytes.try_into().expect("took 8 bytes"));
        }
        let [diff_len, extra_len, seek] = control;
        let in_range = |len: i64, produced: usize| {
            u64::try_from(len)
                .ok()
                .filter(|&len| len <= i32::MAX as u64 && produced as u64 + len <= size)
        };
        let diff_len =
            in_range(diff_len, new.len()).ok_or_else(|| bad("diff length out of range"))? as usize;
        let diff = take(&mut pos, diff_len).ok_or_else(|| truncated(&new))?;
        new.extend(diff.iter().enumerate().map(|(i, d)| {
            let from_old = old_pos
                .checked_add(i as i64)
                .and_then(|p| usize::try_from(p).ok())
                .and_then(|p| old.get(p));
            d.wrapping_add(from_old.copied().unwrap_or(0))
        }));
        old_pos = old_pos
            .checked_add(diff_len as i64)
            .ok_or_else(|| bad("old position overflows"))?;
        let extra_len = in_range(extra_len, new.len())
            .ok_or_else(|| bad("extra length out of range"))? as usize;
        let extra = take(&mut pos, extra_len).ok_or_else(|| truncated(&new))?;
        new.extend_from_slice(extra);
        old_pos = old_pos
            .checked_add(seek)
            .ok_or_else(|| bad("old position overflows"))?;
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A patch made by an independent bsdiff (the `bsdiff` crate, a port
    /// of the same Endsley code ostree links) rebuilds the new file.
    #[test]
    fn applies_independently_made_patches() {
        let old: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut new = old.clone();
        new[1000..1007].copy_from_slice(b"patched");
        new.splice(50_000..50_000, b"inserted bytes".iter().copied());
        new.truncate(190_000);
        new.extend_from_slice(b"a new tail");
        for (old, new) in [(&old[..], &new[..]), (&[][..], &b"from nothing"[..])] {
            let mut patch = Vec::new();
            bsdiff::diff(old, new, &mut patch).unwrap();
            assert_eq!(apply(old, &patch, new.len() as u64).unwrap(), new);
            // Cut anywhere, the patch is refused rather than misapplied.
            for cut in [0, 7, 24, patch.len() / 2, patch.len() - 1] {
                assert!(
                    matches!(
                        apply(old, &patch[..cut], new.len() as u64),
                        Err(PatchError::Truncated { .. })
                    ),
                    "cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn sign_magnitude_offsets() {
        assert_eq!(read_offset(5u64.to_le_bytes()), 5);
        assert_eq!(read_offset((5u64 | 1 << 63).to_le_bytes()), -5);
    }

    #[test]
    fn hostile_entries_are_refused() {
        let entry = |diff: u64, extra: u64, seek: u64| {
            [diff, extra, seek]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>()
        };
        // A negative length, and a length past the declared size.
        let negative = entry(1 << 63 | 1, 0, 0);
        assert!(matches!(
            apply(b"old", &negative, 4),
            Err(PatchError::BadEntry { .. })
        ));
        let long = entry(10, 0, 0);
        assert!(matches!(
            apply(b"old", &long, 4),
            Err(PatchError::BadEntry { .. })
        ));
        // A seek far outside the old file adds nothing: diff bytes stay.
        let mut far = entry(0, 0, 1 << 62);
        far.extend(entry(2, 0, 0));
        far.extend([1, 2]);
        assert_eq!(apply(b"old", &far, 2).unwrap(), vec![1, 2]);
        // Bytes after the declared size are ignored.
        let mut exact = entry(0, 2, 0);
        exact.extend(b"ab");
        exact.extend(b"trailing");
        assert_eq!(apply(b"", &exact, 2).unwrap(), b"ab");
    }
}
