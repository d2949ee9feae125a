//! composefs EROFS images: the filesystem tree model, the image writer and
//! reader, the dumpfile text format, and fs-verity digests.
//!
//! This crate works on bytes and trees only. It knows nothing of
//! repositories, and its output is a pure function of its input: the same
//! tree gives the same image bytes, identical to those of composefs-rs 0.9
//! (and of the C `mkcomposefs` for the V0/V1 formats), because sealed boot
//! images embed the image's fs-verity digest.
// Not `forbid`: `sha512x8` has the crate's one unsafe call, into AVX-512
// code once the CPU is known to have it.
#![deny(unsafe_code)]
#![deny(missing_docs, clippy::print_stdout, clippy::print_stderr)]

pub mod digest;
pub mod dumpfile;
pub mod format;
pub mod fsverity;
pub mod reader;
pub mod scan;
mod sha512x8;
pub mod transform;
pub mod tree;
pub mod writer;
