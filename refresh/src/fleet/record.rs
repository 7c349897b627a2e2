//! The fleet record: the login document under `<prefix>/auth.json`, the last rotation under
//! `<prefix>/rotation`, a refusal remembered for the whole fleet under `<prefix>/refusal`.

use std::time::Duration;

use codex_store::{AuthDotJson, Generation, Timestamp};
use serde::{Deserialize, Serialize};

use super::etcd::{Compare, Kv, Op};
use super::{Fleet, FleetError};
use crate::boottime::BootInstant;

/// The login as the fleet holds it.
#[derive(Clone)]
pub struct FleetRecord {
    /// The etcd revision of the record key (its `mod_revision`).
    pub revision: i64,
    /// The revision at which the record key was created (its `create_revision`): a record
    /// created after a machine's last sync was signed out (deleted) and in again since.
    pub created: i64,
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

    /// Why the record holds no usable credentials ([`unusable`]), if it does not.
    pub fn unusable(&self) -> Option<String> {
        unusable(&self.document)
    }
}

/// Why `doc` holds no credentials a machine could use, if so: ChatGPT tokens whose access or
/// refresh token is an empty string (a broken seed, a careless `etcdctl put`), an empty API key,
/// or neither tokens nor a key. Such a login is never mirrored, uploaded, seeded or sent: the
/// fleet's sign-out is `logout --fleet`, which deletes the record.
pub fn unusable(doc: &AuthDotJson) -> Option<String> {
    if let Some(tokens) = &doc.tokens {
        let empty: Vec<&str> = [
            ("access_token", &tokens.access_token),
            ("refresh_token", &tokens.refresh_token),
        ]
        .into_iter()
        .filter(|(_, token)| token.expose().trim().is_empty())
        .map(|(name, _)| name)
        .collect();
        if !empty.is_empty() {
            return Some(format!(
                "its {} {} empty",
                empty.join(" and "),
                if empty.len() == 1 { "is" } else { "are" }
            ));
        }
    }
    match &doc.openai_api_key {
        Some(key) if key.expose().trim().is_empty() => Some("its API key is empty".into()),
        None if doc.tokens.is_none() => Some("it holds neither tokens nor an API key".into()),
        _ => None,
    }
}

/// How a change of the fleet's record was made (`<prefix>/rotation`'s `kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RotationKind {
    /// The fleet lock's holder redeemed the record's token.
    Refreshed,
    /// A local process's rotation, descending from the record's token, was uploaded.
    Uploaded,
    /// A token descending from the record's was uploaded over a record that went back (etcd
    /// restored from a snapshot).
    Repaired,
    /// A token no known rotation leads to from the record's was uploaded (nothing vouches for
    /// the succession).
    UploadedUnverified,
    /// `fleet seed`, or a sign-in with `--fleet`.
    Seeded,
    /// A kind this version does not know (written by another version, or by hand).
    #[serde(other)]
    Unknown,
}

impl std::fmt::Display for RotationKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let json = serde_json::to_value(self).ok();
        f.write_str(json.as_ref().and_then(|v| v.as_str()).unwrap_or("unknown"))
    }
}

/// Who made the record's last change, and how. No secret: a fingerprint at most.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationMeta {
    /// The machine ([`super::FleetConfig::machine`]).
    pub machine: String,
    /// When (RFC 3339).
    pub at: String,
    /// How the change was made.
    pub kind: RotationKind,
    /// The new refresh token's fingerprint.
    pub refresh: Option<String>,
    /// The fingerprint of the refresh token the new one replaced in the fleet's login (the
    /// record's before this change), when the writer knows the new one descends from it:
    /// `refreshed`, `uploaded`, `repaired`, `seeded`. A machine that did not see the record
    /// before still knows the succession. `None` for an unverified upload or a first login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

