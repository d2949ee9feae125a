//! Where the files of an ostree repository come from: a local directory
//! or an HTTP(S) server, behind one interface.
//!
//! This is the seam every remote-style reader builds on: the object pull
//! ([`crate::fetch`]) and the static-delta applier both ask a
//! [`RepoSource`] for files by their path under the repository root —
//! `config`, `summary`, `summary.sig`, `refs/heads/REF`,
//! `objects/XX/REST.KIND`, `delta-indexes/..`, `deltas/..` — and get
//! bytes back, or `None` when the repository has no such file (ENOENT,
//! HTTP 404). Nothing a source returns is trusted: callers verify every
//! object against its checksum, and every whole-file read takes a size
//! limit so a hostile server cannot make us buffer without end.
//!
//! Sources are `Send + Sync` so that one source serves a bounded pool of
//! fetching threads; an HTTP source keeps its connections alive between
//! requests.

use std::fmt;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{Mode as FileMode, OFlags, ResolveFlags};

use crate::error::OstreeError;

/// A place the files of an ostree repository can be read from.
pub trait RepoSource: Send + Sync + fmt::Debug {
    /// Opens the file at `path` (relative to the repository root, `/`
    /// separated, never `..`) for streaming; `None` if there is none.
    fn open(&self, path: &str) -> Result<Option<Box<dyn Read + Send>>, OstreeError>;

    /// Where this source reads from, for messages.
    fn location(&self) -> &str;

    /// Reads the whole file at `path`, refusing one of more than `limit`
    /// bytes; `None` if there is none.
    fn fetch(&self, path: &str, limit: u64) -> Result<Option<Vec<u8>>, OstreeError> {
        let Some(reader) = self.open(path)? else {
            return Ok(None);
        };
        let mut data = Vec::new();
        reader
            .take(limit.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(|e| OstreeError::io(format!("reading {path} from {}", self.location()), e))?;
        if data.len() as u64 > limit {
            return Err(OstreeError::TooLargeFile {
                path: path.to_owned(),
                limit,
            });
        }
        Ok(Some(data))
    }
}

/// Opens the source named by `location`: an `http://` or `https://`
/// URL, or else a local directory path.
pub fn open_source(location: &str) -> Result<Box<dyn RepoSource>, OstreeError> {
    if location.starts_with("http://") || location.starts_with("https://") {
        Ok(Box::new(HttpSource::new(location)?))
    } else {
        Ok(Box::new(DirSource::open(Path::new(location))?))
    }
}

/// Refuses paths a caller should never build: absolute, empty
/// components, `.` or `..`.
fn check_path(path: &str) -> Result<(), OstreeError> {
    if path.is_empty()
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(OstreeError::BadPath(path.to_owned()));
    }
    Ok(())
}

/// Opens the directory at `path` for reads beneath it.
pub(crate) fn open_dir(path: &Path) -> Result<OwnedFd, OstreeError> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        FileMode::empty(),
    )
    .map_err(|e| OstreeError::io(format!("opening {}", path.display()), e.into()))
}

/// A repository in a local directory. Paths resolve beneath it: a
/// symlink in the repository cannot lead a read outside.
#[derive(Debug)]
pub struct DirSource {
    dir: OwnedFd,
    location: String,
}

impl DirSource {
    /// Opens the repository directory at `path`.
    pub fn open(path: &Path) -> Result<Self, OstreeError> {
        Ok(Self {
            dir: open_dir(path)?,
            location: PathBuf::from(path).display().to_string(),
        })
    }
}

impl RepoSource for DirSource {
    fn open(&self, path: &str) -> Result<Option<Box<dyn Read + Send>>, OstreeError> {
        check_path(path)?;
        match rustix::fs::openat2(
            &self.dir,
            path,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            FileMode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => Ok(Some(Box::new(io::BufReader::new(std::fs::File::from(fd))))),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(OstreeError::io(
                format!("opening {path} in {}", self.location),
                e.into(),
            )),
        }
    }

    fn location(&self) -> &str {
        &self.location
    }
}

/// How long an HTTP connection may take to open, and how long a read
/// may stall, before the request fails.
const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const HTTP_READ_TIMEOUT: Duration = Duration::from_secs(120);

/// A repository served over HTTP(S), as `ostree pull` reads one. TLS
/// goes through the system's OpenSSL (the platform's certificate store
/// and the library the rest of the tool links).
pub struct HttpSource {
    agent: ureq::Agent,
    base: String,
}

impl fmt::Debug for HttpSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSource")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl HttpSource {
    /// A source for the repository whose root is at `url`.
    pub fn new(url: &str) -> Result<Self, OstreeError> {
        let base = url.trim_end_matches('/').to_owned();
        let parsed: ureq::http::Uri = base
            .parse()
            .map_err(|e| OstreeError::BadUrl(format!("{url}: {e}")))?;
        if parsed.host().is_none() {
            return Err(OstreeError::BadUrl(format!("{url}: no host")));
        }
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::NativeTls)
            .root_certs(ureq::tls::RootCerts::PlatformVerifier)
            .build();
        let config = ureq::Agent::config_builder()
            .tls_config(tls)
            .timeout_connect(Some(HTTP_CONNECT_TIMEOUT))
            .timeout_recv_body(Some(HTTP_READ_TIMEOUT))
            .timeout_recv_response(Some(HTTP_READ_TIMEOUT))
            .max_idle_connections_per_host(64)
            .user_agent(concat!("cfs-deploy/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Self {
            agent: config.into(),
            base,
        })
    }
}

impl RepoSource for HttpSource {
    fn open(&self, path: &str) -> Result<Option<Box<dyn Read + Send>>, OstreeError> {
        check_path(path)?;
        let url = format!("{}/{path}", self.base);
        match self.agent.get(&url).call() {
            Ok(response) => {
                let reader = response
                    .into_body()
                    .into_with_config()
                    .limit(u64::MAX)
                    .reader();
                Ok(Some(Box::new(reader)))
            }
            Err(ureq::Error::StatusCode(404 | 410)) => Ok(None),
            Err(ureq::Error::StatusCode(code)) => Err(OstreeError::Http {
                url,
                reason: format!("server answered {code}"),
            }),
            Err(ureq::Error::Io(e)) => Err(OstreeError::io(format!("fetching {url}"), e)),
            Err(e) => Err(OstreeError::Http {
                url,
                reason: e.to_string(),
            }),
        }
    }

    fn location(&self) -> &str {
        &self.base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside() {
        for bad in ["", "/etc/passwd", "../x", "objects/../../x", "a//b", "./a"] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
        assert!(check_path("objects/ab/cd.filez").is_ok());
    }

    #[test]
    fn dir_source_refuses_escapes_and_reports_absence() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        std::fs::create_dir(dir.path().join("refs")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("refs/heads")).unwrap();
        std::fs::write(dir.path().join("config"), b"[core]\n").unwrap();
        let source = DirSource::open(dir.path()).unwrap();
        assert_eq!(
            source.fetch("config", 100).unwrap().as_deref(),
            Some(&b"[core]\n"[..])
        );
        assert!(source.fetch("summary", 100).unwrap().is_none());
        assert!(source.fetch("refs/heads/secret", 100).is_err());
        assert!(matches!(
            source.fetch("config", 3),
            Err(OstreeError::TooLargeFile { .. })
        ));
    }
}
