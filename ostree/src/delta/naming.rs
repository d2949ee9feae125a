//! Where a static delta lives in a repository.
//!
//! ostree names deltas by "modified base64" checksums: the standard
//! alphabet with `/` replaced by `_` and the padding `=` dropped, 43
//! characters for a SHA-256 (`static_delta_path_base`, ostree-core.c).
//! A delta from scratch lives in `deltas/TO[..2]/TO[2..]/`, one from a
//! base commit in `deltas/FROM[..2]/FROM[2..]-TO/`; the index of deltas
//! that lead to a commit is `delta-indexes/TO[..2]/TO[2..].index`.

use crate::checksum::Checksum;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+_";

/// A checksum in ostree's modified base64.
pub fn modified_base64(checksum: &Checksum) -> String {
    let mut out = String::with_capacity(43);
    for chunk in checksum.0.chunks(3) {
        let bits = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        // A chunk of n bytes gives n + 1 characters; the rest would be '='.
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(bits >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// The directory of the delta from `from` (or from scratch) to `to`,
/// relative to the repository root.
pub fn delta_dir(from: Option<&Checksum>, to: &Checksum) -> String {
    let to64 = modified_base64(to);
    match from {
        Some(from) => {
            let from64 = modified_base64(from);
            format!("deltas/{}/{}-{to64}", &from64[..2], &from64[2..])
        }
        None => format!("deltas/{}/{}", &to64[..2], &to64[2..]),
    }
}

/// The superblock of a delta.
pub fn superblock_path(from: Option<&Checksum>, to: &Checksum) -> String {
    format!("{}/superblock", delta_dir(from, to))
}

/// Part `index` of a delta, as a file of its own or as the key of an
/// inline part in the superblock's metadata.
pub fn part_path(from: Option<&Checksum>, to: &Checksum, index: usize) -> String {
    format!("{}/{index}", delta_dir(from, to))
}

/// The index of the deltas that lead to `to`.
pub fn index_path(to: &Checksum) -> String {
    let to64 = modified_base64(to);
    format!("delta-indexes/{}/{}.index", &to64[..2], &to64[2..])
}

/// A delta's name in a summary or delta index: `FROM-TO` in hex, or `TO`
/// for one from scratch.
pub fn delta_name(from: Option<&Checksum>, to: &Checksum) -> String {
    match from {
        Some(from) => format!("{from}-{to}"),
        None => to.to_hex(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modified_base64_matches_the_standard_alphabet_but_slash() {
        // 0xfb 0xff 0xbf ... in standard base64 is "+/+/": the '/' must
        // become '_' and the 32-byte input gives 43 characters, no '='.
        let mut bytes = [0u8; 32];
        bytes[..3].copy_from_slice(&[0xfb, 0xff, 0xbf]);
        bytes[31] = 0xff;
        let text = modified_base64(&Checksum(bytes));
        assert_eq!(text.len(), 43);
        assert!(text.starts_with("+_+_AAAA"), "{text}");
        assert!(text.ends_with("AAAP8"), "{text}");
        assert_eq!(modified_base64(&Checksum([0; 32])), "A".repeat(43));
    }

    #[test]
    fn paths() {
        let to = Checksum([0; 32]);
        let from = Checksum([0xff; 32]);
        let a43 = "A".repeat(43);
        let f43 = format!("{}8", "_".repeat(42));
        assert_eq!(
            superblock_path(None, &to),
            format!("deltas/AA/{}/superblock", &a43[2..])
        );
        assert_eq!(
            part_path(Some(&from), &to, 3),
            format!("deltas/__/{}-{a43}/3", &f43[2..])
        );
        assert_eq!(
            index_path(&to),
            format!("delta-indexes/AA/{}.index", &a43[2..])
        );
        assert_eq!(
            delta_name(Some(&from), &to),
            format!("{}-{}", "f".repeat(64), "0".repeat(64))
        );
    }
}
