//! fs-verity digests computed in userspace, exactly as the kernel does.
//!
//! The kernel measures a file as the hash of a 256-byte descriptor that
//! holds the file size and the root of a Merkle tree over 4096-byte blocks
//! (no salt). We need the same number without the kernel's help: to name
//! objects before they are stored, to compute image ids, and to check
//! objects on filesystems without fs-verity.
//!
//! The tree is built bottom-up while streaming: each level keeps only its
//! current, partly filled block of child hashes, so memory is bounded by the
//! tree height (a few blocks) whatever the file size. Data blocks are hashed
//! eight at a time where the CPU can ([`crate::sha512x8`]): they are
//! independent, and hashing them is nearly all of the work.

use crate::digest::{Algorithm, FsVerityDigest};
use crate::sha512x8;

/// Merkle tree block size; the only one composefs uses (`lg_blocksize` 12).
pub const BLOCK_SIZE: usize = 4096;

/// Data bytes hashed together: a block per lane.
const BATCH: usize = sha512x8::LANES * BLOCK_SIZE;

/// Fewest blocks worth a multi-lane pass (which costs as much as eight
/// blocks) rather than hashing them one by one.
const MIN_LANES_USED: usize = 3;

/// One level of the Merkle tree under construction.
#[derive(Debug, Clone)]
struct Level {
    /// Child hashes of the block being filled.
    block: Vec<u8>,
    /// Whether a full block of this level has already been hashed upwards.
    spilled: bool,
}

/// A streaming fs-verity digest computation.
#[derive(Debug, Clone)]
pub struct FsVerityHasher<H: FsVerityDigest> {
    /// Data not hashed yet: less than [`BATCH`] bytes.
    data: Vec<u8>,
    /// `levels[0]` holds hashes of data blocks, `levels[1]` hashes of
    /// level-0 blocks, and so on.
    levels: Vec<Level>,
    size: u64,
    _digest: std::marker::PhantomData<H>,
}

impl<H: FsVerityDigest> Default for FsVerityHasher<H> {
    fn default() -> Self {
        Self::new()
    }
}

/// The hash of a block, zero-padded to [`BLOCK_SIZE`].
fn hash_block<H: FsVerityDigest>(block: &[u8]) -> H {
    const ZEROS: [u8; BLOCK_SIZE] = [0; BLOCK_SIZE];
    H::hash_parts(&[block, &ZEROS[block.len().min(BLOCK_SIZE)..]])
}

/// The hashes of up to [`sha512x8::LANES`] whole data blocks, in one
/// multi-lane pass if there are enough of them and the CPU can.
fn hash_blocks<H: FsVerityDigest>(blocks: &[u8], mut each: impl FnMut(H)) {
    let count = blocks.len() / BLOCK_SIZE;
    debug_assert!(count <= sha512x8::LANES && blocks.len().is_multiple_of(BLOCK_SIZE));
    if H::ALGORITHM == Algorithm::Sha512 && count >= MIN_LANES_USED {
        // Spare lanes hash the last block again; their results are dropped.
        let lanes = std::array::from_fn(|lane| {
            let at = lane.min(count - 1) * BLOCK_SIZE;
            <&[u8; BLOCK_SIZE]>::try_from(&blocks[at..at + BLOCK_SIZE]).expect("a whole block")
        });
        if let Some(digests) = sha512x8::hash_blocks(lanes) {
            for digest in &digests[..count] {
                each(H::from_slice(digest).expect("a SHA-512 digest is 64 bytes"));
            }
            return;
        }
    }
    for block in blocks.chunks_exact(BLOCK_SIZE) {
        each(hash_block::<H>(block));
    }
}

impl<H: FsVerityDigest> FsVerityHasher<H> {
    /// Starts a digest of an empty file.
    pub fn new() -> Self {
        Self {
            data: Vec::new(),
            levels: Vec::new(),
            size: 0,
            _digest: std::marker::PhantomData,
        }
    }

    /// Digest of a whole in-memory buffer.
    pub fn digest(data: &[u8]) -> H {
        let mut hasher = Self::new();
        hasher.update(data);
        hasher.finish()
    }

