//! Reading an on-disk directory tree into a [`FileSystem`].
//!
//! `image create` and `compute-id` on a directory must give the image id
//! the reference tool (composefs-rs 0.9) gives for the same directory, so
//! this reader records exactly what the reference's reader records:
//!
//! - per inode: the permission bits of the mode (`& 0o7777`), uid, gid, the
//!   mtime with nanoseconds, and every xattr of the inode itself (a
//!   symlink's own xattrs, never its target's);
//! - regular files of at most [`INLINE_CONTENT_MAX`] bytes inline, larger
//!   ones by fs-verity digest and size;
//! - symlink targets, device numbers, fifos and sockets;
//! - one leaf per `(st_dev, st_ino)` among all non-directories, whatever
//!   their link count (some filesystems report link counts wrongly), so
//!   hardlinks come out as hardlinks.
//!
//! Every file is opened relative to its parent's descriptor with
//! `O_NOFOLLOW`, so a symlink in the tree is read as a symlink and never
//! leads the scan elsewhere; a file whose type differs between `readdir`
//! and `fstat` (replaced during the scan) is an error. Non-regular files
//! are opened `O_PATH`; the xattr calls cannot take such descriptors, so
//! their xattrs are read through `/proc/self/fd/N`, which resolves to the
//! inode itself, as the reference does.
//!
//! Large files are the slow part (a root filesystem holds gigabytes), so
//! their digests are computed by a bounded pool of worker threads while
//! the walk continues; the walk hands each worker an open file, and the
//! bounded queue keeps the number of open files small.

use std::collections::HashMap;
use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

use rustix::fs::{FileType, Mode as RawMode, OFlags};
use rustix::io::Errno;

use crate::digest::FsVerityDigest;
use crate::fsverity::FsVerityHasher;
use crate::tree::{
    Directory, FileName, FileNameError, FileSystem, Inode, Leaf, LeafContent, LeafId, Mode, Mtime,
    RegularFile, Stat, Xattrs, INLINE_CONTENT_MAX,
};

/// Where the content of large regular files goes while a tree is scanned.
///
/// A repository stores each file as an object; [`HashOnly`] only measures
/// it. Called from several threads at once.
pub trait ContentSink<H>: Sync {
    /// Consumes `file`, opened for reading at offset 0, whose size was
    /// `size` bytes when scanned, and returns its fs-verity digest.
    fn store(&self, file: File, size: u64) -> io::Result<H>;
}

/// A [`ContentSink`] that computes fs-verity digests and stores nothing,
/// for `compute-id`.
#[derive(Debug, Clone, Copy, Default)]
pub struct HashOnly;

/// Most bytes [`HashOnly`] reads at once.
const READ_CHUNK: usize = 1 << 20;

impl<H: FsVerityDigest> ContentSink<H> for HashOnly {
    fn store(&self, mut file: File, size: u64) -> io::Result<H> {
        // Small files are common: do not allocate a full chunk for them.
        let capacity = usize::try_from(size)
            .unwrap_or(READ_CHUNK)
            .clamp(crate::fsverity::BLOCK_SIZE, READ_CHUNK);
        let mut buffer = vec![0u8; capacity];
        let mut hasher = FsVerityHasher::<H>::new();
        let mut total = 0u64;
        loop {
            match file.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => {
                    hasher.update(&buffer[..n]);
                    total += n as u64;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        if total != size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("file changed while being read: {size} bytes at scan time, {total} read"),
            ));
        }
        Ok(hasher.finish())
    }
}

/// Why a directory could not be scanned. Paths are relative to the scanned
/// directory; the empty path is the directory itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScanError {
    /// A system call failed.
    #[error("{}: {op}: {source}", shown(path))]
    Io {
        /// The file being read.
        path: PathBuf,
        /// What was being done, e.g. `reading xattrs`.
        op: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The file was replaced by one of another type during the scan.
    #[error(
        "{}: file type changed from {expected} to {found} during the scan",
        shown(path)
    )]
    TypeChanged {
        /// The file.
        path: PathBuf,
        /// Its type when its directory was read.
        expected: &'static str,
        /// Its type when it was opened.
        found: &'static str,
    },
    /// A directory entry whose name a tree cannot hold.
    #[error("{}: {source}", shown(path))]
    Name {
        /// The entry.
        path: PathBuf,
        /// Why the name is refused.
        source: FileNameError,
    },
    /// The [`ContentSink`] failed on a large file.
    #[error("{}: storing the content: {source}", shown(path))]
    Store {
        /// The file.
        path: PathBuf,
        /// The sink's error.
        source: io::Error,
    },
}

