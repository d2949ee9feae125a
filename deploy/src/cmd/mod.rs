//! Runs parsed commands.

mod image;

use crate::cli::{Args, Command, Hash};

/// Runs `args`, with the digest type picked once here so everything below
/// is generic over it.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.hash {
        Hash::Sha256 => dispatch::<cfs_erofs::digest::Sha256Digest>(args),
        Hash::Sha512 => dispatch::<cfs_erofs::digest::Sha512Digest>(args),
    }
}

fn dispatch<H: cfs_erofs::digest::FsVerityDigest>(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Image(command) => image::run::<H>(command, args.erofs_version),
    }
}
