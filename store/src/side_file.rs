//! The one way the store opens its own side files (rotation, in-place, journal, agent status and
//! claim, fleet state): their names are known, so anyone who can write the directory can plant a
//! FIFO, a device or a link there. Every such file is opened without following a link, without
//! blocking (a FIFO would otherwise hang the open, and a read of it hang forever), accepted only
//! when it is a regular file, and read with a bound (a link to `/dev/zero` or a sparse file of
//! gigabytes must not exhaust memory).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rustix::fs::OFlags;
use rustix::io::Errno;

/// The flags of every open of a side file (and of auth.json): no link followed, no blocking (a
/// FIFO would hang the open), closed on exec.
pub(crate) const NO_FOLLOW: OFlags = OFlags::NOFOLLOW
    .union(OFlags::CLOEXEC)
    .union(OFlags::NONBLOCK)
    .union(OFlags::NOCTTY);

/// `flags` as [`OpenOptionsExt::custom_flags`] takes them.
pub(crate) fn custom(flags: OFlags) -> i32 {
    // The open flags all fit in the positive range of a C int.
    i32::try_from(flags.bits()).unwrap_or_default()
}

/// The OS error of `e`, when it is one.
pub(crate) fn errno(e: &io::Error) -> Option<Errno> {
    Errno::from_io_error(e)
}

/// Opens `path` for reading with [`NO_FOLLOW`]; the caller checks what it opened.
///
/// # Errors
/// Those of `open`: `ELOOP` for a link, `ENXIO`/`ENODEV` for some devices and FIFOs.
pub(crate) fn open_read(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(custom(NO_FOLLOW))
        .open(path)
}

/// Opens the directory `dir` (as a directory only, `O_DIRECTORY`, closed on exec) with `extra`
/// flags, to read or fsync it.
///
/// # Errors
/// Those of `open`.
pub(crate) fn open_dir(dir: &Path, extra: OFlags) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(custom(OFlags::DIRECTORY | OFlags::CLOEXEC | extra))
        .open(dir)
}

/// The directory that holds `path` (`.` for a bare name).
pub(crate) fn dir_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// What a side file turned out to be.
#[derive(Debug)]
pub enum SideFile {
    /// No file at that name.
    Missing,
    /// Something that is not a regular file: a symbolic link, a FIFO, a device, a directory,
    /// a socket. Never one of the store's own files.
    NotRegular,
    /// A regular file, opened for reading.
    Regular(File),
}

/// Opens the side file at `path` for reading: no link followed (`O_NOFOLLOW`), no blocking
/// (`O_NONBLOCK`, which changes nothing for a regular file), regular files only.
///
/// # Errors
/// Any error of `open` other than "not found" and "a link" (`ELOOP`), and of `fstat`.
pub fn open(path: &Path) -> io::Result<SideFile> {
    let file = match open_read(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(SideFile::Missing),
        // O_NOFOLLOW on a symbolic link; O_NONBLOCK on a FIFO opened for writing with no reader,
        // a device without a driver.
        Err(e) if matches!(errno(&e), Some(Errno::LOOP | Errno::NXIO | Errno::NODEV)) => {
            return Ok(SideFile::NotRegular)
        }
        Err(e) => return Err(e),
    };
    if file.metadata()?.is_file() {
        Ok(SideFile::Regular(file))
    } else {
        Ok(SideFile::NotRegular)
    }
}

/// What [`read_bounded`] found.
#[derive(Debug)]
pub enum SideBytes {
    /// No file at that name.
    Missing,
    /// Not a regular file (see [`SideFile::NotRegular`]): nothing was read.
    NotRegular,
    /// Larger than the limit: only that much was read, and it is not returned.
    TooLarge,
    /// The whole file.
    Bytes(Vec<u8>),
}

/// Reads the side file at `path` whole, opened as [`open`] does, reading at most `limit + 1`
/// bytes.
///
/// # Errors
/// Those of [`open`] and of the read.
pub fn read_bounded(path: &Path, limit: u64) -> io::Result<SideBytes> {
    let file = match open(path)? {
        SideFile::Missing => return Ok(SideBytes::Missing),
        SideFile::NotRegular => return Ok(SideBytes::NotRegular),
        SideFile::Regular(file) => file,
    };
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Ok(SideBytes::TooLarge);
    }
    Ok(SideBytes::Bytes(bytes))
}