impl RotationMeta {
    pub(crate) fn now(
        fleet: &Fleet,
        kind: RotationKind,
        doc: &AuthDotJson,
        parent: Option<String>,
    ) -> Self {
        let refresh = doc.tokens.as_ref().map(|t| t.refresh_token.fingerprint());
        RotationMeta {
            machine: fleet.config.machine.clone(),
            at: Timestamp::now().as_str().to_owned(),
            kind,
            // A token is not its own parent.
            parent: parent.filter(|p| Some(p) != refresh.as_ref()),
            refresh,
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

/// Another holder's reservation as found (in the lock's transaction, [`Fleet::try_lock`], or
/// by [`Fleet::redeeming`]).
#[derive(Clone, Debug)]
pub(crate) struct FoundReservation {
    pub(crate) mark: Redeeming,
    /// The key's `mod_revision`: the same reservation is the same revision.
    pub(crate) revision: i64,
    /// Its lease.
    pub(crate) lease: i64,
}

/// The refusal `kv` of `<prefix>/refusal` holds (`None`: missing, or not a refusal).
pub(super) fn refusal_of(kv: Option<Kv>) -> Option<Refusal> {
    kv.and_then(|kv| serde_json::from_slice(&kv.value).ok())
}

/// The live reservation `kv` of `<prefix>/redeeming` holds: `None` when missing, not a mark, or
/// on no lease (an older version's, or one written by hand: it bounds no wait, and is ignored).
pub(super) fn reservation_of(kv: Option<Kv>) -> Option<FoundReservation> {
    kv.filter(|kv| kv.lease != 0).and_then(|kv| {
        Some(FoundReservation {
            mark: serde_json::from_slice(&kv.value).ok()?,
            revision: kv.mod_revision,
            lease: kv.lease,
        })
    })
}

/// This holder's reservation of a redemption ([`Fleet::reserve_redemption`]).
#[derive(Debug)]
pub(crate) struct Reservation {
    /// The lease the key lives on.
    lease: i64,
    /// The key's `mod_revision`: what the check before sending compares.
    revision: i64,
    /// The record's revision it was made over: the check before sending compares it too (an
    /// upload meanwhile may have replaced the token).
    record_revision: i64,
    /// When the request must be over, on the boot-time clock (counted from before the lease
    /// was granted, so it ends before the lease by at least the reuse wait).
    pub(crate) deadline: BootInstant,
}

/// Added to a reservation's time to live beyond the request and the reuse wait (etcd counts
/// leases in whole seconds).
const RESERVATION_MARGIN: Duration = Duration::from_secs(2);

/// The time to live of the lease of a reservation for a request of at most `request` and a
/// reuse wait of `reuse_wait`, in whole seconds (rounded up).
pub(crate) fn reservation_ttl(request: Duration, reuse_wait: Duration) -> Duration {
    let ttl = request + reuse_wait + RESERVATION_MARGIN;
    Duration::from_secs(ttl.as_secs() + 1)
}

/// Whoever holds the fleet lock, as found by a machine that could not take it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockHeld {
    /// What the holder wrote (`machine pid N`), unescaped: escape it to show it.
    pub holder: String,
    /// The lock key's `create_revision`: the same lock is the same revision.
    pub created: i64,
    /// Its lease (0: none, the key never expires).
    pub lease: i64,
}

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
    /// Who holds the fleet's refresh lock now (`machine pid N`), as written in etcd: escape it
    /// to show it.
    pub lock_holder: Option<String>,
    /// The revision at which the lock was taken (its key's `create_revision`).
    pub lock_since_revision: Option<i64>,
    /// The lock's lease: `None` without a lock, 0 for a key on no lease (it never expires).
    pub lock_lease: Option<i64>,
    /// The lock lease's remaining time to live, in seconds (as etcd counts it).
    pub lock_lease_ttl: Option<i64>,
    /// etcd's revision at the time of this report: with `lock_since_revision`, how long the lock
    /// has been held, in writes (no clock of any machine).
    pub revision_now: i64,
    /// Why the record holds no usable credentials (it is not mirrored anywhere), if so.
    pub record_problem: Option<String>,
    /// A permanent refusal remembered for the fleet: `code` for refresh token `refresh`, seen by
    /// `machine` at `at`.
    pub refusal: Option<FleetRefusal>,
    /// A lock holder's reservation of a redemption: the token's fingerprint and the machine.
    pub redeeming: Option<FleetRefusal>,
}

/// A refusal or a reservation as `inspect` shows it (values as written in etcd: escape them).
#[derive(Clone, Debug, Serialize)]
pub struct FleetRefusal {
    /// The refresh token's fingerprint.
    pub refresh: String,
    /// The token endpoint's code (a refusal), empty for a reservation.
    pub code: String,
    /// The machine.
    pub machine: String,
    /// When, by that machine's clock (for people only).
    pub at: String,
}

/// What the record's key held at a read.
#[derive(Debug)]
pub(crate) enum Found {
    /// No login.
    Absent,
    /// A document.
    Record(Box<FleetRecord>),
    /// Bytes that are not an auth.json document.
    Invalid(FleetError),
}

impl Found {
    fn into_result(self) -> Result<Option<FleetRecord>, FleetError> {
        match self {
            Found::Absent => Ok(None),
            Found::Record(record) => Ok(Some(*record)),
            Found::Invalid(e) => Err(e),
        }
    }
}

/// A read of the record, with etcd's revision at the read (where a watch for the next change
/// starts).
#[derive(Debug)]
pub(crate) struct RecordRead {
    /// What the record held.
    pub(crate) record: Found,
    /// The last rotation's description, when read with it.
    pub(crate) rotation: Option<RotationMeta>,
    /// etcd's revision at the read.
    pub(crate) revision: i64,
}

/// What a conditional write of the record did.
#[derive(Debug)]
pub enum Put {
    /// Written; the record's new revision.
    Written {
        /// etcd's revision of the write.
        revision: i64,
    },
    /// The record moved on (or a fence no longer stood): nothing written.
    Moved {
        /// What the record holds now.
        current: Option<Box<FleetRecord>>,
    },
}

impl Fleet {
    /// The record, `None` when the fleet holds no login.
    ///
    /// # Errors
    /// [`FleetError::Unreachable`], [`FleetError::Etcd`]; [`FleetError::InvalidRecord`] when the
    /// value is not an auth.json document.
    pub async fn read(&self) -> Result<Option<FleetRecord>, FleetError> {
        self.read_at().await?.record.into_result()
    }

