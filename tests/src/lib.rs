//! Shared helpers for the integration tests: a seeded random tree generator
//! that reaches every corner of the image format.
//!
//! Trees are generated in our model and converted to the reference's by
//! the oracle tests, so the same random input feeds both writers.

pub mod oci_layout;
pub mod ondisk;
pub mod registry;
pub mod tools;

use cfs_erofs::digest::FsVerityDigest;
use cfs_erofs::tree::{
    Directory, FileName, FileSystem, Inode, Leaf, LeafContent, LeafId, Mode, Mtime, RegularFile,
    Stat, Xattrs,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How big and how strange a generated tree gets.
#[derive(Debug, Clone)]
pub struct TreeParams {
    /// Entries to create (directories included).
    pub entries: usize,
    /// Deepest directory level.
    pub max_depth: usize,
    /// Largest inline file.
    pub max_inline: usize,
    /// Probability that an inode gets xattrs at all.
    pub xattr_probability: f64,
}

impl Default for TreeParams {
    fn default() -> Self {
        Self {
            entries: 200,
            max_depth: 12,
            max_inline: 9000,
            xattr_probability: 0.3,
        }
    }
}

struct Generator<'a, H> {
    rng: StdRng,
    params: &'a TreeParams,
    fs: FileSystem<H>,
    /// A few mtimes and owners reused so that compact inodes and shared
    /// xattrs actually happen.
    mtimes: Vec<Mtime>,
    shared_xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A random name: mostly short ASCII, sometimes any bytes 1..=255 but `/`,
/// sometimes 255 bytes long, sometimes two hex digits (like the writer's
/// whiteout stubs in the root).
fn random_name(rng: &mut StdRng) -> Vec<u8> {
    match rng.random_range(0..10) {
        0 => (0..rng.random_range(1..=40))
            .map(|_| loop {
                let b: u8 = rng.random_range(1..=255);
                if b != b'/' {
                    break b;
                }
            })
            .collect(),
        1 => vec![b'n'; rng.random_range(200..=255)],
        2 => format!("{:02x}", rng.random::<u8>()).into_bytes(),
        3 => vec![rng.random_range(b'!'..=b'.')],
        _ => format!("f{}", rng.random_range(0..100_000)).into_bytes(),
    }
}

impl<H: FsVerityDigest> Generator<'_, H> {
    fn stat(&mut self) -> Stat {
        let rng = &mut self.rng;
        let mode = match rng.random_range(0..6) {
            0 => rng.random_range(0..0o10000),
            1 => 0o755,
            2 => 0o4755,
            _ => 0o644,
        };
        let owner = |rng: &mut StdRng| match rng.random_range(0..8) {
            0 => rng.random_range(65536..u32::MAX),
            1 => rng.random_range(1..65536),
            _ => 0,
        };
        let uid = owner(rng);
        let gid = owner(rng);
        let mtime = if rng.random_bool(0.7) {
            self.mtimes[rng.random_range(0..self.mtimes.len())]
        } else {
            Mtime {
                sec: rng.random_range(-10_000_000_000i64..10_000_000_000),
                nsec: rng.random_range(0..1_000_000_000),
            }
        };
        let xattrs = self.xattrs();
        Stat {
            mode: Mode::new(mode),
            uid,
            gid,
            mtime,
            xattrs,
        }
    }

    fn xattrs(&mut self) -> Xattrs {
        let mut xattrs = Xattrs::new();
        if !self.rng.random_bool(self.params.xattr_probability) {
            return xattrs;
        }
        for _ in 0..self.rng.random_range(1..6) {
            let (name, value) = if self.rng.random_bool(0.5) {
                let i = self.rng.random_range(0..self.shared_xattrs.len());
                self.shared_xattrs[i].clone()
            } else {
                random_xattr(&mut self.rng)
            };
            xattrs.insert(name.into(), value.into());
        }
        xattrs
    }

    fn content(&mut self) -> LeafContent<H> {
        let rng = &mut self.rng;
        match rng.random_range(0..20) {
            0..=5 => {
                let len = match rng.random_range(0..6) {
                    0 => 0,
                    1 => rng.random_range(0..=64),
                    2 => rng.random_range(2040..2060),
                    3 => rng.random_range(0..=self.params.max_inline),
                    _ => rng.random_range(0..300),
                };
                let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                LeafContent::Regular(RegularFile::Inline(data.into()))
            }
            6..=11 => {
                let size = match rng.random_range(0..8) {
                    0 => rng.random_range(65..4097),
                    1 => 1 << rng.random_range(12..44),
                    2 => (1 << rng.random_range(12..44)) + 1,
                    3 => rng.random_range(1..u64::MAX / 2),
                    4 => rng.random_range(4_000_000..5_000_000),
                    _ => rng.random_range(65..1_000_000),
                };
                let bytes: Vec<u8> = (0..H::ALGORITHM.digest_len())
                    .map(|_| rng.random())
                    .collect();
                LeafContent::Regular(RegularFile::External {
                    digest: H::from_slice(&bytes).expect("right length"),
                    size,
                })
            }
            12..=14 => {
                let len = match rng.random_range(0..4) {
                    0 => rng.random_range(900..=1024),
                    _ => rng.random_range(1..60),
                };
                let target: Vec<u8> = (0..len).map(|_| rng.random_range(1..=255u8)).collect();
                LeafContent::Symlink(target.into())
            }
            15 => LeafContent::CharacterDevice(0),
            16 => LeafContent::CharacterDevice(rng.random_range(1..u32::MAX as u64)),
            17 => LeafContent::BlockDevice(rng.random_range(0..u32::MAX as u64)),
            18 => LeafContent::Fifo,
            _ => LeafContent::Socket,
        }
    }

    fn fill(&mut self, dir: &mut Directory, depth: usize, budget: &mut usize) {
        let here = self.rng.random_range(1..=(*budget).clamp(1, 40));
        for _ in 0..here {
            if *budget == 0 {
                return;
            }
            *budget -= 1;
            let Ok(name) = FileName::new(&random_name(&mut self.rng)) else {
                continue;
            };
            let inode = match self.rng.random_range(0..10) {
                0..=1 if depth < self.params.max_depth => {
                    let mut sub = Directory::new(self.stat());
                    self.fill(&mut sub, depth + 1, budget);
                    Inode::Directory(Box::new(sub))
                }
                2 if !self.fs.leaves.is_empty() => {
                    // A hardlink to some earlier leaf (never a whiteout).
                    let id = LeafId(self.rng.random_range(0..self.fs.leaves.len()));
                    if self.fs.leaf(id).content.is_whiteout() {
                        continue;
                    }
                    Inode::Leaf(id)
                }
                _ => {
                    let stat = self.stat();
                    let content = self.content();
                    Inode::Leaf(self.fs.push_leaf(Leaf { stat, content }))
                }
            };
            dir.entries.insert(name, inode);
        }
    }
}

