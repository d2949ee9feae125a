//! Names: stream and image links and the refs that point at them.
//!
//! Every name is a relative symlink, replaced atomically by renaming a
//! new link over it, with its directory synced; so a ref always points at
//! a complete, synced stream or image, or at its previous target.

use std::os::fd::AsFd;

use cfs_erofs::digest::FsVerityDigest;
use rustix::fs::{AtFlags, Mode};
use rustix::io::Errno;

use crate::error::{Error, IoContext, Result};
use crate::objects::object_path;
use crate::repo::Repository;
use crate::splitstream::SplitStream;

/// The link text from `link` to `target`, both relative to the repository
/// root: `..` for each directory of `link` not shared with `target`.
pub(crate) fn relative_target(link: &str, target: &str) -> String {
    let link_dirs: Vec<&str> = link.split('/').collect();
    let link_dirs = &link_dirs[..link_dirs.len() - 1];
    let target_parts: Vec<&str> = target.split('/').collect();
    let common = link_dirs
        .iter()
        .zip(&target_parts)
        .take_while(|(a, b)| a == b)
        .count();
    let mut parts = vec![".."; link_dirs.len() - common];
    parts.extend(&target_parts[common..]);
    parts.join("/")
}

/// Checks a ref name: relative `/`-separated components, none empty, `.`
/// or `..`, no NUL.
pub(crate) fn check_ref_name(kind: &'static str, name: &str) -> Result<()> {
    let bad = |why| {
        Err(Error::BadName {
            kind,
            name: name.to_owned(),
            why,
        })
    };
    if name.is_empty() || name.len() > 4096 {
        return bad("empty or too long");
    }
    if name.contains('\0') {
        return bad("contains NUL");
    }
    if name
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == ".." || c.len() > 255)
    {
        return bad("must be relative path components, none empty, '.' or '..'");
    }
    Ok(())
}

/// Checks a stream content id or image name: one path component.
fn check_leaf_name(kind: &'static str, name: &str) -> Result<()> {
    check_ref_name(kind, name)?;
    if name.contains('/') || name.starts_with(".") {
        return Err(Error::BadName {
            kind,
            name: name.to_owned(),
            why: "may not contain '/' or start with '.'",
        });
    }
    Ok(())
}

/// The digest a `../objects/XX/rest` link text names.
pub(crate) fn digest_of_object_link<H: FsVerityDigest>(target: &str) -> Option<H> {
    let rest = target.strip_prefix("../objects/")?;
    let (dir, file) = rest.split_once('/')?;
    H::from_hex(&format!("{dir}{file}")).ok()
}

impl<H: FsVerityDigest> Repository<H> {
    fn ensure_parent_dirs(&self, link: &str) -> Result<()> {
        let mut at = 0;
        while let Some(pos) = link[at..].find('/') {
            let dir = &link[..at + pos];
            match rustix::fs::mkdirat(self.dir(), dir, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(e).io("creating", dir),
            }
            at += pos + 1;
        }
        Ok(())
    }

    /// Points `link` at `target` (both relative to the repository root),
    /// atomically replacing an existing link.
    pub(crate) fn set_link(&self, link: &str, target: &str) -> Result<()> {
        self.check_writable()?;
        let text = relative_target(link, target);
        if self.read_link(link)?.as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        self.ensure_parent_dirs(link)?;
        let (parent, _) = link.rsplit_once('/').unwrap_or((".", link));
        let tmp = format!("{parent}/.link-{}-{}", std::process::id(), unique());
        rustix::fs::symlinkat(text.as_str(), self.dir(), &tmp).io("creating link", &tmp)?;
        if let Err(e) = rustix::fs::renameat(self.dir(), &tmp, self.dir(), link) {
            let _ = rustix::fs::unlinkat(self.dir(), &tmp, AtFlags::empty());
            return Err(e).io("renaming link to", link);
        }
        self.sync_dir(parent)
    }

