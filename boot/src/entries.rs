//! Boot entries on the ESP as systemd-boot reads them: Boot Loader
//! Specification Type 1 files (`loader/entries/*.conf`) and Type 2 UKIs
//! (`EFI/Linux/*.efi`), with boot counting in their names.
//!
//! A counted entry is `STEM+LEFT[-DONE].conf`: systemd-boot moves one try
//! from LEFT to DONE on each boot, and sorts an entry with no tries left
//! after all others, so the previous deployment boots next: automatic
//! rollback. Blessing (after `boot-complete.target`) drops the counter.

use std::fmt;

/// Boot-counting state in an entry's file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tries {
    /// Boots left before the entry counts as bad.
    pub left: u32,
    /// Boots already tried (and not blessed).
    pub done: u32,
}

/// The file name of a boot entry, split into its stable stem, counter and
/// extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryName {
    /// What identifies the entry whatever its counter: `cfs-...`.
    pub stem: String,
    /// The counter; `None` once blessed (or never counted).
    pub tries: Option<Tries>,
    /// `conf` (Type 1) or `efi` (Type 2).
    pub extension: String,
}

impl EntryName {
    /// Splits a file name; `None` if it is not `STEM[+L[-D]].EXT`.
    pub fn parse(file_name: &str) -> Option<EntryName> {
        let (base, extension) = file_name.rsplit_once('.')?;
        let (stem, tries) = match base.rsplit_once('+') {
            Some((stem, counter)) => {
                let (left, done) = match counter.split_once('-') {
                    Some((left, done)) => (left.parse().ok()?, done.parse().ok()?),
                    None => (counter.parse().ok()?, 0),
                };
                (stem, Some(Tries { left, done }))
            }
            None => (base, None),
        };
        if stem.is_empty() {
            return None;
        }
        Some(EntryName {
            stem: stem.to_owned(),
            tries,
            extension: extension.to_owned(),
        })
    }

    /// A new entry `STEM+TRIES.EXT` (or uncounted when `tries` is `None`).
    pub fn new(stem: &str, tries: Option<u32>, extension: &str) -> EntryName {
        EntryName {
            stem: stem.to_owned(),
            tries: tries.map(|left| Tries { left, done: 0 }),
            extension: extension.to_owned(),
        }
    }

    /// Whether systemd-boot treats the entry as bad (no tries left).
    pub fn is_bad(&self) -> bool {
        self.tries.is_some_and(|t| t.left == 0)
    }

    /// The same entry, blessed.
    pub fn blessed(&self) -> EntryName {
        EntryName {
            tries: None,
            ..self.clone()
        }
    }
}

impl fmt::Display for EntryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.stem)?;
        match self.tries {
            Some(Tries { left, done: 0 }) => write!(f, "+{left}")?,
            Some(Tries { left, done }) => write!(f, "+{left}-{done}")?,
            None => {}
        }
        write!(f, ".{}", self.extension)
    }
}

/// A Type 1 entry's fields.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlsEntry {
    /// Menu title.
    pub title: String,
    /// Version shown and, after `sort_key`, sorted by (descending).
    pub version: String,
    /// Sorted by first (ascending).
    pub sort_key: String,
    /// The kernel, an absolute path on the ESP.
    pub linux: String,
    /// The initramfs images, absolute paths on the ESP.
    pub initrd: Vec<String>,
    /// An EFI program (a UKI) to run instead of `linux`.
    pub efi: Option<String>,
    /// The kernel command line.
    pub options: String,
}

impl BlsEntry {
    /// The entry file's text.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        let mut line = |key: &str, value: &str| {
            if !value.is_empty() {
                text.push_str(&format!("{key} {value}\n"));
            }
        };
        line("title", &self.title);
        line("version", &self.version);
        line("sort-key", &self.sort_key);
        line("linux", &self.linux);
        for initrd in &self.initrd {
            line("initrd", initrd);
        }
        if let Some(efi) = &self.efi {
            line("efi", efi);
        }
        line("options", &self.options);
        text
    }

    /// Reads the keys this type knows from an entry file (others are
    /// ignored, as boot loaders do).
    pub fn parse(text: &str) -> BlsEntry {
        let mut entry = BlsEntry::default();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once(|c: char| c.is_ascii_whitespace())
                .map_or((line, ""), |(k, v)| (k, v.trim()));
            let value = value.to_owned();
            match key {
                "title" => entry.title = value,
                "version" => entry.version = value,
                "sort-key" => entry.sort_key = value,
                "linux" => entry.linux = value,
                "initrd" => entry.initrd.push(value),
                "efi" => entry.efi = Some(value),
                // Several `options` lines are joined, as the spec says.
                "options" if !entry.options.is_empty() => {
                    entry.options = format!("{} {value}", entry.options)
                }
                "options" => entry.options = value,
                _ => {}
            }
        }
        entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_and_without_counters() {
        for (text, stem, tries) in [
            ("cfs-a+3.conf", "cfs-a", Some((3, 0))),
            ("cfs-a+2-1.conf", "cfs-a", Some((2, 1))),
            ("cfs-a+0-3.conf", "cfs-a", Some((0, 3))),
            ("cfs-a.conf", "cfs-a", None),
            ("x-1.2+1-2.efi", "x-1.2", Some((1, 2))),
        ] {
            let name = EntryName::parse(text).unwrap();
            assert_eq!(name.stem, stem);
            assert_eq!(name.tries.map(|t| (t.left, t.done)), tries);
            assert_eq!(name.to_string(), text);
            assert_eq!(name.is_bad(), tries.is_some_and(|t| t.0 == 0));
            assert_eq!(
                name.blessed().to_string(),
                format!("{stem}.{}", name.extension)
            );
        }
        for bad in ["noext", "+3.conf", "a+x.conf", "a+1-y.conf"] {
            assert_eq!(EntryName::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn entries_round_trip() {
        let entry = BlsEntry {
            title: "Debian GNU/Linux 13".into(),
            version: "13".into(),
            sort_key: "cfs-1".into(),
            linux: "/cfs/ab/vmlinuz".into(),
            initrd: vec!["/cfs/ab/initrd".into()],
            efi: None,
            options: "composefs=ab root=UUID=x rw".into(),
        };
        assert_eq!(BlsEntry::parse(&entry.to_text()), entry);
        let joined = BlsEntry::parse("options a\noptions b\n# c\n");
        assert_eq!(joined.options, "a b");
    }
}
