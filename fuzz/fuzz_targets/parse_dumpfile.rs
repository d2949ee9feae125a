//! Feeds arbitrary bytes to the dumpfile parser.
//!
//! Invariants: the parser never panics; a tree it accepts, printed and
//! parsed again, is the same tree (leaves compared in canonical order,
//! since the input may list entries in any order the parser allows).
#![no_main]

use cfs_erofs::digest::Sha256Digest;
use cfs_erofs::dumpfile::{parse_dumpfile, write_dumpfile};
use cfs_erofs_fuzz::canonical;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(fs) = parse_dumpfile::<Sha256Digest>(data) else {
        return;
    };
    let mut printed = Vec::new();
    write_dumpfile(&mut printed, &fs).expect("a parsed tree prints");
    let again = parse_dumpfile::<Sha256Digest>(&printed)
        .unwrap_or_else(|e| panic!("a printed dumpfile does not parse: {e}"));
    assert!(
        canonical(&again) == canonical(&fs),
        "the tree changed when printed and parsed again"
    );
});
