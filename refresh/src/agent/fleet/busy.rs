//! What a fleet agent reports while another holder holds it back: the fleet lock held (for
//! longer than any holder needs), or another holder's reservation of the token due (honored
//! for at most a bounded time).

use std::time::{Duration, SystemTime};

use codex_store::AgentState;

use super::super::event::{rfc3339, AgentEvent, AgentEventKind};
use super::super::kinds::FailureClass;
use super::super::{Core, Plan};
use super::{escaped, FleetSync};
use crate::boottime::BootInstant;
use crate::fleet::{Fleet, LockHeld};

/// How long a machine that found the fleet lock held waits before it looks again (a change of
/// the record wakes it sooner).
pub(super) const LOCK_BUSY_RETRY: Duration = Duration::from_secs(5);

/// Another holder's reservation of the token due is honored for at most this many times the
/// reservation this machine itself would make (its own request time and reuse wait): a longer
/// one (a lease of a huge time to live, written by hand or by a hostile writer) holds nobody
/// back for longer, measured here on the boot-time clock from when this agent first found it.
const RESERVATION_WAIT_FACTOR: u32 = 4;

/// A lock found held by another holder: which one, since when (here), what was said of it.
pub(super) struct LockBusy {
    /// The lock key's `create_revision`.
    created: i64,
    /// When this agent first found it held, on the boot-time clock.
    since: BootInstant,
    /// Whether the stuck lock was reported.
    reported: bool,
    /// Whether the coming lapse of the login was reported.
    lapse_reported: bool,
}

/// Another holder's reservation being waited for.
pub(super) struct ReservationWait {
    /// The key's `mod_revision`.
    pub(super) revision: i64,
    /// When this agent first found it, on the boot-time clock.
    since: BootInstant,
    /// Whether it was reported as held too long.
    pub(super) reported: bool,
}

/// How long ago `since` was, on the boot-time clock.
fn elapsed(since: BootInstant) -> Duration {
    // `left` counts down to a moment; a moment far enough after `since` tells the time passed.
    const FAR: Duration = Duration::from_secs(1 << 40);
    FAR.saturating_sub(since.after(FAR).left())
}

impl FleetSync {
    /// The fleet lock is held by another (`held`): look again in [`LOCK_BUSY_RETRY`] (the
    /// holder's upload wakes this agent sooner). Once the same lock (same create revision) has
    /// been held, as measured here on the boot-time clock from when this agent first found it,
    /// for longer than its lease and a request allow (the lock TTL plus the etcd request
    /// timeout), say so, naming the holder; and when the tokens are near expiry, that the login
    /// will lapse.
    pub(super) fn fleet_lock_busy(
        &mut self,
        core: &mut Core,
        fleet: &Fleet,
        held: &LockHeld,
        on_event: &mut impl FnMut(&AgentEvent),
    ) -> Plan {
        let next = SystemTime::now() + LOCK_BUSY_RETRY;
        let expires = core.manager.cached().and_then(|a| a.expires_at());
        if held.created == 0 {
            // Freed between the compare and the read: look again.
            return Plan::At(next, AgentState::Waiting);
        }
        if self
            .lock_busy
            .as_ref()
            .is_none_or(|b| b.created != held.created)
        {
            self.lock_busy = Some(LockBusy {
                created: held.created,
                since: BootInstant::now(),
                reported: false,
                lapse_reported: false,
            });
        }
        let config = fleet.config();
        let bound = config.lock_ttl + config.request_timeout;
        let busy = self.lock_busy.as_mut().expect("set above");
        let held_for = elapsed(busy.since);
        if held_for < bound {
            return Plan::At(next, AgentState::Waiting);
        }
        let key = fleet.key("lock");
        let lease = if held.lease == 0 {
            "on no lease, so it never expires".to_owned()
        } else {
            format!("on lease {:x}", held.lease)
        };
        if !busy.reported {
            busy.reported = true;
            let message = format!(
                "the fleet lock {key} is held by `{}` (taken at revision {}, {lease}) and has \
                 been for {} s as seen here, longer than a holder needs (the lock's lease of {} \
                 s plus an etcd request of {} s): no machine refreshes the fleet's login while \
                 it stands. If that holder is hung or gone, remove the lock (`etcdctl del \
                 {key}`); this agent keeps trying",
                escaped(&held.holder),
                held.created,
                held_for.as_secs(),
                config.lock_ttl.as_secs(),
                config.request_timeout.as_secs()
            );
            tracing::warn!("{message}");
            on_event(&AgentEvent::now(AgentEventKind::Failed {
                class: FailureClass::FleetLock,
                message,
                next_attempt: Some(rfc3339(next)),
            }));
        }
        let near = expires.is_some_and(|exp| {
            exp.duration_since(SystemTime::now())
                .map_or(true, |left| left <= super::super::CODEX_REFRESH_WINDOW)
        });
        if near && !busy.lapse_reported {
            busy.lapse_reported = true;
            let at = expires.map(rfc3339).unwrap_or_default();
            let message = format!(
                "the fleet's login will lapse: its access token expires at {at} and the fleet \
                 lock {key} is still held by `{}` (taken at revision {}), so no machine can \
                 refresh it; remove the lock (`etcdctl del {key}`) or the login will have to be \
                 signed in again",
                escaped(&held.holder),
                held.created
            );
            tracing::warn!("{message}");
            on_event(&AgentEvent::now(AgentEventKind::Failed {
                class: FailureClass::FleetLock,
                message,
                next_attempt: Some(rfc3339(next)),
            }));
        }
        Plan::At(next, AgentState::Waiting)
    }

