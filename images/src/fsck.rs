//! Checking a repository: every object's content matches its name, every
//! link resolves, every stream and image parses and has all it references.
//!
//! Objects are checked in parallel, one worker per core, each taking whole
//! `objects/XX` directories. `repair` removes corrupt objects so that the
//! next pull fetches them again, and reports what now misses them.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use cfs_erofs::digest::FsVerityDigest;
use rustix::fs::{AtFlags, Mode, OFlags};
use serde::Serialize;

use crate::error::Result;
use crate::gc::list_dir;
use crate::repo::Repository;
use crate::splitstream::SplitStream;

/// The kinds of trouble fsck finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// Content does not match the name.
    CorruptObject,
    /// A file in `objects/` whose name is not a digest.
    BadObjectName,
    /// A link whose target does not exist.
    BrokenLink,
    /// Something other than a link or directory among the links.
    NotALink,
    /// A stream that does not parse.
    BadStream,
    /// An image that does not parse.
    BadImage,
    /// A stream or image references an object that is not there.
    MissingObject,
    /// The system would not let us read something.
    Unreadable,
}

/// One problem, naming the item.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// What kind.
    pub kind: ProblemKind,
    /// The path in the repository.
    pub path: String,
    /// The details.
    pub detail: String,
}

/// What fsck checked and found.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FsckReport {
    /// Objects checked.
    pub objects_checked: u64,
    /// Streams checked.
    pub streams_checked: u64,
    /// Images checked.
    pub images_checked: u64,
    /// Refs checked.
    pub refs_checked: u64,
    /// Everything wrong, sorted by path.
    pub problems: Vec<Problem>,
    /// Corrupt objects removed (with `repair`).
    pub repaired: Vec<String>,
}

impl FsckReport {
    /// Whether nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, kind: ProblemKind, path: impl Into<String>, detail: impl ToString) {
        self.problems.push(Problem {
            kind,
            path: path.into(),
            detail: detail.to_string(),
        });
    }
}

impl<H: FsVerityDigest> Repository<H> {
    /// Checks the whole repository; with `repair`, removes corrupt objects
    /// and then reports the streams and images that now miss them.
    pub fn fsck(&self, repair: bool) -> Result<FsckReport> {
        let mut report = FsckReport::default();
        let corrupt = self.check_objects(&mut report)?;
        // Repair first, so that the checks below see what is left: a
        // removed object is a missing object of everything using it.
        if repair && !corrupt.is_empty() {
            self.check_writable()?;
            for path in corrupt {
                match rustix::fs::unlinkat(self.dir(), &path, AtFlags::empty()) {
                    Ok(()) => report.repaired.push(path),
                    Err(e) => report.problem(ProblemKind::Unreadable, path, e),
                }
            }
            self.sync()?;
            let repaired = &report.repaired;
            report
                .problems
                .retain(|p| !(p.kind == ProblemKind::CorruptObject && repaired.contains(&p.path)));
        }
        self.check_streams(&mut report)?;
        self.check_images(&mut report)?;
        for kind in ["streams", "images"] {
            for (name, target) in self.list_refs(kind)? {
                report.refs_checked += 1;
                let path = format!("{kind}/refs/{name}");
                let resolves = rustix::fs::statat(self.dir(), &path, AtFlags::empty()).is_ok();
                if !resolves {
                    report.problem(ProblemKind::BrokenLink, path, format!("-> {target}"));
                }
            }
        }
        report.problems.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(report)
    }

