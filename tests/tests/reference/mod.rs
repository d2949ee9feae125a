//! Converting our trees into the reference crate's model, for oracle
//! tests and benchmarks. Included as a module by each test target.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use cfs_erofs::digest::{FsVerityDigest, Sha256Digest, Sha512Digest};
use cfs_erofs::format::FormatVersion;
use cfs_erofs::tree::{self, FileSystem};
use composefs::erofs::format::FormatVersion as RefVersion;
use composefs::fsverity::{FsVerityHashValue, Sha256HashValue, Sha512HashValue};
use composefs::generic_tree as gt;

/// Digest types of ours and theirs that correspond.
pub trait Pair: FsVerityDigest {
    type Ref: FsVerityHashValue;
}
impl Pair for Sha256Digest {
    type Ref = Sha256HashValue;
}
impl Pair for Sha512Digest {
    type Ref = Sha512HashValue;
}

fn ref_stat(stat: &tree::Stat) -> gt::Stat {
    gt::Stat {
        st_mode: u32::from(stat.mode.bits()),
        st_uid: stat.uid,
        st_gid: stat.gid,
        st_mtim_sec: stat.mtime.sec,
        st_mtim_nsec: stat.mtime.nsec,
        xattrs: stat
            .xattrs
            .iter()
            .map(|(k, v)| (Box::from(OsStr::from_bytes(k)), v.clone()))
            .collect(),
    }
}

fn convert_dir<R: FsVerityHashValue>(dir: &tree::Directory) -> composefs::tree::Directory<R> {
    let mut out = composefs::tree::Directory::<R>::new(ref_stat(&dir.stat));
    for (name, inode) in &dir.entries {
        let name = OsStr::from_bytes(name.as_bytes());
        match inode {
            tree::Inode::Directory(sub) => {
                out.insert(name, gt::Inode::Directory(Box::new(convert_dir(sub))));
            }
            tree::Inode::Leaf(id) => {
                out.insert(name, gt::Inode::leaf(gt::LeafId(id.0)));
            }
        }
    }
    out
}

/// Our tree as the reference's, leaf ids unchanged.
pub fn to_reference<H: Pair>(fs: &FileSystem<H>) -> composefs::tree::FileSystem<H::Ref> {
    let mut out = composefs::tree::FileSystem::<H::Ref>::new(ref_stat(&fs.root.stat));
    for leaf in &fs.leaves {
        let content = match &leaf.content {
            tree::LeafContent::Regular(tree::RegularFile::Inline(data)) => {
                gt::LeafContent::Regular(composefs::tree::RegularFile::Inline(data.clone()))
            }
            tree::LeafContent::Regular(tree::RegularFile::External { digest, size }) => {
                let id = H::Ref::from_hex(digest.to_hex()).expect("same length");
                gt::LeafContent::Regular(composefs::tree::RegularFile::External(id, *size))
            }
            tree::LeafContent::Symlink(t) => {
                gt::LeafContent::Symlink(Box::from(OsStr::from_bytes(t)))
            }
            tree::LeafContent::BlockDevice(r) => gt::LeafContent::BlockDevice(*r),
            tree::LeafContent::CharacterDevice(r) => gt::LeafContent::CharacterDevice(*r),
            tree::LeafContent::Fifo => gt::LeafContent::Fifo,
            tree::LeafContent::Socket => gt::LeafContent::Socket,
        };
        out.push_leaf(ref_stat(&leaf.stat), content);
    }
    out.root = convert_dir(&fs.root);
    out
}

pub fn ref_version(version: FormatVersion) -> RefVersion {
    match version {
        FormatVersion::V0 => RefVersion::V0,
        FormatVersion::V1 => RefVersion::V1,
        FormatVersion::V2 => RefVersion::V2,
    }
}
