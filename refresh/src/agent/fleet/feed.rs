//! The fleet's keys as this machine last heard them: one watch of `<prefix>/`, kept open for the
//! agent's whole run, whose events carry each new value and its revision. A rotation reaches a
//! mirroring machine as the event itself: it writes the record into auth.json without reading
//! it again. The view is exact up to its revision (the watch starts right after the read it
//! builds on, and etcd never splits a transaction's changes across messages), so a step may
//! use it as it would use a read; every write is still fenced by the record's revision in etcd.
//!
//! A watch that fails is retried after a capped backoff, and reported; until it is read again,
//! there is no view and the agent reads the record itself.
//!
//! A watch ends after [`WATCH_FOR`], and the delays between attempts run, on the boot-time
//! clock ([`Alarm`]): after a suspend longer than what was left of them, the feed watches
//! again (or retries) at the resume, instead of waiting on a connection the suspend may have
//! broken (a network changed, a peer that gave up) for up to [`WATCH_FOR`] more.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::super::schedule::Backoff;
use super::super::timer::Alarm;
use crate::fleet::{Change, Fleet, FleetError, Kv, Op, RecordRead, Watched};

/// The first delay before a failed watch of the fleet's keys is tried again; it doubles with
/// each failure in a row, up to [`WATCH_RETRY_MAX`].
const WATCH_RETRY_INITIAL: Duration = Duration::from_secs(1);

/// How long one watch stream stays open before it is opened again from the view's revision (one
/// request). A stream that died without a word (a NAT or a proxy dropping an idle connection)
/// leaves the view stale for at most this long.
const WATCH_FOR: Duration = Duration::from_secs(120);

/// The longest delay between two attempts to watch the fleet's keys. A watch that stayed open
/// this long was working: its failure starts a new series of attempts.
const WATCH_RETRY_MAX: Duration = Duration::from_secs(60);

/// The record and its last rotation as the watch told them.
#[derive(Clone, Debug)]
pub(crate) struct View {
    /// etcd's revision up to which this view is exact: no change of the fleet's keys up to it
    /// is missing.
    pub(crate) revision: i64,
    /// The revision of the record's last known change: its `mod_revision`, the revision of its
    /// deletion, or 0 when it was absent at the read.
    pub(crate) record_at: i64,
    record: Option<Kv>,
    rotation: Option<Kv>,
}

impl View {
    /// The view as a read of the record with its last rotation, as
    /// [`Fleet::read_with_rotation`] returns it.
    pub(crate) fn read(&self, fleet: &Fleet) -> RecordRead {
        RecordRead {
            record: fleet.found(self.record.clone()),
            rotation: self
                .rotation
                .as_ref()
                .and_then(|kv| serde_json::from_slice(&kv.value).ok()),
            revision: self.revision,
        }
    }

    /// Applies what a watch reported. A change at or below the revision the view is already
    /// exact at is old news, skipped: a watch that failed over to another member, or
    /// authenticated again, starts over from the same revision and replays what was delivered
    /// (a batch holds whole revisions, so nothing new is skipped).
    fn apply(&mut self, changes: Vec<Change>, keys: &Keys) {
        let known = self.revision;
        for change in changes.into_iter().filter(|c| c.revision > known) {
            if change.key == keys.record {
                self.record = change.kv;
                self.record_at = change.revision;
            } else if change.key == keys.rotation {
                self.rotation = change.kv;
            }
            self.revision = self.revision.max(change.revision);
        }
    }
}

/// The keys a view follows.
struct Keys {
    record: Vec<u8>,
    rotation: Vec<u8>,
}

/// What the feed tells the agent.
#[derive(Clone, Debug, Default)]
pub(crate) struct FeedState {
    /// The record as last heard; `None` before the first read, and from a failure of the watch
    /// until the record is read again.
    pub(crate) view: Option<Arc<View>>,
    /// How many times the watch failed so far.
    pub(crate) failures: u64,
    /// The last failure: what went wrong, and when the watch is tried again.
    pub(crate) failure: Option<(String, SystemTime)>,
}

