//! Helpers shared by the fuzz targets.

use std::collections::HashMap;

use cfs_erofs::tree::{Directory, FileSystem, Inode, Leaf, LeafId};

/// `fs` with its leaves renumbered in order of first appearance in a
/// depth-first, name-sorted walk (the order the EROFS reader and the
/// dumpfile printer use), so that trees built in different orders compare
/// equal when they have the same shape and content.
pub fn canonical<H: Clone>(fs: &FileSystem<H>) -> FileSystem<H> {
    let mut map = HashMap::new();
    let mut leaves = Vec::new();
    let root = copy(&fs.root, &fs.leaves, &mut map, &mut leaves);
    FileSystem { root, leaves }
}

fn copy<H: Clone>(
    dir: &Directory,
    old: &[Leaf<H>],
    map: &mut HashMap<LeafId, LeafId>,
    leaves: &mut Vec<Leaf<H>>,
) -> Directory {
    let mut out = Directory::new(dir.stat.clone());
    for (name, inode) in &dir.entries {
        let inode = match inode {
            Inode::Directory(sub) => Inode::Directory(Box::new(copy(sub, old, map, leaves))),
            Inode::Leaf(id) => Inode::Leaf(*map.entry(*id).or_insert_with(|| {
                leaves.push(old[id.0].clone());
                LeafId(leaves.len() - 1)
            })),
        };
        out.entries.insert(name.clone(), inode);
    }
    out
}
