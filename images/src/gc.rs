//! Garbage collection: everything no ref reaches goes.
//!
//! Roots are the refs under `images/refs/` and `streams/refs/`. A live
//! stream keeps its objects and the streams and images its named refs
//! point at (so an image config keeps its EROFS images); a live image
//! keeps every object its files redirect to. The sweep runs under the
//! exclusive lock, removes unreachable links before their objects (a
//! crash in between leaves only unreferenced objects), and takes leftover
//! temporary files with it.

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;

use cfs_erofs::digest::FsVerityDigest;
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;
use serde::Serialize;

use crate::error::{Error, IoContext, Result};
use crate::refs::digest_of_object_link;
use crate::repo::Repository;
use crate::splitstream::SplitStream;

/// What a collection removed, or would remove.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GcReport {
    /// Whether nothing was actually removed.
    pub dry_run: bool,
    /// Objects removed.
    pub objects_removed: u64,
    /// Their total size.
    pub bytes_removed: u64,
    /// Links removed: unreachable streams and images, dangling refs.
    pub links_removed: Vec<String>,
    /// Object paths removed (`objects/XX/rest`).
    pub objects: Vec<String>,
}

/// Something to mark live, with what it keeps alive.
enum Root<H> {
    Stream(H),
    Image(H),
}

fn open_subdir(dir: impl std::os::fd::AsFd, path: &str) -> Result<Option<OwnedFd>> {
    match rustix::fs::openat(
        dir,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e).io("opening", path),
    }
}

/// Names in a directory, without `.`, `..`.
pub(crate) fn list_dir(dir: impl std::os::fd::AsFd, path: &str) -> Result<Vec<(String, bool)>> {
    let Some(fd) = open_subdir(dir, path)? else {
        return Ok(Vec::new());
    };
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&fd).io("listing", path)? {
        let entry = entry.io("listing", path)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != "." && name != ".." {
            names.push((name, entry.file_type() == rustix::fs::FileType::Directory));
        }
    }
    names.sort();
    Ok(names)
}

impl<H: FsVerityDigest> Repository<H> {
    /// Top-level `streams/` or `images/` links by name, with the digest
    /// each names.
    pub(crate) fn top_links(&self, kind: &str) -> Result<Vec<(String, Option<H>)>> {
        let mut out = Vec::new();
        for (name, is_dir) in list_dir(self.dir(), kind)? {
            if is_dir || name.starts_with('.') {
                continue;
            }
            let target = self.read_link(&format!("{kind}/{name}")).ok().flatten();
            out.push((name, target.and_then(|t| digest_of_object_link::<H>(&t))));
        }
        Ok(out)
    }

    /// Link files left behind by an interrupted rename (`.link-*`).
    fn temporary_links(&self) -> Result<Vec<String>> {
        let mut found = Vec::new();
        let mut dirs = vec!["images".to_owned(), "streams".to_owned()];
        while let Some(dir) = dirs.pop() {
            for (name, is_dir) in list_dir(self.dir(), &dir)? {
                let path = format!("{dir}/{name}");
                if is_dir {
                    dirs.push(path);
                } else if name.starts_with(".link-") {
                    found.push(path);
                }
            }
        }
        Ok(found)
    }

    /// The set of objects reachable from the refs.
    fn mark(&self) -> Result<(HashSet<H>, Vec<String>)> {
        let streams: HashMap<String, H> = self
            .top_links("streams")?
            .into_iter()
            .filter_map(|(n, d)| Some((n, d?)))
            .collect();
        let stream_digests: HashSet<H> = streams.values().copied().collect();
        let images: HashSet<H> = self
            .top_links("images")?
            .into_iter()
            .filter_map(|(_, d)| d)
            .collect();

        let mut work = Vec::new();
        let mut dangling = Vec::new();
        for (name, target) in self.list_refs("streams")? {
            let entry = target.rsplit('/').next().unwrap_or_default();
            match streams.get(entry) {
                Some(d) => work.push(Root::Stream(*d)),
                None => dangling.push(format!("streams/refs/{name}")),
            }
        }
        for (name, target) in self.list_refs("images")? {
            let entry = target.rsplit('/').next().unwrap_or_default();
            match H::from_hex(entry).ok().filter(|d| images.contains(d)) {
                Some(d) => work.push(Root::Image(d)),
                None => dangling.push(format!("images/refs/{name}")),
            }
        }

        let mut live = HashSet::new();
        while let Some(root) = work.pop() {
            match root {
                Root::Image(digest) => {
                    if !live.insert(digest) {
                        continue;
                    }
                    let bytes = self.read_object(&digest)?;
                    let objects =
                        cfs_erofs::reader::referenced_objects::<H>(&bytes).map_err(|source| {
                            Error::Image {
                                name: digest.to_hex(),
                                source,
                            }
                        })?;
                    live.extend(objects);
                }
                Root::Stream(digest) => {
                    if !live.insert(digest) {
                        continue;
                    }
                    let bytes = self.read_object(&digest)?;
                    let stream =
                        SplitStream::<H>::parse(bytes).map_err(|source| Error::SplitStream {
                            name: digest.to_hex(),
                            source,
                        })?;
                    live.extend(stream.object_refs().iter().copied());
                    for target in stream.stream_refs() {
                        if stream_digests.contains(target) {
                            work.push(Root::Stream(*target));
                        } else if images.contains(target) {
                            work.push(Root::Image(*target));
                        } else {
                            live.insert(*target);
                        }
                    }
                }
            }
        }
        Ok((live, dangling))
    }

    /// Removes everything no ref reaches; with `dry_run`, only reports.
    pub fn gc(&self, dry_run: bool) -> Result<GcReport> {
        if !dry_run {
            self.check_writable()?;
        }
        let _guard = if dry_run {
            None
        } else {
            Some(self.lock_exclusive()?)
        };
        let (live, dangling) = self.mark()?;
        let mut report = GcReport {
            dry_run,
            ..GcReport::default()
        };

        // Links first: a crash after this leaves unreferenced objects only.
        let mut links = dangling;
        links.extend(self.temporary_links()?);
        for kind in ["streams", "images"] {
            for (name, digest) in self.top_links(kind)? {
                if !digest.is_some_and(|d| live.contains(&d)) {
                    links.push(format!("{kind}/{name}"));
                }
            }
        }
        for link in &links {
            if !dry_run {
                self.remove_link(link)?;
            }
        }
        report.links_removed = links;
        if !dry_run {
            self.sync()?;
        }

        for (sub, is_dir) in list_dir(self.dir(), "objects")? {
            let path = format!("objects/{sub}");
            if !is_dir {
                continue;
            }
            for (file, _) in list_dir(self.dir(), &path)? {
                let object = format!("{path}/{file}");
                let remove = match H::from_hex(&format!("{sub}{file}")) {
                    Ok(digest) => !live.contains(&digest),
                    // Names we do not understand are not ours to delete,
                    // but our own temporary files are.
                    Err(_) => file.starts_with('.'),
                };
                if !remove {
                    continue;
                }
                let size = rustix::fs::statat(self.dir(), &object, AtFlags::SYMLINK_NOFOLLOW)
                    .map_or(0, |s| s.st_size as u64);
                if !dry_run {
                    match rustix::fs::unlinkat(self.dir(), &object, AtFlags::empty()) {
                        Ok(()) | Err(Errno::NOENT) => {}
                        Err(e) => return Err(e).io("removing", object),
                    }
                }
                report.objects_removed += 1;
                report.bytes_removed += size;
                report.objects.push(object);
            }
        }
        Ok(report)
    }
}
