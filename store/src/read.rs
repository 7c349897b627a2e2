//! Reading auth.json: one whole snapshot, a size limit, and a brief retry on a half-written file.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::auth_json::AuthDotJson;
use crate::error::StoreError;
use crate::generation::Generation;
use crate::side_file;

/// The largest auth.json the store reads (1 MiB). Real files are about 2 KiB.
pub const MAX_FILE_SIZE: u64 = 1024 * 1024;

/// Pauses before re-reading a file that did not parse: a writer that ignores the lock (an older
/// installation writing in place) may be half way through.
const RETRY_DELAYS: [Duration; 4] = [
    Duration::from_millis(2),
    Duration::from_millis(4),
    Duration::from_millis(8),
    Duration::from_millis(16),
];

/// The content of auth.json: its bytes, or, for a file over [`MAX_FILE_SIZE`], only its
/// generation.
pub(crate) enum RawFile {
    Bytes(Vec<u8>),
    TooLarge(Generation),
}

impl RawFile {
    pub(crate) fn generation(&self) -> Generation {
        match self {
            RawFile::Bytes(bytes) => Generation::of_bytes(bytes),
            RawFile::TooLarge(generation) => *generation,
        }
    }
}

/// Opens auth.json for reading: never through a symlink, never blocking on a FIFO or device
/// (`O_NONBLOCK`, which changes nothing for a regular file), and only a regular file.
fn open_no_follow(path: &Path) -> Result<Option<File>, StoreError> {
    match side_file::open_read(path) {
        Ok(f) => match f.metadata() {
            Ok(meta) if meta.is_file() => Ok(Some(f)),
            Ok(_) => Err(StoreError::NotARegularFile {
                path: path.to_path_buf(),
            }),
            Err(e) => Err(StoreError::io("inspect", path, e)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if side_file::errno(&e) == Some(rustix::io::Errno::LOOP) => {
            Err(StoreError::Symlink {
                path: path.to_path_buf(),
            })
        }
        Err(e) => Err(StoreError::io("open", path, e)),
    }
}

/// Reads the file whole; `None` when there is no file.
pub(crate) fn read_raw(path: &Path) -> Result<Option<RawFile>, StoreError> {
    let Some(mut file) = open_no_follow(path)? else {
        return Ok(None);
    };
    let mut bytes = Vec::with_capacity(4096);
    (&mut file)
        .take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| StoreError::io("read", path, e))?;
    if bytes.len() as u64 <= MAX_FILE_SIZE {
        return Ok(Some(RawFile::Bytes(bytes)));
    }
    // Too large to parse, and reading stops at the limit (an 8 GiB sparse file must not be read
    // whole): the generation of such a file is the SHA-256 of its first MAX_FILE_SIZE + 1 bytes
    // followed by its size in decimal, enough for a compare-and-swap to name it.
    let size = file
        .metadata()
        .map_err(|e| StoreError::io("inspect", path, e))?
        .len();
    let mut hasher = Sha256::new();
    hasher.update(&bytes);
    hasher.update(size.to_string().as_bytes());
    Ok(Some(RawFile::TooLarge(Generation::Sha256(
        hasher.finalize().into(),
    ))))
}

/// The current generation, hashing the bytes.
pub(crate) fn current_generation(path: &Path) -> Result<Generation, StoreError> {
    Ok(read_raw(path)?.map_or(Generation::Absent, |raw| raw.generation()))
}

/// Reads and parses, retrying briefly while the file does not parse. Returns the bytes (not
/// yet hashed: the generation is computed when asked for) and the document; `None` for no file.
pub(crate) fn read_document(path: &Path) -> Result<Option<(Vec<u8>, AuthDotJson)>, StoreError> {
    let mut delays = RETRY_DELAYS.iter();
    loop {
        let Some(raw) = read_raw(path)? else {
            return Ok(None);
        };
        let corrupt = |generation, reason| StoreError::Corrupt {
            path: path.to_path_buf(),
            generation,
            reason,
        };
        let bytes = match raw {
            RawFile::Bytes(bytes) => bytes,
            RawFile::TooLarge(generation) => {
                let reason = format!("it is larger than the {MAX_FILE_SIZE} byte limit");
                return Err(corrupt(generation, reason));
            }
        };
        match AuthDotJson::from_json(&bytes) {
            Ok(doc) => return Ok(Some((bytes, doc))),
            Err(e) => match delays.next() {
                Some(delay) => std::thread::sleep(*delay),
                None => return Err(corrupt(Generation::of_bytes(&bytes), e.to_string())),
            },
        }
    }
}
