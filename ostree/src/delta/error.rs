//! Why a static delta was refused.

use crate::checksum::Checksum;

/// A static delta that cannot be applied: malformed, truncated, corrupt,
/// or asking for something no delta ostree writes would ask for.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeltaError {
    /// The superblock cannot be read.
    #[error("delta superblock: {0}")]
    Superblock(String),
    /// A delta index or a summary's list of deltas cannot be read.
    #[error("delta index: {0}")]
    Index(String),
    /// The superblock does not hash to what the delta index lists.
    #[error("delta superblock hashes to {actual}, but the delta index lists {expected}")]
    SuperblockChecksum {
        /// What the index lists.
        expected: Checksum,
        /// What the superblock hashes to.
        actual: Checksum,
    },
    /// A part cannot be read or decompressed.
    #[error("delta part {part}: {reason}")]
    Part {
        /// Its index in the superblock.
        part: usize,
        /// What is wrong.
        reason: String,
    },
    /// A part whose bytes do not hash to its header's checksum.
    #[error("delta part {part} is corrupt: it hashes to {actual}, its header says {expected}")]
    PartChecksum {
        /// Its index in the superblock.
        part: usize,
        /// The header's checksum.
        expected: Checksum,
        /// What its bytes hash to.
        actual: Checksum,
    },
    /// An operation of a part cannot be executed.
    #[error("delta part {part}, operation {index} ({opcode}): {reason}")]
    Op {
        /// The part's index in the superblock.
        part: usize,
        /// The operation's position in the part, from 0.
        index: usize,
        /// The operation's name.
        opcode: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// An object a part built that does not hash to its name.
    #[error("delta part {part} built {kind} object {expected}, but it hashes to {actual}")]
    ObjectMismatch {
        /// The part's index in the superblock.
        part: usize,
        /// The object's kind.
        kind: &'static str,
        /// The name the part header gives it.
        expected: Checksum,
        /// What the built object hashes to.
        actual: Checksum,
    },
}
