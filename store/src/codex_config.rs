//! What Codex's own `config.toml`, in the same home, says about where the login lives.
//!
//! Codex can keep its login in the OS keyring instead of auth.json
//! (`cli_auth_credentials_store = "keyring"`, or `"auto"` where a keyring is available), and
//! then deletes auth.json. A home without auth.json is then not signed out: its login is where
//! codex-store cannot see it. [`credentials_store`] tells which.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::side_file::{self, SideBytes};

/// Codex's configuration file in its home.
pub const CONFIG_FILE: &str = "config.toml";

/// The key of `config.toml` that says where Codex keeps the login.
pub const CREDENTIALS_STORE_KEY: &str = "cli_auth_credentials_store";

/// The largest `config.toml` read.
const MAX_CONFIG: u64 = 1 << 20;

/// Where Codex keeps its login, by `cli_auth_credentials_store` in `config.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialsStore {
    /// In auth.json: `file`, or the key (or `config.toml`) absent, Codex's default.
    File,
    /// In the OS keyring (`keyring`): Codex deletes auth.json.
    Keyring,
    /// In the OS keyring where one is available, else auth.json (`auto`).
    Auto,
    /// A value this version does not know (escaped for display).
    Other(String),
}

impl CredentialsStore {
    /// Whether Codex may keep the login outside auth.json.
    pub fn may_bypass_auth_json(&self) -> bool {
        !matches!(self, CredentialsStore::File)
    }
}

impl fmt::Display for CredentialsStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialsStore::File => f.write_str("file"),
            CredentialsStore::Keyring => f.write_str("keyring"),
            CredentialsStore::Auto => f.write_str("auto"),
            CredentialsStore::Other(value) => write!(f, "{}", value.escape_debug()),
        }
    }
}

/// Why `config.toml` could not tell.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// It could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// It is not a regular file, or larger than 1 MiB: not read.
    #[error("{path} is not a regular file of at most 1 MiB: not read")]
    NotRegular {
        /// The file.
        path: PathBuf,
    },
    /// It is not TOML, or the key is not a string.
    #[error("{path} does not parse as Codex's configuration: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (no value of the file is quoted beyond the parser's own message).
        reason: String,
    },
}

/// Where Codex keeps the login of `home`, by its `config.toml`: [`CredentialsStore::File`] when
/// the file or the key is absent.
///
/// # Errors
/// [`ConfigError`] when the file cannot be read (a FIFO or a device is refused without
/// blocking, a file over 1 MiB is not read), is not TOML, or the key is not a string.
///
/// # Security
/// The file is read as a file the user named ([`side_file::read_named`]): a link is followed
/// (dotfiles), but nothing blocks and nothing is read without a bound.
pub fn credentials_store(home: &Path) -> Result<CredentialsStore, ConfigError> {
    let path = home.join(CONFIG_FILE);
    let bytes = match side_file::read_named(&path, MAX_CONFIG) {
        Ok(SideBytes::Bytes(bytes)) => bytes,
        Ok(SideBytes::Missing) => return Ok(CredentialsStore::File),
        Ok(SideBytes::NotRegular | SideBytes::TooLarge) => {
            return Err(ConfigError::NotRegular { path })
        }
        Err(source) => return Err(ConfigError::Read { path, source }),
    };
    let invalid = |reason: String| ConfigError::Invalid {
        path: path.clone(),
        reason,
    };
    let text = String::from_utf8(bytes).map_err(|_| invalid("it is not UTF-8".into()))?;
    parse(&text).map_err(invalid)
}

/// The credentials store `text` (a `config.toml`) names.
fn parse(text: &str) -> Result<CredentialsStore, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| e.message().to_owned())?;
    Ok(match table.get(CREDENTIALS_STORE_KEY) {
        None => CredentialsStore::File,
        Some(toml::Value::String(value)) => match value.as_str() {
            "file" => CredentialsStore::File,
            "keyring" => CredentialsStore::Keyring,
            "auto" => CredentialsStore::Auto,
            other => CredentialsStore::Other(other.chars().take(64).collect()),
        },
        Some(_) => return Err(format!("{CREDENTIALS_STORE_KEY} is not a string")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_credentials_store_is_read_from_the_top_level_key_only() {
        let table = [
            ("", Ok(CredentialsStore::File)),
            ("model = \"o3\"\n", Ok(CredentialsStore::File)),
            (
                "cli_auth_credentials_store = \"file\"\n",
                Ok(CredentialsStore::File),
            ),
            (
                "cli_auth_credentials_store = \"keyring\"\n",
                Ok(CredentialsStore::Keyring),
            ),
            (
                "# comment\ncli_auth_credentials_store = 'auto' # here\n[profiles.x]\nmodel = \"a\"\n",
                Ok(CredentialsStore::Auto),
            ),
            (
                "cli_auth_credentials_store = \"vault\"\n",
                Ok(CredentialsStore::Other("vault".into())),
            ),
            // Inside a table it is another setting, not Codex's.
            (
                "[profiles.work]\ncli_auth_credentials_store = \"keyring\"\n",
                Ok(CredentialsStore::File),
            ),
        ];
        for (text, expected) in table {
            assert_eq!(parse(text), expected, "config.toml: {text:?}");
        }
        assert!(
            parse("cli_auth_credentials_store = 3\n").is_err(),
            "a key that is not a string must be an error"
        );
        assert!(
            parse("= broken").is_err(),
            "a file that is not TOML must be an error"
        );
    }

    #[test]
    fn a_missing_config_means_auth_json_and_a_fifo_is_refused_without_blocking() {
        let home = tempfile::tempdir().expect("a temp home");
        assert_eq!(
            credentials_store(home.path()).expect("no config.toml is Codex's default"),
            CredentialsStore::File
        );
        side_file::make_fifo(&home.path().join(CONFIG_FILE));
        assert!(
            matches!(
                credentials_store(home.path()),
                Err(ConfigError::NotRegular { .. })
            ),
            "a FIFO as config.toml must be refused"
        );
    }
}
