//! [`Snapshot`]: one whole read of auth.json, its generation hashed on first use.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use crate::auth_json::{AuthDotJson, FormatError};
use crate::error::StoreError;
use crate::generation::Generation;
use crate::read;

/// A read of auth.json: the generation and, when there is a file, the document.
#[derive(Clone)]
pub struct Snapshot {
    /// The exact bytes read; hashed into the generation on first use (most reads never ask).
    bytes: Option<Arc<Vec<u8>>>,
    generation: OnceLock<Generation>,
    auth: Option<AuthDotJson>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The bytes hold secrets: never shown.
        f.debug_struct("Snapshot")
            .field("generation", &self.generation())
            .field("auth", &self.auth)
            .finish()
    }
}

impl Snapshot {
    /// Reads auth.json at `path` (see [`crate::Store::load`]).
    pub(crate) fn read(path: &Path) -> Result<Snapshot, StoreError> {
        let (bytes, auth) = match read::read_document(path)? {
            Some((bytes, doc)) => (Some(Arc::new(bytes)), Some(doc)),
            None => (None, None),
        };
        Ok(Snapshot {
            bytes,
            generation: OnceLock::new(),
            auth,
        })
    }

    /// The generation this was read at ([`Generation::Absent`] when there is no file).
    pub fn generation(&self) -> Generation {
        *self.generation.get_or_init(|| {
            self.bytes
                .as_deref()
                .map_or(Generation::Absent, |bytes| Generation::of_bytes(bytes))
        })
    }

    /// The size of the file read, in bytes (0 with no file).
    pub(crate) fn len(&self) -> u64 {
        self.bytes.as_deref().map_or(0, |b| b.len() as u64)
    }

    /// The document; `None` when there is no file.
    pub fn auth(&self) -> Option<&AuthDotJson> {
        self.auth.as_ref()
    }

    /// The document, by value.
    pub fn into_auth(self) -> Option<AuthDotJson> {
        self.auth
    }

    /// The document as the caller's own serde type (a login crate's), converted through
    /// `serde_json::Value` (keys in file order); `Ok(None)` when there is no file. See
    /// [`crate::Store::compare_and_swap_as`] for an example.
    ///
    /// # Errors
    /// [`FormatError`] when the document does not deserialize into `T`. The message does not
    /// pass on `serde_json`'s, which can quote a value (a secret).
    ///
    /// # Security
    /// `T` receives the secrets in clear; keep them in [`crate::Secret`]s or out of logs.
    pub fn auth_as<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>, FormatError> {
        self.auth()
            .map(|doc| {
                serde_json::from_value(doc.to_value()).map_err(|_| {
                    FormatError::new("auth.json does not match the requested document type")
                })
            })
            .transpose()
    }
}
