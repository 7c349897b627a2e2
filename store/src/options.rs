//! [`StoreOptions`]: how long to wait for the lock, and whom to tell while waiting.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The environment variable that overrides the default lock wait: a duration such as `30s`,
/// `500ms` or `2m` (or a plain number of seconds).
pub const LOCK_TIMEOUT_ENV: &str = "CODEX_STORE_LOCK_TIMEOUT";

/// The lock wait when neither the options nor the environment say otherwise: longer than a
/// refresh request (30 s), which another process may hold the refresh lock across.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(45);

/// Called once when a lock wait has lasted `notice_after`, with the lock path and the wait so far.
pub type WaitNotice = Arc<dyn Fn(&Path, Duration) + Send + Sync>;

/// Options of a [`crate::Store`].
///
/// ```
/// use std::time::Duration;
/// use codex_store::StoreOptions;
/// let options = StoreOptions { lock_timeout: Duration::from_secs(2), ..Default::default() };
/// assert_eq!(options.lock_timeout, Duration::from_secs(2));
/// ```
#[derive(Clone)]
pub struct StoreOptions {
    /// The longest wait for any lock (the write locks, and the refresh lock, which another
    /// process holds across its request) before [`crate::StoreError::LockTimeout`]. The one
    /// owner of this setting: [`StoreOptions::default`] gives [`DEFAULT_LOCK_TIMEOUT`],
    /// [`StoreOptions::from_env`] (used by [`crate::Store::open`]) [`LOCK_TIMEOUT_ENV`] first.
    pub lock_timeout: Duration,
    /// After how long a wait `on_wait` is called. Default: 1 s.
    pub notice_after: Duration,
    /// Told once per wait that lasts `notice_after` (for example, to print "waiting for ...").
    pub on_wait: Option<WaitNotice>,
}

impl StoreOptions {
    /// The defaults, with the lock wait from [`LOCK_TIMEOUT_ENV`] when it is set.
    ///
    /// # Errors
    /// [`crate::StoreError::InvalidSetting`] when the variable is set but is not a duration (or
    /// not UTF-8): a bad value is an error, never silently ignored.
    pub fn from_env() -> Result<StoreOptions, crate::StoreError> {
        let mut options = StoreOptions::default();
        match std::env::var(LOCK_TIMEOUT_ENV) {
            Err(std::env::VarError::NotPresent) => {}
            Ok(value) if value.trim().is_empty() => {}
            Ok(value) => match StoreOptions::parse_duration(&value) {
                Some(wait) => options.lock_timeout = wait,
                None => {
                    return Err(crate::StoreError::InvalidSetting {
                        name: LOCK_TIMEOUT_ENV,
                        value: value.chars().flat_map(char::escape_default).collect(),
                        expected: "a duration such as 30s, 500ms or 2m",
                    })
                }
            },
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(crate::StoreError::InvalidSetting {
                    name: LOCK_TIMEOUT_ENV,
                    value: "<not UTF-8>".into(),
                    expected: "a duration such as 30s, 500ms or 2m",
                })
            }
        }
        Ok(options)
    }

    /// Parses a duration setting as [`LOCK_TIMEOUT_ENV`] is parsed: `30s`, `500ms`, `2m`,
    /// `1h 5m` or a bare number of seconds; anything above about 30 years is capped there
    /// ("wait as long as it takes"). `None` when `text` is not a duration.
    ///
    /// The one grammar of the store's duration settings, public so that a front end (the
    /// `codex-store` command's `--lock-timeout`) parses its flags exactly as the store parses
    /// the environment.
    ///
    /// ```
    /// use std::time::Duration;
    /// use codex_store::StoreOptions;
    /// assert_eq!(StoreOptions::parse_duration("1m 30s"), Some(Duration::from_secs(90)));
    /// assert_eq!(StoreOptions::parse_duration("2.5"), Some(Duration::from_millis(2500)));
    /// assert_eq!(StoreOptions::parse_duration("soon"), None);
    /// ```
    pub fn parse_duration(text: &str) -> Option<Duration> {
        let text = text.trim();
        if let Ok(secs) = text.parse::<f64>() {
            return ((0.0..1e9).contains(&secs)).then(|| Duration::from_secs_f64(secs));
        }
        humantime::parse_duration(text)
            .ok()
            .map(|d| d.min(Duration::from_secs(1_000_000_000)))
    }
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            notice_after: Duration::from_secs(1),
            on_wait: None,
        }
    }
}

impl fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreOptions")
            .field("lock_timeout", &self.lock_timeout)
            .field("notice_after", &self.notice_after)
            .field("on_wait", &self.on_wait.as_ref().map(|_| "Fn"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_the_documented_forms() {
        assert_eq!(
            StoreOptions::parse_duration("500ms"),
            Some(Duration::from_millis(500)),
            "500ms"
        );
        assert_eq!(
            StoreOptions::parse_duration("2m"),
            Some(Duration::from_secs(120)),
            "2m"
        );
        assert_eq!(
            StoreOptions::parse_duration("1.5"),
            Some(Duration::from_millis(1500)),
            "bare seconds"
        );
        assert_eq!(
            StoreOptions::parse_duration("soon"),
            None,
            "nonsense accepted"
        );
        assert_eq!(
            StoreOptions::parse_duration("-1"),
            None,
            "negative accepted"
        );
    }
}
