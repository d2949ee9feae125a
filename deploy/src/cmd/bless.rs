//! `cfs-deploy bless`: the booted entry worked, so its boot counter goes.
//!
//! systemd-boot tells which file it booted, counter included, in the EFI
//! variable `LoaderBootCountPath`; an uncounted (or already blessed) boot
//! has none, and there is nothing to do.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
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
    let path = efi_string(&raw).with_context(|| format!("{variable} is not a UTF-16 string"))?;
    let esp = match esp {
        Some(esp) => esp.to_owned(),
        None => find_esp()?,
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

/// An EFI variable's UTF-16LE string, after its 4 bytes of attributes.
fn efi_string(raw: &[u8]) -> Option<String> {
    let units: Vec<u16> = raw
        .get(4..)?
        .chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
        .take_while(|&unit| unit != 0)
        .collect();
    String::from_utf16(&units).ok()
}

fn find_esp() -> Result<PathBuf> {
    for candidate in ["/efi", "/boot/efi", "/boot"] {
        if Path::new(candidate).join("loader").is_dir() {
            return Ok(PathBuf::from(candidate));
        }
    }
    bail!("no ESP with loader/ at /efi, /boot/efi or /boot: name it with --esp")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn efi_strings_are_decoded() {
        let mut raw = vec![7, 0, 0, 0];
        for unit in "\\loader\\entries\\a+2-1.conf".encode_utf16().chain([0]) {
            raw.extend(unit.to_le_bytes());
        }
        assert_eq!(
            efi_string(&raw).as_deref(),
            Some("\\loader\\entries\\a+2-1.conf")
        );
        assert_eq!(efi_string(&[1, 2, 3, 4]), Some(String::new()));
        assert_eq!(efi_string(&[1]), None);
    }
}