    /// The text of the link at `link`, if there is one.
    pub(crate) fn read_link(&self, link: &str) -> Result<Option<String>> {
        match rustix::fs::readlinkat(self.dir(), link, Vec::new()) {
            Ok(text) => Ok(Some(text.to_string_lossy().into_owned())),
            Err(Errno::NOENT) => Ok(None),
            Err(Errno::INVAL) => Err(Error::BadName {
                kind: "link",
                name: link.to_owned(),
                why: "is not a symlink",
            }),
            Err(e) => Err(e).io("reading link", link),
        }
    }

    /// Removes a link; returns whether it existed.
    pub(crate) fn remove_link(&self, link: &str) -> Result<bool> {
        self.check_writable()?;
        match rustix::fs::unlinkat(self.dir(), link, AtFlags::empty()) {
            Ok(()) => {
                let (parent, _) = link.rsplit_once('/').unwrap_or((".", link));
                self.sync_dir(parent)?;
                Ok(true)
            }
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(e).io("removing", link),
        }
    }

    fn sync_dir(&self, dir: &str) -> Result<()> {
        let fd = rustix::fs::openat(
            self.dir(),
            dir,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            Mode::empty(),
        )
        .io("opening", dir)?;
        rustix::fs::fsync(fd.as_fd()).io("syncing", dir)
    }

    // --- streams -------------------------------------------------------

    /// Stores split-stream bytes as the stream `content_id` (replacing
    /// what it named), and optionally names it by `streams/refs/<name>`.
    /// Everything the stream references must already be stored.
    pub fn write_stream(&self, content_id: &str, bytes: &[u8], name: Option<&str>) -> Result<H> {
        check_leaf_name("stream", content_id)?;
        if let Some(name) = name {
            check_ref_name("stream ref", name)?;
        }
        let digest = self.ensure_object(bytes)?;
        // Referenced objects and the stream itself reach the disk before
        // anything names the stream.
        self.sync()?;
        let stream_link = format!("streams/{content_id}");
        self.set_link(&stream_link, &object_path(&digest))?;
        if let Some(name) = name {
            self.set_link(&format!("streams/refs/{name}"), &stream_link)?;
        }
        Ok(digest)
    }

    /// The digest of the stream `content_id`, if stored.
    pub fn has_stream(&self, content_id: &str) -> Result<Option<H>> {
        check_leaf_name("stream", content_id)?;
        Ok(self
            .read_link(&format!("streams/{content_id}"))?
            .and_then(|t| digest_of_object_link(&t)))
    }

    /// Names the stored stream `content_id` by `streams/refs/<name>`.
    pub fn name_stream(&self, content_id: &str, name: &str) -> Result<()> {
        check_ref_name("stream ref", name)?;
        if self.has_stream(content_id)?.is_none() {
            return Err(Error::NotFound {
                kind: "stream",
                name: content_id.to_owned(),
            });
        }
        self.set_link(
            &format!("streams/refs/{name}"),
            &format!("streams/{content_id}"),
        )
    }

    /// Removes the name `streams/refs/<name>`; GC reclaims what only it kept.
    pub fn remove_stream_ref(&self, name: &str) -> Result<bool> {
        check_ref_name("stream ref", name)?;
        self.remove_link(&format!("streams/refs/{name}"))
    }

