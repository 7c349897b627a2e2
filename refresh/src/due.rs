//! "Is a refresh due?": the access token's `exp` within the window, else `last_refresh` too old.

use std::time::{Duration, SystemTime};

/// Whether credentials with this expiry and last refresh are due for a refresh at `now`.
///
/// - With a readable `exp`: due when `exp` is within `window` of `now` (or past).
/// - Otherwise: due when `last_refresh` is older than `max_age`, or unknown.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use codex_refresh::refresh_due;
/// let now = SystemTime::now();
/// let window = Duration::from_secs(300);
/// let age = Duration::from_secs(8 * 86400);
/// assert!(refresh_due(Some(now + Duration::from_secs(60)), None, now, window, age));
/// assert!(!refresh_due(Some(now + Duration::from_secs(3600)), None, now, window, age));
/// assert!(!refresh_due(None, Some(now), now, window, age));
/// ```
pub fn refresh_due(
    expires_at: Option<SystemTime>,
    last_refresh: Option<SystemTime>,
    now: SystemTime,
    window: Duration,
    max_age: Duration,
) -> bool {
    match (expires_at, last_refresh) {
        (Some(exp), _) => exp <= now + window,
        (None, Some(last)) => last + max_age <= now,
        (None, None) => true,
    }
}

/// When credentials with this expiry and last refresh become due, by the same rule as
/// [`refresh_due`]: `exp - window`, else `last_refresh + max_age`, else now (the epoch).
pub(crate) fn due_at(
    expires_at: Option<SystemTime>,
    last_refresh: Option<SystemTime>,
    window: Duration,
    max_age: Duration,
) -> SystemTime {
    let due = match (expires_at, last_refresh) {
        (Some(exp), _) => exp.checked_sub(window),
        (None, Some(last)) => last.checked_add(max_age),
        (None, None) => None,
    };
    due.unwrap_or(SystemTime::UNIX_EPOCH)
}