impl ScanError {
    /// The path of the file the error is about, relative to the scanned
    /// directory.
    pub fn path(&self) -> &Path {
        match self {
            Self::Io { path, .. }
            | Self::TypeChanged { path, .. }
            | Self::Name { path, .. }
            | Self::Store { path, .. } => path,
        }
    }
}

/// A relative path for messages: `.` for the scanned directory itself.
fn shown(path: &Path) -> std::path::Display<'_> {
    if path.as_os_str().is_empty() {
        Path::new(".").display()
    } else {
        path.display()
    }
}

fn io_error(path: &Path, op: &'static str, errno: Errno) -> ScanError {
    ScanError::Io {
        path: path.to_owned(),
        op,
        source: errno.into(),
    }
}

fn type_name(file_type: FileType) -> &'static str {
    match file_type {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        _ => "unknown",
    }
}

/// Reads the tree below `dir` (and `dir`'s own metadata, as the root).
///
/// Regular files larger than [`INLINE_CONTENT_MAX`] are given to `sink`
/// from [`std::thread::available_parallelism`] worker threads while the
/// walk goes on. Mount points inside `dir` are descended into, as the
/// reference does.
///
/// # Errors
/// The first [`ScanError`] met; the walk and the workers stop early.
pub fn scan_dir<H: FsVerityDigest>(
    dir: &cap_std::fs::Dir,
    sink: &impl ContentSink<H>,
) -> Result<FileSystem<H>, ScanError> {
    let root_path = PathBuf::new();
    // A descriptor of our own: `dir` may be `O_PATH`, and reading entries
    // must not move its file position.
    let root = rustix::fs::openat(
        dir,
        c".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        RawMode::empty(),
    )
    .map_err(|errno| io_error(&root_path, "opening", errno))?;

    let workers = thread::available_parallelism().map_or(1, |n| n.get());
    let abort = AtomicBool::new(false);
    thread::scope(|scope| {
        let (queue, jobs) = sync_channel::<Job>(workers * 2);
        // Each worker holds the receiver; when the last one exits (even by
        // panicking) the walk's next send fails instead of blocking.
        let jobs = Arc::new(Mutex::new(jobs));
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let jobs = Arc::clone(&jobs);
                let abort = &abort;
                scope.spawn(move || hash_worker(&jobs, abort, sink))
            })
            .collect();
        drop(jobs);

        let walked = Walker::new(queue, &abort).walk(root, &root_path);
        if walked.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        let mut digests: Vec<Option<H>> = Vec::new();
        let mut failure = None;
        for handle in handles {
            let (done, error) = handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            for (index, digest) in done {
                if digests.len() <= index {
                    digests.resize(index + 1, None);
                }
                digests[index] = Some(digest);
            }
            failure = failure.or(error);
        }
        // A worker's error is why the walk stopped, if it did.
        if let Some(error) = failure {
            return Err(error);
        }
        let walked = match walked {
            Ok(walked) => walked,
            Err(Stop::Failed(error)) => return Err(error),
            Err(Stop::Aborted) => unreachable!("the walk is aborted only after a worker failed"),
        };
        Ok(walked.finish(&digests))
    })
}

/// A large file waiting for its digest.
struct Job {
    /// Index into the walk's list of large files.
    index: usize,
    file: File,
    size: u64,
    path: PathBuf,
}

/// Takes jobs until the queue closes. After a failure (its own or another
/// worker's) it keeps draining without hashing, so the walk never blocks.
fn hash_worker<H, S: ContentSink<H>>(
    jobs: &Mutex<Receiver<Job>>,
    abort: &AtomicBool,
    sink: &S,
) -> (Vec<(usize, H)>, Option<ScanError>) {
    let mut done = Vec::new();
    let mut error = None;
    loop {
        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(job) = job else {
            return (done, error);
        };
        if abort.load(Ordering::Relaxed) {
            continue;
        }
        match sink.store(job.file, job.size) {
            Ok(digest) => done.push((job.index, digest)),
            Err(source) => {
                abort.store(true, Ordering::Relaxed);
                error = Some(ScanError::Store {
                    path: job.path,
                    source,
                });
            }
        }
    }
}

