//! The watch of one key, or of a range of keys: a stream of JSON lines on `/v3/watch`, read
//! line by line within [`MAX_ANSWER`], each batch of events handed to the caller as it comes.

use std::ops::ControlFlow;
use std::time::Duration;

use reqwest::StatusCode;

use super::adapters::{LooseI64, B64};
use super::call::Reply;
use super::grpc::{Disposition, GrpcCode, Refusal};
use super::wire::{
    from_object, ErrorField, WatchCreate, WatchMessageWire, WatchRequest, WatchResult,
};
use super::{body_error, describe, without_url, Etcd, FleetError, Kv, Watched, MAX_ANSWER};
use crate::http_body::{BodyError, BoundedBody, Piece};

/// One change of a key, as a watch reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Change {
    /// The key.
    pub(crate) key: Vec<u8>,
    /// What it holds now; `None` when it was deleted.
    pub(crate) kv: Option<Kv>,
    /// The revision of the change.
    pub(crate) revision: i64,
}

/// What a watch's caller says of each batch of changes: go on watching, or stop here.
pub(crate) type OnChanges<'a> = &'a (dyn Fn(Vec<Change>) -> ControlFlow<()> + Send + Sync);

impl Etcd {
    /// Waits until `key` changes after the store revision `revision` (or `timeout` passes).
    /// One watch stream on the first endpoint that accepts it, authenticated like every call,
    /// and sent with `Grpc-Metadata-hasleader: true` so that a member cut off from the quorum
    /// ends the watch (etcd's "no leader") instead of keeping it silently open.
    ///
    /// # Errors
    /// A watch etcd canceled for any other reason than compaction (permission denied, an
    /// invalid auth token, an empty user name) is [`FleetError::Etcd`]; a stream that ends, or
    /// no endpoint accepting the watch, is [`FleetError::Unreachable`]. Neither is a change:
    /// the caller retries with backoff.
    pub(crate) async fn wait_change(
        &self,
        key: &str,
        revision: i64,
        timeout: Duration,
    ) -> Result<Watched, FleetError> {
        let stop: OnChanges<'_> = &|_| ControlFlow::Break(());
        self.watch(key.as_bytes(), None, revision, timeout, stop)
            .await
    }

    /// Watches every key under `prefix` after the store revision `revision`, handing each
    /// batch of changes to `on_changes` as it comes (a batch holds whole revisions: etcd never
    /// splits the changes of one transaction), until `timeout` passes ([`Watched::TimedOut`]),
    /// etcd compacted the history past `revision` ([`Watched::Compacted`]), or etcd is at an
    /// older revision than `revision` ([`Watched::Changed`]: restored from a snapshot). After
    /// the last two, read again and watch from that read.
    ///
    /// # Errors
    /// As [`Etcd::wait_change`].
    pub(crate) async fn watch_prefix(
        &self,
        prefix: &str,
        revision: i64,
        timeout: Duration,
        on_changes: OnChanges<'_>,
    ) -> Result<Watched, FleetError> {
        let key = prefix.as_bytes();
        self.watch(key, Some(prefix_end(key)), revision, timeout, on_changes)
            .await
    }

    async fn watch(
        &self,
        key: &[u8],
        range_end: Option<Vec<u8>>,
        revision: i64,
        timeout: Duration,
        on_changes: OnChanges<'_>,
    ) -> Result<Watched, FleetError> {
        let request = WatchRequest {
            create_request: WatchCreate {
                key: B64(key.to_vec()),
                range_end: range_end.map(B64),
                start_revision: revision + 1,
            },
        };
        self.authenticated(|| self.watch_once(&request, revision, timeout, on_changes))
            .await
    }

    /// One watch per endpoint at most, in turn, until one ends with a change, a compaction, a
    /// refusal or the time.
    async fn watch_once(
        &self,
        request: &WatchRequest,
        revision: i64,
        timeout: Duration,
        on_changes: OnChanges<'_>,
    ) -> Result<Watched, FleetError> {
        let mut last = None;
        let mut foreign = None;
        for endpoint in &self.endpoints {
            match self
                .watch_on(endpoint, request, revision, timeout, on_changes)
                .await
            {
                Reply::Answer(watched) => return Ok(watched),
                Reply::Refused(refusal) => return Err(refusal.into()),
                // This member cannot serve the watch (no leader, or the stream broke): another
                // may.
                Reply::Unavailable(reason) => last = Some(format!("{endpoint}: {reason}")),
                Reply::Foreign(answer) => {
                    foreign = Some(format!("{endpoint} answered /v3/watch with {answer}"));
                    last = Some(format!("{endpoint}: not etcd's answer"));
                }
            }
        }
        Err(self.none_answered(foreign, last, "the watch ended"))
    }

