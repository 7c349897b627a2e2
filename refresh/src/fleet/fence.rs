//! The fleet's check immediately before a refresh request is sent: the holder's send deadline
//! (on the boot-time clock, so that a suspended or stopped holder does not send late), its lock's
//! lease, and, in one etcd round trip, that the lock and the token's reservation still stand.
//! What remains unfenced is the moment between this check and the request's bytes on the wire.

use std::sync::Arc;
use std::time::Duration;

use super::lock::Liveness;
use super::record::Reservation;
use super::Fleet;
use crate::error::{RefreshError, TransientReason};
use crate::fence::{FenceCheck, SendFence};

/// The least time a request is given: with less left before the deadline, nothing is sent.
const MIN_REQUEST: Duration = Duration::from_secs(1);

/// [`SendFence`] of a fleet lock holder.
pub(crate) struct FleetFence {
    pub(crate) fleet: Arc<Fleet>,
    pub(crate) lock: Liveness,
    pub(crate) lock_revision: i64,
    pub(crate) reservation: Arc<Reservation>,
    /// How long the lock's lease must still be known to live.
    pub(crate) margin: Duration,
}

fn fenced(why: &str) -> RefreshError {
    RefreshError::Transient {
        reason: TransientReason::Fenced(why.to_owned()),
    }
}

impl SendFence for FleetFence {
    fn check(&self) -> FenceCheck<'_> {
        Box::pin(async move {
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
            Ok(left)
        })
    }
}