/// The feed of one fleet: a task of the runtime, stopped when dropped.
pub(crate) struct Feed {
    state: watch::Receiver<FeedState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Feed {
    /// Starts following `fleet` (a task of the current runtime): reads the record and its
    /// rotation, then watches `<prefix>/` from that read on.
    pub(crate) fn start(fleet: Arc<Fleet>) -> Feed {
        let (tx, state) = watch::channel(FeedState::default());
        let task = tokio::spawn(follow(fleet, tx));
        Feed { state, task }
    }

    /// The view now, if there is one.
    pub(crate) fn view(&self) -> Option<Arc<View>> {
        self.state.borrow().view.clone()
    }

    /// A receiver of the feed's news.
    pub(crate) fn subscribe(&self) -> watch::Receiver<FeedState> {
        self.state.clone()
    }
}

/// Reads the record and its rotation in one transaction: the view it starts from.
async fn read(fleet: &Fleet, keys: &Keys) -> Result<View, FleetError> {
    let as_text = |key: &[u8]| String::from_utf8_lossy(key).into_owned();
    let result = fleet
        .etcd
        .txn(
            &[],
            &[
                Op::Get(as_text(&keys.record)),
                Op::Get(as_text(&keys.rotation)),
            ],
            &[],
        )
        .await?;
    let mut gets = result.gets.into_iter();
    let record = gets.next().flatten();
    Ok(View {
        revision: result.revision,
        record_at: record.as_ref().map_or(0, |kv| kv.mod_revision),
        record,
        rotation: gets.next().flatten(),
    })
}

/// The feed's task: read, watch, and on every failure, back off, say so, and read again.
async fn follow(fleet: Arc<Fleet>, tx: watch::Sender<FeedState>) {
    let keys = Keys {
        record: fleet.record_key().into_bytes(),
        rotation: fleet.key("rotation").into_bytes(),
    };
    let prefix = fleet.key("");
    let mut backoff = Backoff::new(WATCH_RETRY_INITIAL, WATCH_RETRY_MAX);
    // Where the next watch starts: after the view's revision, or (`None`) after a new read.
    let mut from: Option<i64> = None;
    // Whether the last watch ended asking for a new read (a compaction, etcd gone back): two
    // in a row back off, so that a member answering so for ever is not asked in a loop.
    let mut reread = false;
    let mut alarm = Alarm::system();
    loop {
        let started = tokio::time::Instant::now();
        let ends = alarm.now().after(WATCH_FOR);
        let watched = async {
            let after = match from {
                Some(revision) => revision,
                None => {
                    let view = read(&fleet, &keys).await?;
                    let revision = view.revision;
                    tx.send_modify(|state| state.view = Some(Arc::new(view)));
                    revision
                }
            };
            let on_changes = |changes: Vec<Change>| {
                tx.send_modify(|state| {
                    if let Some(view) = &mut state.view {
                        Arc::make_mut(view).apply(changes, &keys);
                    }
                });
                ControlFlow::Continue(())
            };
            fleet
                .etcd
                .watch_prefix(&prefix, after, WATCH_FOR, &on_changes)
                .await
        };
        // The same time limit as the request's, counting a suspend.
        let watched = tokio::select! {
            watched = watched => watched,
            () = alarm.until(ends) => Ok(Watched::TimedOut),
        };
        match watched {
            Ok(Watched::TimedOut) => {
                backoff.reset();
                reread = false;
                from = tx.borrow().view.as_ref().map(|view| view.revision);
            }
            Ok(Watched::Compacted(_) | Watched::Changed(_)) => {
                from = None;
                if std::mem::replace(&mut reread, true) {
                    alarm.until(alarm.now().after(backoff.next_delay())).await;
                }
            }
            Err(e) => {
                if started.elapsed() >= WATCH_RETRY_MAX {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                let message = format!("cannot watch the fleet record for changes: {e}");
                tracing::debug!("{message}");
                tx.send_modify(|state| {
                    state.view = None;
                    state.failures += 1;
                    state.failure = Some((message, SystemTime::now() + delay));
                });
                from = None;
                reread = false;
                alarm.until(alarm.now().after(delay)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &[u8], value: &str, revision: i64) -> Change {
        Change {
            key: key.to_vec(),
            kv: Some(Kv {
                value: value.as_bytes().to_vec(),
                mod_revision: revision,
                create_revision: 2,
                lease: 0,
            }),
            revision,
        }
    }

    #[test]
    fn a_watch_that_starts_over_replays_nothing_into_the_view() {
        let keys = Keys {
            record: b"/p/auth.json".to_vec(),
            rotation: b"/p/rotation".to_vec(),
        };
        let mut view = View {
            revision: 100,
            record_at: 90,
            record: None,
            rotation: None,
        };
        view.apply(vec![put(&keys.record, "B", 105)], &keys);
        view.apply(vec![put(&keys.record, "C", 110)], &keys);
        // Another member (or a new authentication) starts over from revision 100.
        view.apply(vec![put(&keys.record, "B", 105)], &keys);
        assert_eq!(
            (
                view.record.as_ref().map(|kv| kv.value.as_slice()),
                view.record_at,
                view.revision
            ),
            (Some(b"C".as_slice()), 110, 110),
            "a replayed older change must not make the view show an older record"
        );
        view.apply(
            vec![put(&keys.record, "C", 110), put(&keys.record, "D", 111)],
            &keys,
        );
        assert_eq!(
            (view.record_at, view.revision),
            (111, 111),
            "what comes after the replay is applied"
        );
    }
}
