//! Finding programs: on the machine, for the benches (`cat`, `strace`) and the real-Codex check
//! (`npm`); and the workspace's own binaries in `target/<profile>/`, never building them.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

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

/// `target/<profile>/`: the directory of the workspace's binaries. Test and bench executables
/// live in its `deps/`, examples in its `examples/`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the path of the running executable");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| panic!("{} has no grandparent directory", exe.display()))
}

/// The binary `name` of the workspace package `package` in [`profile_dir`]. Panics, naming the
/// command that builds it, when it is not there: `cargo test --workspace` builds every binary of
/// the workspace before it runs a test, and nothing here runs cargo.
pub fn built(name: &str, package: &str) -> PathBuf {
    let bin = profile_dir().join(name);
    assert!(
        bin.is_file(),
        "{} is not built: run `cargo test --workspace`, or `cargo build -p {package} --bins` \
         with the profile of this program",
        bin.display()
    );
    bin
}
