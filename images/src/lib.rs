//! The composefs repository: content-addressed objects, split streams, refs,
//! images, garbage collection and fsck. Not written yet (issue 4).
