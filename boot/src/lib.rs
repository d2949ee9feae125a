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

pub mod content;
pub mod entries;
pub mod install;
pub mod kargs;
pub mod os_release;
pub mod policy;
pub mod resources;
pub mod selabel;
pub mod transform;
pub mod uki;
pub mod version;

pub use content::{ContentSource, DirectorySource};
pub use selabel::{selabel, Labelling, SelabelError};
pub use transform::{transform_for_boot, BootError};
