//! Pulling OCI images into the repository and generating their composefs
//! EROFS images at pull time. Not written yet (issue 5).

pub mod fetch;
