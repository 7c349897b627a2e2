//! Asks to refresh now: how a token broker on a fleet machine has the fleet's agent refresh the
//! token a caller presented, under the fleet's lock and reservation, instead of redeeming it
//! itself. The agent answers each ask once the token is no longer the current one, or once it
//! cannot refresh it (a refusal, a failure).

use tokio::sync::{mpsc, oneshot};

use crate::client::Refusal;
use crate::error::PermanentReason;

/// How many asks wait for the agent at most; a broker asks once per decision, one at a time.
const CAPACITY: usize = 16;

/// A pair: the broker's end ([`RefreshAsker`]) and the agent's ([`RefreshAsks`]).
///
/// ```
/// let (asker, asks) = codex_refresh::refresh_asks();
/// # drop((asker, asks));
/// ```
pub fn refresh_asks() -> (RefreshAsker, RefreshAsks) {
    let (tx, rx) = mpsc::channel(CAPACITY);
    (RefreshAsker { tx }, RefreshAsks { rx })
}

/// The end a token broker asks through ([`crate::Broker::through_agent`]).
#[derive(Clone, Debug)]
pub struct RefreshAsker {
    tx: mpsc::Sender<Ask>,
}

/// The end an agent answers ([`crate::Agent::answering`]).
#[derive(Debug)]
pub struct RefreshAsks {
    pub(crate) rx: mpsc::Receiver<Ask>,
}

/// One ask: refresh the token of this fingerprint, if it is still the current one.
#[derive(Debug)]
pub(crate) struct Ask {
    /// The fingerprint of the refresh token a caller presented (auth.json's current one when
    /// the broker asked).
    pub(crate) refresh: String,
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
    /// It could not be refreshed for now (a failure, a login the agent leaves alone): why.
    Failed(String),
    /// The agent stopped.
    Stopped,
}

impl RefreshAsker {
    /// Asks the agent to refresh the token of fingerprint `refresh` now, and waits for its
    /// answer. [`AskEnd::Stopped`] when the agent is gone.
    pub(crate) async fn ask(&self, refresh: String) -> AskEnd {
        let (reply, answered) = oneshot::channel();
        if self.tx.send(Ask { refresh, reply }).await.is_err() {
            return AskEnd::Stopped;
        }
        answered.await.unwrap_or(AskEnd::Stopped)
    }
}
