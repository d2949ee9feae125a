//! The composefs repository: content-addressed objects, split streams,
//! refs, images, garbage collection and fsck.
//!
//! The on-disk layout and formats are those of composefs-rs 0.9, so that a
//! repository written by either tool can be read and checked by the other:
//!
//! ```text
//! meta.json                 algorithm, format version, feature flags
//! objects/XX/<rest>         every file, stream and image, named by fs-verity digest
//! images/<hex>              -> ../objects/XX/<rest>: EROFS images we made
//! images/refs/<name>        -> ../<hex>
//! streams/<content-id>      -> ../objects/XX/<rest>: split streams
//! streams/refs/<name>       -> ../<content-id> (relative, any depth)
//! ```
//!
//! Crash safety rests on one rule: nothing names an object before the
//! object is complete and on disk. Objects are written to unnamed
//! temporary files and linked into place whole; the filesystem is synced
//! before any stream or image link is made; links are replaced by rename.
//! A crash therefore leaves at worst unreferenced objects, which GC removes.
#![deny(missing_docs, clippy::print_stdout, clippy::print_stderr)]

mod error;
pub mod fsck;
pub mod gc;
pub mod meta;
pub mod mount;
mod objects;
mod refs;
mod repo;
pub mod secure;
pub mod splitstream;
pub mod transfer;
mod verity;

pub use error::{Error, Result};
pub use objects::ImportMethod;
pub use repo::{InitOptions, Repository};
pub use verity::VerityState;
