//! scan (being written).
