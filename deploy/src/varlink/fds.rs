//! The descriptors a layer travels in: the split stream as a sealed
//! memfd, the objects as a directory; and the checks a receiver makes on
//! descriptors it did not open itself.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;

use cfs_oci::layer_transfer::STREAM_MAX;
use rustix::fs::{FileType, MemfdFlags, SealFlags};

/// A memfd holding `bytes`, sealed against any change (the receiver may
/// check `F_GET_SEALS`: what it reads is what was sent).
pub fn sealed_memfd(bytes: &[u8]) -> std::io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(
        "cfs-deploy-layer-stream",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    let mut file = File::from(fd);
    file.write_all(bytes)?;
    rustix::fs::fcntl_add_seals(
        &file,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
    )?;
    Ok(file.into())
}

/// Reads a split stream from a descriptor someone else opened. It must be
/// a regular file (a memfd), so that reading can neither block (a pipe
/// whose writer never closes would stall the service) nor run past
/// [`STREAM_MAX`]; it is read from offset 0 whatever its position.
pub fn read_stream(fd: OwnedFd) -> Result<Vec<u8>, String> {
    let stat = rustix::fs::fstat(&fd).map_err(|e| format!("examining the stream: {e}"))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err("the stream descriptor is not a regular file (a memfd)".into());
    }
    let size = u64::try_from(stat.st_size).unwrap_or(u64::MAX);
    if size > STREAM_MAX {
        return Err(format!(
            "the stream has {size} bytes, more than the {STREAM_MAX} accepted"
        ));
    }
    let mut bytes = vec![0u8; size as usize];
    File::from(fd)
        .read_exact_at(&mut bytes, 0)
        .map_err(|e| format!("reading the stream: {e}"))?;
    Ok(bytes)
}

/// Checks that a descriptor someone else opened is a directory.
pub fn check_directory(fd: &impl AsFd) -> Result<(), String> {
    let stat = rustix::fs::fstat(fd).map_err(|e| format!("examining the objects: {e}"))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
        return Err("the objects descriptor is not a directory".into());
    }
    Ok(())
}

/// Takes the descriptors at `indexes` out of `fds`, which must hold
/// exactly one per index (no strays left open, none named twice).
pub fn take<const N: usize>(
    mut fds: Vec<OwnedFd>,
    indexes: [u32; N],
) -> Result<[OwnedFd; N], String> {
    if fds.len() != N {
        return Err(format!("{} descriptors sent, {N} expected", fds.len()));
    }
    let mut seen = [false; N];
    for &index in &indexes {
        match seen.get_mut(index as usize) {
            Some(seen) if !*seen => *seen = true,
            _ => {
                return Err(format!(
                    "descriptor index {index} is out of range or repeated"
                ))
            }
        }
    }
    // The indexes are distinct and in range: each slot is taken once.
    let mut slots: Vec<Option<OwnedFd>> = fds.drain(..).map(Some).collect();
    Ok(indexes.map(|index| {
        slots[index as usize]
            .take()
            .expect("indexes are distinct and in range")
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A memfd of `len` bytes, told apart from others by its size.
    fn sized(len: usize) -> OwnedFd {
        sealed_memfd(&vec![0; len]).unwrap()
    }

    fn size(fd: &OwnedFd) -> i64 {
        rustix::fs::fstat(fd).unwrap().st_size
    }

    #[test]
    fn take_follows_the_indexes() {
        let [first, second] = take(vec![sized(1), sized(2)], [1, 0]).unwrap();
        assert_eq!((size(&first), size(&second)), (2, 1));
    }

    #[test]
    fn take_refuses_strays_gaps_and_repeats() {
        assert!(take(vec![sized(1)], [0, 1]).is_err());
        assert!(take(vec![sized(1), sized(2), sized(3)], [0, 1]).is_err());
        assert!(take(vec![sized(1), sized(2)], [0, 2]).is_err());
        assert!(take(vec![sized(1), sized(2)], [1, 1]).is_err());
    }

    #[test]
    fn sealed_streams_read_back_and_sockets_are_refused() {
        let fd = sealed_memfd(b"stream").unwrap();
        let seals = rustix::fs::fcntl_get_seals(&fd).unwrap();
        assert!(seals.contains(SealFlags::WRITE | SealFlags::SEAL));
        assert_eq!(read_stream(fd).unwrap(), b"stream");
        let (reader, _writer) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(read_stream(reader.into()).is_err());
        assert!(check_directory(&sized(0)).is_err());
    }
}
