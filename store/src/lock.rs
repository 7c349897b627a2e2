//! The sidecar lock: `auth.json.lock`, never renamed, deleted or truncated.
//!
//! Acquisition first tries without blocking. When the lock is busy, a helper thread waits in the
//! kernel (`flock(LOCK_EX)`), so the lock passes to a waiter the moment it is released, and the
//! caller waits for that thread against a monotonic deadline. A helper that wins after its caller
//! gave up releases the lock at once. After acquiring, the lock path must still name the inode we
//! locked (someone may have deleted or replaced the lock file); otherwise we start again.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::fs::{flock, FlockOperation};

use crate::error::StoreError;
use crate::options::StoreOptions;
use crate::side_file::{self, NO_FOLLOW};

/// `flock(fd, operation)`, as an `io::Error` (`WouldBlock` when a non-blocking attempt finds
/// the lock held). The lock belongs to the open file description: it lasts until the
/// descriptor is closed (or explicitly unlocked), so no guard object has to be kept alive.
fn flock_io(file: &File, operation: FlockOperation) -> io::Result<()> {
    flock(file, operation).map_err(io::Error::from)
}

/// An exclusive lock on the sidecar file; released when dropped (closing the descriptor
/// releases a `flock`).
#[derive(Debug)]
pub(crate) struct LockGuard {
    _file: File,
}

/// Opens (creating 0600 if needed) the lock file without following a symlink and without
/// blocking (a FIFO planted as the lock file would otherwise hang the open).
fn open_lock_file(path: &Path) -> Result<File, StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(side_file::custom(NO_FOLLOW))
        .open(path)
        .map_err(|e| StoreError::io("open the lock file", path, e))?;
    regular(file, path)
}