/// Why the walk ended early.
enum Stop {
    /// It failed itself.
    Failed(ScanError),
    /// A worker failed; its error is the one to report.
    Aborted,
}

impl From<ScanError> for Stop {
    fn from(error: ScanError) -> Self {
        Self::Failed(error)
    }
}

/// A leaf's content before the digests of large files are known.
enum Pending<H> {
    Ready(LeafContent<H>),
    /// Job `index`'s digest, of a file of `size` bytes.
    External {
        index: usize,
        size: u64,
    },
}

/// The tree as walked, before large files' digests are filled in.
struct Walked<H> {
    root: Directory,
    leaves: Vec<(Stat, Pending<H>)>,
}

impl<H: FsVerityDigest> Walked<H> {
    fn finish(self, digests: &[Option<H>]) -> FileSystem<H> {
        let leaves = self.leaves.into_iter().map(|(stat, pending)| {
            let content = match pending {
                Pending::Ready(content) => content,
                Pending::External { index, size } => {
                    let digest = digests
                        .get(index)
                        .copied()
                        .flatten()
                        .expect("every queued file is hashed when no worker failed");
                    LeafContent::Regular(RegularFile::External { digest, size })
                }
            };
            Leaf { stat, content }
        });
        FileSystem {
            root: self.root,
            leaves: leaves.collect(),
        }
    }
}

/// The largest xattr name list and value Linux allows (`XATTR_LIST_MAX`,
/// `XATTR_SIZE_MAX`).
const XATTR_MAX: usize = 65536;

/// How an inode's xattrs can be reached.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Handle {
    /// Through a readable descriptor.
    Open,
    /// Only through `/proc/self/fd/N` of an `O_PATH` descriptor.
    PathOnly,
}

/// The walk: one thread, depth-first, entries in name order.
struct Walker<'a, H> {
    leaves: Vec<(Stat, Pending<H>)>,
    /// Leaf of every non-directory seen, by `(st_dev, st_ino)`.
    inodes: HashMap<(u64, u64), LeafId>,
    jobs: usize,
    queue: SyncSender<Job>,
    abort: &'a AtomicBool,
    names: Vec<u8>,
    value: Vec<u8>,
}

impl<'a, H: FsVerityDigest> Walker<'a, H> {
    fn new(queue: SyncSender<Job>, abort: &'a AtomicBool) -> Self {
        Self {
            leaves: Vec::new(),
            inodes: HashMap::new(),
            jobs: 0,
            queue,
            abort,
            names: vec![0; XATTR_MAX],
            value: vec![0; XATTR_MAX],
        }
    }

    /// Walks the tree from the open directory `root`; consumes the walker
    /// so that the queue closes when the walk ends.
    fn walk(mut self, root: OwnedFd, path: &Path) -> Result<Walked<H>, Stop> {
        let mut path = path.to_owned();
        let root = self.directory(root, &mut path)?;
        Ok(Walked {
            root,
            leaves: self.leaves,
        })
    }

    /// Reads the directory open as `fd`, found at `path`.
    fn directory(&mut self, fd: OwnedFd, path: &mut PathBuf) -> Result<Directory, Stop> {
        let st = rustix::fs::fstat(&fd).map_err(|e| io_error(path, "fstat", e))?;
        check_type(path, FileType::Directory, &st)?;
        let stat = self.stat(&fd, Handle::Open, &st, path)?;

        let mut entries = Vec::new();
        let mut reader = rustix::fs::Dir::new(fd).map_err(|e| io_error(path, "readdir", e))?;
        for entry in reader.by_ref() {
            let entry = entry.map_err(|e| io_error(path, "readdir", e))?;
            let name = entry.file_name();
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            entries.push((name.to_owned(), entry.file_type()));
        }
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let fd = reader.fd().map_err(|e| io_error(path, "readdir", e))?;

        let mut dir = Directory::new(stat);
        for (name, file_type) in entries {
            path.push(OsStr::from_bytes(name.to_bytes()));
            let key = FileName::new(name.to_bytes()).map_err(|source| ScanError::Name {
                path: path.clone(),
                source,
            })?;
            let inode = self.entry(fd, &name, file_type, path)?;
            path.pop();
            dir.entries.insert(key, inode);
        }
        Ok(dir)
    }