/// Reads a file the user named (a certificate, Codex's `config.toml`), which may rightly be a
/// symbolic link (dotfiles, mounted secrets): the link is followed, but the open never blocks
/// (`O_NONBLOCK`: a FIFO is refused, not waited on), only a regular file is read, and at most
/// `limit + 1` bytes of it.
///
/// # Errors
/// Those of `open` other than "not found", and of `fstat` and the read.
pub fn read_named(path: &Path, limit: u64) -> io::Result<SideBytes> {
    let opened = OpenOptions::new()
        .read(true)
        // Never a terminal made this process's controlling terminal, whatever the link names.
        .custom_flags(custom(OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY))
        .open(path);
    let file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(SideBytes::Missing),
        Err(e) if matches!(errno(&e), Some(Errno::NXIO | Errno::NODEV)) => {
            return Ok(SideBytes::NotRegular)
        }
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        return Ok(SideBytes::NotRegular);
    }
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Ok(SideBytes::TooLarge);
    }
    Ok(SideBytes::Bytes(bytes))
}

/// Whether the entry at `path` (not followed) is a regular file. A missing entry is not.
pub fn is_regular(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file())
}

/// What the entry at `path` is when it is there and is not a regular file ("a FIFO", "a symbolic
/// link", ...), told from `lstat` alone: nothing is opened or followed. `None` for a regular
/// file, for no entry, and when it cannot be told.
pub fn not_regular_kind(path: &Path) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let kind = std::fs::symlink_metadata(path).ok()?.file_type();
    Some(if kind.is_file() {
        return None;
    } else if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    })
}

/// Creates the side file `path` for writing, mode 0600: exclusively (`O_EXCL`: whatever is at
/// that name, a leftover, a FIFO or a link someone planted, makes it fail with `AlreadyExists`
/// and is never opened), without following a link and without blocking.
///
/// # Errors
/// Those of `open`.
pub fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(custom(NO_FOLLOW))
        .open(path)
}

/// Removes the entry at `path` whatever it is (unlinking a link or a FIFO never touches what it
/// points to or who holds it open); no entry is not an error.
///
/// # Errors
/// Those of `unlink` other than "not found".
pub fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Durably replaces the side file `path` with `bytes`, through `temp` beside it: whatever is at
/// `temp` is removed, the temp file is created anew ([`create_new`]), written, fsynced, renamed
/// over `path` (which replaces whatever entry was there, a FIFO or a link included, without
/// opening it), and the directory is fsynced. Never blocks on a planted file. On an error the temp
/// file is removed.
///
/// # Errors
/// Those of the steps.
pub fn replace_durably(temp: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    remove(temp)?;
    let written = create_new(temp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(temp, path));
    if let Err(e) = written {
        let _ = remove(temp);
        return Err(e);
    }
    sync_dir_of(path)
}

/// Fsyncs the directory that holds `path` (opened as a directory, never following a link).
///
/// # Errors
/// Those of `open` and `fsync`.
pub fn sync_dir_of(path: &Path) -> io::Result<()> {
    open_dir(dir_of(path), OFlags::empty())?.sync_all()
}

