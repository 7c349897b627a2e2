//! The fleet's check immediately before a refresh request is sent: the holder's send deadline
//! (on the boot-time clock, so that a suspended or stopped holder does not send late), its lock's
//! lease, and, in one etcd round trip, that the lock and the token's reservation still stand.
//! What remains unfenced is the moment between this check and the request's bytes on the wire.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::lock::Liveness;
use super::record::Reservation;
use super::Fleet;
use crate::error::{RefreshError, TransientReason};

/// The least time a request is given: with less left before the deadline, nothing is sent.
const MIN_REQUEST: Duration = Duration::from_secs(1);

/// The fence of a fleet lock holder: its lock's liveness and its reservation of the token.
pub(crate) struct FleetFence {
    pub(crate) fleet: Arc<Fleet>,
    pub(crate) lock: Liveness,
    pub(crate) lock_revision: i64,
    pub(crate) reservation: Reservation,
    /// How long the lock's lease must still be known to live.
    pub(crate) margin: Duration,
    /// Set once a check allowed the request: from then on the token may be spent.
    pub(crate) passed: AtomicBool,
}

impl FleetFence {
    /// Whether a request may have been sent (a check allowed it).
    pub(crate) fn passed(&self) -> bool {
        self.passed.load(Ordering::SeqCst)
    }

    /// The reservation, once the fence is no longer needed.
    pub(crate) fn into_reservation(self) -> Reservation {
        self.reservation
    }

    /// `Ok(left)`: the request may be sent, and must be over within `left` (it is cut off
    /// then).
    ///
    /// # Errors
    /// [`TransientReason::Fenced`] when nothing may be sent: the send deadline passed, the
    /// lease is not known to live for the margin, or etcd does not confirm that the lock and
    /// the reservation stand.
    pub(crate) async fn check(&self) -> Result<Duration, RefreshError> {
        if self.reservation.deadline.left() < MIN_REQUEST {
            return Err(fenced(
                "the send deadline passed (was this process stopped or the machine suspended?)",
            ));
        }
        if !self.lock.alive_for(self.margin) {
            return Err(fenced("the fleet lock's lease is not known to be alive"));
        }
        match self
            .fleet
            .reservation_stands(&self.reservation, self.lock_revision)
            .await
        {
            Ok(true) => {}
            Ok(false) => return Err(fenced("the fleet lock or the reservation is gone")),
            Err(e) => {
                return Err(fenced(&format!(
                    "etcd did not confirm the reservation: {e}"
                )))
            }
        }
        // The round trip took time: what is left of the deadline now.
        let left = self.reservation.deadline.left();
        if left < MIN_REQUEST {
            return Err(fenced("the send deadline passed during the last check"));
        }
        self.passed.store(true, Ordering::SeqCst);
        Ok(left)
    }
}

fn fenced(why: &str) -> RefreshError {
    RefreshError::Transient {
        reason: TransientReason::Fenced(why.to_owned()),
    }
}
