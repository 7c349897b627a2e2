//! Wakes the agent when auth.json changes: the platform's file notifications (inotify on Linux,
//! FSEvents on macOS) through the `notify` crate, on the directory (a rename over auth.json
//! replaces the inode, so the file itself cannot be watched).
//!
//! A storm of changes (an editor or a sync tool touching auth.json thousands of times a second)
//! must not cost the agent more than it costs whoever makes it. So the watch is armed only while
//! the agent waits: the first notification disarms it (the watch is removed, so the kernel
//! queues and reads nothing more for the agent), the agent looks once, and arms it again before
//! its next look, which covers whatever changed while it was disarmed.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::AgentError;

/// A watch on one file's directory; [`FileWatch::changed`] resolves after the file changed
/// (several changes in a row coalesce into one wake-up). It also wakes when the directory
/// itself, or the file named `claim`, is removed or renamed: the agent then checks that it
/// still watches, and holds the claim of, the store's directory ([`Home`]).
pub(crate) struct FileWatch {
    watcher: RecommendedWatcher,
    dir: PathBuf,
    changes: mpsc::Receiver<()>,
    /// Whether the directory is watched now; the handler drops what a removed watch still
    /// delivers.
    armed: Arc<AtomicBool>,
}

impl FileWatch {
    /// Watches `file` (in `dir`), and the removal of `claim` (in `dir` too). Armed.
    pub(crate) fn new(dir: &Path, file: &Path, claim: &Path) -> Result<FileWatch, AgentError> {
        let name: OsString = file.file_name().unwrap_or_default().to_os_string();
        let claim: OsString = claim.file_name().unwrap_or_default().to_os_string();
        let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let (tx, changes) = mpsc::channel(1);
        let armed = Arc::new(AtomicBool::new(false));
        let handler_armed = Arc::clone(&armed);
        let handler = move |result: notify::Result<notify::Event>| {
            if !handler_armed.load(Ordering::Acquire) {
                return;
            }
            let relevant = match result {
                Ok(event) => event.paths.iter().any(|p| {
                    let named = |n: &OsString| p.file_name() == Some(n.as_os_str());
                    (named(&name) && !is_read(&event.kind))
                        || ((named(&claim) || *p == absolute) && is_gone(&event.kind))
                }),
                // A lost event (queue overflow): look again, to be safe.
                Err(_) => true,
            };
            if relevant {
                // A full channel already holds a wake-up: this change is covered by it.
                let _ = tx.try_send(());
            }
        };
        let mut watcher = notify::recommended_watcher(handler).map_err(|e| watch_error(dir, e))?;
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| watch_error(dir, e))?;
        armed.store(true, Ordering::Release);
        Ok(FileWatch {
            watcher,
            dir: dir.to_path_buf(),
            changes,
            armed,
        })
    }

    /// Whether the watch is armed.
    pub(crate) fn is_armed(&self) -> bool {
        self.armed.load(Ordering::Acquire)
    }

    /// Resolves when the file changed since the watch was armed (at once if it already has).
    /// Never resolves while disarmed.
    pub(crate) async fn changed(&mut self) {
        if !self.is_armed() || self.changes.recv().await.is_none() {
            // Disarmed, or the watcher is gone (it never is while `self` lives).
            std::future::pending::<()>().await;
        }
    }

    /// Stops watching until [`FileWatch::arm`]: changes made meanwhile cost the agent nothing,
    /// and are not signalled (the look after `arm` covers them).
    pub(crate) fn disarm(&mut self) {
        if self.armed.swap(false, Ordering::AcqRel) {
            // The directory may be gone already (its watch went with it): nothing to undo then.
            let _ = self.watcher.unwatch(&self.dir);
        }
        self.clear();
    }

    /// Watches again, forgetting what was signalled before: the look that follows covers it.
    ///
    /// # Errors
    /// [`AgentError::Watch`] when the directory cannot be watched (it was removed).
    pub(crate) fn arm(&mut self) -> Result<(), AgentError> {
        if self.is_armed() {
            // Armed already: a change it signalled is still to be looked at, never dropped.
            return Ok(());
        }
        self.clear();
        self.watcher
            .watch(&self.dir, RecursiveMode::NonRecursive)
            .map_err(|e| watch_error(&self.dir, e))?;
        self.armed.store(true, Ordering::Release);
        Ok(())
    }

    /// Forgets changes already signalled (after the agent looked at the file anyway).
    fn clear(&mut self) {
        while self.changes.try_recv().is_ok() {}
    }
}

fn watch_error(dir: &Path, source: notify::Error) -> AgentError {
    AgentError::Watch {
        path: dir.to_path_buf(),
        reason: source.to_string(),
    }
}

/// A read of the file: no change.
fn is_read(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Access(AccessKind::Open(_))
            | EventKind::Access(AccessKind::Read)
            | EventKind::Access(AccessKind::Close(AccessMode::Read))
    )
}

/// A removal or a rename (away, or over it).
fn is_gone(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
    )
}

/// The directory to watch for `path`.
pub(crate) fn dir_of(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The device and inode a path names now (following links: a home that is a link to a
/// directory is that directory).
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// What became of the directory the agent watches, and of its claim in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// The same directory, the claim file the agent locked in it.
    Intact,
    /// Nothing at the directory's path now (or not a directory).
    Gone,
    /// Another directory at its path (removed and re-created, or moved away and replaced).
    Replaced,
    /// The same directory, but the claim file at its name is not the one the agent locked
    /// (removed or replaced): another agent could claim the store.
    ClaimLost,
}

/// The directory of auth.json as the agent attached to it: its identity when the watch was made.
pub(crate) struct Home {
    pub(crate) dir: PathBuf,
    identity: Option<(u64, u64)>,
    pub(crate) watch: FileWatch,
}

impl Home {
    /// Attaches to the directory of `file` now: remembers which directory it is, and watches it.
    pub(crate) fn attach(file: &Path, claim: &Path) -> Result<Home, AgentError> {
        let dir = dir_of(file);
        let identity = identity(&dir);
        let watch = FileWatch::new(&dir, file, claim)?;
        Ok(Home {
            dir,
            identity,
            watch,
        })
    }

    /// What became of the directory, and of `claim` in it.
    pub(crate) fn check(&self, claim: &codex_store::AgentClaim) -> Found {
        let now = std::fs::metadata(&self.dir)
            .ok()
            .filter(std::fs::Metadata::is_dir)
            .map(|m| (m.dev(), m.ino()));
        match now {
            None => Found::Gone,
            Some(now) if Some(now) != self.identity => Found::Replaced,
            Some(_) if !claim.is_current() => Found::ClaimLost,
            Some(_) => Found::Intact,
        }
    }
}
