//! When the agent wakes: the next due time, and capped exponential backoff with jitter after a
//! transient failure.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime};

use crate::boottime::BootInstant;

/// The longest wait of the agent, on the boot-time clock (which counts a suspend, see
/// [`super::timer`]): the directory of auth.json and the agent's claim are checked at least this
/// often, and a due time, converted from the wall clock when the wait begins, is converted
/// again at least this often (a wall clock set forward or back moves it).
pub(crate) const MAX_SLEEP: Duration = Duration::from_secs(10 * 60);

/// After a refresh, the agent does not refresh again for at least this long, even if the new
/// token is already within the lead time (a lead longer than the tokens' lifetime).
pub(crate) const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// When to refresh credentials due at `due` (`None`: at once, their expiry unknown), never
/// before `not_before` (set after this agent's own refresh of these very credentials).
pub(crate) fn refresh_at(due: Option<SystemTime>, not_before: Option<SystemTime>) -> SystemTime {
    let due = due.unwrap_or(SystemTime::UNIX_EPOCH);
    not_before.map_or(due, |at| due.max(at))
}

/// When to refresh credentials just obtained or adopted at `now`, due at `due` and expiring at
/// `expires`: their due time; when that has passed already (tokens living shorter than the
/// lead, or a clock running ahead), half the time left, and never sooner than
/// [`MIN_REFRESH_INTERVAL`].
pub(crate) fn next_after_refresh(
    due: Option<SystemTime>,
    expires: Option<SystemTime>,
    now: SystemTime,
) -> SystemTime {
    let due = due.unwrap_or(SystemTime::UNIX_EPOCH);
    if due > now {
        return due;
    }
    let left = expires
        .and_then(|exp| exp.duration_since(now).ok())
        .unwrap_or_default();
    now + (left / 2).max(MIN_REFRESH_INTERVAL)
}

/// When a wait for the due time `at` (`None`: nothing due) ends, on the boot-time clock that
/// reads `boot_now` when the wall clock reads `wall_now`: at `at` (at once when it has passed),
/// and at most [`MAX_SLEEP`] from now.
pub(crate) fn wake_at(
    at: Option<SystemTime>,
    wall_now: SystemTime,
    boot_now: BootInstant,
) -> BootInstant {
    let wait = at.map_or(MAX_SLEEP, |at| {
        at.duration_since(wall_now).unwrap_or(Duration::ZERO)
    });
    boot_now.after(wait.min(MAX_SLEEP))
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

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn the_refresh_time_is_the_due_time_held_back_only_by_the_agents_own_write() {
        // (due, not before, expected)
        let table = [
            (Some(at(100)), None, at(100)),
            (Some(at(100)), Some(at(50)), at(100)),
            (Some(at(100)), Some(at(160)), at(160)),
            (None, None, SystemTime::UNIX_EPOCH),
            (None, Some(at(160)), at(160)),
        ];
        for (due, not_before, expected) in table {
            assert_eq!(
                refresh_at(due, not_before),
                expected,
                "due {due:?}, not before {not_before:?}"
            );
        }
    }

    #[test]
    fn after_a_refresh_the_next_is_the_due_time_or_half_the_life_left_but_never_within_a_minute() {
        let now = at(10_000);
        // (due, expires, expected)
        let table = [
            // Due later: then.
            (Some(at(13_600)), Some(at(14_500)), at(13_600)),
            // Already due (tokens living shorter than the lead): half the time left.
            (Some(at(9_000)), Some(at(11_000)), at(10_500)),
            // Half the time left is under a minute: a minute.
            (Some(at(9_000)), Some(at(10_030)), at(10_060)),
            // Expired, or expiry unknown: a minute.
            (Some(at(9_000)), Some(at(9_500)), at(10_060)),
            (None, None, at(10_060)),
            // Due exactly now counts as passed.
            (Some(now), Some(at(10_400)), at(10_200)),
        ];
        for (due, expires, expected) in table {
            assert_eq!(
                next_after_refresh(due, expires, now),
                expected,
                "due {due:?}, expires {expires:?}"
            );
        }
    }

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
    fn a_wait_ends_at_the_due_time_on_the_boot_time_clock_and_no_later_than_the_longest_sleep() {
        let wall = at(1_000_000);
        let boot = BootInstant::from_origin(Duration::from_secs(5_000));
        let secs = |s: u64| boot.after(Duration::from_secs(s));
        // (due, expected end of the wait)
        let table = [
            // Due in 2 minutes: then.
            (Some(at(1_000_120)), secs(120)),
            // Due in a day, or nothing due: the longest sleep.
            (Some(at(1_086_400)), boot.after(MAX_SLEEP)),
            (None, boot.after(MAX_SLEEP)),
            // Due now or in the past: at once.
            (Some(wall), boot),
            (Some(at(999_940)), boot),
        ];
        for (due, expected) in table {
            assert_eq!(wake_at(due, wall, boot), expected, "due {due:?}");
        }
    }
}