    /// Whether to keep waiting for another holder's reservation `found` of the token due. It is
    /// honored while its key lives on its lease, for at most [`RESERVATION_WAIT_FACTOR`] times
    /// the reservation this machine would make (`request` plus the reuse wait), measured here on
    /// the boot-time clock from when this agent first found it; past that it is reported and
    /// no longer holds this machine back. A lease granted for longer than that is reported when
    /// first found.
    pub(super) async fn wait_for_reservation(
        &mut self,
        core: &mut Core,
        fleet: &Fleet,
        found: &crate::fleet::record::FoundReservation,
        request: Duration,
        on_event: &mut impl FnMut(&AgentEvent),
    ) -> bool {
        let bound = crate::fleet::record::reservation_ttl(request, core.reuse_wait)
            * RESERVATION_WAIT_FACTOR;
        let first = self
            .reservation_wait
            .as_ref()
            .is_none_or(|w| w.revision != found.revision);
        if first {
            self.reservation_wait = Some(ReservationWait {
                revision: found.revision,
                since: BootInstant::now(),
                reported: false,
            });
            if let Ok(Some((_, granted))) = fleet.etcd.time_to_live(found.lease).await {
                if u64::try_from(granted).unwrap_or(0) > bound.as_secs() {
                    tracing::warn!(
                        machine = %escaped(&found.mark.machine),
                        granted_seconds = granted,
                        longest_wait_seconds = bound.as_secs(),
                        "a reservation of the fleet's refresh token lives on a lease far longer than any request needs; it is waited for only up to this machine's longest wait"
                    );
                }
            }
        }
        let wait = self.reservation_wait.as_mut().expect("set above");
        let waited = elapsed(wait.since);
        if waited < bound {
            return true;
        }
        if !wait.reported {
            wait.reported = true;
            on_event(&AgentEvent::now(AgentEventKind::Failed {
                class: FailureClass::FleetReservation,
                message: format!(
                    "the reservation {} of the fleet's refresh token {} by `{}` (on lease {:x}) \
                     has held this machine back for {} s as seen here, longer than the longest \
                     reservation it waits for ({} s: {RESERVATION_WAIT_FACTOR} times its own); \
                     it is no longer waited for, and the token is redeemed under the fleet lock",
                    fleet.key("redeeming"),
                    escaped(&found.mark.refresh),
                    escaped(&found.mark.machine),
                    found.lease,
                    waited.as_secs(),
                    bound.as_secs()
                ),
                next_attempt: None,
            }));
        }
        false
    }
}
