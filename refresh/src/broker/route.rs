//! The routing decision, pure: is a presented refresh token the home's current one, one this
//! home rotated away recently (a predecessor), or unknown?

use std::time::{Duration, SystemTime};

use codex_store::{JournalEvent, JournalRecord, Secret};

/// Where a token request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// The presented token is auth.json's current one: refresh through the guarded protocol.
    Current,
    /// The presented token was rotated away by this home within the grace window, and the
    /// current token descends from it by the journal's chain: answer the current tokens.
    Predecessor,
    /// A token this home redeemed for a successor, but not a predecessor (outside the grace
    /// window, or its chain does not lead to the current token): it is dead, and the broker
    /// answers `refresh_token_reused` itself. Sent to the endpoint, a reused token may make it
    /// revoke the whole family of tokens, the live one included.
    Spent,
    /// Neither: forward the request to the real endpoint.
    Unknown,
}

impl Route {
    /// Its name, for log lines.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Route::Current => "current",
            Route::Predecessor => "predecessor",
            Route::Spent => "spent",
            Route::Unknown => "unknown",
        }
    }
}

/// The route of a request presenting `presented`, when auth.json's current refresh token is
/// `current` (`None`: no ChatGPT tokens) and the journal holds `records` (oldest first), at
/// `now` with a grace window of `grace`.
///
/// A token this home rotated away that is no predecessor is [`Route::Spent`].
///
/// A predecessor is a token whose latest rotation (a `saved`, `recovered` or `mirrored` record whose
/// `refresh` is its fingerprint and whose `new_refresh` differs) is less than `grace` old,
/// and from whose successor later rotation records lead, link by link, to `current`. A
/// record's time that is missing, unreadable or in the future counts as long past (as
/// everywhere in the protocol): it never makes a token a predecessor.
pub(crate) fn route(
    presented: &Secret,
    current: Option<&Secret>,
    records: &[&JournalRecord],
    now: SystemTime,
    grace: Duration,
) -> Route {
    let Some(current) = current else {
        // Signed out, or an API key: a token this home redeemed is still spent.
        let fingerprint = presented.fingerprint();
        return if records.iter().any(|r| rotates(r, &fingerprint)) {
            Route::Spent
        } else {
            Route::Unknown
        };
    };
    if same(presented, current) {
        return Route::Current;
    }
    let current = current.fingerprint();
    let mut wanted = presented.fingerprint();
    let Some(latest) = records.iter().rposition(|r| rotates(r, &wanted)) else {
        return Route::Unknown;
    };
    if !recent(records[latest], now, grace) {
        return Route::Spent;
    }
    let mut at = latest;
    // Each link is a later record than the one before: the walk ends after at most
    // `records.len()` links, and a cycle in a forged journal cannot hold it.
    loop {
        match &records[at].new_refresh {
            Some(next) => wanted.clone_from(next),
            None => return Route::Spent,
        }
        if wanted == current {
            return Route::Predecessor;
        }
        match records[at + 1..].iter().position(|r| rotates(r, &wanted)) {
            Some(i) => at += 1 + i,
            None => return Route::Spent,
        }
    }
}

/// A journal record and its time (one whose time does not parse: the epoch, the oldest, so
/// that it can be no later link of a chain).
pub(crate) type Dated = (SystemTime, JournalRecord);

/// `record`, dated.
pub(crate) fn dated(record: JournalRecord) -> Dated {
    (record.time().unwrap_or(SystemTime::UNIX_EPOCH), record)
}

/// `records` dated and ordered by time (those of one time in their order): a `mirrored` record
/// journaled once a local refresh released the refresh lock comes after later ones in the
/// journal.
pub(crate) fn by_time(records: Vec<JournalRecord>) -> Vec<Dated> {
    let mut dated: Vec<Dated> = records.into_iter().map(dated).collect();
    dated.sort_by_key(|(at, _)| *at);
    dated
}

/// Two lists ordered by time (the journal's, and the rotations seen in this process) merged
/// into one, by time; of one time, the journal's first.
pub(crate) fn merged<'a>(journal: &'a [Dated], seen: &'a [Dated]) -> Vec<&'a JournalRecord> {
    let mut all = Vec::with_capacity(journal.len() + seen.len());
    let (mut a, mut b) = (journal.iter().peekable(), seen.iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if y.0 < x.0 => b.next(),
            (Some(_), _) => a.next(),
            (None, _) => b.next(),
        };
        match next {
            Some((_, record)) => all.push(record),
            None => return all,
        }
    }
}