/// The file, if it is a regular file; a FIFO, device or directory is refused.
fn regular(file: File, path: &Path) -> Result<File, StoreError> {
    match file.metadata() {
        Ok(meta) if meta.is_file() => Ok(file),
        Ok(_) => Err(StoreError::NotARegularFile {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(StoreError::io("inspect the lock file", path, e)),
    }
}

fn same_inode(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn lock_error(path: &Path, source: io::Error) -> StoreError {
    StoreError::Lock {
        path: path.to_path_buf(),
        source,
    }
}

/// The locks every write holds, in Codex's order: `auth.lock`, then `auth.json.lock` (then, for
/// a symlinked auth.json, the lock beside its target). All are released when this is dropped.
#[derive(Debug)]
pub(crate) struct StoreLock {
    _guards: Vec<LockGuard>,
}

/// The deadline of a wait of `timeout` from `start`. A huge timeout means "wait as long as it
/// takes" (and must not overflow the clock).
pub(crate) fn deadline_after(start: Instant, timeout: Duration) -> Instant {
    start
        .checked_add(timeout)
        .unwrap_or_else(|| start + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// Takes `paths` in their order (`auth.lock` and then `auth.json.lock`: Codex 0.171.0's order,
/// so that no process holding one waits for a process holding the other), all within
/// `options.lock_timeout`.
pub(crate) fn acquire_store(
    paths: &[PathBuf],
    options: &StoreOptions,
) -> Result<StoreLock, StoreError> {
    let start = Instant::now();
    let deadline = deadline_after(start, options.lock_timeout);
    let mut noticed = false;
    let mut guards = Vec::with_capacity(paths.len());
    for path in paths {
        guards.push(acquire_until(path, options, start, deadline, &mut noticed)?);
    }
    Ok(StoreLock { _guards: guards })
}

/// Takes the exclusive lock within `options.lock_timeout`.
pub(crate) fn acquire(path: &Path, options: &StoreOptions) -> Result<LockGuard, StoreError> {
    let start = Instant::now();
    let deadline = deadline_after(start, options.lock_timeout);
    acquire_until(path, options, start, deadline, &mut false)
}

/// Takes the exclusive lock if nobody holds it; `None` when it is busy. Never waits.
pub(crate) fn try_acquire(path: &Path) -> Result<Option<LockGuard>, StoreError> {
    let file = open_lock_file(path)?;
    match flock_io(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
        Err(e) => return Err(lock_error(path, e)),
    }
    // A lock file replaced meanwhile guards nothing: report it as busy, the caller moves on.
    Ok(same_inode(&file, path).then_some(LockGuard { _file: file }))
}

fn acquire_until(
    path: &Path,
    options: &StoreOptions,
    start: Instant,
    deadline: Instant,
    noticed: &mut bool,
) -> Result<LockGuard, StoreError> {
    let mut retries = 0u32;
    loop {
        let file = open_lock_file(path)?;
        // The lock lives as long as the descriptor; closing it releases the lock.
        let acquired = match flock_io(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) => return Err(lock_error(path, e)),
        };
        let file = if acquired {
            file
        } else {
            wait_in_kernel(file, path, options, start, deadline, noticed)?
        };
        if same_inode(&file, path) {
            return Ok(LockGuard { _file: file });
        }
        // The lock file was deleted or replaced while we waited: our lock guards nothing. Back
        // off (with jitter, so that racing processes do not re-open in step) and start again.
        drop(file);
        let now = Instant::now();
        if now >= deadline {
            return Err(timeout(path, start));
        }
        retries += 1;
        std::thread::sleep(jittered_backoff(retries).min(deadline - now));
    }
}

/// 100 us doubling per retry up to 10 ms, scaled by a factor in [0.5, 1.5) drawn from the clock
/// and the process id (no random-number dependency needed for spreading retries).
fn jittered_backoff(retries: u32) -> Duration {
    let base = Duration::from_micros(100) * 2u32.saturating_pow(retries.min(7));
    let base = base.min(Duration::from_millis(10));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mix = (nanos ^ std::process::id().wrapping_mul(0x9e37_79b9)) % 1000;
    base.mul_f64(0.5 + f64::from(mix) / 1000.0)
}

fn wait_in_kernel(
    file: File,
    path: &Path,
    options: &StoreOptions,
    start: Instant,
    deadline: Instant,
    noticed: &mut bool,
) -> Result<File, StoreError> {
    let (tx, rx) = mpsc::sync_channel::<io::Result<File>>(1);
    let spawned = std::thread::Builder::new()
        .name("codex-store-lock".into())
        .spawn(move || {
            // A signal may interrupt the wait; it is not a reason to give up.
            let locked = loop {
                match flock_io(&file, FlockOperation::LockExclusive) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other,
                }
            };
            let result = locked.map(|()| file);
            // If the caller gave up, the send fails and dropping the file releases the lock.
            let _ = tx.send(result);
        });
    if let Err(e) = spawned {
        return Err(StoreError::io("start a lock-waiting thread for", path, e));
    }
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(timeout(path, start));
        }
        let notice_at = start.checked_add(options.notice_after).unwrap_or(deadline);
        let until = if !*noticed && options.on_wait.is_some() && notice_at < deadline {
            notice_at.max(now)
        } else {
            deadline
        };
        match rx.recv_timeout(until - now) {
            Ok(Ok(file)) => return Ok(file),
            Ok(Err(e)) => return Err(lock_error(path, e)),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if until == deadline {
                    return Err(timeout(path, start));
                }
                *noticed = true;
                if let Some(notice) = &options.on_wait {
                    notice(path, start.elapsed());
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(lock_error(
                    path,
                    io::Error::other("the lock-waiting thread died"),
                ))
            }
        }
    }
}

fn timeout(path: &Path, start: Instant) -> StoreError {
    StoreError::LockTimeout {
        path: path.to_path_buf(),
        waited: start.elapsed(),
    }
}

/// Whether another process (or another handle in this one) holds the lock right now. Never waits
/// and never creates the lock file.
///
/// It probes with a non-blocking shared `flock` on a read-only descriptor, released at once: a
/// writer arriving in that instant waits for it in the kernel, nothing more.
pub(crate) fn is_held(path: &Path) -> Result<bool, StoreError> {
    let file = match side_file::open_read(path) {
        Ok(f) => regular(f, path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(StoreError::io("open the lock file", path, e)),
    };
    let held = match flock_io(&file, FlockOperation::NonBlockingLockShared) {
        Ok(()) => {
            // Released at once (closing the descriptor below would release it too).
            let _ = flock_io(&file, FlockOperation::Unlock);
            false
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
        Err(e) => return Err(lock_error(path, e)),
    };
    Ok(held)
}
