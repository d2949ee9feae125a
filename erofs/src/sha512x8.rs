//! SHA-512 of eight fs-verity blocks at once, one per 64-bit lane of the
//! AVX-512 registers.
//!
//! A single SHA-512 stream is serial, but the data blocks of an fs-verity
//! Merkle tree are hashed independently, and they all have the same
//! length ([`BLOCK_SIZE`], zero-padded), so eight of them go through the
//! rounds in lockstep without masking. Each instruction advances eight
//! hashes; on CPUs with AVX-512 this is about three times the throughput
//! of OpenSSL's one-stream SHA-512, which was most of a pull's CPU time.
//! Without AVX-512, [`hash_blocks`] declines and the caller hashes one
//! block at a time.
//!
//! The arithmetic is FIPS 180-4's, lane by lane; the tests compare every
//! lane with OpenSSL.

use crate::fsverity::BLOCK_SIZE;

/// Blocks hashed per call.
pub(crate) const LANES: usize = 8;

/// The SHA-512 digests of eight blocks of exactly [`BLOCK_SIZE`] bytes,
/// or `None` if this CPU cannot hash them together.
pub(crate) fn hash_blocks(blocks: [&[u8; BLOCK_SIZE]; LANES]) -> Option<[[u8; 64]; LANES]> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        #[allow(unsafe_code)]
        // SAFETY: the only requirement of a `target_feature` function is
        // that the CPU has the feature, checked just above.
        return Some(unsafe { avx512::hash_blocks(blocks) });
    }
    let _ = blocks;
    None
}

/// SHA-512 round constants (FIPS 180-4, 4.2.3).
const K: [u64; 80] = [
    0x428a2f98d728ae22,
    0x7137449123ef65cd,
    0xb5c0fbcfec4d3b2f,
    0xe9b5dba58189dbbc,
    0x3956c25bf348b538,
    0x59f111f1b605d019,
    0x923f82a4af194f9b,
    0xab1c5ed5da6d8118,
    0xd807aa98a3030242,
    0x12835b0145706fbe,
    0x243185be4ee4b28c,
    0x550c7dc3d5ffb4e2,
    0x72be5d74f27b896f,
    0x80deb1fe3b1696b1,
    0x9bdc06a725c71235,
    0xc19bf174cf692694,
    0xe49b69c19ef14ad2,
    0xefbe4786384f25e3,
    0x0fc19dc68b8cd5b5,
    0x240ca1cc77ac9c65,
    0x2de92c6f592b0275,
    0x4a7484aa6ea6e483,
    0x5cb0a9dcbd41fbd4,
    0x76f988da831153b5,
    0x983e5152ee66dfab,
    0xa831c66d2db43210,
    0xb00327c898fb213f,
    0xbf597fc7beef0ee4,
    0xc6e00bf33da88fc2,
    0xd5a79147930aa725,
    0x06ca6351e003826f,
    0x142929670a0e6e70,
    0x27b70a8546d22ffc,
    0x2e1b21385c26c926,
    0x4d2c6dfc5ac42aed,
    0x53380d139d95b3df,
    0x650a73548baf63de,
    0x766a0abb3c77b2a8,
    0x81c2c92e47edaee6,
    0x92722c851482353b,
    0xa2bfe8a14cf10364,
    0xa81a664bbc423001,
    0xc24b8b70d0f89791,
    0xc76c51a30654be30,
    0xd192e819d6ef5218,
    0xd69906245565a910,
    0xf40e35855771202a,
    0x106aa07032bbd1b8,
    0x19a4c116b8d2d0c8,
    0x1e376c085141ab53,
    0x2748774cdf8eeb99,
    0x34b0bcb5e19b48a8,
    0x391c0cb3c5c95a63,
    0x4ed8aa4ae3418acb,
    0x5b9cca4f7763e373,
    0x682e6ff3d6b2b8a3,
    0x748f82ee5defb2fc,
    0x78a5636f43172f60,
    0x84c87814a1f0ab72,
    0x8cc702081a6439ec,
    0x90befffa23631e28,
    0xa4506cebde82bde9,
    0xbef9a3f7b2c67915,
    0xc67178f2e372532b,
    0xca273eceea26619c,
    0xd186b8c721c0c207,
    0xeada7dd6cde0eb1e,
    0xf57d4f7fee6ed178,
    0x06f067aa72176fba,
    0x0a637dc5a2c898a6,
    0x113f9804bef90dae,
    0x1b710b35131c471b,
    0x28db77f523047d84,
    0x32caab7b40c72493,
    0x3c9ebe0a15c9bebc,
    0x431d67c49c100d4c,
    0x4cc5d4becb3e42b6,
    0x597f299cfc657e2a,
    0x5fcb6fab3ad6faec,
    0x6c44198c4a475817,
];

/// The initial hash value (FIPS 180-4, 5.3.5).
const IV: [u64; 8] = [
    0x6a09e667f3bcc908,
    0xbb67ae8584caa73b,
    0x3c6ef372fe94f82b,
    0xa54ff53a5f1d36f1,
    0x510e527fade682d1,
    0x9b05688c2b3e6c1f,
    0x1f83d9abfb41bd6b,
    0x5be0cd19137e2179,
];