    /// Like [`Fleet::read`], with etcd's revision at the time of the read (where a watch for the
    /// next change starts), also when the record is absent or not a document.
    pub(crate) async fn read_at(&self) -> Result<RecordRead, FleetError> {
        let (kv, revision) = self.etcd.get(&self.record_key()).await?;
        Ok(RecordRead {
            record: self.found(kv),
            rotation: None,
            revision,
        })
    }

    /// What a key of the record held: absent, a document, or bytes that are none.
    pub(crate) fn found(&self, kv: Option<Kv>) -> Found {
        match kv.map(|kv| self.parse(kv)) {
            None => Found::Absent,
            Some(Ok(record)) => Found::Record(Box::new(record)),
            Some(Err(e)) => Found::Invalid(e),
        }
    }

    /// Like [`Fleet::read_at`], with the last rotation's description (`<prefix>/rotation`) read
    /// in the same transaction, so that it is the one of this very record when it names its
    /// token.
    pub(crate) async fn read_with_rotation(&self) -> Result<RecordRead, FleetError> {
        let result = self
            .etcd
            .txn(
                &[],
                &[Op::Get(self.record_key()), Op::Get(self.key("rotation"))],
                &[],
            )
            .await?;
        let mut gets = result.gets.into_iter();
        let record = self.found(gets.next().flatten());
        let rotation = gets
            .next()
            .flatten()
            .and_then(|kv| serde_json::from_slice::<RotationMeta>(&kv.value).ok());
        Ok(RecordRead {
            record,
            rotation,
            revision: result.revision,
        })
    }

    pub(super) fn parse(&self, kv: Kv) -> Result<FleetRecord, FleetError> {
        let bytes = kv.value;
        let document = AuthDotJson::from_json(&bytes).map_err(|e| FleetError::InvalidRecord {
            key: self.record_key(),
            reason: e.to_string(),
        })?;
        Ok(FleetRecord {
            revision: kv.mod_revision,
            created: kv.create_revision,
            generation: Generation::of_bytes(&bytes),
            bytes,
            document,
        })
    }

