//! The fleet record: the login document under `<prefix>/auth.json`, the last rotation under
//! `<prefix>/rotation`, a refusal remembered for the whole fleet under `<prefix>/refusal`.

use std::time::Duration;

use codex_store::{AuthDotJson, Generation, Timestamp};
use serde::{Deserialize, Serialize};

use super::etcd::{Compare, Op};
use super::{Fleet, FleetError};
use crate::boottime::BootInstant;

/// The login as the fleet holds it.
#[derive(Clone)]
pub struct FleetRecord {
    /// The etcd revision of the record key (its `mod_revision`).
    pub revision: i64,
    /// The SHA-256 of its bytes: with the revision, the record's generation.
    pub generation: Generation,
    /// The document's bytes.
    pub bytes: Vec<u8>,
    /// The document.
    pub document: AuthDotJson,
}

impl std::fmt::Debug for FleetRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetRecord")
            .field("revision", &self.revision)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl FleetRecord {
    /// The refresh token's fingerprint, when the document holds ChatGPT tokens.
    pub fn refresh_fingerprint(&self) -> Option<String> {
        self.document
            .tokens
            .as_ref()
            .map(|t| t.refresh_token.fingerprint())
    }
}

/// Who made the record's last change, and how. No secret: a fingerprint at most.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationMeta {
    /// The machine ([`super::FleetConfig::machine`]).
    pub machine: String,
    /// When (RFC 3339).
    pub at: String,
    /// `refreshed` (the fleet lock holder redeemed the token), `uploaded` (a local process's
    /// rotation), `seeded`, `signed_in`.
    pub kind: String,
    /// The new refresh token's fingerprint.
    pub refresh: Option<String>,
}

impl RotationMeta {
    pub(crate) fn now(fleet: &Fleet, kind: &str, doc: &AuthDotJson) -> Self {
        RotationMeta {
            machine: fleet.config.machine.clone(),
            at: Timestamp::now().as_str().to_owned(),
            kind: kind.to_owned(),
            refresh: doc.tokens.as_ref().map(|t| t.refresh_token.fingerprint()),
        }
    }
}

/// A permanent refusal remembered for the whole fleet, so that no machine sends that refresh
/// token again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Refusal {
    pub(crate) refresh: String,
    pub(crate) code: String,
    pub(crate) machine: String,
    pub(crate) at: String,
}

/// The fleet's reservation before a redemption: the lock holder records which refresh token it
/// is about to send (by fingerprint) under `<prefix>/redeeming`, on a lease of its own whose
/// time to live covers the holder's whole request plus the reuse wait. The key exists exactly as
/// long as the token may be in flight, or its answer on its way to the record: a later holder
/// waits while it exists. No machine's clock and no other machine's setting decides how long
/// (`at` is for people only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Redeeming {
    pub(crate) refresh: String,
    pub(crate) machine: String,
    pub(crate) at: String,
    /// The `create_revision` of the lock it was made under.
    pub(crate) lock: i64,
}

/// This holder's reservation of a redemption ([`Fleet::reserve_redemption`]).
#[derive(Debug)]
pub(crate) struct Reservation {
    /// The lease the key lives on.
    lease: i64,
    /// The key's `mod_revision`: what the check before sending compares.
    revision: i64,
    /// When the request must be over, on the boot-time clock (counted from before the lease
    /// was granted, so it ends before the lease by at least the reuse wait).
    pub(crate) deadline: BootInstant,
}

/// Added to a reservation's time to live beyond the request and the reuse wait (etcd counts
/// leases in whole seconds).
const RESERVATION_MARGIN: Duration = Duration::from_secs(2);

/// What `inspect` shows of a fleet. No secret.
#[derive(Clone, Debug, Serialize)]
pub struct FleetStatus {
    /// The record key.
    pub key: String,
    /// Its revision, when it exists.
    pub revision: Option<i64>,
    /// The SHA-256 of its bytes.
    pub generation: Option<String>,
    /// The account of the login.
    pub account_id: Option<String>,
    /// The refresh token's fingerprint.
    pub refresh_token: Option<String>,
    /// The last change: who, when, how.
    pub last_rotation: Option<RotationMeta>,
    /// Who holds the fleet's refresh lock now (`machine pid N`).
    pub lock_holder: Option<String>,
}

