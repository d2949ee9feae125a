//! Making a composefs image bootable.
//!
//! The image a host boots is not the image as shipped: `/boot` and
//! `/sysroot` are emptied (the first holds the UKI that embeds the image's
//! own digest, the second the host's deployments) and every inode gets the
//! SELinux label the image's own policy gives it, because a read-only root
//! cannot be relabelled after boot. The result must be bit-identical to
//! what composefs-rs 0.9.4 produces, since sealed UKIs carry its digest.
#![forbid(unsafe_code)]
#![deny(missing_docs, clippy::print_stdout, clippy::print_stderr)]

pub mod policy;
pub mod selabel;
pub mod transform;

pub use selabel::{selabel, DirectorySource, Labelling, PolicySource, SelabelError};
pub use transform::{transform_for_boot, BootError};