    /// The watch on `endpoint`, until its stream says something that ends it.
    async fn watch_on(
        &self,
        endpoint: &str,
        request: &WatchRequest,
        revision: i64,
        timeout: Duration,
        on_changes: OnChanges<'_>,
    ) -> Reply<Watched> {
        let response = self
            .post(endpoint, "/v3/watch")
            .header("Grpc-Metadata-hasleader", "true")
            .timeout(timeout)
            .json(request)
            .send()
            .await;
        let response = match response {
            Ok(r) if r.status().is_success() => r,
            // etcd 3.6 refuses an expired token before the stream starts.
            Ok(r) if r.status() == StatusCode::UNAUTHORIZED => {
                return Reply::Refused(Refusal {
                    code: GrpcCode::Unauthenticated,
                    message: "invalid auth token".into(),
                })
            }
            Ok(r) => return Reply::Unavailable(format!("HTTP {}", r.status())),
            Err(e) if e.is_timeout() && !e.is_connect() => return Reply::Answer(Watched::TimedOut),
            Err(e) => return Reply::Unavailable(without_url(&e)),
        };
        let mut stream = BoundedBody::new(response, MAX_ANSWER);
        loop {
            // The gateway sends one JSON object per line; etcd's last word (an error) may come
            // without a newline.
            let (line, ended) = match stream.next_line().await {
                Ok(Piece::Line(line)) => (line, false),
                Ok(Piece::End(rest)) => (rest, true),
                Err(BodyError::TimedOut { .. }) => return Reply::Answer(Watched::TimedOut),
                Err(e) => return Reply::Unavailable(body_error(e)),
            };
            match watch_message(&line, revision) {
                WatchMessage::Nothing => {}
                WatchMessage::Changes(changes) => {
                    let newest = changes.iter().map(|c| c.revision).max().unwrap_or(revision);
                    if on_changes(changes).is_break() {
                        return Reply::Answer(Watched::Changed(newest));
                    }
                }
                WatchMessage::Done(watched) => return Reply::Answer(watched),
                WatchMessage::Refused(refusal) => return Reply::Refused(refusal),
                WatchMessage::Unavailable(reason) => return Reply::Unavailable(reason),
                WatchMessage::Foreign(answer) => return Reply::Foreign(answer),
            }
            if ended {
                return Reply::Unavailable("the watch ended".into());
            }
        }
    }
}

/// The end of the range of keys that start with `prefix`: its last byte below 0xff incremented,
/// the bytes after it dropped (all 0xff: every key from `prefix` on, etcd's `\0`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// What one message of a watch stream says.
enum WatchMessage {
    /// Nothing to act on (the `created` answer, a progress notice, a blank line).
    Nothing,
    /// Changes, in the order etcd made them.
    Changes(Vec<Change>),
    /// The watch is over: a compaction, or etcd is at an older revision than the watch's start.
    Done(Watched),
    /// etcd canceled or failed the watch for another reason: never a change.
    Refused(Refusal),
    /// This member cannot serve the watch (it has no leader): another member may.
    Unavailable(String),
    /// What came is not etcd's (described): another endpoint may be etcd.
    Foreign(String),
}

/// Reads one message of etcd's watch stream: `{"result": {...}}` with `events`, or with
/// `canceled`, `compact_revision` and `cancel_reason`; or `{"error": ...}` when the stream fails
/// (no leader, with `Grpc-Metadata-hasleader`).
///
/// `after` is the revision the watch starts after: a `created` answer whose header says etcd is
/// at an older revision (etcd restored from a snapshot) is a change, so that the caller reads
/// the record again rather than wait for revisions that may never come.
fn watch_message(line: &[u8], after: i64) -> WatchMessage {
    if line.iter().all(u8::is_ascii_whitespace) {
        return WatchMessage::Nothing;
    }
    // Not etcd's: never a watch that runs quietly (a server answering 200 with `{}` or a page
    // would keep this machine deaf).
    let Ok(message) = from_object::<WatchMessageWire>(line) else {
        return WatchMessage::Foreign(describe(line));
    };
    match (message.error, message.result) {
        (Some(error), _) => stream_error(error, message.code),
        (None, Some(result)) => watch_result(result, after),
        (None, None) => WatchMessage::Foreign(describe(line)),
    }
}

