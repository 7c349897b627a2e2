//! When the agent wakes: the next due time, and capped exponential backoff with jitter after a
//! transient failure.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant, SystemTime};

/// The longest single sleep. A monotonic timer does not count time a machine spends suspended,
/// so a laptop that slept through a due time wakes at most this late.
pub(crate) const MAX_SLEEP: Duration = Duration::from_secs(10 * 60);

/// The monotonic instant of wall-clock `at` (now when it is past), capped at [`MAX_SLEEP`].
pub(crate) fn wake_at(at: SystemTime) -> Instant {
    let wait = at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Instant::now() + wait.min(MAX_SLEEP)
}

/// Capped exponential backoff with jitter: after the n-th failure in a row, a delay drawn from
/// `[d/2, d]` with `d = min(max, initial * 2^(n-1))`.
#[derive(Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            failures: 0,
        }
    }

    /// Forgets the failures (after a success).
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    /// The delay after one more failure.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let exponent = (self.failures - 1).min(30);
        let full = self
            .initial
            .checked_mul(1u32 << exponent)
            .unwrap_or(self.max)
            .min(self.max);
        let half = full / 2;
        half + half.mul_f64(unit_random())
    }
}

/// A number in `[0, 1)`, from the standard library's per-process random hash keys. Jitter only
/// needs processes to differ, not cryptographic randomness.
fn unit_random() -> f64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_stays_within_the_jitter_band() {
        let mut backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(60));
        let mut ceilings = vec![];
        for _ in 0..8 {
            let delay = backoff.next_delay();
            ceilings.push(delay);
        }
        let expected_full = [2u64, 4, 8, 16, 32, 60, 60, 60];
        for (delay, full) in ceilings.iter().zip(expected_full) {
            let full = Duration::from_secs(full);
            assert!(
                *delay >= full / 2 && *delay <= full,
                "a delay of {delay:?} is outside [{:?}, {full:?}]",
                full / 2
            );
        }
        backoff.reset();
        let first = backoff.next_delay();
        assert!(
            first <= Duration::from_secs(2),
            "after a reset the delay starts again from the initial one, got {first:?}"
        );
    }

    #[test]
    fn a_due_time_far_ahead_wakes_no_later_than_the_longest_sleep() {
        let far = SystemTime::now() + Duration::from_secs(86_400);
        let wake = wake_at(far);
        assert!(
            wake <= Instant::now() + MAX_SLEEP,
            "a wake-up a day ahead must be capped at {MAX_SLEEP:?}"
        );
        let past = SystemTime::now() - Duration::from_secs(60);
        assert!(
            wake_at(past) <= Instant::now(),
            "a due time in the past wakes at once"
        );
    }
}
