//! Wakes the agent when auth.json changes: the platform's file notifications (inotify on Linux,
//! FSEvents on macOS) through the `notify` crate, on the directory (a rename over auth.json
//! replaces the inode, so the file itself cannot be watched).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::AgentError;

/// A watch on one file's directory; [`FileWatch::changed`] resolves after the file changed
/// (several changes in a row coalesce into one wake-up).
pub(crate) struct FileWatch {
    _watcher: RecommendedWatcher,
    changes: mpsc::Receiver<()>,
}

impl FileWatch {
    /// Watches `file` (in `dir`).
    pub(crate) fn new(dir: &Path, file: &Path) -> Result<FileWatch, AgentError> {
        let name: OsString = file.file_name().unwrap_or_default().to_os_string();
        let (tx, changes) = mpsc::channel(1);
        let handler = move |result: notify::Result<notify::Event>| {
            let relevant = match result {
                Ok(event) => {
                    !matches!(
                        event.kind,
                        EventKind::Access(notify::event::AccessKind::Open(_))
                            | EventKind::Access(notify::event::AccessKind::Read)
                            | EventKind::Access(notify::event::AccessKind::Close(
                                notify::event::AccessMode::Read
                            ))
                    ) && event
                        .paths
                        .iter()
                        .any(|p| p.file_name() == Some(name.as_os_str()))
                }
                // A lost event (queue overflow): look again, to be safe.
                Err(_) => true,
            };
            if relevant {
                // A full channel already holds a wake-up: this change is covered by it.
                let _ = tx.try_send(());
            }
        };
        let watch_error = |source: notify::Error| AgentError::Watch {
            path: dir.to_path_buf(),
            reason: source.to_string(),
        };
        let mut watcher = notify::recommended_watcher(handler).map_err(watch_error)?;
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(watch_error)?;
        Ok(FileWatch {
            _watcher: watcher,
            changes,
        })
    }

    /// Resolves when the file changed since the last call (at once if it already has).
    pub(crate) async fn changed(&mut self) {
        if self.changes.recv().await.is_none() {
            // The watcher is gone (it never is while `self` lives): never resolve.
            std::future::pending::<()>().await;
        }
    }

    /// Forgets changes already signalled (after the agent looked at the file anyway).
    pub(crate) fn clear(&mut self) {
        while self.changes.try_recv().is_ok() {}
    }
}

/// The directory to watch for `path`.
pub(crate) fn dir_of(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}
