//! Diagnostics for `inspect`: what about the store on disk is unsafe or unusual.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use serde::Serialize;

use crate::error::StoreError;
use crate::replace::leftover_temps;
use crate::store::Store;

/// One thing wrong with the store on disk. `Display` is a sentence that says what to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Problem {
    /// auth.json can be read or written by others.
    WidePermissions {
        /// The file's permission bits.
        mode: u32,
    },
    /// auth.json belongs to another user.
    OwnedByOther {
        /// The owner's uid.
        uid: u32,
    },
    /// auth.json is a symbolic link: the store locks and writes beside its target, but Codex
    /// 0.171.0 replaces the link with a regular file when it writes.
    Symlink {
        /// Where it points.
        target: PathBuf,
    },
    /// auth.json has more than one hard link.
    HardLinks {
        /// The link count.
        links: u64,
    },
    /// Temp files left by a crashed writer (swept by the next write).
    LeftoverTemps {
        /// Their names.
        names: Vec<String>,
    },
    /// The directory is writable by group or others.
    DirectoryWritableByOthers {
        /// The directory's permission bits.
        mode: u32,
    },
    /// The directory belongs to another user.
    DirectoryOwnedByOther {
        /// The owner's uid.
        uid: u32,
    },
    /// Rotation files hold new tokens that a refresh obtained but did not install (it was
    /// interrupted), and no refresh is running now.
    PendingRotations {
        /// Their names.
        names: Vec<String>,
    },
    /// `auth_mode` is `apikey` but there is no key (Codex 0.171.0 refuses such a file).
    ApiKeyMissing,
    /// A token in the file does not decode as a JWT.
    TokenDoesNotDecode {
        /// Which field.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::WidePermissions { mode } => write!(
                f,
                "auth.json has mode {mode:04o}, readable or writable by others: run `chmod 600` on it (the next write also fixes it)"
            ),
            Problem::OwnedByOther { uid } => {
                write!(f, "auth.json belongs to uid {uid}, not to you: remove it and sign in again")
            }
            Problem::Symlink { target } => write!(
                f,
                "auth.json is a symbolic link to {}: codex-store locks, writes and renames beside that file, but Codex 0.171.0 replaces the link with a regular file when it writes",
                target.display()
            ),
            Problem::HardLinks { links } => write!(
                f,
                "auth.json has {links} hard links; the store refuses to write it: remove the other links"
            ),
            Problem::LeftoverTemps { names } => write!(
                f,
                "{} temp file(s) left by an interrupted writer ({}); the next write removes them",
                names.len(),
                names.join(", ")
            ),
            Problem::DirectoryWritableByOthers { mode } => write!(
                f,
                "the directory has mode {mode:04o}, writable by others who could replace auth.json: run `chmod 700` on it"
            ),
            Problem::DirectoryOwnedByOther { uid } => {
                write!(f, "the directory belongs to uid {uid}, not to you")
            }
            Problem::PendingRotations { names } => write!(
                f,
                "{} rotation file(s) hold new tokens an interrupted refresh did not install ({}); \
                 `codex-store refresh`, or any codex-store write, installs them",
                names.len(),
                names.join(", ")
            ),
            Problem::ApiKeyMissing => f.write_str(
                "auth_mode is apikey but auth.json holds no API key (Codex refuses it: \"API key auth is missing a key\"): sign in again, e.g. `codex-store login --with-api-key`",
            ),
            Problem::TokenDoesNotDecode { field, reason } => {
                write!(f, "{field} does not decode: {reason}; sign in again")
            }
        }
    }
}

impl Store {
    /// Checks permissions, ownership, links, leftover temp files and token decoding. Reading
    /// problems (a corrupt file) are not listed here: [`Store::load`] reports them.
    pub fn diagnose(&self) -> Result<Vec<Problem>, StoreError> {
        let mut problems = Vec::new();
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        let dir_meta =
            fs::metadata(self.dir()).map_err(|e| StoreError::io("inspect", self.dir(), e))?;
        let dir_mode = dir_meta.mode() & 0o7777;
        if dir_mode & 0o022 != 0 && dir_mode & 0o1000 == 0 {
            problems.push(Problem::DirectoryWritableByOthers { mode: dir_mode });
        }
        if dir_meta.uid() != me {
            problems.push(Problem::DirectoryOwnedByOther {
                uid: dir_meta.uid(),
            });
        }
        if self.link().is_some() {
            problems.push(Problem::Symlink {
                target: self.path().to_path_buf(),
            });
        }
        match fs::symlink_metadata(self.path()) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("inspect", self.path(), e)),
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = fs::read_link(self.path()).unwrap_or_default();
                problems.push(Problem::Symlink { target });
            }
            Ok(meta) => {
                let mode = meta.mode() & 0o7777;
                if mode & 0o077 != 0 {
                    problems.push(Problem::WidePermissions { mode });
                }
                if meta.uid() != me {
                    problems.push(Problem::OwnedByOther { uid: meta.uid() });
                }
                if meta.nlink() > 1 {
                    problems.push(Problem::HardLinks {
                        links: meta.nlink(),
                    });
                }
            }
        }
        let temps = leftover_temps(self.dir());
        if !temps.is_empty() {
            problems.push(Problem::LeftoverTemps { names: temps });
        }
        let rotations = crate::replace::rotation_files(self.dir());
        if !rotations.is_empty() && !crate::lock::is_held(self.refresh_lock_path())? {
            problems.push(Problem::PendingRotations { names: rotations });
        }
        if let Ok(snapshot) = self.load() {
            if let Some(doc) = snapshot.auth() {
                if doc.resolved_mode() == crate::AuthMode::ApiKey && doc.openai_api_key.is_none() {
                    problems.push(Problem::ApiKeyMissing);
                }
            }
            if let Some(tokens) = snapshot.auth().and_then(|a| a.tokens.as_ref()) {
                if let Err(e) = tokens.access_token_expiry() {
                    problems.push(Problem::TokenDoesNotDecode {
                        field: "tokens.access_token",
                        reason: e.to_string(),
                    });
                }
            }
        }
        Ok(problems)
    }
}
