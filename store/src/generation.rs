//! [`Generation`]: which version of auth.json a value was read from, and [`Expect`].

use std::fmt;

use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};

/// The version of auth.json: the SHA-256 of the file's exact bytes, or [`Generation::Absent`]
/// when there is no file. (For a file over [`crate::MAX_FILE_SIZE`], which is never read whole,
/// it is the SHA-256 of its first `MAX_FILE_SIZE + 1` bytes followed by its size in decimal.)
///
/// It displays as 64 lowercase hex characters, equal to what `sha256sum auth.json` prints, and
/// as `absent` for no file. Hashing the bytes (rather than comparing inode, mtime and size)
/// catches every change: rewrites reuse inode numbers and often share an mtime.
///
/// ```
/// use codex_store::Generation;
/// let g = Generation::of_bytes(b"");
/// assert_eq!(g.to_string(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
/// assert_ne!(g, Generation::Absent, "an empty file is not a missing file");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum Generation {
    /// There is no auth.json.
    Absent,
    /// The SHA-256 of the file's bytes.
    Sha256([u8; 32]),
}

impl Generation {
    /// The generation of a file holding exactly these bytes.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Generation::Sha256(Sha256::digest(bytes).into())
    }

    /// Whether this is the generation of a missing file.
    pub fn is_absent(&self) -> bool {
        matches!(self, Generation::Absent)
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Generation::Absent => f.write_str("absent"),
            Generation::Sha256(bytes) => {
                for byte in bytes {
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Generation({self})")
    }
}

impl Serialize for Generation {
    /// `null` for [`Generation::Absent`], else the hex string.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Generation::Absent => serializer.serialize_none(),
            Generation::Sha256(_) => serializer.collect_str(self),
        }
    }
}

/// What a compare-and-swap expects to find on disk before it writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Whatever is there (including no file, or a corrupt one).
    Any,
    /// No file at all: create only.
    Absent,
    /// Exactly this generation (use [`Generation::Absent`] or [`Expect::Absent`] for no file).
    Generation(Generation),
}

impl Expect {
    /// Whether `actual` satisfies this expectation.
    pub fn matches(&self, actual: Generation) -> bool {
        match self {
            Expect::Any => true,
            Expect::Absent => actual.is_absent(),
            Expect::Generation(g) => *g == actual,
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Any => f.write_str("any"),
            Expect::Absent => f.write_str("absent"),
            Expect::Generation(g) => write!(f, "{g}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_match_only_what_they_name() {
        let a = Generation::of_bytes(b"a");
        let b = Generation::of_bytes(b"b");
        assert!(
            Expect::Any.matches(a) && Expect::Any.matches(Generation::Absent),
            "Any refused"
        );
        assert!(
            Expect::Absent.matches(Generation::Absent),
            "Absent refused no file"
        );
        assert!(
            !Expect::Absent.matches(a),
            "Absent accepted an existing file"
        );
        assert!(
            Expect::Generation(a).matches(a),
            "a generation refused itself"
        );
        assert!(
            !Expect::Generation(a).matches(b),
            "a stale generation was accepted"
        );
        assert!(
            !Expect::Generation(a).matches(Generation::Absent),
            "a generation accepted no file"
        );
    }
}