    /// Reads the entry `name` of the directory `dirfd`.
    fn entry(
        &mut self,
        dirfd: impl AsFd,
        name: &CStr,
        mut file_type: FileType,
        path: &mut PathBuf,
    ) -> Result<Inode, Stop> {
        if file_type == FileType::Unknown {
            // Filesystems without `d_type` in their entries.
            let st = rustix::fs::statat(&dirfd, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| io_error(path, "lstat", e))?;
            file_type = FileType::from_raw_mode(st.st_mode);
        }
        if file_type == FileType::Directory {
            let fd = rustix::fs::openat(
                &dirfd,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                RawMode::empty(),
            )
            .map_err(|e| io_error(path, "opening", e))?;
            return Ok(Inode::Directory(Box::new(self.directory(fd, path)?)));
        }
        self.leaf(dirfd, name, file_type, path).map(Inode::Leaf)
    }

    /// Reads the non-directory `name`, or finds it among those seen.
    fn leaf(
        &mut self,
        dirfd: impl AsFd,
        name: &CStr,
        file_type: FileType,
        path: &Path,
    ) -> Result<LeafId, Stop> {
        // `O_NONBLOCK`: should a fifo replace the file after `readdir`,
        // opening it must not hang; `fstat` then reports the change.
        let (flags, handle) = match file_type {
            FileType::RegularFile => (OFlags::RDONLY | OFlags::NONBLOCK, Handle::Open),
            _ => (OFlags::PATH, Handle::PathOnly),
        };
        let fd = rustix::fs::openat(
            &dirfd,
            name,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            RawMode::empty(),
        )
        .map_err(|e| io_error(path, "opening", e))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| io_error(path, "fstat", e))?;
        check_type(path, file_type, &st)?;

