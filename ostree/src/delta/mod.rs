//! ostree static deltas: a commit's objects delivered as a few large,
//! compressed files instead of one request per object.
//!
//! A delta is a superblock ([`superblock`]) naming the target commit
//! (carried inside it), the base commit or none for a delta from scratch,
//! a list of parts, and fallback content objects to fetch loose. Each
//! part ([`part`]) is checked against the checksum in its header,
//! decompressed, and its operations ([`execute`]) build objects: whole
//! from payload bytes, spliced from files of the base commit, or patched
//! from them with bsdiff ([`bspatch`]). Every object is checked against
//! its name before it reaches the [`ObjectSink`]. [`naming`] says where a
//! delta lives in a repository.
//!
//! Everything here parses hostile bytes: sizes, offsets and indexes are
//! checked before use, and a malformed delta is an error, never a panic.

pub mod apply;
pub mod bspatch;
pub mod discovery;
pub mod error;
pub mod execute;
pub mod naming;
pub mod part;
pub mod pull;
pub mod superblock;

pub use apply::{apply_parts, fetch_superblock, ApplyStats, Fetch};
pub use discovery::{parse_delta_index, parse_summary_deltas, ListedDelta};
pub use error::DeltaError;
pub use execute::{execute, NoReadSource, ObjectSink, OpCounts, ReadSource};
pub use part::Part;
pub use superblock::{Fallback, ObjectType, PartHeader, Superblock};

/// The bytes of `inner`, a value the GVariant reader cast out of `outer`
/// (it reads in place); empty if `inner` does not lie inside `outer`
/// (the reader's default value for a malformed child).
pub(crate) fn bytes_within<'a, T: ?Sized>(outer: &'a [u8], inner: &T) -> &'a [u8] {
    let len = std::mem::size_of_val(inner);
    let start = (inner as *const T).cast::<u8>() as usize;
    start
        .checked_sub(outer.as_ptr() as usize)
        .and_then(|offset| outer.get(offset..offset.checked_add(len)?))
        .unwrap_or_default()
}