/// A random xattr from every namespace EROFS has a prefix for, including
/// overlay ones that the writer must escape.
pub fn random_xattr(rng: &mut StdRng) -> (Vec<u8>, Vec<u8>) {
    const PREFIXES: [&str; 10] = [
        "user.",
        "trusted.",
        "trusted.overlay.",
        "trusted.overlay.overlay.",
        "security.",
        "system.posix_acl_access",
        "system.posix_acl_default",
        "lustre.",
        "user.overlay.",
        "other.",
    ];
    let prefix = PREFIXES[rng.random_range(0..PREFIXES.len())];
    let mut name = prefix.as_bytes().to_vec();
    let suffix_len = match rng.random_range(0..8) {
        0 => rng.random_range(200..=255 - name.len().min(55)),
        _ => rng.random_range(1..20),
    };
    name.extend((0..suffix_len).map(|_| rng.random_range(1..=255u8)));
    let value_len = match rng.random_range(0..10) {
        0 => 0,
        1 => rng.random_range(1000..6000),
        _ => rng.random_range(1..40),
    };
    let value = (0..value_len).map(|_| rng.random()).collect();
    (name, value)
}

/// A random tree for `seed`; the same seed gives the same tree.
pub fn random_tree<H: FsVerityDigest>(seed: u64, params: &TreeParams) -> FileSystem<H> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mtimes = (0..3)
        .map(|_| Mtime {
            sec: rng.random_range(0..2_000_000_000),
            nsec: if rng.random_bool(0.5) {
                0
            } else {
                rng.random_range(0..1_000_000_000)
            },
        })
        .collect();
    let shared_xattrs = (0..4).map(|_| random_xattr(&mut rng)).collect();
    let mut generator = Generator {
        rng,
        params,
        fs: FileSystem::new(Stat::default()),
        mtimes,
        shared_xattrs,
    };
    let root_stat = generator.stat();
    let mut root = Directory::new(root_stat);
    let mut budget = params.entries;
    while budget > 0 {
        generator.fill(&mut root, 0, &mut budget);
    }
    // Sometimes a root entry that looks exactly like a whiteout stub.
    if generator.rng.random_bool(0.2) {
        let stub = Leaf {
            stat: Stat {
                mode: Mode::new(0o644),
                uid: root.stat.uid,
                gid: root.stat.gid,
                mtime: root.stat.mtime,
                xattrs: root
                    .stat
                    .xattrs
                    .iter()
                    .filter(|(k, _)| &***k == b"security.selinux")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            },
            content: LeafContent::CharacterDevice(0),
        };
        let id = generator.fs.push_leaf(stub);
        let name = format!("{:02x}", generator.rng.random::<u8>());
        root.entries.insert(
            FileName::new(name.as_bytes()).expect("hex"),
            Inode::Leaf(id),
        );
    }
    let mut fs = generator.fs;
    fs.root = root;
    // Entries that replaced earlier ones with the same name orphan leaves.
    fs.compact();
    fs
}

