//! Finding the boot partition of a booted host when nothing mounted it.
//!
//! The boot entries live where systemd-boot reads them: `/boot`, `/efi`
//! or `/boot/efi` when the system mounts the ESP there. With a composefs
//! root, systemd's gpt-auto generator cannot find the root's disk, so
//! unless the image's fstab names the ESP, nothing mounts it. Then, as
//! bootc does, we mount it ourselves for this process only: systemd-boot
//! tells which partition it was started from in the EFI variable
//! `LoaderDevicePartUUID`, and the mount is made in the process's private
//! mount namespace (see [`crate::writable`]), so it ends with the command.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rustix::mount::{mount, MountFlags};

/// Where entries are looked for, in this order.
const MOUNTED_CANDIDATES: [&str; 3] = ["/boot", "/efi", "/boot/efi"];
/// The EFI variable naming the partition systemd-boot was started from.
const DEVICE_VARIABLE: &str =
    "/sys/firmware/efi/efivars/LoaderDevicePartUUID-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
/// Where this process mounts the ESP it found (in its own namespace).
const PRIVATE_MOUNT: &str = "/run/cfs-deploy/esp";

/// The directory holding `loader/entries`: a mounted one, else the ESP
/// systemd-boot booted from, mounted privately. Call it before any
/// thread is started (it may enter a mount namespace).
pub fn locate() -> Result<PathBuf> {
    if let Some(found) = MOUNTED_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|dir| dir.join("loader/entries").is_dir())
    {
        return Ok(found);
    }
    let not_found = || {
        format!(
            "no loader/entries at {} and no {DEVICE_VARIABLE} to find the ESP by: \
             name the directory with --boot-dir",
            MOUNTED_CANDIDATES.join(", ")
        )
    };
    let raw = match std::fs::read(DEVICE_VARIABLE) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(not_found()),
        Err(e) => return Err(e).with_context(|| format!("reading {DEVICE_VARIABLE}")),
    };
    let uuid = efi_string(&raw)
        .filter(|uuid| is_uuid(uuid))
        .with_context(|| format!("{DEVICE_VARIABLE} holds no partition UUID"))?;
    let device = Path::new("/dev/disk/by-partuuid").join(uuid.to_ascii_lowercase());
    crate::writable::enter_private_namespace()?;
    std::fs::create_dir_all(PRIVATE_MOUNT).with_context(|| format!("creating {PRIVATE_MOUNT}"))?;
    mount(
        &device,
        PRIVATE_MOUNT,
        "vfat",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        Some(c"umask=0077"),
    )
    .map_err(|errno| {
        // A device mounted read-only elsewhere refuses a writable mount.
        let hint = if errno == rustix::io::Errno::BUSY {
            ": it is mounted elsewhere; name that mount with --boot-dir"
        } else {
            ""
        };
        anyhow::Error::from(errno).context(format!(
            "mounting the ESP systemd-boot started from ({}) at {PRIVATE_MOUNT}{hint}",
            device.display()
        ))
    })?;
    if !Path::new(PRIVATE_MOUNT).join("loader/entries").is_dir() {
        bail!(
            "the ESP systemd-boot started from ({}) has no loader/entries: name the \
             directory with --boot-dir",
            device.display()
        );
    }
    Ok(PathBuf::from(PRIVATE_MOUNT))
}

/// An EFI variable's UTF-16LE string, after its 4 bytes of attributes.
pub fn efi_string(raw: &[u8]) -> Option<String> {
    let units: Vec<u16> = raw
        .get(4..)?
        .chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
        .take_while(|&unit| unit != 0)
        .collect();
    String::from_utf16(&units).ok()
}

/// `8-4-4-4-12` hex digits: nothing else may become a path below
/// `/dev/disk/by-partuuid`.
fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variable(text: &str) -> Vec<u8> {
        let mut raw = vec![6, 0, 0, 0];
        for unit in text.encode_utf16().chain([0]) {
            raw.extend(unit.to_le_bytes());
        }
        raw
    }

    #[test]
    fn partition_uuid_from_the_variable() {
        let uuid = "6A9C3A5B-0D4E-4B1C-9F1A-2B3C4D5E6F70";
        let read = efi_string(&variable(uuid)).unwrap();
        assert_eq!(read, uuid);
        assert!(is_uuid(&read));
    }

    #[test]
    fn anything_but_a_uuid_is_refused() {
        for text in [
            "",
            "../../sda1",
            "6A9C3A5B-0D4E-4B1C-9F1A-2B3C4D5E6F7",
            "x".repeat(36).as_str(),
        ] {
            assert!(!is_uuid(text), "{text:?}");
        }
        assert_eq!(efi_string(&[1, 2]), None);
    }
}
