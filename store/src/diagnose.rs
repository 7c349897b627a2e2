//! Diagnostics for `inspect`: what about the store on disk is unsafe or unusual.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use serde::Serialize;

use crate::error::StoreError;
use crate::replace::leftover_temps;
use crate::side_file;
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
    /// auth.json is a mount point of its own (a single-file bind mount into a container): it
    /// cannot be renamed over, so it is written in place under the lock.
    BindMounted,
    /// The store directory is on a network (or user-space) file system, where `flock` may be
    /// emulated per host, or not work at all.
    NetworkFileSystem {
        /// Which one (`nfs`, `cifs`, `fuse`, ...).
        file_system: &'static str,
    },
    /// An entry under one of the store's own file names (rotation, in-place, temp, journal,
    /// agent status or claim, fleet state, lock files) is not a regular file: a FIFO, a device,
    /// a symbolic link someone planted. The store never opens it for reading (nothing blocks
    /// on it); a write removes or replaces it where the file is the store's to replace.
    SideFileNotRegular {
        /// Its name.
        name: String,
        /// What it is ("a FIFO", "a symbolic link", ...).
        file_type: &'static str,
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
            Problem::BindMounted => f.write_str(
                "auth.json is a mount point of its own (a single-file bind mount): it cannot be renamed over, so codex-store writes it in place under the lock; codex-store's readers never see it half-written, but other readers (Codex) may see it empty for microseconds: mount the directory instead of the file"
            ),
            Problem::NetworkFileSystem { file_system } => write!(
                f,
                "the directory is on a {file_system} file system: its locks may bind only processes on this machine (or nothing), so processes on other machines can redeem the same refresh token and lose updates: keep CODEX_HOME on a local disk"
            ),
            Problem::SideFileNotRegular { name, file_type } => write!(
                f,
                "{name} is {file_type}, not a regular file, under a name where codex-store keeps \
                 one of its own files: codex-store never opens it to read, and it holds nothing \
                 of codex-store's; remove it (whoever can write the directory can plant one)"
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
    ///
    /// # Errors
    /// [`StoreError::Io`] when the directory cannot be inspected; everything else found is a
    /// [`Problem`] in the list.
    pub fn diagnose(&self) -> Result<Vec<Problem>, StoreError> {
        let mut problems = Vec::new();
        let me = rustix::process::geteuid().as_raw();
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
        // Side files that are not regular files are reported as such, and not as leftovers or
        // rotations: they hold nothing of ours.
        problems.extend(self.side_files_not_regular());
        let in_dir = |name: &String| side_file::is_regular(&self.dir().join(name));
        let temps: Vec<String> = leftover_temps(self.path())
            .into_iter()
            .filter(in_dir)
            .collect();
        if !temps.is_empty() {
            problems.push(Problem::LeftoverTemps { names: temps });
        }
        if std::fs::read_to_string("/proc/self/mountinfo")
            .is_ok_and(|info| is_mount_point(&info, self.path()))
        {
            problems.push(Problem::BindMounted);
        }
        if let Some(file_system) = network_file_system(self.dir()) {
            problems.push(Problem::NetworkFileSystem { file_system });
        }
        let rotations: Vec<String> = crate::replace::rotation_files(self.path())
            .into_iter()
            .filter(in_dir)
            .collect();
        // A refresh lock that cannot be probed (not a regular file: reported above) is no
        // refresh running.
        if !rotations.is_empty() && !crate::lock::is_held(self.refresh_lock_path()).unwrap_or(false)
        {
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

impl Store {
    /// The store's own files (lock files, journal, agent, fleet state, and the temp, in-place,
    /// rotation and journal-compaction files by prefix) whose entries are not regular files,
    /// told by `lstat` only.
    fn side_files_not_regular(&self) -> Vec<Problem> {
        let mut paths: Vec<PathBuf> = vec![
            self.codex_lock_path().to_path_buf(),
            self.lock_path().to_path_buf(),
            self.refresh_lock_path().to_path_buf(),
            self.journal_path().to_path_buf(),
            self.agent_lock_path(),
            self.agent_status_path(),
            self.agent_status_temp_path(),
            self.fleet_state_path(),
            self.fleet_state_temp_path(),
        ];
        paths.sort();
        paths.dedup();
        let journal = crate::names::journal_compact_prefix(self.journal_path());
        let prefixes: Vec<String> = crate::names::Numbered::ALL
            .iter()
            .map(|kind| kind.prefix(self.path()))
            .chain(journal)
            .collect();
        if let Ok(entries) = fs::read_dir(self.dir()) {
            let mut named: Vec<PathBuf> = entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|name| prefixes.iter().any(|p| name.starts_with(p.as_str())))
                .map(|name| self.dir().join(name))
                .collect();
            named.sort();
            paths.extend(named);
        }
        paths
            .into_iter()
            .filter_map(|path| {
                let file_type = side_file::not_regular_kind(&path)?;
                let name = path.file_name()?.to_string_lossy().into_owned();
                Some(Problem::SideFileNotRegular { name, file_type })
            })
            .collect()
    }
}

/// The kind of network (or user-space) file system `dir` is on, from `statfs`'s `f_type`; `None`
/// for a local one, or when it cannot be told.
fn network_file_system(dir: &std::path::Path) -> Option<&'static str> {
    let f_type = rustix::fs::statfs(dir).ok()?.f_type;
    // f_type's width differs between platforms; the magic numbers are 32 bits.
    #[allow(clippy::unnecessary_cast)]
    network_kind(f_type as i64 & 0xffff_ffff)
}

/// Whether `path` is a mount point in `mountinfo` (the text of `/proc/self/mountinfo`, whose
/// fifth field is the mount point with space, tab, newline and backslash escaped in octal).
fn is_mount_point(mountinfo: &str, path: &std::path::Path) -> bool {
    let wanted = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    mountinfo.lines().any(|line| {
        line.split(' ')
            .nth(4)
            .is_some_and(|point| std::path::Path::new(&unescape_octal(point)) == wanted)
    })
}

fn unescape_octal(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The network file systems among `statfs` magic numbers (`man 2 statfs`).
fn network_kind(f_type: i64) -> Option<&'static str> {
    Some(match f_type {
        0x6969 => "nfs",
        0x517b => "smb",
        0xff53_4d42 => "cifs",
        0xfe53_4d42 => "smb2",
        0x6573_5546 => "fuse (possibly remote, e.g. sshfs)",
        0x00c3_6400 => "ceph",
        0x5346_414f => "afs",
        0x0102_1997 => "9p",
        0x7375_7245 => "coda",
        0x0bd0_0bd0 => "lustre",
        0x0116_1970 => "gfs2",
        0x7461_636f => "ocfs2",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_file_bind_mount_is_found_in_mountinfo_with_escaped_spaces() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("my auth.json");
        std::fs::write(&file, "{}").expect("write");
        let real = std::fs::canonicalize(&file).expect("canonicalize");
        let escaped = real.to_str().expect("UTF-8").replace(' ', "\\040");
        let info = format!(
            "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
             731 22 8:1 /home/me/.codex/auth.json {escaped} rw,relatime - ext4 /dev/sda1 rw\n"
        );
        assert!(
            is_mount_point(&info, &file),
            "the bind-mounted file was not found"
        );
        assert!(
            !is_mount_point(&info, dir.path()),
            "its directory was taken for a mount point"
        );
    }

    #[test]
    fn network_file_systems_are_told_from_their_statfs_magic_and_local_ones_are_not() {
        assert_eq!(network_kind(0x6969), Some("nfs"), "NFS not recognised");
        assert_eq!(
            network_kind(0xff53_4d42),
            Some("cifs"),
            "CIFS not recognised"
        );
        assert_eq!(
            network_kind(0xef53),
            None,
            "ext4 taken for a network file system"
        );
        assert_eq!(
            network_kind(0x0102_1994),
            None,
            "tmpfs taken for a network file system"
        );
        let here = std::env::current_dir().expect("a working directory");
        assert_eq!(
            network_file_system(&here),
            None,
            "the build directory ({}) was reported as on a network file system",
            here.display()
        );
    }
}
