//! A symlinked auth.json (dotfiles; one credential file linked into several homes): resolved the
//! way git resolves a symlinked file it must lock, so that the lock, the temp files and the rename
//! all happen beside the final target, and every path to the file meets one lock.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::StoreError;

/// How many links are followed before the chain counts as a loop (as the kernel's ELOOP).
const MAX_LINKS: usize = 40;

/// The final target of `path` when it is a symbolic link (possibly dangling: then the path it
/// would be created at); `None` when it is not a link. Refuses a loop, and a target (or, for a
/// dangling link, the target's directory) that belongs to another user.
pub(crate) fn resolve(path: &Path) -> Result<Option<PathBuf>, StoreError> {
    let mut current = path.to_path_buf();
    let mut followed = 0;
    loop {
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                if followed == MAX_LINKS {
                    return Err(StoreError::Symlink {
                        path: path.to_path_buf(),
                    });
                }
                let next = fs::read_link(&current)
                    .map_err(|e| StoreError::io("read the symbolic link", &current, e))?;
                current = match current.parent() {
                    Some(parent) if next.is_relative() => parent.join(next),
                    _ => next,
                };
                followed += 1;
            }
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(e) => return Err(StoreError::io("inspect", &current, e)),
        }
    }
    if followed == 0 {
        return Ok(None);
    }
    // The file's owner, or for a dangling link the owner of the directory it would be made in.
    let owner = match fs::metadata(&current) {
        Ok(meta) => meta.uid(),
        Err(_) => {
            let dir = current.parent().unwrap_or(Path::new("/"));
            fs::metadata(dir)
                .map_err(|e| StoreError::io("inspect the link target's directory", dir, e))?
                .uid()
        }
    };
    let me = rustix::process::geteuid().as_raw();
    if owner != me {
        return Err(StoreError::ForeignTarget {
            link: path.to_path_buf(),
            target: current,
            uid: owner,
        });
    }
    Ok(Some(current))
}