    /// Adds file content.
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.size += bytes.len() as u64;
        if !self.data.is_empty() {
            let take = (BATCH - self.data.len()).min(bytes.len());
            self.data.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.data.len() < BATCH {
                return;
            }
            let data = std::mem::take(&mut self.data);
            self.push_data_blocks(&data);
            self.data = data;
            self.data.clear();
        }
        // Whole batches straight from the caller's buffer, without copying.
        let whole = bytes.len() - bytes.len() % BATCH;
        self.push_data_blocks(&bytes[..whole]);
        if whole < bytes.len() {
            self.data.reserve_exact(BATCH);
            self.data.extend_from_slice(&bytes[whole..]);
        }
    }

    /// Hashes whole data blocks into the tree's first level.
    fn push_data_blocks(&mut self, blocks: &[u8]) {
        for batch in blocks.chunks(BATCH) {
            hash_blocks::<H>(batch, |hash| self.push_hash(0, hash));
        }
    }

    fn push_hash(&mut self, level: usize, hash: H) {
        if self.levels.len() == level {
            self.levels.push(Level {
                block: Vec::with_capacity(BLOCK_SIZE),
                spilled: false,
            });
        }
        let entry = &mut self.levels[level];
        if entry.block.len() + hash.as_ref().len() > BLOCK_SIZE {
            let full = hash_block::<H>(&entry.block);
            entry.block.clear();
            entry.spilled = true;
            self.push_hash(level + 1, full);
        }
        self.levels[level].block.extend_from_slice(hash.as_ref());
    }

    /// The Merkle tree's root hash: zeros for an empty file, the hash of the
    /// only block for a one-block file, else the hash of the top block.
    fn root_hash(&mut self) -> Option<H> {
        if self.size == 0 {
            return None;
        }
        if !self.data.is_empty() {
            // The last block is zero-padded.
            let mut data = std::mem::take(&mut self.data);
            data.resize(data.len().next_multiple_of(BLOCK_SIZE), 0);
            self.push_data_blocks(&data);
        }
        let hash_len = H::ALGORITHM.digest_len();
        let mut level = 0;
        loop {
            let is_top = level + 1 == self.levels.len();
            let entry = &self.levels[level];
            if is_top && !entry.spilled && entry.block.len() == hash_len {
                return H::from_slice(&entry.block);
            }
            let hash = hash_block::<H>(&entry.block);
            self.levels[level].block.clear();
            self.push_hash(level + 1, hash);
            level += 1;
        }
    }

    /// The fs-verity digest: the hash of the `fsverity_descriptor`.
    pub fn finish(mut self) -> H {
        let root = self.root_hash();
        let mut descriptor = [0u8; 256];
        descriptor[0] = 1; // version
        descriptor[1] = H::ALGORITHM.kernel_id();
        descriptor[2] = 12; // log2 of the block size
                            // [3] salt size 0, [4..8] reserved
        descriptor[8..16].copy_from_slice(&self.size.to_le_bytes());
        if let Some(root) = root {
            descriptor[16..16 + root.as_ref().len()].copy_from_slice(root.as_ref());
        }
        // [80..112] salt, [112..256] reserved: all zero
        H::hash_parts(&[&descriptor])
    }
}

impl<H: FsVerityDigest> std::io::Write for FsVerityHasher<H> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::{Sha256Digest, Sha512Digest};

    /// A direct, non-streaming Merkle tree, to check the streaming one.
    fn reference<H: FsVerityDigest>(data: &[u8]) -> H {
        let mut level: Vec<u8> = Vec::new();
        let root: Vec<u8> = if data.is_empty() {
            vec![]
        } else {
            for chunk in data.chunks(BLOCK_SIZE) {
                level.extend_from_slice(hash_block::<H>(chunk).as_ref());
            }
            while level.len() > H::ALGORITHM.digest_len() {
                let mut next = Vec::new();
                for chunk in level.chunks(BLOCK_SIZE) {
                    next.extend_from_slice(hash_block::<H>(chunk).as_ref());
                }
                level = next;
            }
            level
        };
        let mut descriptor = [0u8; 256];
        descriptor[0] = 1;
        descriptor[1] = H::ALGORITHM.kernel_id();
        descriptor[2] = 12;
        descriptor[8..16].copy_from_slice(&(data.len() as u64).to_le_bytes());
        descriptor[16..16 + root.len()].copy_from_slice(&root);
        H::hash_parts(&[&descriptor])
    }

    #[test]
    fn streaming_matches_direct_tree() {
        let data: Vec<u8> = (0..(BLOCK_SIZE * 300 + 17))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let sizes = [
            0,
            1,
            4095,
            4096,
            4097,
            8192,
            BLOCK_SIZE * 128,
            BLOCK_SIZE * 128 + 1,
            BLOCK_SIZE * 129,
            BLOCK_SIZE * 256,
            BLOCK_SIZE * 256 + 1,
            // Around the multi-lane batches: a few blocks, one batch, more.
            BLOCK_SIZE * 2 + 5,
            BLOCK_SIZE * 3,
            BLOCK_SIZE * 7 + 1,
            BATCH - 1,
            BATCH,
            BATCH + 1,
            BATCH + BLOCK_SIZE * 3,
            data.len(),
        ];
        for size in sizes {
            let slice = &data[..size];
            assert_eq!(
                FsVerityHasher::<Sha256Digest>::digest(slice),
                reference::<Sha256Digest>(slice),
                "sha256 size {size}"
            );
            assert_eq!(
                FsVerityHasher::<Sha512Digest>::digest(slice),
                reference::<Sha512Digest>(slice),
                "sha512 size {size}"
            );
            // Odd-sized writes take the buffering path.
            for piece_size in [1000, BATCH + 7] {
                let mut hasher = FsVerityHasher::<Sha256Digest>::new();
                let mut hasher512 = FsVerityHasher::<Sha512Digest>::new();
                for piece in slice.chunks(piece_size) {
                    hasher.update(piece);
                    hasher512.update(piece);
                }
                assert_eq!(hasher.finish(), reference::<Sha256Digest>(slice));
                assert_eq!(hasher512.finish(), reference::<Sha512Digest>(slice));
            }
        }
    }

    #[test]
    fn empty_file_known_digest() {
        // `fsverity digest` of an empty file (fsverity-utils), sha256.
        assert_eq!(
            FsVerityHasher::<Sha256Digest>::digest(b"").to_hex(),
            "3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95"
        );
    }
}
