//! `setup-root`: run in the initramfs (by `cfs-deploy-setup-root.service`)
//! after the physical root is mounted, before systemd switches to it.

use std::path::Path;

use anyhow::{Context, Result};
use cfs_erofs::digest::FsVerityDigest;

pub fn run<H: FsVerityDigest>(sysroot: &Path, cmdline: &Path) -> Result<()> {
    let text = std::fs::read_to_string(cmdline)
        .with_context(|| format!("reading the kernel command line {}", cmdline.display()))?;
    let arg = crate::setup_root::setup_root::<H>(sysroot, &text)?;
    println!("{}: deployment {} mounted", sysroot.display(), arg.digest);
    Ok(())
}
