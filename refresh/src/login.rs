//! Sign-in, sign-out and seeding, on this machine or across a fleet: one call each.
//!
//! A [`Login`] names where a login lives: this machine's auth.json ([`Login::Local`]), or that
//! and a fleet's record too ([`Login::Fleet`]). Each call does its steps in the one safe order:
//!
//! - [`Login::sign_in`] stores the document here first, then makes it the fleet's login: a
//!   fleet that cannot be reached never costs this machine the new login.
//! - [`Login::sign_out`] removes the fleet's login first, then this machine's: a fleet that
//!   cannot be signed out (unreachable, not etcd, refusing) leaves this machine's credentials in
//!   place.
//! - [`FleetLogin::seed`] uploads what this machine holds; it never writes here.
//!
//! Nothing is deleted or overwritten because a read, a record or a refresh failed: every error
//! says what was done before it ([`SignInError::Fleet`] carries the stored login,
//! [`SignOutError::Local`] the fleet's removal).

use std::path::{Path, PathBuf};

use codex_store::backend::FileBackend;
use codex_store::{AuthDotJson, Expect, Generation, Store, StoreError};

use crate::error::RefreshError;
use crate::fleet::{Fleet, FleetError};
use crate::state::blocking;

/// Where a login lives: this machine's store, or also a fleet's record.
#[derive(Debug)]
pub enum Login {
    /// This machine's auth.json only.
    Local(Store),
    /// This machine's auth.json and the fleet's record (boxed: the fleet's client is large).
    Fleet(Box<FleetLogin>),
}

/// A login shared by a fleet: this machine's store and the fleet's record.
#[derive(Debug)]
pub struct FleetLogin {
    store: Store,
    fleet: Fleet,
}

/// Whether a change of auth.json is known to survive a crash.
#[derive(Debug)]
pub enum Durability {
    /// The change and its directory were synced.
    Durable,
    /// The change is in place, but its directory could not be synced
    /// ([`StoreError::NotDurable`], kept here to be reported): a power loss may undo it.
    NotDurable(StoreError),
}

/// A login stored in this machine's auth.json.
#[derive(Debug)]
pub struct Stored {
    /// auth.json.
    pub path: PathBuf,
    /// The generation written.
    pub generation: Generation,
    /// Whether the write is known to be durable.
    pub durability: Durability,
}

/// What a sign-out found in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// A login was there; it is gone.
    Removed,
    /// There was no login to remove.
    NothingThere,
}

impl Removal {
    fn of(existed: bool) -> Self {
        if existed {
            Removal::Removed
        } else {
            Removal::NothingThere
        }
    }
}

/// This machine's auth.json after a sign-out.
#[derive(Debug)]
pub struct LocalRemoval {
    /// auth.json.
    pub path: PathBuf,
    /// Whether there was a file.
    pub removal: Removal,
    /// Whether the removal is known to be durable.
    pub durability: Durability,
}

/// The fleet's record after a sign-out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetRemoval {
    /// The record's key.
    pub key: String,
    /// Whether there was a login.
    pub removal: Removal,
}

/// A login made the fleet's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seeded {
    /// The record's key.
    pub key: String,
    /// The record's new etcd revision.
    pub revision: i64,
}

/// What [`Login::sign_in`] did.
#[derive(Debug)]
pub struct SignedIn {
    /// The login stored here.
    pub local: Stored,
    /// The fleet's new login ([`Login::Fleet`] only).
    pub fleet: Option<Seeded>,
}

/// What [`Login::sign_out`] did.
#[derive(Debug)]
pub struct SignedOut {
    /// The fleet's login ([`Login::Fleet`] only), removed first.
    pub fleet: Option<FleetRemoval>,
    /// This machine's credentials.
    pub local: LocalRemoval,
}

