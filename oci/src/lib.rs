//! Pulling OCI images into the repository and generating their composefs
//! EROFS images at pull time.
//!
//! [`tar`] turns an uncompressed layer into a split stream (every file
//! body above the inline threshold becomes a repository object) and reads
//! the entries back; [`merge`] applies the layers of an image in order to
//! build the one filesystem tree its EROFS images are written from.
#![deny(missing_docs, clippy::print_stdout, clippy::print_stderr)]

pub mod catalog;
pub mod cstor;
pub mod fetch;
pub mod layer_transfer;
pub mod merge;
pub mod pull;
mod read_ahead;
pub mod tar;
