//! The one way the store opens its own side files (rotation, in-place, journal, agent status and
//! claim, fleet state): their names are known, so anyone who can write the directory can plant a
//! FIFO, a device or a link there. Every such file is opened without following a link, without
//! blocking (a FIFO would otherwise hang the open, and a read of it hang forever), accepted only
//! when it is a regular file, and read with a bound (a link to `/dev/zero` or a sparse file of
//! gigabytes must not exhaust memory).

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

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
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path);
    let file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(SideFile::Missing),
        // O_NOFOLLOW on a symbolic link.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(SideFile::NotRegular),
        // O_NONBLOCK on a FIFO opened for writing with no reader, a device without a driver.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENXIO) | Some(libc::ENODEV)) => {
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

/// Whether the entry at `path` (not followed) is a regular file. A missing entry is not.
pub fn is_regular(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

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