/// Why [`Login::sign_in`] failed, and what it did before.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    /// Nothing was stored, here or in the fleet.
    #[error(transparent)]
    Local(RefreshError),
    /// The login was stored here, but not made the fleet's.
    #[error("the login was stored in {}, but not made the fleet's login", stored.path.display())]
    Fleet {
        /// What was stored here (it stays).
        stored: Stored,
        /// Why the fleet did not take it.
        #[source]
        source: FleetError,
    },
}

/// Why [`Login::sign_out`] failed, and what it did before.
#[derive(Debug, thiserror::Error)]
pub enum SignOutError {
    /// The fleet could not be signed out; nothing was removed anywhere.
    #[error(transparent)]
    Fleet(FleetError),
    /// This machine's credentials could not be removed (the fleet's, if any, already were).
    #[error("the credentials in {path} could not be removed")]
    Local {
        /// auth.json.
        path: PathBuf,
        /// The fleet's removal, done before.
        fleet: Option<FleetRemoval>,
        /// Why.
        #[source]
        source: RefreshError,
    },
}

/// Why [`FleetLogin::seed`] failed; the fleet's record is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// This machine's auth.json could not be read.
    #[error(transparent)]
    Local(RefreshError),
    /// This machine holds no login to seed with.
    #[error("{} holds no credentials to seed the fleet with", path.display())]
    NotSignedIn {
        /// auth.json.
        path: PathBuf,
    },
    /// The fleet refused or could not be reached.
    #[error(transparent)]
    Fleet(FleetError),
}

impl Login {
    /// This machine's store, with `fleet` when the login is shared.
    pub fn new(store: Store, fleet: Option<Fleet>) -> Self {
        match fleet {
            Some(fleet) => Login::Fleet(Box::new(FleetLogin::new(store, fleet))),
            None => Login::Local(store),
        }
    }

    /// This machine's store.
    pub fn store(&self) -> &Store {
        match self {
            Login::Local(store) => store,
            Login::Fleet(shared) => &shared.store,
        }
    }

    /// Stores `doc` in this machine's auth.json (replacing whatever is there, a corrupt file
    /// included, under the lock), then, for [`Login::Fleet`], makes it the fleet's login
    /// (replacing the fleet's).
    ///
    /// # Errors
    /// [`SignInError::Local`] when nothing could be stored (a lock timeout, an I/O error);
    /// [`SignInError::Fleet`] when the login was stored here but the fleet did not take it (a
    /// login without usable credentials, an unreachable fleet, a record that changed meanwhile).
    /// A write in place but not known to be durable is a success
    /// ([`Durability::NotDurable`]).
    pub async fn sign_in(&self, doc: &AuthDotJson) -> Result<SignedIn, SignInError> {
        let local = store_here(self.store(), doc)
            .await
            .map_err(SignInError::Local)?;
        let Login::Fleet(shared) = self else {
            return Ok(SignedIn { local, fleet: None });
        };
        match shared.fleet.seed(doc, true).await {
            Ok(revision) => Ok(SignedIn {
                local,
                fleet: Some(Seeded {
                    key: shared.fleet.record_key(),
                    revision,
                }),
            }),
            Err(source) => Err(SignInError::Fleet {
                stored: local,
                source,
            }),
        }
    }

    /// For [`Login::Fleet`], removes the fleet's login (every machine is signed out); then
    /// removes this machine's credentials (a corrupt file included). Removing nothing is not an
    /// error.
    ///
    /// # Errors
    /// [`SignOutError::Fleet`] when the fleet could not be signed out: this machine's
    /// credentials are left in place. [`SignOutError::Local`] when this machine's could not be
    /// removed. A removal in place but not known to be durable is a success
    /// ([`Durability::NotDurable`]).
    pub async fn sign_out(&self) -> Result<SignedOut, SignOutError> {
        let fleet = match self {
            Login::Local(_) => None,
            Login::Fleet(shared) => Some(FleetRemoval {
                key: shared.fleet.record_key(),
                removal: Removal::of(shared.fleet.delete().await.map_err(SignOutError::Fleet)?),
            }),
        };
        match remove_here(self.store()).await {
            Ok(local) => Ok(SignedOut { fleet, local }),
            Err(source) => Err(SignOutError::Local {
                path: self.store().path().to_path_buf(),
                fleet,
                source,
            }),
        }
    }
}

