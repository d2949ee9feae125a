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
//! tree height (a few blocks) whatever the file size.

use crate::digest::FsVerityDigest;

/// Merkle tree block size; the only one composefs uses (`lg_blocksize` 12).
pub const BLOCK_SIZE: usize = 4096;

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
    /// Data bytes of the current, partly filled data block.
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

impl<H: FsVerityDigest> FsVerityHasher<H> {
    /// Starts a digest of an empty file.
    pub fn new() -> Self {
        Self {
            data: Vec::with_capacity(BLOCK_SIZE),
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
        // Whole blocks straight from the caller's buffer, without copying.
        if self.data.is_empty() {
            while bytes.len() > BLOCK_SIZE {
                let (block, rest) = bytes.split_at(BLOCK_SIZE);
                self.push_hash(0, hash_block::<H>(block));
                bytes = rest;
            }
        }
        while !bytes.is_empty() {
            let take = (BLOCK_SIZE - self.data.len()).min(bytes.len());
            self.data.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            // A full block is hashed only once more data arrives, so that a
            // file of exactly one block keeps its single hash as the root.
            if self.data.len() == BLOCK_SIZE && !bytes.is_empty() {
                let hash = hash_block::<H>(&self.data);
                self.data.clear();
                self.push_hash(0, hash);
            }
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
            let hash = hash_block::<H>(&self.data);
            self.data.clear();
            self.push_hash(0, hash);
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
            let mut hasher = FsVerityHasher::<Sha256Digest>::new();
            for piece in slice.chunks(1000) {
                hasher.update(piece);
            }
            assert_eq!(hasher.finish(), reference::<Sha256Digest>(slice));
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