/// The message words of the padding block that ends every message of
/// [`BLOCK_SIZE`] bytes: a 1 bit, zeros, and the length in bits.
const PADDING: [u64; 16] = {
    let mut words = [0u64; 16];
    words[0] = 1 << 63;
    words[15] = (BLOCK_SIZE as u64) * 8;
    words
};

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{BLOCK_SIZE, IV, K, LANES, PADDING};

    /// SHA-512's 128-byte blocks in one fs-verity block.
    const CHUNKS: usize = BLOCK_SIZE / 128;

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn add(a: __m512i, b: __m512i) -> __m512i {
        _mm512_add_epi64(a, b)
    }

    /// The eight lanes of word `word` of chunk `chunk`, big-endian as
    /// SHA-512 reads them.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load(blocks: &[&[u8; BLOCK_SIZE]; LANES], chunk: usize, word: usize) -> __m512i {
        let at = chunk * 128 + word * 8;
        let lane = |i: usize| {
            let bytes: [u8; 8] = blocks[i][at..at + 8].try_into().expect("eight bytes");
            u64::from_be_bytes(bytes) as i64
        };
        _mm512_set_epi64(
            lane(7),
            lane(6),
            lane(5),
            lane(4),
            lane(3),
            lane(2),
            lane(1),
            lane(0),
        )
    }

    /// One SHA-512 compression of `w` (sixteen message words, a lane per
    /// message) into `state`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn compress(state: &mut [__m512i; 8], mut w: [__m512i; 16]) {
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
        for t in 0..80 {
            let wt = if t < 16 {
                w[t]
            } else {
                let w15 = w[(t - 15) % 16];
                let w2 = w[(t - 2) % 16];
                // σ0 and σ1: two rotations and a shift, XORed.
                let s0 = _mm512_ternarylogic_epi64::<0x96>(
                    _mm512_ror_epi64::<1>(w15),
                    _mm512_ror_epi64::<8>(w15),
                    _mm512_srli_epi64::<7>(w15),
                );
                let s1 = _mm512_ternarylogic_epi64::<0x96>(
                    _mm512_ror_epi64::<19>(w2),
                    _mm512_ror_epi64::<61>(w2),
                    _mm512_srli_epi64::<6>(w2),
                );
                let next = add(add(w[t % 16], s0), add(w[(t - 7) % 16], s1));
                w[t % 16] = next;
                next
            };
            // Σ1(e), Ch(e, f, g), Σ0(a), Maj(a, b, c): 0x96 is a three-way
            // XOR, 0xCA "e ? f : g", 0xE8 the majority.
            let sigma1 = _mm512_ternarylogic_epi64::<0x96>(
                _mm512_ror_epi64::<14>(e),
                _mm512_ror_epi64::<18>(e),
                _mm512_ror_epi64::<41>(e),
            );
            let ch = _mm512_ternarylogic_epi64::<0xCA>(e, f, g);
            let t1 = add(
                add(h, sigma1),
                add(ch, add(wt, _mm512_set1_epi64(K[t] as i64))),
            );
            let sigma0 = _mm512_ternarylogic_epi64::<0x96>(
                _mm512_ror_epi64::<28>(a),
                _mm512_ror_epi64::<34>(a),
                _mm512_ror_epi64::<39>(a),
            );
            let maj = _mm512_ternarylogic_epi64::<0xE8>(a, b, c);
            h = g;
            g = f;
            f = e;
            e = add(d, t1);
            d = c;
            c = b;
            b = a;
            a = add(t1, add(sigma0, maj));
        }
        for (word, value) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *word = add(*word, value);
        }
    }

    /// The eight 64-bit lanes of `v`, lane 0 first.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn lanes(v: __m512i) -> [u64; LANES] {
        let low = _mm512_extracti64x4_epi64::<0>(v);
        let high = _mm512_extracti64x4_epi64::<1>(v);
        [
            _mm256_extract_epi64::<0>(low) as u64,
            _mm256_extract_epi64::<1>(low) as u64,
            _mm256_extract_epi64::<2>(low) as u64,
            _mm256_extract_epi64::<3>(low) as u64,
            _mm256_extract_epi64::<0>(high) as u64,
            _mm256_extract_epi64::<1>(high) as u64,
            _mm256_extract_epi64::<2>(high) as u64,
            _mm256_extract_epi64::<3>(high) as u64,
        ]
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn hash_blocks(blocks: [&[u8; BLOCK_SIZE]; LANES]) -> [[u8; 64]; LANES] {
        let mut state = IV.map(|word| _mm512_set1_epi64(word as i64));
        for chunk in 0..CHUNKS {
            let w = std::array::from_fn(|word| load(&blocks, chunk, word));
            compress(&mut state, w);
        }
        compress(
            &mut state,
            PADDING.map(|word| _mm512_set1_epi64(word as i64)),
        );
        let mut digests = [[0u8; 64]; LANES];
        for (index, word) in state.into_iter().enumerate() {
            for (digest, value) in digests.iter_mut().zip(lanes(word)) {
                digest[index * 8..index * 8 + 8].copy_from_slice(&value.to_be_bytes());
            }
        }
        digests
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::print_stdout)] // the reason for a skip
    fn every_lane_matches_openssl() {
        let mut data = vec![0u8; LANES * BLOCK_SIZE];
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
        }
        // Two identical lanes and an all-zero one, among distinct ones.
        data[BLOCK_SIZE..2 * BLOCK_SIZE].fill(0);
        let (first, rest) = data.split_at_mut(4 * BLOCK_SIZE);
        rest[..BLOCK_SIZE].copy_from_slice(&first[3 * BLOCK_SIZE..]);
        let blocks: [&[u8; BLOCK_SIZE]; LANES] = std::array::from_fn(|i| {
            data[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE]
                .try_into()
                .unwrap()
        });
        let Some(digests) = hash_blocks(blocks) else {
            println!("skipped: this CPU has no AVX-512");
            return;
        };
        for (block, digest) in blocks.iter().zip(digests) {
            assert_eq!(digest, openssl::sha::sha512(&block[..]));
        }
    }
}
