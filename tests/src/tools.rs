//! The external tools the integration tests drive (skopeo, the registry,
//! buildah): whether they are installed, so that a test can skip with its
//! reason instead of failing on a machine without them.

use std::path::Path;

/// Whether `tool` is an executable file in one of `PATH`'s directories.
pub fn installed(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        Path::new(&dir)
            .join(tool)
            .metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}
