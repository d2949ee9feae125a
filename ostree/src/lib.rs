//! Reading ostree repositories and converting commits into composefs images.
//! Not written yet (issue 8).