/// The error that ended a stream: etcd 3.4's `{"error": {"grpc_code", "message"}}`, 3.6's
/// `{"error": {"code", "message"}}`, or a text `error` with a `code` beside it.
fn stream_error(error: ErrorField, code_beside: LooseI64) -> WatchMessage {
    let (code, text) = match error {
        ErrorField::Text(text) => (code_beside.0, text),
        ErrorField::Status(status) => (
            status.grpc_code.map_or(status.code.0, |c| c.0),
            status.message.0.unwrap_or_default(),
        ),
        ErrorField::Other(_) => (None, String::new()),
    };
    let refusal = Refusal {
        code: GrpcCode::from_number(code.unwrap_or(0)),
        message: if text.is_empty() {
            "etcd ended the watch with an error".to_owned()
        } else {
            text
        },
    };
    match refusal.disposition() {
        Disposition::TryAnotherMember => WatchMessage::Unavailable(refusal.message),
        Disposition::Reauthenticate | Disposition::Refused => WatchMessage::Refused(refusal),
    }
}

/// What a `result` says: events (changes), a cancel (a compaction, or a refusal), or nothing
/// yet. An event without a key and a revision, or a put without its creation, is not etcd's.
fn watch_result(result: WatchResult, after: i64) -> WatchMessage {
    if !result.events.is_empty() {
        let mut changes = Vec::with_capacity(result.events.len());
        for event in result.events {
            let deleted = event.kind.0.as_deref() == Some("DELETE");
            let Some(kv) = event
                .kv
                .filter(|kv| kv.mod_revision >= 1 && !kv.key.0.is_empty())
            else {
                return WatchMessage::Foreign("an event without its key or revision".into());
            };
            if !deleted && kv.create_revision < 1 {
                return WatchMessage::Foreign("a put without its create_revision".into());
            }
            changes.push(Change {
                key: kv.key.0,
                revision: kv.mod_revision,
                kv: (!deleted).then_some(Kv {
                    value: kv.value.0,
                    mod_revision: kv.mod_revision,
                    create_revision: kv.create_revision,
                    lease: kv.lease,
                }),
            });
        }
        return WatchMessage::Changes(changes);
    }
    if !result.canceled {
        let now = result.header.map_or(0, |h| h.revision);
        if result.created && now > 0 && now < after {
            return WatchMessage::Done(Watched::Changed(now));
        }
        return WatchMessage::Nothing;
    }
    if result.compact_revision > 0 {
        // Compacted past `revision`: the caller reads again (and watches from that read).
        return WatchMessage::Done(Watched::Compacted(result.compact_revision));
    }
    // Refused (permission denied, an invalid auth token, no user name): a failure, never a
    // change, or a caller reading again at once would loop.
    let Refusal { code, message } = Refusal::from_cancel_reason(&result.cancel_reason);
    WatchMessage::Refused(Refusal {
        code,
        message: if message.is_empty() {
            "etcd canceled the watch without a reason".to_owned()
        } else {
            format!("the watch was canceled: {message}")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(line: &str) -> WatchMessage {
        watch_message(line.as_bytes(), 0)
    }

    #[test]
    fn a_watch_created_at_an_older_revision_than_was_read_is_a_reason_to_read_again() {
        // etcd restored from a snapshot: it is at revision 2, the watch starts after 8.
        let line = r#"{"result":{"header":{"revision":"2"},"created":true}}"#;
        assert!(
            matches!(
                watch_message(line.as_bytes(), 8),
                WatchMessage::Done(Watched::Changed(2))
            ),
            "a watch of revisions that may never come must end at once"
        );
        assert!(
            matches!(watch_message(line.as_bytes(), 2), WatchMessage::Nothing),
            "a watch created at the revision read is no change"
        );
    }

    #[test]
    fn a_watch_canceled_by_compaction_is_a_reason_to_read_again() {
        let line =
            r#"{"result":{"header":{"revision":"4"},"canceled":true,"compact_revision":"3"}}"#;
        assert!(
            matches!(outcome(line), WatchMessage::Done(Watched::Compacted(3))),
            "a cancel naming a compact revision must be read as a compaction"
        );
    }

    #[test]
    fn a_watch_canceled_for_a_refusal_is_an_error_with_etcds_reason() {
        // etcd 3.4's answer to a watch of a prefix the user may not read.
        let line = r#"{"result":{"header":{"revision":"4"},"watch_id":"-1","created":true,"canceled":true,"cancel_reason":"rpc error: code = PermissionDenied desc = etcdserver: permission denied"}}"#;
        match outcome(line) {
            WatchMessage::Refused(Refusal { code, message }) => {
                assert_eq!(code.number(), 7, "PermissionDenied is gRPC code 7");
                assert!(
                    message.contains("permission denied"),
                    "etcd's reason must be kept: {message}"
                );
            }
            _ => panic!("a refused watch must be an error, never a change"),
        }
        let line = r#"{"result":{"watch_id":"-1","created":true,"canceled":true,"cancel_reason":"rpc error: code = Unauthenticated desc = etcdserver: invalid auth token"}}"#;
        assert!(
            matches!(
                outcome(line),
                WatchMessage::Refused(Refusal {
                    code: GrpcCode::Unauthenticated,
                    ..
                })
            ),
            "an invalid auth token must be code 16, so that the client authenticates again"
        );
    }

    #[test]
    fn a_member_without_a_leader_passes_the_watch_to_another_member() {
        // What etcd 3.4 sends, without a newline, on a watch with `Grpc-Metadata-hasleader`.
        let line = r#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service Unavailable"}}"#;
        assert!(
            matches!(outcome(line), WatchMessage::Unavailable(ref m) if m.contains("no leader")),
            "no leader must make the client try another member"
        );
    }

    #[test]
    fn the_created_answer_is_not_the_end_of_a_watch_and_what_is_not_etcds_is_no_watch() {
        for line in [
            r#"{"result":{"header":{"revision":"4"},"created":true}}"#,
            "",
            "\r",
        ] {
            assert!(
                matches!(outcome(line), WatchMessage::Nothing),
                "{line:?} must neither end the watch nor count as a change"
            );
        }
        for line in ["{}", "<html>", "[1]", r#"{"result":1}"#] {
            assert!(
                matches!(outcome(line), WatchMessage::Foreign(_)),
                "{line:?} is not etcd's: it must not pass for a quiet watch"
            );
        }
        let line = r#"{"result":{"events":[{"kv":{"key":"YQ==","create_revision":"3","mod_revision":"9","value":"Yg=="}}]}}"#;
        match outcome(line) {
            WatchMessage::Changes(changes) => assert_eq!(
                changes,
                vec![Change {
                    key: b"a".to_vec(),
                    kv: Some(Kv {
                        value: b"b".to_vec(),
                        mod_revision: 9,
                        create_revision: 3,
                        lease: 0,
                    }),
                    revision: 9,
                }],
                "an event is the key's new value at its revision"
            ),
            _ => panic!("an event must be read as a change"),
        }
    }

    #[test]
    fn a_delete_event_is_a_change_to_nothing_and_a_malformed_event_is_not_etcds() {
        let line =
            r#"{"result":{"events":[{"type":"DELETE","kv":{"key":"YQ==","mod_revision":"12"}}]}}"#;
        match outcome(line) {
            WatchMessage::Changes(changes) => assert!(
                changes.len() == 1 && changes[0].kv.is_none() && changes[0].revision == 12,
                "a deletion must be a change to no value at its revision: {changes:?}"
            ),
            _ => panic!("a delete event must be read as a change"),
        }
        for line in [
            r#"{"result":{"events":[{"kv":{"key":"YQ==","create_revision":"3"}}]}}"#,
            r#"{"result":{"events":[{"kv":{"mod_revision":"9","create_revision":"3"}}]}}"#,
            r#"{"result":{"events":[{"kv":{"key":"YQ==","mod_revision":"9"}}]}}"#,
            r#"{"result":{"events":[{}]}}"#,
        ] {
            assert!(
                matches!(outcome(line), WatchMessage::Foreign(_)),
                "{line} lacks what etcd always writes: it must not pass for a change"
            );
        }
    }

    #[test]
    fn the_range_of_a_prefix_ends_after_its_last_byte_that_can_grow() {
        assert_eq!(prefix_end(b"/fleet/"), b"/fleet0".to_vec());
        assert_eq!(prefix_end(b"a\xff\xff"), b"b".to_vec());
        assert_eq!(
            prefix_end(b"\xff"),
            vec![0],
            "all 0xff: every key from the prefix on"
        );
    }

    #[test]
    fn a_stream_error_is_classified_by_its_grpc_code_in_every_shape_etcd_writes() {
        for line in [
            // etcd 3.6's stream error, and a text error with its code beside it.
            r#"{"error":{"code":14,"message":"etcdserver: no leader","details":[]}}"#,
            r#"{"error":"etcdserver: leader changed","code":14}"#,
        ] {
            assert!(
                matches!(outcome(line), WatchMessage::Unavailable(_)),
                "{line} is Unavailable: another member must be tried"
            );
        }
        let line = r#"{"error":{"code":7,"message":"etcdserver: permission denied"}}"#;
        assert!(
            matches!(
                outcome(line),
                WatchMessage::Refused(Refusal {
                    code: GrpcCode::PermissionDenied,
                    ..
                })
            ),
            "a refusal in a stream error must keep its code"
        );
        let line = r#"{"error":{"grpc_code":"x"}}"#;
        match outcome(line) {
            WatchMessage::Refused(Refusal { code, message }) => assert!(
                code == GrpcCode::Ok && message.contains("ended the watch with an error"),
                "an error without code or message must still end the watch: {code:?} {message}"
            ),
            _ => panic!("an error without code or message must end the watch as an error"),
        }
    }
}