        let key = (st.st_dev, st.st_ino);
        if let Some(&id) = self.inodes.get(&key) {
            return Ok(id);
        }
        let stat = self.stat(&fd, handle, &st, path)?;
        let content = match file_type {
            FileType::RegularFile => self.regular(fd, &st, path)?,
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(&fd, c"", Vec::new())
                    .map_err(|e| io_error(path, "readlink", e))?;
                Pending::Ready(LeafContent::Symlink(target.into_bytes().into()))
            }
            FileType::CharacterDevice => Pending::Ready(LeafContent::CharacterDevice(st.st_rdev)),
            FileType::BlockDevice => Pending::Ready(LeafContent::BlockDevice(st.st_rdev)),
            FileType::Fifo => Pending::Ready(LeafContent::Fifo),
            FileType::Socket => Pending::Ready(LeafContent::Socket),
            FileType::Directory | FileType::Unknown => {
                unreachable!("check_type let only non-directories of a known type through")
            }
        };
        self.leaves.push((stat, content));
        let id = LeafId(self.leaves.len() - 1);
        self.inodes.insert(key, id);
        Ok(id)
    }

    /// A regular file's content: read now if small, else queued.
    fn regular(
        &mut self,
        fd: OwnedFd,
        st: &rustix::fs::Stat,
        path: &Path,
    ) -> Result<Pending<H>, Stop> {
        let size = u64::try_from(st.st_size).unwrap_or(0);
        let mut file = File::from(fd);
        if size > INLINE_CONTENT_MAX as u64 {
            if self.abort.load(Ordering::Relaxed) {
                return Err(Stop::Aborted);
            }
            let index = self.jobs;
            self.jobs += 1;
            let job = Job {
                index,
                file,
                size,
                path: path.to_owned(),
            };
            self.queue.send(job).map_err(|_| Stop::Aborted)?;
            return Ok(Pending::External { index, size });
        }
        // At most the size seen by fstat, as the reference reads it: a file
        // that shrank since gives what is left.
        let mut data = vec![0u8; INLINE_CONTENT_MAX.min(size as usize)];
        let mut filled = 0;
        while filled < data.len() {
            match file.read(&mut data[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(Stop::Failed(ScanError::Io {
                        path: path.to_owned(),
                        op: "reading",
                        source,
                    }))
                }
            }
        }
        data.truncate(filled);
        Ok(Pending::Ready(LeafContent::Regular(RegularFile::Inline(
            data.into(),
        ))))
    }

    /// The tree's metadata of the inode open as `fd`.
    fn stat(
        &mut self,
        fd: &OwnedFd,
        handle: Handle,
        st: &rustix::fs::Stat,
        path: &Path,
    ) -> Result<Stat, ScanError> {
        Ok(Stat {
            mode: Mode::new(st.st_mode),
            uid: st.st_uid,
            gid: st.st_gid,
            mtime: Mtime {
                sec: st.st_mtime,
                nsec: u32::try_from(st.st_mtime_nsec).unwrap_or(0),
            },
            xattrs: self
                .xattrs(fd, handle)
                .map_err(|e| io_error(path, "reading xattrs", e))?,
        })
    }

    /// All xattrs of the inode open as `fd`.
    fn xattrs(&mut self, fd: &OwnedFd, handle: Handle) -> Result<Xattrs, Errno> {
        let proc_path = match handle {
            Handle::Open => None,
            Handle::PathOnly => Some(format!("/proc/self/fd/{}", fd.as_raw_fd())),
        };
        let listed = match &proc_path {
            None => rustix::fs::flistxattr(fd, &mut self.names[..]),
            Some(proc_path) => rustix::fs::listxattr(proc_path.as_str(), &mut self.names[..]),
        };
        let len = match listed {
            Ok(len) => len,
            // No xattr support on this filesystem: no xattrs.
            Err(Errno::OPNOTSUPP) => 0,
            Err(errno) => return Err(errno),
        };
        let mut xattrs = Xattrs::new();
        let list = self.names.get(..len).ok_or(Errno::RANGE)?;
        for name in list.split_inclusive(|&b| b == 0) {
            let Ok(cname) = CStr::from_bytes_with_nul(name) else {
                continue;
            };
            if cname.is_empty() {
                continue;
            }
            let got = match &proc_path {
                None => rustix::fs::fgetxattr(fd, cname, &mut self.value[..]),
                Some(proc_path) => {
                    rustix::fs::getxattr(proc_path.as_str(), cname, &mut self.value[..])
                }
            };
            let len = match got {
                Ok(len) => len,
                // Removed since it was listed.
                Err(Errno::NODATA) => continue,
                Err(errno) => return Err(errno),
            };
            let value = self.value.get(..len).ok_or(Errno::RANGE)?;
            xattrs.insert(cname.to_bytes().into(), value.into());
        }
        Ok(xattrs)
    }
}

/// Fails unless the file `fstat` describes is still of the type `readdir`
/// reported.
fn check_type(path: &Path, expected: FileType, st: &rustix::fs::Stat) -> Result<(), ScanError> {
    let found = FileType::from_raw_mode(st.st_mode);
    if found == expected && found != FileType::Unknown {
        return Ok(());
    }
    Err(ScanError::TypeChanged {
        path: path.to_owned(),
        expected: type_name(expected),
        found: type_name(found),
    })
}

#[cfg(test)]
// Tests print why they skip a part.
#[allow(clippy::print_stdout)]
mod tests {
    use super::*;
    use crate::digest::{Sha256Digest, Sha512Digest};
    use rustix::fs::{AtFlags, Timespec, Timestamps, XattrFlags, CWD};
    use std::collections::BTreeMap;

    fn open(dir: &Path) -> cap_std::fs::Dir {
        cap_std::fs::Dir::open_ambient_dir(dir, cap_std::ambient_authority()).unwrap()
    }

    fn set_mtime(path: &Path, sec: i64, nsec: i64) {
        let times = Timestamps {
            last_access: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            last_modification: Timespec {
                tv_sec: sec,
                tv_nsec: nsec,
            },
        };
        rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
    }

