//! A clock that counts the time a suspended machine slept: Linux's `CLOCK_BOOTTIME` (elsewhere
//! the monotonic clock). [`std::time::Instant`] stops while a laptop is suspended, so a deadline
//! on it still looks ahead after an hour asleep; a send deadline of the fleet must not.

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

    /// `self` + `d`.
    pub(crate) fn after(self, d: Duration) -> BootInstant {
        BootInstant(self.0.saturating_add(d))
    }

    /// How long from now until `self` (zero when it has passed).
    pub(crate) fn left(self) -> Duration {
        self.0.saturating_sub(BootInstant::now().0)
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