impl Fleet {
    /// The record, `None` when the fleet holds no login.
    ///
    /// # Errors
    /// [`FleetError::Unreachable`], [`FleetError::Etcd`]; [`FleetError::InvalidRecord`] when the
    /// value is not an auth.json document.
    pub async fn read(&self) -> Result<Option<FleetRecord>, FleetError> {
        self.read_at().await?.0
    }

    /// Like [`Fleet::read`], with etcd's revision at the time of the read (where a watch for the
    /// next change starts), also when the record is absent or not a document.
    pub(crate) async fn read_at(
        &self,
    ) -> Result<(Result<Option<FleetRecord>, FleetError>, i64), FleetError> {
        let (kv, revision) = self.etcd.get(&self.record_key()).await?;
        let record = kv
            .map(|kv| self.parse(kv.value, kv.mod_revision))
            .transpose();
        Ok((record, revision))
    }

    fn parse(&self, bytes: Vec<u8>, revision: i64) -> Result<FleetRecord, FleetError> {
        let document = AuthDotJson::from_json(&bytes).map_err(|e| FleetError::InvalidRecord {
            key: self.record_key(),
            reason: e.to_string(),
        })?;
        Ok(FleetRecord {
            revision,
            generation: Generation::of_bytes(&bytes),
            bytes,
            document,
        })
    }

    /// Writes `doc` if the record is still at `expected` (0: absent), with `meta` as the last
    /// rotation. `Ok(Ok(revision))` with the new revision, `Ok(Err(current))` when the record
    /// moved on (nothing written).
    ///
    /// # Errors
    /// [`FleetError::Unreachable`], [`FleetError::Etcd`], [`FleetError::InvalidRecord`].
    pub async fn put_if(
        &self,
        expected: i64,
        doc: &AuthDotJson,
        meta: &RotationMeta,
    ) -> Result<Result<i64, Option<FleetRecord>>, FleetError> {
        self.put_fenced(expected, None, doc, meta).await
    }

    /// Like [`Fleet::put_if`], also requiring the lock key to be the one created at
    /// `lock_revision` (held by this holder).
    pub(crate) async fn put_fenced(
        &self,
        expected: i64,
        lock_revision: Option<i64>,
        doc: &AuthDotJson,
        meta: &RotationMeta,
    ) -> Result<Result<i64, Option<FleetRecord>>, FleetError> {
        let key = self.record_key();
        let mut compare = vec![Compare::ModRevision(key.clone(), expected)];
        if let Some(rev) = lock_revision {
            compare.push(Compare::CreateRevision(self.key("lock"), rev));
        }
        let meta_bytes = serde_json::to_vec(meta).unwrap_or_default();
        let result = self
            .etcd
            .txn(
                &compare,
                &[
                    Op::Put {
                        key: key.clone(),
                        value: doc.to_json(),
                        lease: 0,
                    },
                    Op::Put {
                        key: self.key("rotation"),
                        value: meta_bytes,
                        lease: 0,
                    },
                    // The reservation is fulfilled (or void: a newer login).
                    Op::Delete(self.key("redeeming")),
                ],
                &[Op::Get(key)],
            )
            .await?;
        if result.succeeded {
            return Ok(Ok(result.revision));
        }
        let current = result
            .gets
            .into_iter()
            .next()
            .flatten()
            .map(|kv| self.parse(kv.value, kv.mod_revision))
            .transpose()?;
        Ok(Err(current))
    }

