//! transform (being written).
