//! Feeds arbitrary bytes to the EROFS reader, as both hash types.
//!
//! Invariants: the reader never panics, hangs or allocates without bound;
//! and a tree it accepts, written again in the version it was read from
//! and read back, is the same tree (so nothing the reader accepts is
//! something the writer would lose or misrepresent).
#![no_main]

use cfs_erofs::digest::{FsVerityDigest, Sha256Digest, Sha512Digest};
use cfs_erofs::reader::read_image;
use cfs_erofs::writer::{mkfs, WriteError};
use libfuzzer_sys::fuzz_target;

fn check<H: FsVerityDigest>(data: &[u8]) {
    let Ok(image) = read_image::<H>(data) else {
        return;
    };
    let rewritten = match mkfs(&image.fs, image.version) {
        Ok(bytes) => bytes,
        // Limits of the format that a different sharing of xattrs or a
        // different layout can hit even though the input respected them.
        Err(WriteError::TooManySharedXattrs(_) | WriteError::TooLarge) => return,
        Err(e) => panic!("the reader accepted a tree the writer refuses: {e}"),
    };
    let again = read_image::<H>(&rewritten)
        .unwrap_or_else(|e| panic!("the rewritten image does not read back: {e}"));
    assert_eq!(again.version, image.version);
    assert!(again.fs == image.fs, "the tree changed when written again");
}

fuzz_target!(|data: &[u8]| {
    check::<Sha256Digest>(data);
    check::<Sha512Digest>(data);
});