    fn lsetxattr(path: &Path, name: &str, value: &[u8]) {
        rustix::fs::lsetxattr(path, name, value, XattrFlags::empty()).unwrap();
    }

    fn chmod(path: &Path, mode: u32) {
        rustix::fs::chmod(path, RawMode::from_raw_mode(mode)).unwrap();
    }

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    fn get<'a>(dir: &'a Directory, name: &str) -> &'a Inode {
        dir.entries
            .get(&FileName::new(name.as_bytes()).unwrap())
            .unwrap_or_else(|| panic!("no entry {name}"))
    }

    fn leaf<'a, H: FsVerityDigest>(
        fs: &'a FileSystem<H>,
        dir: &Directory,
        name: &str,
    ) -> &'a Leaf<H> {
        match get(dir, name) {
            Inode::Leaf(id) => fs.leaf(*id),
            Inode::Directory(_) => panic!("{name} is a directory"),
        }
    }

    fn leaf_id(dir: &Directory, name: &str) -> LeafId {
        match get(dir, name) {
            Inode::Leaf(id) => *id,
            Inode::Directory(_) => panic!("{name} is a directory"),
        }
    }

    fn content(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Every file type, the inline boundary, hardlinks, xattrs, owners and
    /// nanosecond mtimes.
    #[test]
    fn scans_every_kind_of_file() {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path();
        let sizes = [("empty", 0), ("f64", 64), ("f65", 65), ("big", 1 << 20)];
        for (i, (name, size)) in sizes.iter().enumerate() {
            std::fs::write(top.join(name), content(*size, i as u8)).unwrap();
        }
        std::fs::create_dir_all(top.join("d/e")).unwrap();
        std::fs::hard_link(top.join("big"), top.join("d/big-link")).unwrap();
        std::fs::hard_link(top.join("f64"), top.join("d/e/f64-link")).unwrap();
        std::os::unix::fs::symlink("f64", top.join("link")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/x", top.join("d/dangling")).unwrap();
        std::os::unix::fs::symlink("..", top.join("d/e/up")).unwrap();
        rustix::fs::mknodat(
            CWD,
            top.join("fifo"),
            FileType::Fifo,
            RawMode::from_raw_mode(0o640),
            0,
        )
        .unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(top.join("sock")).unwrap();
        chmod(&top.join("d"), 0o1777);
        chmod(top, 0o750);
        lsetxattr(&top.join("f65"), "user.bin", &[0, 1, 2, 255]);
        lsetxattr(&top.join("f65"), "user.a", b"");
        lsetxattr(&top.join("d"), "user.dir", b"yes");
        lsetxattr(top, "user.root", b"r");
        let large_value = content(3000, 9);
        lsetxattr(&top.join("big"), "user.large", &large_value);

        let root = is_root();
        if root {
            for (name, kind, dev) in [
                ("null", FileType::CharacterDevice, rustix::fs::makedev(1, 3)),
                ("loop", FileType::BlockDevice, rustix::fs::makedev(7, 300)),
                ("whiteout", FileType::CharacterDevice, 0),
            ] {
                rustix::fs::mknodat(
                    CWD,
                    top.join(name),
                    kind,
                    RawMode::from_raw_mode(0o600),
                    dev,
                )
                .unwrap();
            }
            // A symlink's own xattrs, not its target's.
            lsetxattr(&top.join("link"), "trusted.own", b"link");
            lsetxattr(&top.join("f64"), "trusted.target", b"file");
            rustix::fs::chownat(
                CWD,
                top.join("f65"),
                Some(rustix::process::Uid::from_raw(1234)),
                Some(rustix::process::Gid::from_raw(5678)),
                AtFlags::empty(),
            )
            .unwrap();
            rustix::fs::chownat(
                CWD,
                top.join("link"),
                Some(rustix::process::Uid::from_raw(42)),
                None,
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .unwrap();
        } else {
            println!("not root: skipping devices, trusted.* xattrs and owners");
        }
        // After chown, which clears the setuid bit.
        chmod(&top.join("f65"), 0o4751);
        set_mtime(&top.join("f65"), 1_234_567_890, 123_456_789);
        set_mtime(&top.join("link"), 1_000_000_000, 999_999_999);
        set_mtime(&top.join("d/e"), -5, 7);
        set_mtime(top, 1_700_000_000, 1);

        let fs = scan_dir::<Sha256Digest>(&open(top), &HashOnly).unwrap();
        fs.check().unwrap();

        // The root.
        assert_eq!(fs.root.stat.mode, Mode::new(0o750));
        assert_eq!(
            fs.root.stat.mtime,
            Mtime {
                sec: 1_700_000_000,
                nsec: 1
            }
        );
        assert_eq!(
            fs.root.stat.xattrs.get(&b"user.root"[..]).map(|v| &v[..]),
            Some(&b"r"[..])
        );

        // Regular files around the inline limit.
        for (i, (name, size)) in sizes.iter().enumerate() {
            let data = content(*size, i as u8);
            let expected = if *size <= INLINE_CONTENT_MAX {
                RegularFile::Inline(data.into())
            } else {
                RegularFile::External {
                    digest: FsVerityHasher::<Sha256Digest>::digest(&data),
                    size: *size as u64,
                }
            };
            assert_eq!(
                leaf(&fs, &fs.root, name).content,
                LeafContent::Regular(expected),
                "{name}"
            );
        }
        let f65 = &leaf(&fs, &fs.root, "f65").stat;
        assert_eq!(f65.mode, Mode::new(0o4751));
        assert_eq!(
            f65.mtime,
            Mtime {
                sec: 1_234_567_890,
                nsec: 123_456_789
            }
        );
        let names: Vec<&[u8]> = f65.xattrs.keys().map(|k| &k[..]).collect();
        assert_eq!(names, [&b"user.a"[..], b"user.bin"]);
        assert_eq!(&f65.xattrs[&b"user.bin"[..]][..], &[0, 1, 2, 255]);
        assert_eq!(&f65.xattrs[&b"user.a"[..]][..], b"");
        assert_eq!(
            &leaf(&fs, &fs.root, "big").stat.xattrs[&b"user.large"[..]][..],
            &large_value[..]
        );

        // Directories.
        let Inode::Directory(d) = get(&fs.root, "d") else {
            panic!("d is a directory")
        };
        assert_eq!(d.stat.mode, Mode::new(0o1777));
        assert_eq!(&d.stat.xattrs[&b"user.dir"[..]][..], b"yes");
        let Inode::Directory(e) = get(d, "e") else {
            panic!("d/e is a directory")
        };
        assert_eq!(e.stat.mtime, Mtime { sec: -5, nsec: 7 });

        // Hardlinks share a leaf; other files do not.
        assert_eq!(leaf_id(&fs.root, "big"), leaf_id(d, "big-link"));
        assert_eq!(leaf_id(&fs.root, "f64"), leaf_id(e, "f64-link"));
        let nlinks = fs.nlinks();
        assert_eq!(nlinks[leaf_id(&fs.root, "big").0], 2);
        assert_eq!(nlinks[leaf_id(&fs.root, "f65").0], 1);

        // Symlinks are read, never followed.
        let link = leaf(&fs, &fs.root, "link");
        assert_eq!(link.content, LeafContent::Symlink((*b"f64").into()));
        assert_eq!(
            link.stat.mtime,
            Mtime {
                sec: 1_000_000_000,
                nsec: 999_999_999
            }
        );
        assert_eq!(
            leaf(&fs, d, "dangling").content,
            LeafContent::Symlink((*b"/nonexistent/x").into())
        );
        assert_eq!(
            leaf(&fs, e, "up").content,
            LeafContent::Symlink((*b"..").into())
        );

        // Special files.
        let fifo = leaf(&fs, &fs.root, "fifo");
        assert_eq!(fifo.content, LeafContent::Fifo);
        assert_eq!(fifo.stat.mode, Mode::new(0o640));
        assert_eq!(leaf(&fs, &fs.root, "sock").content, LeafContent::Socket);

        let mut expected_leaves = 9;
        if root {
            assert_eq!(
                leaf(&fs, &fs.root, "null").content,
                LeafContent::CharacterDevice(rustix::fs::makedev(1, 3))
            );
            assert_eq!(
                leaf(&fs, &fs.root, "loop").content,
                LeafContent::BlockDevice(rustix::fs::makedev(7, 300))
            );
            assert!(leaf(&fs, &fs.root, "whiteout").content.is_whiteout());
            let own: Vec<&[u8]> = link.stat.xattrs.keys().map(|k| &k[..]).collect();
            assert_eq!(own, [&b"trusted.own"[..]]);
            assert_eq!(link.stat.uid, 42);
            assert_eq!((f65.uid, f65.gid), (1234, 5678));
            let target = &leaf(&fs, &fs.root, "f64").stat.xattrs;
            assert!(target.contains_key(&b"trusted.target"[..]));
            expected_leaves += 3;
        }
        assert_eq!(fs.leaves.len(), expected_leaves);
    }

    #[test]
    fn sha512_and_many_large_files() {
        let tmp = tempfile::tempdir().unwrap();
        let mut expected = BTreeMap::new();
        for i in 0..300u32 {
            let dir = tmp.path().join(format!("d{}", i % 7));
            std::fs::create_dir_all(&dir).unwrap();
            let data = content(65 + (i as usize * 997) % 20000, i as u8);
            std::fs::write(dir.join(format!("f{i}")), &data).unwrap();
            expected.insert(
                (format!("d{}", i % 7), format!("f{i}")),
                FsVerityHasher::<Sha512Digest>::digest(&data),
            );
        }
        let fs = scan_dir::<Sha512Digest>(&open(tmp.path()), &HashOnly).unwrap();
        fs.check().unwrap();
        assert_eq!(fs.leaves.len(), 300);
        for ((dir, name), digest) in expected {
            let Inode::Directory(sub) = get(&fs.root, &dir) else {
                panic!("{dir} is a directory")
            };
            let LeafContent::Regular(RegularFile::External { digest: got, .. }) =
                &leaf(&fs, sub, &name).content
            else {
                panic!("{dir}/{name} is external")
            };
            assert_eq!(*got, digest, "{dir}/{name}");
        }
    }

    /// A sink that fails on one file, after hashing some others.
    struct FailOn(u64);

    impl ContentSink<Sha256Digest> for FailOn {
        fn store(&self, file: File, size: u64) -> io::Result<Sha256Digest> {
            if size == self.0 {
                return Err(io::Error::other("disk full"));
            }
            HashOnly.store(file, size)
        }
    }

    #[test]
    fn sink_errors_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("sub")).unwrap();
        for i in 0..50 {
            std::fs::write(tmp.path().join(format!("sub/ok{i}")), content(100, 1)).unwrap();
        }
        std::fs::write(tmp.path().join("sub/bad"), content(777, 1)).unwrap();
        let err = scan_dir(&open(tmp.path()), &FailOn(777)).unwrap_err();
        assert_eq!(err.path(), Path::new("sub/bad"));
        assert!(matches!(err, ScanError::Store { .. }));
        assert_eq!(err.to_string(), "sub/bad: storing the content: disk full");
    }

    #[test]
    fn hash_only_detects_size_change() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        std::fs::write(&path, content(5000, 3)).unwrap();
        let err = <HashOnly as ContentSink<Sha256Digest>>::store(
            &HashOnly,
            File::open(&path).unwrap(),
            4000,
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let digest: Sha256Digest = HashOnly.store(File::open(&path).unwrap(), 5000).unwrap();
        assert_eq!(digest, FsVerityHasher::digest(&content(5000, 3)));
    }

    #[test]
    fn type_change_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), b"x").unwrap();
        let st = rustix::fs::stat(tmp.path().join("f")).unwrap();
        let err = check_type(Path::new("a/f"), FileType::Symlink, &st).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a/f: file type changed from symlink to regular file during the scan"
        );
        assert!(check_type(Path::new("a/f"), FileType::RegularFile, &st).is_ok());
    }

    #[test]
    fn empty_directory_and_root_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let fs = scan_dir::<Sha256Digest>(&open(tmp.path()), &HashOnly).unwrap();
        assert!(fs.root.entries.is_empty());
        assert!(fs.leaves.is_empty());
        let error = io_error(Path::new(""), "opening", Errno::ACCESS);
        assert!(error.to_string().starts_with(".: opening: "), "{error}");
    }
}
