//! Reading and writing all extended attributes of a name in a directory,
//! without following it: a deployment's `/etc` must carry each file's
//! xattrs (SELinux labels above all) whatever its type, symlinks
//! included.
//!
//! The xattr calls take no directory descriptor, so a name is reached
//! through `/proc/self/fd/DIR/NAME`: the directory is one we opened, and
//! the `l*` calls do not follow the last component.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::io::Errno;

/// Extended attributes by name, as the image tree holds them.
pub type Xattrs = cfs_erofs::tree::Xattrs;

/// The label SELinux gives every file on a host that runs it.
pub const SELINUX: &[u8] = b"security.selinux";

/// `dir/name` as a path the xattr calls accept.
pub fn at(dir: BorrowedFd<'_>, name: &OsStr) -> PathBuf {
    let mut path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    path.push(name);
    path
}

/// Calls `fill` with a buffer that grows until the answer fits.
fn grow(mut fill: impl FnMut(&mut [u8]) -> Result<usize, Errno>) -> Result<Vec<u8>, Errno> {
    let mut buffer = vec![0u8; 256];
    loop {
        match fill(&mut buffer) {
            Ok(len) => {
                buffer.truncate(len);
                return Ok(buffer);
            }
            Err(Errno::RANGE) if buffer.len() < 1 << 20 => buffer.resize(buffer.len() * 4, 0),
            Err(e) => return Err(e),
        }
    }
}

/// All xattrs of `path`, not followed; none where the filesystem has no
/// xattrs.
pub fn read(path: &Path) -> io::Result<Xattrs> {
    let names = match grow(|buffer| rustix::fs::llistxattr(path, buffer)) {
        Ok(names) => names,
        Err(Errno::NOTSUP) => return Ok(Xattrs::new()),
        Err(e) => return Err(e.into()),
    };
    let mut xattrs = BTreeMap::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let key = OsStr::from_bytes(name);
        match grow(|buffer| rustix::fs::lgetxattr(path, key, buffer)) {
            Ok(value) => {
                xattrs.insert(name.into(), value.into());
            }
            // Removed since it was listed.
            Err(Errno::NODATA) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(xattrs)
}

/// Whether a file of this kind can hold `user.*` xattrs: the kernel
/// allows them on regular files and directories only.
pub fn takes_user_xattrs(file_type: std::fs::FileType) -> bool {
    file_type.is_file() || file_type.is_dir()
}

/// Gives `path` (not followed) exactly `wanted`: sets each, and removes
/// those it has beyond them. A SELinux label is never removed: a host
/// that runs SELinux gives every new file one, and it cannot go.
/// `user.*` names are left out on files that cannot hold them.
pub fn replace(path: &Path, wanted: &Xattrs) -> io::Result<()> {
    let file_type = std::fs::symlink_metadata(path)?.file_type();
    let user_ok = takes_user_xattrs(file_type);
    let usable = |name: &[u8]| user_ok || !name.starts_with(b"user.");
    for name in read(path)?.keys() {
        if !wanted.contains_key(name) && name.as_ref() != SELINUX && usable(name) {
            rustix::fs::lremovexattr(path, OsStr::from_bytes(name))?;
        }
    }
    for (name, value) in wanted {
        if usable(name) {
            rustix::fs::lsetxattr(
                path,
                OsStr::from_bytes(name),
                value,
                rustix::fs::XattrFlags::empty(),
            )?;
        }
    }
    Ok(())
}

/// [`replace`] for `name` in `dir`.
pub fn replace_at(dir: impl AsFd, name: &OsStr, wanted: &Xattrs) -> io::Result<()> {
    replace(&at(dir.as_fd(), name), wanted)
}

/// Whether the xattrs found on disk are the `expected` ones of an image.
/// A SELinux label counts only when the image has labels: an image without
/// a policy is labelled by the running host, not by us.
pub fn same(found: &Xattrs, expected: &Xattrs) -> bool {
    let labelled = expected.contains_key(SELINUX);
    found
        .iter()
        .filter(|(name, _)| labelled || name.as_ref() != SELINUX)
        .eq(expected
            .iter()
            .filter(|(name, _)| labelled || name.as_ref() != SELINUX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xattrs(pairs: &[(&[u8], &[u8])]) -> Xattrs {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn a_host_label_counts_only_when_the_image_has_labels() {
        let host_label = xattrs(&[(SELINUX, b"system_u:object_r:etc_t:s0")]);
        assert!(same(&host_label, &Xattrs::new()));
        assert!(!same(&Xattrs::new(), &host_label));
        let image_label = xattrs(&[(SELINUX, b"system_u:object_r:shadow_t:s0")]);
        assert!(!same(&host_label, &image_label));
        assert!(same(&image_label, &image_label));
        assert!(!same(&xattrs(&[(b"user.a", b"1")]), &Xattrs::new()));
    }
}
