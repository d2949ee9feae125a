//! fs-verity through the kernel: enabling it on a file and measuring a
//! file's digest (`FS_IOC_ENABLE_VERITY`, `FS_IOC_MEASURE_VERITY`).
//!
//! These are the crate's only `unsafe` blocks: rustix has no wrappers for
//! these two ioctls, so we describe their argument structs ourselves.
#![allow(unsafe_code)]

use std::os::fd::AsFd;

use cfs_erofs::digest::FsVerityDigest;
use rustix::io::Errno;
use rustix::ioctl::{ioctl, opcode, Opcode, Setter, Updater};

/// `struct fsverity_enable_arg` (linux/fsverity.h).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct EnableArg {
    version: u32,
    hash_algorithm: u32,
    block_size: u32,
    salt_size: u32,
    salt_ptr: u64,
    sig_size: u32,
    reserved1: u32,
    sig_ptr: u64,
    reserved2: [u64; 11],
}
const _: () = assert!(size_of::<EnableArg>() == 128);

/// `struct fsverity_digest` with room for the largest digest.
#[repr(C)]
#[derive(Debug)]
struct MeasureArg {
    digest_algorithm: u16,
    digest_size: u16,
    digest: [u8; 64],
}

const FS_IOC_ENABLE_VERITY: Opcode = opcode::write::<EnableArg>(b'f', 133);
/// The kernel's opcode encodes the 4-byte header only; the digest follows.
const FS_IOC_MEASURE_VERITY: Opcode = opcode::read_write::<[u16; 2]>(b'f', 134);

/// A file's fs-verity state as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerityState<H> {
    /// Enabled; the kernel's measurement.
    Enabled(H),
    /// The filesystem supports fs-verity but this file does not have it.
    Disabled,
    /// The filesystem (or kernel) has no fs-verity.
    Unsupported,
}

fn unsupported(e: Errno) -> bool {
    matches!(
        e,
        Errno::NOTTY | Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL
    )
}

/// Measures `fd`'s fs-verity digest.
pub(crate) fn measure<H: FsVerityDigest>(fd: impl AsFd) -> std::io::Result<VerityState<H>> {
    let mut arg = MeasureArg {
        digest_algorithm: 0,
        digest_size: 64,
        digest: [0; 64],
    };
    // SAFETY: `arg` is a `struct fsverity_digest` header followed by 64
    // bytes, the room `digest_size` tells the kernel it may fill; the
    // kernel writes no further, and `arg` outlives the call.
    let result = unsafe { ioctl(fd, Updater::<FS_IOC_MEASURE_VERITY, _>::new(&mut arg)) };
    match result {
        Ok(()) => {
            let len = usize::from(arg.digest_size).min(64);
            if u32::from(arg.digest_algorithm) != u32::from(H::ALGORITHM.kernel_id()) {
                return Err(std::io::Error::other(format!(
                    "file has fs-verity with hash algorithm {}, not {}",
                    arg.digest_algorithm,
                    H::ALGORITHM
                )));
            }
            H::from_slice(&arg.digest[..len])
                .map(VerityState::Enabled)
                .ok_or_else(|| std::io::Error::other("fs-verity digest has the wrong length"))
        }
        Err(Errno::NODATA) => Ok(VerityState::Disabled),
        Err(e) if unsupported(e) => Ok(VerityState::Unsupported),
        Err(e) => Err(e.into()),
    }
}

/// Enables fs-verity on `fd` (opened read-only, with no writer left).
/// Returns false if the filesystem cannot do it.
pub(crate) fn enable<H: FsVerityDigest>(fd: impl AsFd) -> std::io::Result<bool> {
    let arg = EnableArg {
        version: 1,
        hash_algorithm: H::ALGORITHM.kernel_id().into(),
        block_size: 4096,
        salt_size: 0,
        salt_ptr: 0,
        sig_size: 0,
        reserved1: 0,
        sig_ptr: 0,
        reserved2: [0; 11],
    };
    let fd = fd.as_fd();
    // A just-closed writer can keep the file busy for a moment.
    for attempt in 0.. {
        // SAFETY: `arg` is a complete `struct fsverity_enable_arg` with no
        // salt or signature pointers; the kernel only reads it.
        let result = unsafe { ioctl(fd, Setter::<FS_IOC_ENABLE_VERITY, _>::new(arg)) };
        match result {
            Ok(()) | Err(Errno::EXIST) => return Ok(true),
            Err(e) if unsupported(e) => return Ok(false),
            Err(Errno::TXTBSY) if attempt < 5 => {
                std::thread::sleep(std::time::Duration::from_millis(1 << attempt));
            }
            Err(e) => return Err(e.into()),
        }
    }
    unreachable!("the loop returns")
}