/// The (UTF-8) names in `dir`; none when it cannot be read. On Linux the directory is read with
/// `O_NOATIME` where allowed: with `relatime`, a plain read after each rename rewrites the
/// directory's access time, and the next fsync pays for it (measured: +56 us per commit).
pub(crate) fn dir_names(dir: &Path) -> Vec<String> {
    #[cfg(target_os = "linux")]
    let no_atime = OFlags::NOATIME;
    #[cfg(not(target_os = "linux"))]
    let no_atime = OFlags::empty();
    // O_NOATIME is refused (EPERM) on directories we do not own.
    let Ok(file) = open_dir(dir, no_atime).or_else(|_| open_dir(dir, OFlags::empty())) else {
        return Vec::new();
    };
    // `Dir::new` reads through this descriptor (std's `read_dir` would open the directory again,
    // without O_NOATIME) and closes it when dropped.
    let Ok(mut entries) = rustix::fs::Dir::new(file) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    while let Some(Ok(entry)) = entries.read() {
        if let Ok(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    names
}

/// Makes a FIFO at `path`, for the tests of the store's side files.
#[cfg(test)]
pub(crate) fn make_fifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .expect("a FIFO");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_file_is_read_through_a_link_but_a_fifo_or_a_device_is_refused_without_blocking() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let file = dir.path().join("config.toml");
        std::fs::write(&file, b"a = 1\n").expect("write");
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&file, &link).expect("link");
        let fifo = dir.path().join("fifo");
        make_fifo(&fifo);
        assert!(
            matches!(read_named(&link, 100), Ok(SideBytes::Bytes(b)) if b == b"a = 1\n"),
            "a link to a regular file must be followed"
        );
        assert!(
            matches!(read_named(&fifo, 100), Ok(SideBytes::NotRegular)),
            "a FIFO must be refused, not waited on"
        );
        assert!(
            matches!(
                read_named(Path::new("/dev/zero"), 100),
                Ok(SideBytes::NotRegular)
            ),
            "a device must be refused, not read"
        );
        assert!(
            matches!(read_named(&file, 3), Ok(SideBytes::TooLarge)),
            "a file over the limit must be refused"
        );
        assert!(
            matches!(
                read_named(&dir.path().join("none"), 3),
                Ok(SideBytes::Missing)
            ),
            "a missing file is missing"
        );
    }

    #[test]
    fn a_link_to_dev_zero_is_not_read() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let link = dir.path().join("side");
        std::os::unix::fs::symlink("/dev/zero", &link).expect("a link");
        assert!(
            matches!(
                read_bounded(&link, 10).expect("no error"),
                SideBytes::NotRegular
            ),
            "a link to /dev/zero must not be followed"
        );
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let fifo = dir.path().join("side");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .expect("a FIFO");
        assert!(
            matches!(open(&fifo).expect("no error"), SideFile::NotRegular),
            "a FIFO must be refused, not opened for reading"
        );
    }

    use super::make_fifo as fifo;

    #[test]
    fn a_durable_replace_goes_through_a_fifo_at_the_temp_name_and_replaces_one_at_the_file_name() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("a temp dir");
        let (temp, path) = (dir.path().join("side.tmp"), dir.path().join("side"));
        fifo(&temp);
        fifo(&path);
        replace_durably(&temp, &path, b"{}").expect("the FIFOs are replaced, not opened");
        assert!(
            matches!(read_bounded(&path, 10).expect("no error"), SideBytes::Bytes(b) if b == b"{}"),
            "the file does not hold what was written"
        );
        assert!(!temp.exists(), "the temp file was left behind");
        let mode = std::fs::metadata(&path)
            .expect("the file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the side file must be private");
    }

    #[test]
    fn the_kind_of_an_entry_that_is_not_a_regular_file_is_told_without_opening_it() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (pipe, link, file) = (
            dir.path().join("pipe"),
            dir.path().join("link"),
            dir.path().join("file"),
        );
        fifo(&pipe);
        std::os::unix::fs::symlink("/dev/zero", &link).expect("a link");
        std::fs::write(&file, b"x").expect("write");
        assert_eq!(not_regular_kind(&pipe), Some("a FIFO"), "a FIFO");
        assert_eq!(not_regular_kind(&link), Some("a symbolic link"), "a link");
        assert_eq!(not_regular_kind(&file), None, "a regular file");
        assert_eq!(not_regular_kind(&dir.path().join("none")), None, "no entry");
        assert!(
            matches!(create_new(&pipe), Err(e) if e.kind() == io::ErrorKind::AlreadyExists),
            "creating over a FIFO must fail at once"
        );
    }

    #[test]
    fn a_file_over_the_limit_is_too_large_and_one_within_is_read() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("side");
        std::fs::write(&path, b"12345").expect("write");
        assert!(
            matches!(
                read_bounded(&path, 4).expect("no error"),
                SideBytes::TooLarge
            ),
            "5 bytes over a limit of 4 are too large"
        );
        assert!(
            matches!(read_bounded(&path, 5).expect("no error"), SideBytes::Bytes(b) if b == b"12345"),
            "5 bytes within a limit of 5 are read whole"
        );
        assert!(
            matches!(
                read_bounded(&dir.path().join("none"), 5).expect("no error"),
                SideBytes::Missing
            ),
            "no file is Missing"
        );
    }
}
