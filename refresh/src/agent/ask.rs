//! Asks to refresh now: how a token broker on a fleet machine has the fleet's agent refresh the
//! token a caller presented, under the fleet's lock and reservation, instead of redeeming it
//! itself. The agent answers each ask once the token is no longer the current one, or once it
//! cannot refresh it (a refusal, a failure).

use std::sync::{Arc, Mutex};

use codex_store::JournalRecord;
use tokio::sync::{mpsc, oneshot};

use crate::broker::route::{dated, Dated};
use crate::client::Refusal;
use crate::error::PermanentReason;

/// How many asks wait for the agent at most; a broker asks once per decision, one at a time.
const CAPACITY: usize = 16;

/// How many rotations [`Rotations`] keeps (the oldest are dropped).
const ROTATIONS: usize = 64;

/// A pair: the broker's end ([`RefreshAsker`]) and the agent's ([`RefreshAsks`]).
///
/// ```
/// let (asker, asks) = codex_refresh::refresh_asks();
/// # drop((asker, asks));
/// ```
pub fn refresh_asks() -> (RefreshAsker, RefreshAsks) {
    let (tx, rx) = mpsc::channel(CAPACITY);
    let rotations = Rotations::default();
    (
        RefreshAsker {
            tx,
            rotations: rotations.clone(),
        },
        RefreshAsks { rx, rotations },
    )
}

/// The end a token broker asks through ([`crate::Broker::through_agent`]).
#[derive(Clone, Debug)]
pub struct RefreshAsker {
    tx: mpsc::Sender<Ask>,
    pub(crate) rotations: Rotations,
}

/// The end an agent answers ([`crate::Agent::answering`]).
#[derive(Debug)]
pub struct RefreshAsks {
    pub(crate) rx: mpsc::Receiver<Ask>,
    pub(crate) rotations: Rotations,
}

/// The rotations the agent and its broker saw in this process, as journal records ordered by
/// time (the last [`ROTATIONS`]): what the agent mirrors is known to the broker before auth.json
/// is written, whether or not the journal could take it yet.
#[derive(Clone, Debug, Default)]
pub(crate) struct Rotations(Arc<Mutex<Arc<Vec<Dated>>>>);

impl Rotations {
    /// Adds `record`, in its place by time.
    pub(crate) fn push(&self, record: JournalRecord) {
        let record = dated(record);
        let mut shared = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let records = Arc::make_mut(&mut shared);
        let at = records.partition_point(|(t, _)| *t <= record.0);
        records.insert(at, record);
        let excess = records.len().saturating_sub(ROTATIONS);
        records.drain(..excess);
    }

    /// The records, oldest first (a copy of the moment: no copy of the records).
    pub(crate) fn records(&self) -> Arc<Vec<Dated>> {
        Arc::clone(&self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The tokens a broker asks about, by fingerprint: auth.json's current ones when it asked (the
/// refresh token is the one the caller presented).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Tokens {
    pub(crate) refresh: String,
    pub(crate) access: String,
}

/// One ask: refresh these tokens, if they are still the current ones.
#[derive(Debug)]
pub(crate) struct Ask {
    pub(crate) tokens: Tokens,
    reply: oneshot::Sender<AskEnd>,
}

impl Ask {
    /// Answers it (a broker that stopped waiting hears nothing).
    pub(crate) fn answer(self, end: AskEnd) {
        let _ = self.reply.send(end);
    }

    /// Whether its broker still waits for the answer.
    pub(crate) fn waited_for(&self) -> bool {
        !self.reply.is_closed()
    }
}

/// How an ask ended.
#[derive(Clone, Debug)]
pub(crate) enum AskEnd {
    /// auth.json's refresh token is no longer the one asked about (refreshed here, or another
    /// machine's rotation mirrored): read the home again.
    Moved,
    /// The token endpoint refused it for good; the endpoint's answer, when this agent heard it.
    Refused {
        reason: PermanentReason,
        answer: Option<Refusal>,
    },
    /// It could not be refreshed for now (a failure, a conflict the agent reports): why.
    Failed(String),
    /// auth.json holds a login the agent leaves alone (another account than the fleet's; or
    /// the fleet holds none, or none usable, or an older state): not the agent's to refresh.
    LeftAlone,
    /// The agent stopped.
    Stopped,
}

impl RefreshAsker {
    /// Asks the agent to refresh `tokens` now, and waits for its answer. [`AskEnd::Stopped`]
    /// when the agent is gone.
    pub(crate) async fn ask(&self, tokens: Tokens) -> AskEnd {
        let (reply, answered) = oneshot::channel();
        if self.tx.send(Ask { tokens, reply }).await.is_err() {
            return AskEnd::Stopped;
        }
        answered.await.unwrap_or(AskEnd::Stopped)
    }
}
