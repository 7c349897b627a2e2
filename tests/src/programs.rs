//! Finding programs on the machine: for the benches (`cat`, `strace`) and the real-Codex check
//! (`npm`).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// `name` on PATH, if there: the first executable regular file of that name in a PATH entry.
pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| {
                candidate
                    .metadata()
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
    })
}
