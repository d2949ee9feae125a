//! The repository's error type.

use std::io;
use std::path::PathBuf;

/// What can go wrong in a repository.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call failed on a path in the repository.
    #[error("{op} {path}: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The path, relative to the repository unless absolute.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// `meta.json` is missing: not a repository.
    #[error("{0} is not a composefs repository (no meta.json); create one with `repo init`")]
    NotARepository(PathBuf),
    /// `meta.json` could not be parsed.
    #[error("meta.json: {0}")]
    BadMetadata(String),
    /// The repository is for another hash algorithm than requested.
    #[error("repository uses {found}, not {expected}")]
    AlgorithmMismatch {
        /// What meta.json says.
        found: String,
        /// What the caller asked for.
        expected: String,
    },
    /// Features this version does not know and may not ignore.
    #[error("repository needs features this version does not support: {0:?}")]
    IncompatibleFeatures(Vec<String>),
    /// Unknown read-only-compatible features: reading is fine, writing not.
    #[error("repository is read-only for this version (unknown features {0:?})")]
    ReadOnly(Vec<String>),
    /// `init` on a repository with a different configuration.
    #[error("repository already exists with a different configuration ({0})")]
    AlreadyInitialized(String),
    /// A secure repository on a filesystem without fs-verity.
    #[error(
        "the filesystem of {0} does not support fs-verity; \
         use --insecure to create a repository that checks digests in userspace"
    )]
    NoVerity(PathBuf),
    /// An object whose content does not match its name.
    #[error("object {name} is corrupt: its content has digest {found}")]
    CorruptObject {
        /// The object's name (its expected digest).
        name: String,
        /// What its content measures.
        found: String,
    },
    /// A secure repository object without fs-verity enabled.
    #[error("object {0} has no fs-verity, but the repository requires it")]
    VerityMissing(String),
    /// No such object, stream, image or ref.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// Object, stream, image or ref.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// A name that cannot be used as a ref or content id.
    #[error("invalid {kind} name {name:?}: {why}")]
    BadName {
        /// Ref, stream or image.
        kind: &'static str,
        /// The name.
        name: String,
        /// Why not.
        why: &'static str,
    },
    /// A split stream that does not parse.
    #[error("split stream {name}: {source}")]
    SplitStream {
        /// The stream's name or digest.
        name: String,
        /// What is wrong with it.
        #[source]
        source: crate::splitstream::SplitStreamError,
    },
    /// A file imported as an object is not the size it was said to be
    /// (it changed, or whoever described it lied).
    #[error("imported file has {found} bytes or more, but {expected} were expected")]
    SourceSize {
        /// The size announced.
        expected: u64,
        /// Bytes read before stopping.
        found: u64,
    },
    /// An EROFS image that does not parse.
    #[error("image {name}: {source}")]
    Image {
        /// The image's name or digest.
        name: String,
        /// What is wrong with it.
        #[source]
        source: cfs_erofs::reader::ReadError,
    },
}

/// Results of repository operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches the operation and path to an I/O error.
pub(crate) trait IoContext<T> {
    fn io(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T, E: Into<io::Error>> IoContext<T> for Result<T, E> {
    fn io(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::Io {
            op,
            path: path.into(),
            source: e.into(),
        })
    }
}
