//! Durable replacement: an exclusive 0600 temp file in the same directory, written and fsynced,
//! checked against the expected generation, renamed over auth.json, then the directory fsynced.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::OFlags;
use rustix::io::Errno;

use crate::error::StoreError;
use crate::generation::{Expect, Generation};
use crate::names::{self, Numbered};
use crate::read::{current_generation, read_raw, RawFile, MAX_FILE_SIZE};
use crate::side_file::{self, dir_names, dir_of, open_dir, SideBytes, NO_FOLLOW};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Removes the temp file unless defused.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn create_temp(auth: &Path) -> Result<(File, TempFile), StoreError> {
    let prefix = Numbered::Temp.prefix(auth);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir_of(auth).join(format!("{prefix}{}.{n}", std::process::id()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(side_file::custom(NO_FOLLOW))
            .open(&path)
        {
            Ok(file) => return Ok((file, TempFile { path, armed: true })),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(StoreError::io("create the temp file", path, e)),
        }
    }
}

/// Refuses to replace a symlink or a hard-linked file.
pub(crate) fn check_replaceable(path: &Path) -> Result<(), StoreError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => Err(StoreError::Symlink {
            path: path.to_path_buf(),
        }),
        Ok(meta) if meta.nlink() > 1 => Err(StoreError::HardLinked {
            path: path.to_path_buf(),
            links: meta.nlink(),
        }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io("inspect", path, e)),
    }
}

pub(crate) fn recheck(path: &Path, expected: Generation) -> Result<(), StoreError> {
    let actual = current_generation(path)?;
    if actual != expected {
        return Err(StoreError::Conflict {
            path: path.to_path_buf(),
            expected: Expect::Generation(expected),
            actual,
        });
    }
    Ok(())
}

/// Fsyncs the directory `dir`, opened as a directory only (`O_DIRECTORY`), never blocking.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    open_dir(dir, OFlags::NONBLOCK)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("fsync the directory", dir, e))
}

/// Durably replaces `path` with `bytes`, provided the file still is `expected` just before the
/// rename. The caller holds the lock. Returns the new generation.
pub(crate) fn replace(
    path: &Path,
    expected: Generation,
    bytes: &[u8],
) -> Result<Generation, StoreError> {
    let dir = dir_of(path);
    let (mut file, mut temp) = create_temp(path)?;
    let tpath = temp.path.clone();
    file.write_all(bytes)
        .map_err(|e| StoreError::io("write the temp file", &tpath, e))?;
    // The mode is 0600 whatever the umask or the old file's mode.
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(|e| StoreError::io("set 0600 on the temp file", &tpath, e))?;
    file.sync_all()
        .map_err(|e| StoreError::io("fsync the temp file", &tpath, e))?;
    drop(file);
    // A writer ignoring the lock may have written since we read; refuse to overwrite it.
    recheck(path, expected)?;
    install(&tpath, path, bytes, false)
        .map_err(|e| StoreError::io("rename the temp file over", path, e))?;
    temp.armed = false;
    let generation = Generation::of_bytes(bytes);
    synced(dir, path, generation)?;
    Ok(generation)
}

/// How a document was installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Installed {
    /// Renamed over auth.json: atomic for every reader.
    Renamed,
    /// auth.json could not be renamed over (a single-file bind mount: EBUSY or EXDEV), so it was
    /// written in place under the lock.
    InPlace,
}

