//! The fleet: one login shared by several machines through etcd.
//!
//! The login (the auth.json document) lives in etcd under a key prefix (`<prefix>/auth.json`).
//! Its generation is the etcd revision of that key plus the SHA-256 of its bytes. Every write is
//! an etcd transaction comparing the revision read before (a compare-and-swap); the refresh lock
//! is a key attached to a lease (`<prefix>/lock`), kept alive while its holder works, so that a
//! crashed holder frees it when the lease expires. A holder that lost its lease cannot overwrite
//! a newer rotation: its write compares the revision it read.
//!
//! On each machine, [`crate::Agent`] with a fleet mirrors the record into the local auth.json
//! (through the local store, so unmodified Codex processes read it), refreshes for the whole
//! fleet when it holds the fleet lock, and uploads a rotation that a local process wrote outside
//! the agent.
//!
//! # Security
//! The record is a secret: whoever can read `<prefix>/` can use the login. Use etcd's TLS
//! ([`FleetConfig::ca_file`], client certificates) and authentication
//! ([`FleetConfig::username`]); give each login a prefix of its own and each machine's etcd
//! user read-write access to that prefix only. An etcd administrator (root, or anyone who can
//! read the data directory or a snapshot) can read the tokens. The record is never logged.

mod etcd;
pub(crate) mod fence;
mod lock;
pub(crate) mod record;

use std::path::PathBuf;
use std::time::Duration;

use codex_store::Secret;

pub(crate) use etcd::{Change, Etcd, Kv, Op, Watched};
pub use lock::FleetLock;
pub(crate) use lock::LockAttempt;
pub use record::{
    unusable, FleetRecord, FleetRefusal, FleetStatus, LockHeld, Put, RotationKind, RotationMeta,
};
pub(crate) use record::{Found, RecordRead};

/// The default key prefix of a fleet.
pub const DEFAULT_PREFIX: &str = "/codex-store/default";

/// How to reach a fleet.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// etcd endpoints, `http://host:port` or `https://host:port`; tried in order.
    pub endpoints: Vec<String>,
    /// The key prefix of this login (one prefix per login). Default: [`DEFAULT_PREFIX`].
    pub prefix: String,
    /// The etcd user, when etcd has authentication enabled.
    pub username: Option<String>,
    /// Its password.
    pub password: Option<Secret>,
    /// A CA certificate (PEM) to trust for `https://` endpoints.
    pub ca_file: Option<PathBuf>,
    /// A client certificate (PEM), with [`FleetConfig::key_file`].
    pub cert_file: Option<PathBuf>,
    /// The client certificate's key (PEM).
    pub key_file: Option<PathBuf>,
    /// The time to live of the refresh lock's lease: longer than a refresh request (the
    /// token endpoint's timeout); kept alive every third of it. Default: 60 s.
    pub lock_ttl: Duration,
    /// The limit of one etcd call. Default: 5 s.
    pub request_timeout: Duration,
    /// This machine's name in the record's rotation history. Default: the host name.
    pub machine: String,
}

impl FleetConfig {
    /// A configuration for `endpoints` with the defaults.
    pub fn new(endpoints: Vec<String>) -> Self {
        FleetConfig {
            endpoints,
            prefix: DEFAULT_PREFIX.to_owned(),
            username: None,
            password: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            lock_ttl: Duration::from_secs(60),
            request_timeout: Duration::from_secs(5),
            machine: host_name(),
        }
    }
}