    /// Writes `doc` if the record is still at `expected` (0: absent), with `meta` as the last
    /// rotation: [`Put::Written`] with the new revision, [`Put::Moved`] with what the record holds
    /// when it moved on (nothing written).
    ///
    /// # Errors
    /// [`FleetError::Unreachable`], [`FleetError::Etcd`], [`FleetError::InvalidRecord`].
    pub async fn put_if(
        &self,
        expected: i64,
        doc: &AuthDotJson,
        meta: &RotationMeta,
    ) -> Result<Put, FleetError> {
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
    ) -> Result<Put, FleetError> {
        let key = self.record_key();
        let mut compare = vec![Compare::ModRevision(key.clone(), expected)];
        if let Some(rev) = lock_revision {
            compare.push(Compare::CreateRevision(self.key("lock"), rev));
        }
        let result = self
            .etcd
            .txn(
                &compare,
                // The reservation is left alone: it may be another holder's, of another token;
                // each holder ends its own (its lease) once its answer is uploaded.
                &self.record_puts(doc, meta),
                &[Op::Get(key)],
            )
            .await?;
        if result.succeeded {
            return Ok(Put::Written {
                revision: result.revision,
            });
        }
        let current = result
            .gets
            .into_iter()
            .next()
            .flatten()
            .map(|kv| self.parse(kv).map(Box::new))
            .transpose()?;
        Ok(Put::Moved { current })
    }

