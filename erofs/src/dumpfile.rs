//! dumpfile (being written).