    /// Seeds the fleet with `doc` (a local auth.json): only when the fleet holds no login,
    /// unless `force`. Reads the record once and writes only if it is still at the revision
    /// read (a compare-and-swap), so that a login a machine uploaded or refreshed meanwhile is
    /// never overwritten. The same transaction clears a refusal remembered for the fleet; it
    /// leaves `<prefix>/redeeming` alone (the reservation of a holder whose request may still be
    /// in flight; it names the old login's token, so it does not hold up the new one). Returns
    /// the record's revision.
    ///
    /// # Errors
    /// [`FleetError::AlreadySeeded`] when it holds one and `force` is false;
    /// [`FleetError::SeedConflict`] when the record changed between the read and the write
    /// (nothing was written); the etcd errors.
    pub async fn seed(&self, doc: &AuthDotJson, force: bool) -> Result<i64, FleetError> {
        let key = self.record_key();
        // The key's revision, also when its value is not a document (`--force` replaces it).
        let (current, _) = self.etcd.get(&key).await?;
        let read = current.map_or(0, |kv| kv.mod_revision);
        if read != 0 && !force {
            return Err(FleetError::AlreadySeeded {
                key,
                revision: read,
            });
        }
        let meta = RotationMeta::now(self, "seeded", doc);
        let result = self
            .etcd
            .txn(
                &[Compare::ModRevision(key.clone(), read)],
                &[
                    Op::Put {
                        key: key.clone(),
                        value: doc.to_json(),
                        lease: 0,
                    },
                    Op::Put {
                        key: self.key("rotation"),
                        value: serde_json::to_vec(&meta).unwrap_or_default(),
                        lease: 0,
                    },
                    Op::Delete(self.key("refusal")),
                ],
                &[Op::Get(key.clone())],
            )
            .await?;
        if result.succeeded {
            return Ok(result.revision);
        }
        let found = result
            .gets
            .into_iter()
            .next()
            .flatten()
            .map_or(0, |kv| kv.mod_revision);
        Err(FleetError::SeedConflict { key, read, found })
    }

    /// Removes the login from the fleet (sign-out for every machine). Returns whether there was
    /// one.
    ///
    /// # Errors
    /// The etcd errors.
    pub async fn delete(&self) -> Result<bool, FleetError> {
        let existed = self.read().await.ok().flatten().is_some();
        self.etcd
            .txn(
                &[],
                &[
                    Op::Delete(self.record_key()),
                    Op::Delete(self.key("refusal")),
                ],
                &[],
            )
            .await?;
        Ok(existed)
    }

    /// What `inspect` shows.
    ///
    /// # Errors
    /// The etcd errors; an unreadable record is shown without its account.
    pub async fn status(&self) -> Result<FleetStatus, FleetError> {
        let record = self.read().await?;
        let (rotation, _) = self.etcd.get(&self.key("rotation")).await?;
        let (lock, _) = self.etcd.get(&self.key("lock")).await?;
        Ok(FleetStatus {
            key: self.record_key(),
            revision: record.as_ref().map(|r| r.revision),
            generation: record.as_ref().map(|r| r.generation.to_string()),
            account_id: record
                .as_ref()
                .and_then(|r| r.document.tokens.as_ref())
                .and_then(|t| t.account()),
            refresh_token: record.as_ref().and_then(FleetRecord::refresh_fingerprint),
            last_rotation: rotation.and_then(|kv| serde_json::from_slice(&kv.value).ok()),
            lock_holder: lock.map(|kv| {
                String::from_utf8_lossy(&kv.value)
                    .escape_debug()
                    .to_string()
            }),
        })
    }

    /// Waits until the record changes after etcd's revision `revision` (of a read), at most
    /// `timeout`; whether it did. A watch etcd canceled (compaction) counts as a change, so
    /// that the caller reads again; the next watch starts at the revision of that read.
    ///
    /// # Errors
    /// [`FleetError::Unreachable`] when no endpoint accepts a watch.
    pub async fn wait_change(&self, revision: i64, timeout: Duration) -> Result<bool, FleetError> {
        Ok(!matches!(
            self.etcd
                .wait_change(&self.record_key(), revision, timeout)
                .await?,
            super::etcd::Watched::TimedOut
        ))
    }

    /// The JSON value under `name` (`None`: missing or not that type).
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, FleetError> {
        let (kv, _) = self.etcd.get(&self.key(name)).await?;
        Ok(kv.and_then(|kv| serde_json::from_slice(&kv.value).ok()))
    }

