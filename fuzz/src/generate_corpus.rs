//! Writes seed inputs for the fuzz targets: images made by our writer in
//! every format version into `corpus/read_image/`, and their dumpfiles
//! into `corpus/parse_dumpfile/`. Small trees that between them use every
//! inode kind, layout and writer transformation, so the fuzzer starts from
//! valid images rather than having to discover the format.
//!
//! Run from the `fuzz` directory: `cargo run --bin generate-corpus`.

use std::fs;
use std::path::Path;

use cfs_erofs::digest::{FsVerityDigest, Sha256Digest, Sha512Digest};
use cfs_erofs::dumpfile::to_string;
use cfs_erofs::format::FormatVersion;
use cfs_erofs::reader::read_image;
use cfs_erofs::tree::{
    Directory, FileName, FileSystem, Inode, Leaf, LeafContent, Mode, Mtime, RegularFile, Stat,
};
use cfs_erofs::writer::mkfs;

fn name(s: &str) -> FileName {
    FileName::new(s.as_bytes()).expect("valid name")
}

fn stat(mode: u32, xattrs: &[(&str, &[u8])]) -> Stat {
    Stat {
        mode: Mode::new(mode),
        uid: 0,
        gid: 0,
        mtime: Mtime {
            sec: 1_700_000_000,
            nsec: 0,
        },
        xattrs: xattrs
            .iter()
            .map(|(n, v)| (n.as_bytes().into(), (*v).into()))
            .collect(),
    }
}

fn add<H: FsVerityDigest>(
    fs: &mut FileSystem<H>,
    dir: &mut Directory,
    n: &str,
    stat: Stat,
    content: LeafContent<H>,
) {
    let id = fs.push_leaf(Leaf { stat, content });
    dir.entries.insert(name(n), Inode::Leaf(id));
}

/// Every kind of leaf, shared xattrs, a hardlink and a whiteout.
fn kinds<H: FsVerityDigest>(big_inline: bool) -> FileSystem<H> {
    let label: &[(&str, &[u8])] = &[("security.selinux", b"system_u:object_r:usr_t:s0\0")];
    let mut fs = FileSystem::new(stat(0o755, label));
    let mut root = Directory::new(stat(0o755, label));
    let mut sub = Directory::new(stat(0o700, &[("trusted.overlay.opaque", b"y")]));
    let digest = H::from_slice(&vec![0x42; H::ALGORITHM.digest_len()]).expect("length");
    let plain = stat(0o644, label);
    add(
        &mut fs,
        &mut root,
        "small",
        plain.clone(),
        LeafContent::Regular(RegularFile::Inline((*b"hi\n").into())),
    );
    if big_inline {
        let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        add(
            &mut fs,
            &mut root,
            "big",
            plain.clone(),
            LeafContent::Regular(RegularFile::Inline(data.into())),
        );
    }
    add(
        &mut fs,
        &mut root,
        "ext",
        plain.clone(),
        LeafContent::Regular(RegularFile::External {
            digest,
            size: 123_456,
        }),
    );
    add(
        &mut fs,
        &mut root,
        "link",
        stat(0o777, &[]),
        LeafContent::Symlink((*b"../usr/lib").into()),
    );
    add(
        &mut fs,
        &mut root,
        "chr",
        stat(0o600, &[("user.a", b"1")]),
        LeafContent::CharacterDevice(0x501),
    );
    add(
        &mut fs,
        &mut root,
        "blk",
        stat(0o600, &[("user.a", b"1")]),
        LeafContent::BlockDevice(0x801),
    );
    add(
        &mut fs,
        &mut root,
        "fifo",
        stat(0o600, &[]),
        LeafContent::Fifo,
    );
    add(
        &mut fs,
        &mut root,
        "sock",
        stat(0o600, &[]),
        LeafContent::Socket,
    );
    add(
        &mut fs,
        &mut sub,
        "gone",
        stat(0o600, &[]),
        LeafContent::CharacterDevice(0),
    );
    add(
        &mut fs,
        &mut root,
        "0c",
        stat(0o600, &[]),
        LeafContent::CharacterDevice(0),
    );
    let id = fs.push_leaf(Leaf {
        stat: stat(0o644, &[("trusted.overlay.x", b"escaped")]),
        content: LeafContent::Regular(RegularFile::Inline((*b"shared").into())),
    });
    sub.entries.insert(name("hard"), Inode::Leaf(id));
    root.entries.insert(name("hard2"), Inode::Leaf(id));
    root.entries
        .insert(name("sub"), Inode::Directory(Box::new(sub)));
    fs.root = root;
    fs
}

/// A directory spanning more than one block, and a chain of directories.
fn shapes<H: FsVerityDigest>() -> FileSystem<H> {
    let mut fs = FileSystem::new(stat(0o755, &[]));
    let mut wide = Directory::new(stat(0o755, &[]));
    for i in 0..300 {
        add(
            &mut fs,
            &mut wide,
            &format!("file-{i:04}"),
            stat(0o644, &[]),
            LeafContent::Fifo,
        );
    }
    let mut chain = Directory::new(stat(0o755, &[]));
    for _ in 0..5 {
        let mut parent = Directory::new(stat(0o755, &[]));
        parent
            .entries
            .insert(name("d"), Inode::Directory(Box::new(chain)));
        chain = parent;
    }
    fs.root
        .entries
        .insert(name("wide"), Inode::Directory(Box::new(wide)));
    fs.root
        .entries
        .insert(name("chain"), Inode::Directory(Box::new(chain)));
    fs
}

fn write<H: FsVerityDigest>(dir: &Path, label: &str, fs: &FileSystem<H>) {
    for version in FormatVersion::ALL {
        let image = mkfs(fs, version).expect("the seed trees are writable");
        if read_image::<H>(&image).is_err() {
            // V2 cannot represent inline files of a block or more.
            continue;
        }
        let v = version.header_version();
        fs::write(
            dir.join(format!("read_image/{label}-v{v}-{}", H::ALGORITHM)),
            image,
        )
        .expect("write seed");
    }
    fs::write(
        dir.join(format!("parse_dumpfile/{label}-{}", H::ALGORITHM)),
        to_string(fs),
    )
    .expect("write seed");
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for target in ["read_image", "parse_dumpfile"] {
        fs::create_dir_all(dir.join(target)).expect("create corpus directory");
    }
    write(
        &dir,
        "empty",
        &FileSystem::<Sha256Digest>::new(stat(0o755, &[])),
    );
    write(&dir, "kinds", &kinds::<Sha256Digest>(false));
    write(&dir, "kinds-big", &kinds::<Sha256Digest>(true));
    write(&dir, "kinds", &kinds::<Sha512Digest>(false));
    write(&dir, "shapes", &shapes::<Sha256Digest>());
}
