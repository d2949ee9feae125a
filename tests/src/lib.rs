//! Shared helpers for the integration tests: seeded random tree generators.
