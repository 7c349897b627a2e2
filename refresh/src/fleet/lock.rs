//! The fleet's refresh lock: `<prefix>/lock`, created only when absent and attached to a lease
//! that a background task keeps alive. A crashed holder's lease expires and frees the lock. The
//! transaction that takes it also reads what its holder needs next (the record, the fleet's
//! refusal, a reservation), at the very revision it was taken.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::etcd::{Compare, Op};
use super::record::{refusal_of, reservation_of, Found, FoundReservation, Refusal};
use super::{Fleet, FleetError, LockHeld};
use crate::boottime::BootInstant;

/// The fleet's refresh lock, held by this process: a guard. Dropping it stops the keep-alive and
/// frees the lock (revokes its lease, in a task of the runtime); without a runtime to do that,
/// the lock expires with its lease.
pub struct FleetLock {
    fleet: Arc<Fleet>,
    lease: i64,
    /// The lock key's `create_revision`: what a fenced write compares.
    pub(crate) revision: i64,
    alive: Arc<AtomicBool>,
    /// Until when the lease is known to live (from the last grant or keep-alive), on the
    /// boot-time clock: a machine suspended past it does not take its lease for alive.
    until: Arc<std::sync::Mutex<BootInstant>>,
    keepalive: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FleetLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetLock")
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

/// What tells whether a [`FleetLock`]'s lease is alive, shareable with a task.
#[derive(Clone, Debug)]
pub(crate) struct Liveness {
    alive: Arc<AtomicBool>,
    until: Arc<std::sync::Mutex<BootInstant>>,
}

impl Liveness {
    /// Whether the lease is still known to be alive, with at least `margin` to go.
    pub(crate) fn alive_for(&self, margin: std::time::Duration) -> bool {
        self.alive.load(Ordering::Acquire)
            && self.until.lock().unwrap_or_else(|p| p.into_inner()).left() > margin
    }
}

impl FleetLock {
    /// What tells whether the lease is alive, for a check made elsewhere.
    pub(crate) fn liveness(&self) -> Liveness {
        Liveness {
            alive: Arc::clone(&self.alive),
            until: Arc::clone(&self.until),
        }
    }
}

impl Drop for FleetLock {
    fn drop(&mut self) {
        self.keepalive.abort();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (fleet, lease) = (Arc::clone(&self.fleet), self.lease);
        let revoke = runtime.spawn(async move {
            if let Err(e) = fleet.etcd.revoke(lease).await {
                tracing::warn!(error = %e, "could not revoke the fleet lock's lease; it expires by itself");
            }
        });
        self.fleet.releases.add(revoke);
    }
}

/// The revokes of dropped [`FleetLock`]s still under way.
#[derive(Debug, Default)]
pub(crate) struct Releases(std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>);

impl Releases {
    fn add(&self, revoke: tokio::task::JoinHandle<()>) {
        let mut pending = self.0.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|r| !r.is_finished());
        pending.push(revoke);
    }

    /// Waits for every revoke under way (each is bounded by the etcd request timeout).
    pub(crate) async fn settle(&self) {
        let pending: Vec<_> =
            std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()));
        for revoke in pending {
            let _ = revoke.await;
        }
    }
}

/// What the lock's own transaction read, in the same revision as the lock was taken: what
/// the holder needs before it reserves, without a round trip of its own.
#[derive(Debug)]
pub(crate) struct LockedView {
    /// What the record key held.
    pub(crate) record: Found,
    /// etcd's revision of the transaction (the record was as read then): where a watch for the
    /// record's next change starts.
    pub(crate) revision: i64,
    /// The refusal remembered for the fleet (`<prefix>/refusal`), if any.
    pub(crate) refusal: Option<Refusal>,
    /// A live reservation (`<prefix>/redeeming`), if any. Only the holder of a standing lock
    /// writes that key ([`Fleet::reserve_redemption`] compares the lock), so until this holder
    /// reserves, the key holds nothing that was not there then (a reservation may only have
    /// gone with its lease).
    pub(crate) redeeming: Option<FoundReservation>,
}

