//! Reading ostree repositories without libostree and turning a commit into
//! composefs images.
//!
//! [`repo::LocalRepo`] reads a local repository (`archive`/`archive-z2` or
//! `bare-user` mode) and hands out objects only after checking each one's
//! SHA-256 exactly as ostree computes it, so a corrupted or tampered
//! repository is refused instead of imported. [`convert`] turns a commit
//! into the tree model the EROFS writer takes, and [`pull`] stores it in a
//! composefs repository with its plain and boot images kept alive.

pub mod checksum;
pub mod convert;
pub mod delta;
pub mod error;
pub mod fetch;
pub mod gpg;
pub mod index;
pub mod object;
pub mod pull;
pub mod remote;
pub mod repo;
pub mod sign;
pub mod source;

pub use checksum::Checksum;
pub use error::OstreeError;
