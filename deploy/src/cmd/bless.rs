//! `cfs-deploy bless`: the booted entry worked, so its boot counter goes.
//!
//! systemd-boot tells which file it booted, counter included, in the EFI
//! variable `LoaderBootCountPath`; an uncounted (or already blessed) boot
//! has none, and there is nothing to do.

use std::path::Path;

use anyhow::{Context, Result};
use cap_std::ambient_authority;
use cap_std::fs::Dir;

/// systemd-boot's vendor GUID for its EFI variables.
const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
const EFIVARS: &str = "/sys/firmware/efi/efivars";

pub fn run(esp: Option<&Path>) -> Result<()> {
    let variable = format!("{EFIVARS}/LoaderBootCountPath-{LOADER_GUID}");
    let raw = match std::fs::read(&variable) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("the booted entry has no boot counter: nothing to bless");
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("reading {variable}")),
    };
    let path = crate::esp::efi_string(&raw)
        .with_context(|| format!("{variable} is not a UTF-16 string"))?;
    let esp = match esp {
        Some(esp) => esp.to_owned(),
        None => crate::esp::locate()?,
    };
    let dir = Dir::open_ambient_dir(&esp, ambient_authority())
        .with_context(|| format!("opening the ESP {}", esp.display()))?;
    match cfs_boot::install::bless(&dir, &path)
        .with_context(|| format!("blessing {path} on {}", esp.display()))?
    {
        Some(blessed) => println!("blessed: {blessed}"),
        None => println!("{path} has no boot counter: nothing to bless"),
    }
    Ok(())
}