/// What an attempt to take the fleet lock found.
#[derive(Debug)]
pub(crate) enum LockAttempt {
    /// Taken: this holder's until dropped, with what the same transaction read.
    Taken {
        /// The lock (freed when dropped).
        lock: FleetLock,
        /// What was read with it.
        seen: LockedView,
    },
    /// Another holder has it.
    Held {
        /// Who.
        holder: LockHeld,
        /// The refusal remembered for the fleet, read in the same transaction, if any.
        refusal: Option<Refusal>,
    },
}

impl Fleet {
    /// Takes the fleet's refresh lock if nobody holds it, in one transaction that also reads
    /// the lock key (its `create_revision`), the record, the fleet's refusal and the
    /// reservation ([`LockedView`]); when another holder has it, who ([`LockHeld`]) and the
    /// refusal, read in the same transaction. Two round trips: the lease's grant and the
    /// transaction (and the lease's revoke when the lock is held).
    ///
    /// # Errors
    /// The etcd errors.
    pub(crate) async fn try_lock(self: &Arc<Self>) -> Result<LockAttempt, FleetError> {
        // A lock this process dropped a moment ago is freed first: never found held by itself.
        self.releases.settle().await;
        let ttl = self.config.lock_ttl;
        // Counted from before the grant: the lease may have started any time after this.
        let granted = BootInstant::now();
        let lease = self.etcd.grant(ttl).await?;
        let key = self.key("lock");
        let refusal_key = self.key("refusal");
        let holder = format!("{} pid {}", self.config.machine, std::process::id());
        let result = self
            .etcd
            .txn(
                &[Compare::CreateRevision(key.clone(), 0)],
                &[
                    Op::Put {
                        key: key.clone(),
                        value: holder.into_bytes(),
                        lease,
                    },
                    Op::Get(key.clone()),
                    Op::Get(self.record_key()),
                    Op::Get(refusal_key.clone()),
                    Op::Get(self.key("redeeming")),
                ],
                // Who holds it, and the refusal, in the same answer.
                &[Op::Get(key.clone()), Op::Get(refusal_key)],
            )
            .await;
        let result = match result {
            Ok(result) => result,
            Err(e) => {
                let _ = self.etcd.revoke(lease).await;
                return Err(e);
            }
        };
        let mut gets = result.gets.into_iter();
        if !result.succeeded {
            let _ = self.etcd.revoke(lease).await;
            // Gone between the compare and the read: held by nobody known, the next look finds
            // it free or held anew.
            let holder = gets.next().flatten().map_or(
                LockHeld {
                    holder: String::new(),
                    created: 0,
                    lease: 0,
                },
                |kv| LockHeld {
                    holder: String::from_utf8_lossy(&kv.value).into_owned(),
                    created: kv.create_revision,
                    lease: kv.lease,
                },
            );
            let refusal = refusal_of(gets.next().flatten());
            return Ok(LockAttempt::Held { holder, refusal });
        }
        let revision = gets
            .next()
            .flatten()
            .map_or(result.revision, |kv| kv.create_revision);
        let seen = LockedView {
            record: self.found(gets.next().flatten()),
            revision: result.revision,
            refusal: refusal_of(gets.next().flatten()),
            redeeming: reservation_of(gets.next().flatten()),
        };
        let alive = Arc::new(AtomicBool::new(true));
        let until = Arc::new(std::sync::Mutex::new(granted.after(ttl)));
        let keepalive = {
            let fleet = Arc::clone(self);
            let alive = Arc::clone(&alive);
            let until = Arc::clone(&until);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    let sent = BootInstant::now();
                    match fleet.etcd.keep_alive(lease).await {
                        Ok(left) if left > 0 => {
                            *until.lock().unwrap_or_else(|p| p.into_inner()) =
                                sent.after(std::time::Duration::from_secs(left as u64));
                        }
                        Ok(_) => {
                            alive.store(false, Ordering::Release);
                            tracing::warn!("the fleet lock's lease expired");
                            return;
                        }
                        Err(e) => {
                            // The lease may still live (etcd unreachable for a moment): the
                            // deadline in `until` says for how long.
                            tracing::warn!(error = %e, "could not renew the fleet lock's lease");
                        }
                    }
                }
            })
        };
        Ok(LockAttempt::Taken {
            lock: FleetLock {
                fleet: Arc::clone(self),
                lease,
                revision,
                alive,
                until,
                keepalive,
            },
            seen,
        })
    }
}
