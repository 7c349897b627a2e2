//! [`Timestamp`]: the RFC 3339 `last_refresh` value, kept exactly as written.

use std::fmt;
use std::time::{Duration, SystemTime};

/// An RFC 3339 UTC timestamp, kept as the exact text of the file so that a document read and
/// written back is unchanged. Offsets other than `Z` are accepted on reading.
#[derive(Clone, PartialEq, Eq)]
pub struct Timestamp {
    text: String,
    time: SystemTime,
}

impl Timestamp {
    /// The current time, written like existing installations write it
    /// (`2026-11-24T10:00:00.123456Z`).
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    /// A timestamp for this instant, with microsecond precision.
    pub fn from_system_time(time: SystemTime) -> Self {
        let text = humantime::format_rfc3339_micros(time).to_string();
        let time = humantime::parse_rfc3339(&text).unwrap_or(time);
        Timestamp { text, time }
    }

    /// RFC 3339 text of `time` to the second (`2026-11-24T10:00:00Z`), for messages and
    /// events.
    pub fn to_seconds(time: SystemTime) -> String {
        humantime::format_rfc3339_seconds(time).to_string()
    }

    /// Parses RFC 3339 text (`...Z` or `...+HH:MM`). The message names what is wrong.
    ///
    /// # Errors
    /// A message (never quoting `text`) when it is not an RFC 3339 timestamp.
    pub fn parse(text: &str) -> Result<Self, String> {
        // The message never quotes the value: the file may hold anything there.
        let bad = || "it is not an RFC 3339 timestamp".to_owned();
        let (base, offset_secs) = split_offset(text).ok_or_else(bad)?;
        let utc = humantime::parse_rfc3339_weak(base).map_err(|_| bad())?;
        let time = if offset_secs >= 0 {
            utc.checked_sub(Duration::from_secs(offset_secs as u64))
        } else {
            utc.checked_add(Duration::from_secs(offset_secs.unsigned_abs()))
        }
        .ok_or_else(bad)?;
        Ok(Timestamp {
            text: text.to_owned(),
            time,
        })
    }

    /// The instant.
    pub fn time(&self) -> SystemTime {
        self.time
    }

    /// The text as written in the file.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Splits `2026-01-01T00:00:00.5+02:00` into the local part and the offset in seconds.
fn split_offset(text: &str) -> Option<(&str, i64)> {
    if let Some(base) = text.strip_suffix('Z').or_else(|| text.strip_suffix('z')) {
        return Some((base, 0));
    }
    if text.len() < 6 || !text.is_char_boundary(text.len() - 6) {
        return None;
    }
    let (base, offset) = text.split_at(text.len() - 6);
    let bytes = offset.as_bytes();
    let sign = match bytes[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    if bytes[3] != b':' {
        return None;
    }
    let hours: i64 = offset[1..3].parse().ok()?;
    let minutes: i64 = offset[4..6].parse().ok()?;
    if hours > 23 || minutes > 59 {
        return None;
    }
    Some((base, sign * (hours * 3600 + minutes * 60)))
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({})", self.text)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_fractions_are_understood() {
        let z = Timestamp::parse("2025-08-06T20:41:36.232376Z").expect("Z form refused");
        let plus = Timestamp::parse("2025-08-06T22:41:36.232376+02:00").expect("offset refused");
        assert_eq!(z.time(), plus.time(), "+02:00 was not converted to UTC");
        assert_eq!(
            plus.as_str(),
            "2025-08-06T22:41:36.232376+02:00",
            "text not kept as written"
        );
    }

    #[test]
    fn nonsense_is_refused_without_quoting_it() {
        let err = Timestamp::parse("yesterday").expect_err("nonsense accepted");
        assert!(
            !err.contains("yesterday"),
            "message quotes the value: {err}"
        );
        assert!(Timestamp::parse("€€é").is_err(), "multibyte text accepted");
    }

    #[test]
    fn now_round_trips_through_its_text() {
        let now = Timestamp::now();
        let again = Timestamp::parse(now.as_str()).expect("our own format refused");
        assert_eq!(
            now.time(),
            again.time(),
            "now() text does not parse back to itself"
        );
    }
}
