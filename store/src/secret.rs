//! [`Secret`]: a string that never shows itself by accident.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// A credential value (token, key) that hides itself.
///
/// `Debug` prints `Secret(<redacted>)`, there is no `Display`, and the value is reached only
/// through the explicit [`Secret::expose`]. It serializes as the plain string, because the file
/// format requires it.
///
/// ```
/// use codex_store::Secret;
/// let s = Secret::new("sk-live-123");
/// assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
/// assert_eq!(s.expose(), "sk-live-123");
/// ```
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself. Every call site is a place where a secret leaves its box: keep them few.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the value is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A short, non-reversible fingerprint: the first 12 hex characters of the SHA-256 of the
    /// value. Two equal secrets have equal fingerprints, so machines can be compared without
    /// showing the secret.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        let mut out = String::with_capacity(12);
        for byte in &digest[..6] {
            out.push_str(&format!("{byte:02x}"));
        }
        out
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("rt_very_secret");
        let shown = format!("{s:?} {s:#?}");
        assert!(
            !shown.contains("rt_very_secret"),
            "Debug leaked the secret: {shown}"
        );
    }

    #[test]
    fn fingerprints_are_stable_and_short() {
        let a = Secret::new("abc");
        assert_eq!(
            a.fingerprint(),
            "ba7816bf8f01",
            "fingerprint is not the SHA-256 prefix"
        );
        assert_eq!(
            a.fingerprint(),
            Secret::new("abc").fingerprint(),
            "equal secrets differ"
        );
    }
}