/// Whether `record` rotates the token of fingerprint `fingerprint` to another one: a rotation
/// saved or recovered here, or (on a fleet machine) one the fleet made that was mirrored here.
fn rotates(record: &JournalRecord, fingerprint: &str) -> bool {
    matches!(
        record.event,
        JournalEvent::Saved | JournalEvent::Recovered | JournalEvent::Mirrored
    ) && record.refresh.as_deref() == Some(fingerprint)
        && record.new_refresh.is_some()
        && record.new_refresh != record.refresh
}

/// Whether `record` is less than `grace` old at `now`.
fn recent(record: &JournalRecord, now: SystemTime, grace: Duration) -> bool {
    record
        .time()
        .and_then(|t| now.duration_since(t).ok())
        .is_some_and(|age| age < grace)
}

/// Whether two secrets are equal, in a time that does not depend on where they differ (only on
/// their lengths).
pub(crate) fn same(a: &Secret, b: &Secret) -> bool {
    let (a, b) = (a.expose().as_bytes(), b.expose().as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    use codex_store::Timestamp;

    const GRACE: Duration = Duration::from_secs(600);

    /// A row of the table: what it is, the token presented, the current one, the journal, and
    /// the route expected.
    type Row = (
        &'static str,
        &'static str,
        Option<&'static str>,
        Vec<JournalRecord>,
        Route,
    );

    fn fp(token: &str) -> String {
        Secret::new(token).fingerprint()
    }

    /// A `event` record, `age` before `now`, rotating `from` to `to`.
    fn record(
        event: JournalEvent,
        age: Duration,
        now: SystemTime,
        from: &str,
        to: &str,
    ) -> JournalRecord {
        JournalRecord {
            at: Timestamp::from_system_time(now - age).as_str().to_owned(),
            pid: 1,
            event,
            generation: None,
            new_generation: None,
            account: None,
            refresh: Some(fp(from)),
            new_refresh: Some(fp(to)),
            code: None,
        }
    }

    fn saved(age_secs: u64, now: SystemTime, from: &str, to: &str) -> JournalRecord {
        record(
            JournalEvent::Saved,
            Duration::from_secs(age_secs),
            now,
            from,
            to,
        )
    }

    #[test]
    fn the_routing_decision_follows_its_table() {
        let now = SystemTime::now();
        let future = {
            let mut r = saved(0, now, "rt_a", "rt_b");
            r.at = Timestamp::from_system_time(now + Duration::from_secs(60))
                .as_str()
                .to_owned();
            r
        };
        let unreadable_time = {
            let mut r = saved(0, now, "rt_a", "rt_b");
            r.at = "yesterday".into();
            r
        };
        #[rustfmt::skip]
        let table: Vec<Row> = vec![
            ("the current token", "rt_b", Some("rt_b"), vec![saved(5, now, "rt_a", "rt_b")], Route::Current),
            ("the current token with no journal", "rt_a", Some("rt_a"), vec![], Route::Current),
            ("a token rotated away a minute ago", "rt_a", Some("rt_b"), vec![saved(60, now, "rt_a", "rt_b")], Route::Predecessor),
            ("a recovered rotation", "rt_a", Some("rt_b"), vec![record(JournalEvent::Recovered, Duration::from_secs(60), now, "rt_a", "rt_b")], Route::Predecessor),
            ("another machine's rotation mirrored here", "rt_a", Some("rt_b"), vec![record(JournalEvent::Mirrored, Duration::from_secs(60), now, "rt_a", "rt_b")], Route::Predecessor),
            ("a chain of a local and a mirrored rotation", "rt_a", Some("rt_c"), vec![saved(120, now, "rt_a", "rt_b"), record(JournalEvent::Mirrored, Duration::from_secs(60), now, "rt_b", "rt_c")], Route::Predecessor),
            ("a mirrored rotation outside the grace window", "rt_a", Some("rt_b"), vec![record(JournalEvent::Mirrored, Duration::from_secs(601), now, "rt_a", "rt_b")], Route::Spent),
            ("a chain of two rotations", "rt_a", Some("rt_c"), vec![saved(120, now, "rt_a", "rt_b"), saved(60, now, "rt_b", "rt_c")], Route::Predecessor),
            ("a token in the middle of a chain", "rt_b", Some("rt_c"), vec![saved(90, now, "rt_a", "rt_b"), saved(80, now, "rt_b", "rt_c")], Route::Predecessor),
            ("a token rotated away outside the grace window", "rt_a", Some("rt_b"), vec![saved(601, now, "rt_a", "rt_b")], Route::Spent),
            ("a chain broken by a rotation the journal does not know", "rt_a", Some("rt_c"), vec![saved(60, now, "rt_a", "rt_b")], Route::Spent),
            ("a chain whose links are out of order", "rt_a", Some("rt_c"), vec![saved(60, now, "rt_b", "rt_c"), saved(30, now, "rt_a", "rt_b")], Route::Spent),
            ("a chain that leads elsewhere", "rt_a", Some("rt_x"), vec![saved(60, now, "rt_a", "rt_b"), saved(30, now, "rt_b", "rt_c")], Route::Spent),
            ("a token never seen", "rt_z", Some("rt_b"), vec![saved(60, now, "rt_a", "rt_b")], Route::Unknown),
            ("a redeemed token when the home holds none", "rt_a", None, vec![saved(60, now, "rt_a", "rt_b")], Route::Spent),
            ("an unknown token when the home holds none", "rt_z", None, vec![saved(60, now, "rt_a", "rt_b")], Route::Unknown),
            ("a token only sent, not rotated", "rt_a", Some("rt_b"), vec![record(JournalEvent::Redeeming, Duration::from_secs(60), now, "rt_a", "rt_b")], Route::Unknown),
            ("a token refused", "rt_a", Some("rt_b"), vec![record(JournalEvent::Refused, Duration::from_secs(60), now, "rt_a", "rt_b")], Route::Unknown),
            ("an answer that kept the token is no rotation", "rt_a", Some("rt_b"), vec![saved(60, now, "rt_a", "rt_a")], Route::Unknown),
            ("a record dated in the future", "rt_a", Some("rt_b"), vec![future], Route::Spent),
            ("a record whose time does not parse", "rt_a", Some("rt_b"), vec![unreadable_time], Route::Spent),
            ("a forged cycle", "rt_a", Some("rt_x"), vec![saved(60, now, "rt_a", "rt_b"), saved(50, now, "rt_b", "rt_a"), saved(40, now, "rt_a", "rt_b")], Route::Spent),
        ];
        for (case, presented, current, records, expected) in table {
            let current = current.map(Secret::new);
            let refs: Vec<&JournalRecord> = records.iter().collect();
            let got = route(&Secret::new(presented), current.as_ref(), &refs, now, GRACE);
            assert_eq!(
                got, expected,
                "{case}: routed {got:?}, expected {expected:?}"
            );
        }
    }

    #[test]
    fn a_rotation_seen_late_still_links_a_chain_once_merged_by_time() {
        let now = SystemTime::now();
        let journal = vec![saved(60, now, "rt_b", "rt_c")];
        let seen = vec![record(
            JournalEvent::Mirrored,
            Duration::from_secs(120),
            now,
            "rt_a",
            "rt_b",
        )];
        let appended: Vec<&JournalRecord> = journal.iter().chain(&seen).collect();
        let current = Secret::new("rt_c");
        assert_eq!(
            route(&Secret::new("rt_a"), Some(&current), &appended, now, GRACE),
            Route::Spent,
            "the walk must follow records in their order: a link appended out of order breaks it"
        );
        let (journal, seen) = (by_time(journal), by_time(seen));
        assert_eq!(
            route(
                &Secret::new("rt_a"),
                Some(&current),
                &merged(&journal, &seen),
                now,
                GRACE
            ),
            Route::Predecessor,
            "merged by time, a mirror seen late (rt_a -> rt_b) must link to the journal's later \
             rotation (rt_b -> rt_c)"
        );
    }

    #[test]
    fn records_are_ordered_by_time_with_an_unreadable_time_first_and_ties_in_their_order() {
        let now = SystemTime::now();
        let mut unreadable = saved(0, now, "rt_x", "rt_y");
        unreadable.at = "yesterday".into();
        let journal = by_time(vec![
            saved(10, now, "rt_j2", "rt_j3"),
            saved(30, now, "rt_j1", "rt_j2"),
            unreadable,
        ]);
        let seen = by_time(vec![
            saved(20, now, "rt_s1", "rt_s2"),
            saved(10, now, "rt_s2", "rt_s3"),
        ]);
        let order: Vec<&str> = merged(&journal, &seen)
            .iter()
            .map(|r| r.refresh.as_deref().unwrap_or_default())
            .collect();
        let fps: Vec<String> = ["rt_x", "rt_j1", "rt_s1", "rt_j2", "rt_s2"]
            .iter()
            .map(|t| fp(t))
            .collect();
        assert_eq!(
            order,
            fps.iter().map(String::as_str).collect::<Vec<_>>(),
            "merged records must run by time: the unreadable time first, then oldest to newest, \
             the journal's first of one time"
        );
    }

    #[test]
    fn secrets_compare_equal_only_when_they_are() {
        for (a, b, equal) in [
            ("rt_a", "rt_a", true),
            ("rt_a", "rt_b", false),
            ("rt_a", "rt_ab", false),
            ("", "", true),
        ] {
            assert_eq!(
                same(&Secret::new(a), &Secret::new(b)),
                equal,
                "comparing {a:?} with {b:?}"
            );
        }
    }
}