/// Installs the durable file `from` (holding `bytes`) as `to`: by a rename, or, when `to` cannot
/// be renamed over because it is a mount point of its own (a single-file bind mount into a
/// container: EBUSY, EXDEV), by writing it in place. The caller holds the write locks.
///
/// The in-place write truncates and then writes the whole document in one call, so that every
/// state a reader can catch is empty or a strict prefix of the document, which never parses:
/// readers of this store re-read until it is whole. (Readers that give up on an unparseable file
/// at once, as Codex may, can see it empty for those microseconds: that cannot be avoided without
/// a rename.) Until it is fsynced, the document stays in a file named [`crate::IN_PLACE_PREFIX`]..., from
/// which an interrupted write is finished by the next writer.
///
/// A rotation file (`keep_name`) stays a rotation file through the in-place write (marked with
/// [`names::IN_PLACE_SUFFIX`]), so that the recovery, which knows the generation it replaces and the
/// token it redeemed, finishes the write if a crash cuts it short; it is removed only once
/// auth.json reads back as the document.
pub(crate) fn install(
    from: &Path,
    to: &Path,
    bytes: &[u8],
    keep_name: bool,
) -> io::Result<Installed> {
    match fs::rename(from, to) {
        Ok(()) => Ok(Installed::Renamed),
        Err(e) if matches!(side_file::errno(&e), Some(Errno::BUSY | Errno::XDEV)) => {
            let keep = if keep_name {
                // Still a rotation file, marked: an in-place install of it is under way.
                let marked = names::in_place_marked(from);
                fs::rename(from, &marked)?;
                marked
            } else {
                let n = COUNTER.fetch_add(1, Ordering::Relaxed);
                let keep = dir_of(to).join(format!(
                    "{}{}.{n}",
                    Numbered::InPlace.prefix(to),
                    std::process::id()
                ));
                fs::rename(from, &keep)?;
                keep
            };
            write_in_place_verified(to, bytes)?;
            let _ = fs::remove_file(&keep);
            Ok(Installed::InPlace)
        }
        Err(e) => Err(e),
    }
}

/// [`write_in_place`], then reads the file back: only a file that holds exactly `bytes` counts
/// as written (a writer ignoring the locks may have written over it meanwhile).
pub(crate) fn write_in_place_verified(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_in_place(path, bytes)?;
    // Read back as every read of auth.json is: no link followed, non-blocking, bounded.
    match read_raw(path).map_err(io::Error::other)? {
        Some(RawFile::Bytes(read)) if read == bytes => Ok(()),
        _ => Err(io::Error::other(
            "auth.json did not read back as written (another writer?)",
        )),
    }
}

/// Truncates `path` and writes `bytes` into it in one call, then fsyncs it.
pub(crate) fn write_in_place(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(side_file::custom(NO_FOLLOW))
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    file.set_len(0)?;
    file.write_all_at(bytes, 0)?;
    file.sync_all()
}

/// Whether `current` (auth.json's bytes) is what an interrupted in-place write of `document`
/// leaves: empty, or a strict prefix of it.
pub(crate) fn interrupted_in_place(current: &[u8], document: &[u8]) -> bool {
    current.len() < document.len() && document.starts_with(current)
}

/// Whether leftovers of interrupted in-place writes of `path` are beside it.
pub(crate) fn has_in_place(path: &Path) -> bool {
    let prefix = Numbered::InPlace.prefix(path);
    dir_names(dir_of(path))
        .iter()
        .any(|name| name.starts_with(&prefix))
}

/// Finishes or removes the leftovers of interrupted in-place writes. The caller holds the write
/// locks, under which every in-place write happens, so any leftover found is a crashed writer's.
pub(crate) fn finish_in_place(path: &Path) {
    let dir = dir_of(path);
    let prefix = Numbered::InPlace.prefix(path);
    for name in dir_names(dir) {
        if !name.starts_with(&prefix) {
            continue;
        }
        let leftover = dir.join(&name);
        // Every leftover of ours is a regular file of at most MAX_FILE_SIZE bytes (a document
        // that would not read back is never written). Anything else at the name (a FIFO, a
        // device, a link someone planted, a huge file) holds no document of ours: it is removed
        // unread (the check opens nothing blocking, follows no link, reads nothing unbounded;
        // unlinking a link or a FIFO never touches its target or its other end).
        let document = match side_file::read_bounded(&leftover, MAX_FILE_SIZE) {
            Ok(SideBytes::Bytes(document)) => document,
            Ok(SideBytes::NotRegular | SideBytes::TooLarge) => {
                let _ = side_file::remove(&leftover);
                continue;
            }
            Ok(SideBytes::Missing) | Err(_) => continue,
        };
        let current = match read_raw(path) {
            Ok(Some(RawFile::Bytes(current))) => Some(current),
            // Larger than any document: no prefix of one.
            Ok(Some(RawFile::TooLarge(_))) => None,
            // No auth.json (an in-place write never removes it), or one that cannot be read:
            // keep the leftover for the next writer.
            Ok(None) | Err(_) => continue,
        };
        if current.is_some_and(|current| interrupted_in_place(&current, &document))
            && write_in_place_verified(path, &document).is_err()
        {
            continue; // keep it for the next writer
        }
        let _ = side_file::remove(&leftover);
    }
}