/// The machine's host name (`/proc/sys/kernel/hostname`, else `HOSTNAME`, else `unknown`).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// What went wrong with the fleet.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// No endpoint answered.
    #[error(
        "no etcd endpoint of the fleet answered ({endpoints}): {reason}; check that etcd runs \
         and is reachable, nothing was changed"
    )]
    Unreachable {
        /// The endpoints tried.
        endpoints: String,
        /// The last failure.
        reason: String,
    },
    /// An endpoint answered, but not as etcd's v3 gateway does (a 200 with `{}`, an HTML page, a
    /// proxy's page): never read as "no login" or "not written".
    #[error(
        "the fleet's endpoints ({endpoints}) did not answer as etcd does: {answer}; check that \
         --fleet names etcd's client URLs (etcd 3.4 or later, like http://host:2379), nothing \
         was changed"
    )]
    NotEtcd {
        /// The endpoints tried.
        endpoints: String,
        /// What came instead (escaped, cut short).
        answer: String,
    },
    /// etcd refused the request.
    #[error("etcd refused the request: {message} (code {code}); check the fleet's user and its permissions on the prefix")]
    Etcd {
        /// The gRPC status code.
        code: i64,
        /// etcd's message.
        message: String,
    },
    /// A TLS file could not be used.
    #[error("cannot use {path} for TLS: {reason}; give a PEM file")]
    Tls {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A setting cannot be used.
    #[error("{message}")]
    Setting {
        /// What is wrong and what to do.
        message: String,
    },
    /// The record in etcd is not an auth.json document; it was left untouched.
    #[error("the fleet record {key} is not a valid auth.json ({reason}); it was left untouched: seed the fleet again (`codex-store fleet seed --force`)")]
    InvalidRecord {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// A login without usable credentials (empty tokens, neither tokens nor a key): never made
    /// the fleet's.
    #[error(
        "{what} holds no usable credentials ({reason}): it was not made the fleet's login; sign \
         in again (`codex login`), or sign the fleet out with `codex-store logout --fleet \
         ENDPOINTS`"
    )]
    UnusableLogin {
        /// Which login.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The fleet already holds a login (seeding refuses to replace it).
    #[error("the fleet already holds a login at {key} (revision {revision}); pass --force to replace it")]
    AlreadySeeded {
        /// The key.
        key: String,
        /// Its revision.
        revision: i64,
    },
    /// The record changed between the seed's read and its write (a machine uploaded or
    /// refreshed the login meanwhile): nothing was written.
    #[error(
        "the fleet's login at {key} changed while seeding ({} when read, {} now): nothing was \
         written, the newer login was kept; look at it (`codex-store inspect --fleet`) and run \
         the seed again if it should still be replaced",
        revision_of(*read),
        revision_of(*found)
    )]
    SeedConflict {
        /// The key.
        key: String,
        /// Its revision when the seed read it (0: absent).
        read: i64,
        /// Its revision when the seed tried to write (0: absent).
        found: i64,
    },
}

/// A record's revision in a message (0: no record).
fn revision_of(revision: i64) -> String {
    if revision == 0 {
        "no login".to_owned()
    } else {
        format!("revision {revision}")
    }
}

/// A fleet: the etcd client and the keys of one login.
pub struct Fleet {
    pub(crate) etcd: Etcd,
    pub(crate) config: FleetConfig,
    /// The revokes of dropped lock guards still under way ([`lock::FleetLock`]): awaited before
    /// the next lock attempt, and by [`Fleet::settle`].
    pub(crate) releases: lock::Releases,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("endpoints", &self.config.endpoints)
            .field("prefix", &self.config.prefix)
            .finish()
    }
}

impl Fleet {
    /// A fleet client for `config`. Makes no call yet.
    ///
    /// # Errors
    /// [`FleetError::Setting`] for endpoints that are not http(s) URLs or half a client
    /// certificate; [`FleetError::Io`] and [`FleetError::Tls`] for the TLS files.
    pub fn new(config: FleetConfig) -> Result<Fleet, FleetError> {
        let mut config = config;
        config.prefix = config.prefix.trim_end_matches('/').to_owned();
        if config.prefix.is_empty() {
            return Err(FleetError::Setting {
                message: "the fleet prefix is empty: give one like /codex-store/me".into(),
            });
        }
        Ok(Fleet {
            etcd: Etcd::new(&config)?,
            config,
            releases: lock::Releases::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.config.prefix)
    }

    /// The key of the login document.
    pub fn record_key(&self) -> String {
        self.key("auth.json")
    }

    /// Waits until the fleet lock this process dropped is freed in etcd (its lease revoked),
    /// so that a process about to exit does not leave it to expire with its lease.
    pub async fn settle(&self) {
        self.releases.settle().await;
    }
}
