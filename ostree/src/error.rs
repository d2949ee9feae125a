//! What can go wrong reading an ostree repository or importing a commit.

use crate::checksum::Checksum;

/// Why an ostree repository, one of its objects, or an import was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OstreeError {
    /// Reading the repository failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being read.
        what: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// A file of the repository larger than anything ostree would serve.
    #[error("{path} is over the {limit} byte limit")]
    TooLargeFile {
        /// Its path under the repository root.
        path: String,
        /// The limit.
        limit: u64,
    },
    /// A path under the repository root that could leave it.
    #[error("path {0:?} is not a plain path inside the repository")]
    BadPath(String),
    /// A repository URL that cannot be used.
    #[error("invalid repository URL {0}")]
    BadUrl(String),
    /// An HTTP request that failed other than with "not found".
    #[error("fetching {url}: {reason}")]
    Http {
        /// What was requested.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// The repository's `summary` cannot be read.
    #[error("summary: {0}")]
    Summary(String),
    /// The repository's `config` cannot be used.
    #[error("repository config: {0}")]
    Config(String),
    /// The repository's mode is one we do not read.
    #[error("repository mode {0:?} is not supported (archive, archive-z2 and bare-user are)")]
    UnsupportedMode(String),
    /// A configured key that cannot be used.
    #[error("bad key: {0}")]
    BadKey(String),
    /// A commit or summary whose signatures do not satisfy the keys.
    #[error("{what} refused: {reason}")]
    Signature {
        /// What was signed (commit CHECKSUM, summary).
        what: String,
        /// Why it was refused.
        reason: String,
    },
    /// A remote repository that is not in archive mode.
    #[error("the repository's mode is {0}: only archive repositories can be pulled from")]
    NotArchive(String),
    /// A ref name that is not a valid ostree ref.
    #[error("invalid ref name {0:?}")]
    BadRefName(String),
    /// A ref that does not exist in the repository.
    #[error("no ref {0:?} in the repository")]
    NoSuchRef(String),
    /// A ref file or checksum text that is not 64 lowercase hex digits.
    #[error("invalid checksum {0:?}")]
    BadChecksum(String),
    /// An object that is not in the repository.
    #[error("object {checksum}.{kind} is missing")]
    Missing {
        /// Its checksum.
        checksum: Checksum,
        /// Its kind (file extension).
        kind: &'static str,
    },
    /// An object whose bytes do not hash to its name: corrupted or tampered.
    #[error("object {expected}.{kind} is corrupt: its content hashes to {actual}")]
    ChecksumMismatch {
        /// Its kind (file extension).
        kind: &'static str,
        /// The name it is stored under.
        expected: Checksum,
        /// What its bytes hash to.
        actual: Checksum,
    },
    /// An object whose structure is invalid.
    #[error("object {checksum}.{kind}: {reason}")]
    Malformed {
        /// Its checksum.
        checksum: Checksum,
        /// Its kind (file extension).
        kind: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// An object larger than anything ostree itself would read.
    #[error("object {checksum}.{kind} is {size} bytes, over the {limit} byte limit")]
    TooLarge {
        /// Its checksum.
        checksum: Checksum,
        /// Its kind (file extension).
        kind: &'static str,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The commit's directories nest deeper than any real tree.
    #[error("directory tree nests deeper than {0} levels")]
    TooDeep(usize),
    /// The tree cannot become an image.
    #[error("building the image: {0}")]
    Image(String),
    /// A static delta was refused.
    #[error(transparent)]
    Delta(#[from] crate::delta::DeltaError),
    /// The composefs repository refused.
    #[error(transparent)]
    Repository(#[from] cfs_images::Error),
}

impl OstreeError {
    /// An I/O error while doing `what`.
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}
