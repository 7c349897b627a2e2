//! Shared pieces of the multi-process store tests (`tests/tests/store_*.rs`) and of the
//! `store-worker` helper binary: the counter document and a tiny seeded random number generator.
//! Their child processes are [`Process`](crate::process::Process)es.
//!
//! The counter lives in the top-level key [`COUNTER_KEY`] of auth.json, an unknown key to the
//! store, so it also exercises "unknown keys survive a rewrite". The API key is always set so
//! every document is a valid API-key login.

use std::time::{SystemTime, UNIX_EPOCH};

use codex_store::{AuthDotJson, Secret, Snapshot};
use serde_json::Value;

/// The top-level key holding the counter.
pub const COUNTER_KEY: &str = "counter";

/// The API key every counter document carries.
pub const TEST_API_KEY: &str = "sk-store-test-key";

/// The counter of a document; a document without one counts as 0.
pub fn counter_of(doc: &AuthDotJson) -> Result<u64, String> {
    match doc.extra.get(COUNTER_KEY) {
        None => Ok(0),
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| format!("{COUNTER_KEY} is not a non-negative integer: {n}")),
        Some(other) => Err(format!("{COUNTER_KEY} is not a number: {other}")),
    }
}

/// The counter of a snapshot; no file counts as 0.
pub fn snapshot_counter(snapshot: &Snapshot) -> Result<u64, String> {
    snapshot.auth().map_or(Ok(0), counter_of)
}

/// `base` (or a new document) with the counter set to `counter` and the test API key set.
pub fn with_counter(base: Option<&AuthDotJson>, counter: u64) -> AuthDotJson {
    let mut doc = base.cloned().unwrap_or_default();
    doc.openai_api_key = Some(Secret::new(TEST_API_KEY));
    doc.extra
        .insert(COUNTER_KEY.to_owned(), Value::from(counter));
    doc
}

/// Parses `committed <n>` lines printed by `store-worker write-loop`.
pub fn parse_committed(line: &str) -> Option<u64> {
    line.strip_prefix("committed ")?.trim().parse().ok()
}

/// xorshift64*: small, seeded, good enough to pick crash moments.
#[derive(Debug, Clone)]
pub struct XorShift {
    seed: u64,
    state: u64,
}

impl XorShift {
    /// Seeded from `STORE_TEST_SEED` when set (to replay a failure), else from the clock.
    pub fn from_env_or_time() -> Self {
        let seed = std::env::var("STORE_TEST_SEED")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or_else(|| {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                now.as_secs()
                    ^ (u64::from(now.subsec_nanos()) << 20)
                    ^ u64::from(std::process::id())
            });
        Self::new(seed)
    }

    /// A generator with this seed (0 is replaced, xorshift would stay at 0).
    pub fn new(seed: u64) -> Self {
        let state = if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        };
        XorShift { seed, state }
    }

    /// The seed; setting `STORE_TEST_SEED` to it replays the same draws.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The next raw value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}