    /// Checks every object against its name; returns the corrupt ones.
    fn check_objects(&self, report: &mut FsckReport) -> Result<Vec<String>> {
        let dirs: Vec<String> = list_dir(self.dir(), "objects")?
            .into_iter()
            .filter(|(_, is_dir)| *is_dir)
            .map(|(name, _)| name)
            .collect();
        let next = AtomicUsize::new(0);
        let results = Mutex::new((0u64, Vec::new(), Vec::new()));
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    while let Some(dir) = dirs.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let (checked, problems, corrupt) = self.check_object_dir(dir);
                        let mut all = results.lock().expect("no worker panics holding it");
                        all.0 += checked;
                        all.1.extend(problems);
                        all.2.extend(corrupt);
                    }
                });
            }
        });
        let (checked, problems, corrupt) = results.into_inner().expect("workers are done");
        report.objects_checked = checked;
        report.problems.extend(problems);
        Ok(corrupt)
    }

    fn check_object_dir(&self, dir: &str) -> (u64, Vec<Problem>, Vec<String>) {
        let mut checked = 0;
        let mut problems = Vec::new();
        let mut corrupt = Vec::new();
        let path = format!("objects/{dir}");
        let files = match list_dir(self.dir(), &path) {
            Ok(files) => files,
            Err(e) => {
                problems.push(Problem {
                    kind: ProblemKind::Unreadable,
                    path,
                    detail: e.to_string(),
                });
                return (0, problems, corrupt);
            }
        };
        for (file, _) in files {
            let object = format!("{path}/{file}");
            let Ok(expected) = H::from_hex(&format!("{dir}{file}")) else {
                problems.push(Problem {
                    kind: ProblemKind::BadObjectName,
                    path: object,
                    detail: "not a digest".into(),
                });
                continue;
            };
            checked += 1;
            let measured = rustix::fs::openat(
                self.dir(),
                &object,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| e.to_string())
            .and_then(|fd| {
                self.measure_object(&std::fs::File::from(fd))
                    .map_err(|e| e.to_string())
            });
            match measured {
                Ok(found) if found == expected => {}
                Ok(found) => {
                    problems.push(Problem {
                        kind: ProblemKind::CorruptObject,
                        path: object.clone(),
                        detail: format!("content has digest {}", found.to_hex()),
                    });
                    corrupt.push(object);
                }
                Err(e) => problems.push(Problem {
                    kind: ProblemKind::Unreadable,
                    path: object,
                    detail: e,
                }),
            }
        }
        (checked, problems, corrupt)
    }

    /// The content of the object a top-level link names, or `None` with
    /// the problem recorded.
    fn linked_object(
        &self,
        report: &mut FsckReport,
        path: &str,
        digest: Option<H>,
    ) -> Option<Vec<u8>> {
        let Some(digest) = digest.filter(|d| self.has_object(d).unwrap_or(false)) else {
            report.problem(
                ProblemKind::BrokenLink,
                path,
                "does not name a stored object",
            );
            return None;
        };
        self.read_object(&digest)
            .map_err(|e| report.problem(ProblemKind::Unreadable, path, e))
            .ok()
    }

    /// Records every object of `wanted` that is not stored.
    fn report_missing(
        &self,
        report: &mut FsckReport,
        path: &str,
        wanted: impl IntoIterator<Item = H>,
    ) {
        for object in wanted {
            if !self.has_object(&object).unwrap_or(false) {
                report.problem(ProblemKind::MissingObject, path, object.to_hex());
            }
        }
    }

    fn check_streams(&self, report: &mut FsckReport) -> Result<()> {
        for (name, digest) in self.top_links("streams")? {
            report.streams_checked += 1;
            let path = format!("streams/{name}");
            let Some(bytes) = self.linked_object(report, &path, digest) else {
                continue;
            };
            let stream = match SplitStream::<H>::parse(bytes) {
                Ok(stream) => stream,
                Err(e) => {
                    report.problem(ProblemKind::BadStream, path, e);
                    continue;
                }
            };
            // Decompress it all: a truncated body shows only here.
            if let Some(Err(e)) = stream.chunks().find(Result::is_err) {
                report.problem(ProblemKind::BadStream, &path, e);
            }
            let wanted = stream
                .object_refs()
                .iter()
                .chain(stream.stream_refs())
                .copied()
                .collect::<HashSet<H>>();
            self.report_missing(report, &path, wanted);
        }
        Ok(())
    }

    fn check_images(&self, report: &mut FsckReport) -> Result<()> {
        for (name, digest) in self.top_links("images")? {
            report.images_checked += 1;
            let path = format!("images/{name}");
            let Some(bytes) = self.linked_object(report, &path, digest) else {
                continue;
            };
            match cfs_erofs::reader::referenced_objects::<H>(&bytes) {
                Ok(objects) => self.report_missing(report, &path, objects),
                Err(e) => report.problem(ProblemKind::BadImage, path, e),
            }
        }
        Ok(())
    }
}