/// A tree shaped like an OS root filesystem: `files` files spread over
/// directories of about 20 entries, mostly external (over 64 bytes), some
/// small inline ones, symlinks, a few hardlinks and SELinux-style xattrs.
pub fn rootfs_like_tree<H: FsVerityDigest>(files: usize, seed: u64) -> FileSystem<H> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mtime = Mtime {
        sec: 1_700_000_000,
        nsec: 0,
    };
    let stat = |mode: u32, label: bool| Stat {
        mode: Mode::new(mode),
        uid: 0,
        gid: 0,
        mtime,
        xattrs: if label {
            [(
                Box::from(&b"security.selinux"[..]),
                Box::from(&b"system_u:object_r:usr_t:s0\0"[..]),
            )]
            .into_iter()
            .collect()
        } else {
            Xattrs::new()
        },
    };
    let mut fs = FileSystem::new(stat(0o755, false));
    let mut dirs: Vec<Vec<u8>> = Vec::new();
    let mut made = 0;
    let mut dir_index = 0;
    while made < files {
        let mut dir = Directory::new(stat(0o755, false));
        for i in 0..20.min(files - made) {
            let content = match rng.random_range(0..10) {
                0 => LeafContent::Regular(RegularFile::Inline(
                    (0..rng.random_range(0..=64))
                        .map(|_| rng.random())
                        .collect(),
                )),
                1 => LeafContent::Symlink(format!("../lib/target-{i}").into_bytes().into()),
                _ => {
                    let bytes: Vec<u8> = (0..H::ALGORITHM.digest_len())
                        .map(|_| rng.random())
                        .collect();
                    LeafContent::Regular(RegularFile::External {
                        digest: H::from_slice(&bytes).expect("right length"),
                        size: rng.random_range(65..200_000),
                    })
                }
            };
            let id = fs.push_leaf(Leaf {
                stat: stat(0o644, rng.random_bool(0.5)),
                content,
            });
            let name = FileName::new(format!("file-{i:03}.so").as_bytes()).expect("valid");
            dir.entries.insert(name.clone(), Inode::Leaf(id));
            if rng.random_bool(0.01) {
                let link = FileName::new(format!("link-{i:03}").as_bytes()).expect("valid");
                dir.entries.insert(link, Inode::Leaf(id));
            }
            made += 1;
        }
        let name = format!("dir-{dir_index:05}").into_bytes();
        dirs.push(name.clone());
        // Two levels: /usr/NN/dir-xxxxx
        let usr = fs
            .root
            .entries
            .entry(FileName::new(b"usr").expect("valid"))
            .or_insert_with(|| Inode::Directory(Box::new(Directory::new(stat(0o755, false)))));
        let Inode::Directory(usr) = usr else {
            unreachable!("usr is created as a directory")
        };
        let group = FileName::new(format!("{:02}", dir_index % 50).as_bytes()).expect("valid");
        let group = usr
            .entries
            .entry(group)
            .or_insert_with(|| Inode::Directory(Box::new(Directory::new(stat(0o755, false)))));
        let Inode::Directory(group) = group else {
            unreachable!("groups are created as directories")
        };
        group.entries.insert(
            FileName::new(&name).expect("valid"),
            Inode::Directory(Box::new(dir)),
        );
        dir_index += 1;
    }
    fs
}