    /// Opens a stream by content id or by `refs/<name>`.
    pub fn open_stream(&self, name: &str) -> Result<(H, SplitStream<H>)> {
        check_ref_name("stream", name)?;
        let fd = rustix::fs::openat(
            self.dir(),
            format!("streams/{name}"),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::NOENT => Error::NotFound {
                kind: "stream",
                name: name.to_owned(),
            },
            e => Error::Io {
                op: "opening stream",
                path: format!("streams/{name}").into(),
                source: e.into(),
            },
        })?;
        let file = std::fs::File::from(fd);
        let digest = self.measure_object(&file)?;
        let bytes = self.read_object(&digest)?;
        let stream = SplitStream::parse(bytes).map_err(|source| Error::SplitStream {
            name: name.to_owned(),
            source,
        })?;
        Ok((digest, stream))
    }

    // --- images --------------------------------------------------------

    /// Stores an EROFS image, lists it under `images/`, and optionally
    /// names it by `images/refs/<name>`.
    pub fn write_image(&self, image: &[u8], name: Option<&str>) -> Result<H> {
        if let Some(name) = name {
            check_ref_name("image ref", name)?;
        }
        cfs_erofs::reader::read_image::<H>(image).map_err(|source| Error::Image {
            name: name.unwrap_or("(new)").to_owned(),
            source,
        })?;
        let digest = self.ensure_object(image)?;
        self.sync()?;
        let image_link = format!("images/{}", digest.to_hex());
        self.set_link(&image_link, &object_path(&digest))?;
        if let Some(name) = name {
            self.set_link(&format!("images/refs/{name}"), &image_link)?;
        }
        Ok(digest)
    }

    /// The digest of an image given by hex digest or ref name.
    pub fn resolve_image(&self, name: &str) -> Result<H> {
        if let Ok(digest) = H::from_hex(name) {
            if self.read_link(&format!("images/{name}"))?.is_some() {
                return Ok(digest);
            }
        }
        check_ref_name("image ref", name)?;
        let not_found = || Error::NotFound {
            kind: "image",
            name: name.to_owned(),
        };
        let link = self
            .read_link(&format!("images/refs/{name}"))?
            .ok_or_else(not_found)?;
        let hex = link.rsplit('/').next().ok_or_else(not_found)?;
        H::from_hex(hex).map_err(|_| not_found())
    }

    /// Removes the name `images/refs/<name>`; GC reclaims what only it kept.
    pub fn remove_image_ref(&self, name: &str) -> Result<bool> {
        check_ref_name("image ref", name)?;
        self.remove_link(&format!("images/refs/{name}"))
    }

    /// Every ref under `images/refs/` or `streams/refs/` (`kind` is
    /// `images` or `streams`), with its link text, sorted.
    pub fn list_refs(&self, kind: &str) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        let root = format!("{kind}/refs");
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let fd = match rustix::fs::openat(
                self.dir(),
                &dir,
                rustix::fs::OFlags::RDONLY
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::NOFOLLOW
                    | rustix::fs::OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(e).io("opening", &dir),
            };
            for entry in rustix::fs::Dir::read_from(&fd).io("listing", &dir)? {
                let entry = entry.io("listing", &dir)?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name == "." || name == ".." || name.starts_with('.') {
                    continue;
                }
                let path = format!("{dir}/{name}");
                match entry.file_type() {
                    rustix::fs::FileType::Directory => stack.push(path),
                    _ => {
                        if let Some(text) = self.read_link(&path).ok().flatten() {
                            let rel = path[root.len() + 1..].to_owned();
                            out.push((rel, text));
                        }
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// A process-unique number for temporary names.
pub(crate) fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    (COUNTER.fetch_add(1, Ordering::Relaxed) << 32) | nanos
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_targets_match_the_reference_layout() {
        assert_eq!(relative_target("images/refs/myimg", "images/abc"), "../abc");
        assert_eq!(
            relative_target("streams/refs/oci/myimg:1", "streams/oci-manifest-sha256:x"),
            "../../oci-manifest-sha256:x"
        );
        assert_eq!(
            relative_target("images/abc", "objects/ab/c"),
            "../objects/ab/c"
        );
        assert!(check_ref_name("ref", "a/b").is_ok());
        for bad in ["", "/a", "a//b", "a/../b", "a/.", "a\0"] {
            assert!(check_ref_name("ref", bad).is_err(), "{bad:?}");
        }
    }
}