    /// Puts `value` as JSON under `name` if every comparison holds; whether it did.
    async fn put_json<T: Serialize>(
        &self,
        name: &str,
        value: &T,
        compare: &[Compare],
    ) -> Result<bool, FleetError> {
        let put = Op::Put {
            key: self.key(name),
            value: serde_json::to_vec(value).unwrap_or_default(),
            lease: 0,
        };
        Ok(self.etcd.txn(compare, &[put], &[]).await?.succeeded)
    }

    pub(crate) async fn refusal(&self) -> Result<Option<Refusal>, FleetError> {
        self.get_json("refusal").await
    }

    pub(crate) async fn remember_refusal(
        &self,
        refresh: &str,
        code: &str,
    ) -> Result<(), FleetError> {
        let refusal = Refusal {
            refresh: refresh.to_owned(),
            code: code.chars().take(64).collect(),
            machine: self.config.machine.clone(),
            at: Timestamp::now().as_str().to_owned(),
        };
        self.put_json("refusal", &refusal, &[]).await.map(|_| ())
    }

    /// Another holder's live reservation, if any. A mark on no lease (an older version's, or
    /// one written by hand) bounds no wait, and is ignored.
    pub(crate) async fn redeeming(&self) -> Result<Option<Redeeming>, FleetError> {
        let (kv, _) = self.etcd.get(&self.key("redeeming")).await?;
        Ok(kv
            .filter(|kv| kv.lease != 0)
            .and_then(|kv| serde_json::from_slice(&kv.value).ok()))
    }

    /// Records, while holding the lock created at `lock_revision`, that `refresh` is about to
    /// be redeemed by a request of at most `request`, on a lease of its own that outlives it by
    /// `reuse_wait`. `None` when the lock is no longer this holder's (nothing recorded).
    ///
    /// # Errors
    /// The etcd errors (nothing recorded).
    pub(crate) async fn reserve_redemption(
        &self,
        refresh: &str,
        lock_revision: i64,
        request: Duration,
        reuse_wait: Duration,
    ) -> Result<Option<Reservation>, FleetError> {
        let started = BootInstant::now();
        let ttl = request + reuse_wait + RESERVATION_MARGIN;
        // Whole seconds, rounded up.
        let lease = self
            .etcd
            .grant(Duration::from_secs(ttl.as_secs() + 1))
            .await?;
        let mark = Redeeming {
            refresh: refresh.to_owned(),
            machine: self.config.machine.clone(),
            at: Timestamp::now().as_str().to_owned(),
            lock: lock_revision,
        };
        let put = Op::Put {
            key: self.key("redeeming"),
            value: serde_json::to_vec(&mark).unwrap_or_default(),
            lease,
        };
        let lock = Compare::CreateRevision(self.key("lock"), lock_revision);
        match self.etcd.txn(&[lock], &[put], &[]).await {
            Ok(result) if result.succeeded => Ok(Some(Reservation {
                lease,
                revision: result.revision,
                deadline: started.after(request),
            })),
            other => {
                let _ = self.etcd.revoke(lease).await;
                other.map(|_| None)
            }
        }
    }

    /// Whether the lock created at `lock_revision` and `reservation` both still stand: the last
    /// check before the token is sent (one round trip).
    ///
    /// # Errors
    /// The etcd errors.
    pub(crate) async fn reservation_stands(
        &self,
        reservation: &Reservation,
        lock_revision: i64,
    ) -> Result<bool, FleetError> {
        let compare = [
            Compare::CreateRevision(self.key("lock"), lock_revision),
            Compare::ModRevision(self.key("redeeming"), reservation.revision),
        ];
        Ok(self.etcd.txn(&compare, &[], &[]).await?.succeeded)
    }

    /// Ends a reservation whose token was not sent (its key goes with its lease).
    pub(crate) async fn release_reservation(&self, reservation: Reservation) {
        if let Err(e) = self.etcd.revoke(reservation.lease).await {
            tracing::warn!(error = %e, "could not revoke the reservation's lease; it expires by itself");
        }
    }
}
