//! A clock that counts the time a suspended machine slept: Linux's `CLOCK_BOOTTIME`, elsewhere
//! `CLOCK_MONOTONIC` (on macOS that clock is the continuous time, which counts a sleep too;
//! other systems may stop it during a suspend). [`std::time::Instant`] stops while a laptop is
//! suspended (Linux's `CLOCK_MONOTONIC`, macOS's uptime), so a deadline on it still looks ahead
//! after an hour asleep; a send deadline of the fleet, or the agent's due time, must not.

use std::time::Duration;

/// A moment on the boot-time clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct BootInstant(Duration);

impl BootInstant {
    /// Now.
    pub(crate) fn now() -> BootInstant {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let id = rustix::time::ClockId::Boottime;
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let id = rustix::time::ClockId::Monotonic;
        let t = rustix::time::clock_gettime(id);
        BootInstant(Duration::new(
            u64::try_from(t.tv_sec).unwrap_or(0),
            u32::try_from(t.tv_nsec).unwrap_or(0),
        ))
    }

    /// The moment `since_origin` after the clock's origin (tests build their own clock of it).
    #[cfg(test)]
    pub(crate) fn from_origin(since_origin: Duration) -> BootInstant {
        BootInstant(since_origin)
    }

    /// The clock's reading: the time since its origin (the boot), as a timer on the same clock
    /// takes an absolute expiry.
    #[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
    pub(crate) fn since_origin(self) -> Duration {
        self.0
    }

    /// How long from `earlier` to `self` (zero when `earlier` is not earlier).
    pub(crate) fn saturating_since(self, earlier: BootInstant) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// `self` + `d`.
    pub(crate) fn after(self, d: Duration) -> BootInstant {
        BootInstant(self.0.saturating_add(d))
    }

    /// How long from now until `self` (zero when it has passed).
    pub(crate) fn left(self) -> Duration {
        self.saturating_since(BootInstant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_ahead_has_time_left_and_one_behind_has_none() {
        let now = BootInstant::now();
        assert!(
            now.after(Duration::from_secs(60)).left() > Duration::from_secs(59),
            "a deadline a minute ahead should have about a minute left"
        );
        assert_eq!(
            now.left(),
            Duration::ZERO,
            "a deadline already passed has nothing left"
        );
        assert!(
            BootInstant::now() >= now,
            "the boot-time clock went backwards"
        );
    }
}