/// Durably removes `path`, provided it still is `expected`. The caller holds the lock.
pub(crate) fn remove(path: &Path, expected: Generation) -> Result<(), StoreError> {
    // Also when nothing was expected: a file that appeared behind our back is a conflict.
    recheck(path, expected)?;
    if expected.is_absent() {
        return Ok(());
    }
    fs::remove_file(path).map_err(|e| StoreError::io("remove", path, e))?;
    synced(
        path.parent().unwrap_or(Path::new(".")),
        path,
        Generation::Absent,
    )
}

/// Fsyncs `dir` after a change of `path` that is already in place: a failure is
/// [`StoreError::NotDurable`], not a failed write.
fn synced(dir: &Path, path: &Path, generation: Generation) -> Result<(), StoreError> {
    open_dir(dir, OFlags::NONBLOCK)
        .and_then(|d| d.sync_all())
        .map_err(|source| StoreError::NotDurable {
            path: path.to_path_buf(),
            generation,
            source,
        })
}

/// The names of leftover temp files beside `path`.
pub(crate) fn leftover_temps(path: &Path) -> Vec<String> {
    let prefix = Numbered::Temp.prefix(path);
    dir_names(dir_of(path))
        .into_iter()
        .filter(|name| name.starts_with(&prefix))
        .collect()
}

/// What [`sweep_temps`] left in place.
pub(crate) struct Leftovers {
    /// Whether rotation files ([`crate::ROTATION_PREFIX`]) are present: they hold redeemed
    /// tokens and are never swept, only installed or discarded by the recovery.
    pub(crate) rotations: bool,
}

/// Removes leftover temp files. Only call under the lock: every live temp file is created under
/// it, so any found then is a crashed writer's. Best effort: a file that cannot be removed is
/// reported by diagnostics later. Rotation files are not temp files and are left alone.
pub(crate) fn sweep_temps(path: &Path) -> Leftovers {
    let dir = dir_of(path);
    let (temp, rotation, inplace) = (
        Numbered::Temp.prefix(path),
        Numbered::Rotation.prefix(path),
        Numbered::InPlace.prefix(path),
    );
    let mut rotations = false;
    let mut in_place = false;
    for name in dir_names(dir) {
        if name.starts_with(&temp) {
            let _ = fs::remove_file(dir.join(name));
        } else if name.starts_with(&rotation) {
            rotations = true;
        } else if name.starts_with(&inplace) {
            in_place = true;
        }
    }
    if in_place {
        finish_in_place(path);
    }
    Leftovers { rotations }
}

/// The names of the rotation files of `path` (beside it), oldest name first.
pub(crate) fn rotation_files(path: &Path) -> Vec<String> {
    let prefix = Numbered::Rotation.prefix(path);
    let mut names: Vec<String> = dir_names(dir_of(path))
        .into_iter()
        .filter(|name| name.starts_with(&prefix))
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::names::IN_PLACE_PREFIX;
    use crate::side_file::make_fifo as fifo;

    #[test]
    fn in_place_leftovers_that_are_not_regular_files_are_removed_unread_and_a_real_one_is_finished()
    {
        let dir = tempfile::tempdir().expect("a temp dir");
        let auth = dir.path().join("auth.json");
        let document = br#"{"note":"the document of an in-place write"}"#;
        // An in-place write cut short: auth.json holds a strict prefix of the kept document.
        fs::write(&auth, &document[..5]).expect("write auth.json");
        let real = dir.path().join(format!("{IN_PLACE_PREFIX}7.0"));
        fs::write(&real, document).expect("write the leftover");
        let (pipe, link) = (
            dir.path().join(format!("{IN_PLACE_PREFIX}1.0")),
            dir.path().join(format!("{IN_PLACE_PREFIX}1.1")),
        );
        fifo(&pipe);
        std::os::unix::fs::symlink("/dev/zero", &link).expect("a link");
        finish_in_place(&auth);
        assert_eq!(
            fs::read(&auth).expect("auth.json"),
            document,
            "the real leftover was not finished"
        );
        for leftover in [&real, &pipe, &link] {
            assert!(
                fs::symlink_metadata(leftover).is_err(),
                "{} was left behind",
                leftover.display()
            );
        }
    }
}
