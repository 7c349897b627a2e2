//! A rotation file on disk: its name (the generation it replaces and the fingerprint of the
//! refresh token it redeemed), its creation filled with room for the answer, its lock, its mark
//! when only an outcome is left to journal, and the merge of its tokens into a newer auth.json.
//! Shared by the refresh that writes it ([`crate::Rotation`]) and the recovery that installs what
//! a crashed one left.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::OFlags;

use crate::auth_json::AuthDotJson;
use crate::error::StoreError;
use crate::generation::Generation;
use crate::names::Numbered;
use crate::replace;
use crate::side_file::{self, SideFile};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// How a rotation file starts when its token was sent, its outcome (the journal event's name
/// follows) could not be journaled, and no answer came to be kept: not a document, so the
/// recovery journals that outcome when it can.
pub(crate) const SENT_MARK: &[u8] = b"codex-store: sent; the journal could not take its outcome: ";

/// The parts of a rotation file's name.
pub(crate) struct RotationName {
    /// The generation the rotation replaces, as hex.
    pub(crate) base: String,
    /// The fingerprint of the refresh token that was redeemed.
    pub(crate) redeemed: String,
}

impl RotationName {
    /// A new name for a rotation file of `auth`.
    pub(crate) fn format(auth: &Path, base: Generation, redeemed: &str) -> String {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        format!(
            "{}{base}.{redeemed}.{}.{n}",
            Numbered::Rotation.prefix(auth),
            std::process::id()
        )
    }

    /// The parts of `name`, a rotation file of `auth`.
    pub(crate) fn parse(auth: &Path, name: &str) -> Option<RotationName> {
        let prefix = Numbered::Rotation.prefix(auth);
        let mut parts = name.strip_prefix(prefix.as_str())?.split('.');
        let base = parts.next()?;
        let redeemed = parts.next()?;
        let hex = |s: &str, len| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        (hex(base, 64) && hex(redeemed, 12)).then(|| RotationName {
            base: base.to_owned(),
            redeemed: redeemed.to_owned(),
        })
    }
}

/// Whether the rotation file at `path` is owned: its lock is held by the refresh reserving or
/// saving it.
pub(crate) fn owned(path: &Path) -> bool {
    let Ok(SideFile::Regular(file)) = side_file::open(path) else {
        return false;
    };
    matches!(
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK
    )
}

/// Creates a rotation file and fills it with `room` spaces (JSON whitespace: a document later
/// written over its start still parses), fsynced.
pub(crate) fn create_filled(
    auth: &Path,
    base: Generation,
    redeemed: &str,
    room: u64,
) -> Result<(File, PathBuf), StoreError> {
    let path = auth.with_file_name(RotationName::format(auth, base, redeemed));
    let reserve_error = |path: &Path, source| StoreError::Reserve {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(side_file::custom(OFlags::NOFOLLOW | OFlags::CLOEXEC))
        .open(&path)
        .map_err(|e| reserve_error(&path, e))?;
    // Locked before anything else, and then still the file at that name: a recovery running
    // under another refresh lock (the lock file was replaced) may have judged the empty file
    // unused and removed it in the meantime.
    let locked = rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(io::Error::from)
        .and_then(|()| {
            let ours = file.metadata()?;
            let named = fs::symlink_metadata(&path)?;
            if (ours.dev(), ours.ino()) == (named.dev(), named.ino()) {
                Ok(())
            } else {
                Err(io::Error::other(
                    "the rotation file was replaced while it was created",
                ))
            }
        });
    if let Err(e) = locked {
        return Err(reserve_error(&path, e));
    }
    let spaces = vec![b' '; usize::try_from(room).unwrap_or(usize::MAX)];
    if let Err(e) = file.write_all(&spaces).and_then(|()| file.sync_all()) {
        drop(file);
        let _ = fs::remove_file(&path);
        return Err(reserve_error(&path, e));
    }
    Ok((file, path))
}

/// Writes `bytes` at the start of `file`, cuts it there and fsyncs it.
pub(crate) fn fill(file: &File, bytes: &[u8]) -> io::Result<()> {
    file.write_all_at(bytes, 0)?;
    file.set_len(bytes.len() as u64)?;
    file.sync_all()
}

/// A rotation file: removed when dropped unless it holds new tokens (`keep`).
#[derive(Debug)]
pub(crate) struct PendingFile {
    pub(crate) path: PathBuf,
    pub(crate) file: Option<File>,
    pub(crate) keep: bool,
    /// Whether its name is known to be on disk (its directory was fsynced after it was
    /// created): then writing the answer into it needs no fsync of the directory.
    pub(crate) name_durable: bool,
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Creates a fresh rotation file holding exactly `bytes`, fsynced with its directory; removes
/// it again on failure.
pub(crate) fn write_fresh(
    auth: &Path,
    base: Generation,
    redeemed: &str,
    bytes: &[u8],
) -> Result<PendingFile, StoreError> {
    let (file, path) = create_filled(auth, base, redeemed, 0)?;
    let mut pending = PendingFile {
        path,
        file: None,
        keep: false,
        name_durable: false,
    };
    let dir = auth.parent().unwrap_or(Path::new("."));
    fill(&file, bytes)
        .and_then(|()| replace::sync_dir(dir).map_err(io::Error::other))
        .map_err(|source| StoreError::Reserve {
            path: pending.path.clone(),
            source,
        })?;
    pending.file = Some(file);
    pending.keep = true;
    pending.name_durable = true;
    Ok(pending)
}

/// The new tokens of `rotated` merged into `current`: when both hold tokens of the same account,
/// `current` with the token fields and `last_refresh` of `rotated` (every other key of `current`
/// kept); `None` when `current` holds another account or no tokens.
pub fn merge(current: &AuthDotJson, rotated: &AuthDotJson) -> Option<AuthDotJson> {
    let (cur, new) = (current.tokens.as_ref()?, rotated.tokens.as_ref()?);
    if cur.account() != new.account() {
        return None;
    }
    let mut merged = current.clone();
    let tokens = merged.tokens.as_mut()?;
    tokens.id_token = new.id_token.clone();
    tokens.access_token = new.access_token.clone();
    tokens.refresh_token = new.refresh_token.clone();
    merged.last_refresh = rotated.last_refresh.clone();
    Some(merged)
}