    /// The puts of every write of the login: the document under the record key and who wrote
    /// it, how, under `<prefix>/rotation`.
    fn record_puts(&self, doc: &AuthDotJson, meta: &RotationMeta) -> [Op; 2] {
        [
            Op::Put {
                key: self.record_key(),
                value: doc.to_json(),
                lease: 0,
            },
            Op::Put {
                key: self.key("rotation"),
                value: serde_json::to_vec(meta).unwrap_or_default(),
                lease: 0,
            },
        ]
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
        if let Some(reason) = unusable(doc) {
            return Err(FleetError::UnusableLogin {
                what: "this login".into(),
                reason,
            });
        }
        // The key's revision, also when its value is not a document (`--force` replaces it).
        let (current, _) = self.etcd.get(&key).await?;
        let read = current.as_ref().map_or(0, |kv| kv.mod_revision);
        if read != 0 && !force {
            return Err(FleetError::AlreadySeeded {
                key,
                revision: read,
            });
        }
        // The fleet's login moves on from the record's token to this one.
        let parent = current
            .and_then(|kv| AuthDotJson::from_json(&kv.value).ok())
            .and_then(|d| d.tokens.map(|t| t.refresh_token.fingerprint()));
        let meta = RotationMeta::now(self, RotationKind::Seeded, doc, parent);
        let result = self
            .etcd
            .txn(
                &[Compare::ModRevision(key.clone(), read)],
                &{
                    let [record, rotation] = self.record_puts(doc, &meta);
                    [record, rotation, Op::Delete(self.key("refusal"))]
                },
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
        // One transaction, whose answer says whether the record existed: an answer that is not
        // etcd's is an error, never "there was no login".
        let result = self
            .etcd
            .txn(
                &[],
                &[
                    Op::Delete(self.record_key()),
                    Op::Delete(self.key("refusal")),
                ],
                &[],
            )
            .await?;
        Ok(result.deleted.first().is_some_and(|n| *n > 0))
    }

    /// What `inspect` shows.
    ///
    /// # Errors
    /// The etcd errors; an unreadable record is shown without its account.
    pub async fn status(&self) -> Result<FleetStatus, FleetError> {
        let names = ["auth.json", "rotation", "lock", "refusal", "redeeming"];
        let result = self
            .etcd
            .txn(&[], &names.map(|name| Op::Get(self.key(name))), &[])
            .await?;
        let mut gets = result.gets.into_iter();
        let mut next = || gets.next().flatten();
        let (record, rotation, lock, refusal, redeeming) = (next(), next(), next(), next(), next());
        let record_kv = record.clone();
        let (record, mut record_problem) = match record.map(|kv| self.parse(kv)).transpose() {
            Ok(record) => {
                let problem = record.as_ref().and_then(FleetRecord::unusable).map(|why| {
                    format!(
                        "the fleet's login holds no usable credentials ({why}): no machine \
                         mirrors or sends it; seed the fleet from a signed-in machine \
                         (`codex-store fleet seed --force`), or sign the fleet out \
                         (`codex-store logout --fleet ENDPOINTS`)"
                    )
                });
                (record, problem)
            }
            Err(e) => (None, Some(e.to_string())),
        };
        if record.is_none() && record_kv.is_some() && record_problem.is_none() {
            record_problem = Some("the fleet's record cannot be read".into());
        }
        let lock_lease = lock.as_ref().map(|kv| kv.lease);
        let lock_lease_ttl = match lock_lease {
            Some(lease) if lease != 0 => self
                .etcd
                .time_to_live(lease)
                .await
                .ok()
                .flatten()
                .map(|(left, _)| left),
            _ => None,
        };
        let refusal = refusal
            .and_then(|kv| serde_json::from_slice::<Refusal>(&kv.value).ok())
            .map(|r| FleetRefusal {
                refresh: r.refresh,
                code: r.code,
                machine: r.machine,
                at: r.at,
            });
        let redeeming = redeeming
            .and_then(|kv| serde_json::from_slice::<Redeeming>(&kv.value).ok())
            .map(|r| FleetRefusal {
                refresh: r.refresh,
                code: String::new(),
                machine: r.machine,
                at: r.at,
            });
        Ok(FleetStatus {
            key: self.record_key(),
            revision: record_kv.as_ref().map(|kv| kv.mod_revision),
            generation: record_kv
                .as_ref()
                .map(|kv| Generation::of_bytes(&kv.value).to_string()),
            account_id: record
                .as_ref()
                .and_then(|r| r.document.tokens.as_ref())
                .and_then(|t| t.account()),
            refresh_token: record.as_ref().and_then(FleetRecord::refresh_fingerprint),
            last_rotation: rotation.and_then(|kv| serde_json::from_slice(&kv.value).ok()),
            // As written (escape it to show it: `inspect` does).
            lock_holder: lock
                .as_ref()
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
            lock_since_revision: lock.as_ref().map(|kv| kv.create_revision),
            lock_lease,
            lock_lease_ttl,
            revision_now: result.revision,
            record_problem,
            refusal,
            redeeming,
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

    /// Another holder's live reservation, if any, read on its own (one round trip): the lock
    /// holder reads it in its lock's transaction ([`Fleet::try_lock`]), and again here only to
    /// confirm one that would stop it. A mark on no lease (an older version's, or one written by
    /// hand) bounds no wait, and is ignored ([`reservation_of`]).
    pub(crate) async fn redeeming(&self) -> Result<Option<FoundReservation>, FleetError> {
        let (kv, _) = self.etcd.get(&self.key("redeeming")).await?;
        Ok(reservation_of(kv))
    }

    /// Records, while holding the lock created at `lock_revision`, that `refresh` is about to
    /// be redeemed by a request of at most `request`, on a lease of its own that outlives it by
    /// `reuse_wait`. `None` when the lock is no longer this holder's (nothing recorded).
    ///
    /// Its transaction compares the lock's `create_revision` (unique to one taking of the
    /// lock), and every other write of `<prefix>/redeeming` by this program is this one: while
    /// a lock stands, only its holder writes the key; others' reservations can only go (their
    /// leases expire). So the key as read in the lock's own transaction ([`Fleet::try_lock`])
    /// still holds no reservation that was not there then. Two round trips: the lease's grant,
    /// the transaction.
    ///
    /// # Errors
    /// The etcd errors (nothing recorded).
    pub(crate) async fn reserve_redemption(
        &self,
        refresh: &str,
        lock_revision: i64,
        record_revision: i64,
        request: Duration,
        reuse_wait: Duration,
    ) -> Result<Option<Reservation>, FleetError> {
        let started = BootInstant::now();
        let lease = self
            .etcd
            .grant(reservation_ttl(request, reuse_wait))
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
        let compare = [
            Compare::CreateRevision(self.key("lock"), lock_revision),
            Compare::ModRevision(self.record_key(), record_revision),
        ];
        match self.etcd.txn(&compare, &[put], &[]).await {
            Ok(result) if result.succeeded => Ok(Some(Reservation {
                lease,
                revision: result.revision,
                record_revision,
                deadline: started.after(request),
            })),
            other => {
                let _ = self.etcd.revoke(lease).await;
                other.map(|_| None)
            }
        }
    }

    /// Whether the lock created at `lock_revision`, `reservation` and the record it was made
    /// over all still stand: the last check before the token is sent (one round trip).
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
            Compare::ModRevision(self.record_key(), reservation.record_revision),
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