impl FleetLogin {
    /// This machine's store and the fleet that shares its login.
    pub fn new(store: Store, fleet: Fleet) -> Self {
        FleetLogin { store, fleet }
    }

    /// This machine's store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The fleet.
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// Uploads this machine's login as the fleet's ([`Fleet::seed`]); refused when the fleet
    /// holds one, unless `force`. Nothing is written here.
    ///
    /// # Errors
    /// [`SeedError::Local`] when auth.json cannot be read (corrupt, locked too long);
    /// [`SeedError::NotSignedIn`] when it holds no login (the fleet is not asked);
    /// [`SeedError::Fleet`] for the fleet's refusals ([`FleetError::AlreadySeeded`],
    /// [`FleetError::SeedConflict`], [`FleetError::UnusableLogin`], ...) and failures.
    pub async fn seed(&self, force: bool) -> Result<Seeded, SeedError> {
        let store = self.store.clone();
        let snapshot = blocking(move || store.load())
            .await
            .map_err(SeedError::Local)?;
        let doc = seedable(snapshot.into_auth(), self.store.path())?;
        let revision = self
            .fleet
            .seed(&doc, force)
            .await
            .map_err(SeedError::Fleet)?;
        Ok(Seeded {
            key: self.fleet.record_key(),
            revision,
        })
    }
}

/// The login to seed the fleet with: what auth.json holds, if anything.
fn seedable(doc: Option<AuthDotJson>, path: &Path) -> Result<AuthDotJson, SeedError> {
    doc.ok_or_else(|| SeedError::NotSignedIn {
        path: path.to_path_buf(),
    })
}

/// Stores `doc` in `store`, replacing whatever is there (a corrupt file included: it is not
/// read first), under the lock.
///
/// # Errors
/// The store's errors, except a write in place but not known to be durable
/// ([`Durability::NotDurable`]).
pub(crate) async fn store_here(store: &Store, doc: &AuthDotJson) -> Result<Stored, RefreshError> {
    let path = store.path().to_path_buf();
    let (store, doc) = (store.clone(), doc.clone());
    let (generation, durability) =
        blocking(move || in_place(store.compare_and_swap(Expect::Any, Some(&doc)), |g| g)).await?;
    Ok(Stored {
        path,
        generation,
        durability,
    })
}

/// Removes the credentials in `store` (a corrupt file included), under the lock.
///
/// # Errors
/// The store's errors, except a removal in place but not known to be durable
/// ([`Durability::NotDurable`]).
pub(crate) async fn remove_here(store: &Store) -> Result<LocalRemoval, RefreshError> {
    let path = store.path().to_path_buf();
    let backend = FileBackend::from_store(store.clone());
    // A removal not known to be durable removed a file.
    let (existed, durability) = blocking(move || in_place(backend.delete(), |_| true)).await?;
    Ok(LocalRemoval {
        path,
        removal: Removal::of(existed),
        durability,
    })
}

/// A store change's result, with a change that is in place but not known to be durable
/// ([`StoreError::NotDurable`]) taken as done: its value from `done` with the generation in
/// place, and the error kept as [`Durability::NotDurable`].
///
/// # Errors
/// Every other error, as it is.
fn in_place<T>(
    result: Result<T, StoreError>,
    done: impl FnOnce(Generation) -> T,
) -> Result<(T, Durability), StoreError> {
    match result {
        Ok(value) => Ok((value, Durability::Durable)),
        Err(e) => match e {
            StoreError::NotDurable { generation, .. } => {
                Ok((done(generation), Durability::NotDurable(e)))
            }
            other => Err(other),
        },
    }
}

#[cfg(test)]
mod tests;
