//! `os-release` (freedesktop): the names and versions boot menus show.

/// The fields of an `os-release` file that boot entries use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OsRelease {
    /// `ID`, e.g. `debian`.
    pub id: Option<String>,
    /// `NAME`.
    pub name: Option<String>,
    /// `PRETTY_NAME`.
    pub pretty_name: Option<String>,
    /// `VERSION_ID`.
    pub version_id: Option<String>,
    /// `VERSION`.
    pub version: Option<String>,
    /// `IMAGE_VERSION`: the version of the image as a whole, when set.
    pub image_version: Option<String>,
}

impl OsRelease {
    /// Parses `KEY=VALUE` lines, values optionally quoted with `"` or `'`
    /// and backslash escapes inside double quotes; other lines are
    /// ignored, as the format says.
    pub fn parse(text: &str) -> OsRelease {
        let mut release = OsRelease::default();
        for line in text.lines() {
            let Some((key, raw)) = line.trim().split_once('=') else {
                continue;
            };
            let value = unquote(raw.trim());
            let field = match key.trim() {
                "ID" => &mut release.id,
                "NAME" => &mut release.name,
                "PRETTY_NAME" => &mut release.pretty_name,
                "VERSION_ID" => &mut release.version_id,
                "VERSION" => &mut release.version,
                "IMAGE_VERSION" => &mut release.image_version,
                _ => continue,
            };
            *field = Some(value).filter(|v| !v.is_empty());
        }
        release
    }

    /// A title for a boot menu: `PRETTY_NAME`, else `NAME`, else `ID`.
    pub fn title(&self) -> Option<&str> {
        self.pretty_name
            .as_deref()
            .or(self.name.as_deref())
            .or(self.id.as_deref())
    }

    /// The version to show and sort by: `IMAGE_VERSION`, else
    /// `VERSION_ID`, else `VERSION`.
    pub fn best_version(&self) -> Option<&str> {
        self.image_version
            .as_deref()
            .or(self.version_id.as_deref())
            .or(self.version.as_deref())
    }
}

fn unquote(raw: &str) -> String {
    if let Some(inner) = raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        return inner.to_owned();
    }
    let Some(inner) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) else {
        return raw.to_owned();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quotes_and_picks_titles() {
        let text = "PRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\nNAME='Debian'\n\
                    VERSION_ID=\"13\"\n# comment\nID=debian\nHOME_URL=\"x\"\n\
                    VERSION=\"say \\\"13\\\"\"\nbogus line\n";
        let release = OsRelease::parse(text);
        assert_eq!(release.title(), Some("Debian GNU/Linux 13 (trixie)"));
        assert_eq!(release.name.as_deref(), Some("Debian"));
        assert_eq!(release.version.as_deref(), Some("say \"13\""));
        assert_eq!(release.best_version(), Some("13"));
        assert_eq!(release.id.as_deref(), Some("debian"));
        assert_eq!(OsRelease::parse("ID=x\n").title(), Some("x"));
    }
}
