//! The explicit-state search: breadth first over hashed states with a visited set, so that the
//! first violation found has a shortest trace.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use crate::protocol::{Actor, Fixes, Key, State, Violation, World};

/// A small multiplicative hasher (the keys are 32 bytes; SipHash dominates a debug build's run
/// time otherwise).
#[derive(Default)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Eight bytes at a time (a key's words are hashed as one slice of bytes).
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.write_u64(u64::from_le_bytes(c.try_into().unwrap()));
        }
        for b in chunks.remainder() {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn finish(&self) -> u64 {
        // The multiplications carry low bits up only: fold the high ones down (MurmurHash3's
        // finalizer), since the table indexes by the low bits.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h
    }
}

/// What a search found.
#[derive(Clone)]
pub struct Outcome {
    /// Distinct states reached.
    pub states: usize,
    /// Steps taken (edges, including those to states already seen).
    pub transitions: usize,
    /// Quiescent states reached (no process in the middle of a refresh; each checked for P2).
    pub terminals: usize,
    pub elapsed: Duration,
    /// The first violation found, with its trace (a shortest one: the search is breadth first).
    pub violation: Option<(Violation, String)>,
}

impl Outcome {
    /// One line for the test output.
    pub fn stats(&self) -> String {
        format!(
            "{} states, {} transitions, {} quiescent states checked for P2, {:.2?}",
            self.states, self.transitions, self.terminals, self.elapsed
        )
    }
}

/// Which properties a search checks.
#[derive(Clone, Copy, Debug)]
pub struct Properties {
    /// P1: no token presented twice.
    pub presented_twice: bool,
    /// P2: no rotation lost.
    pub lost_rotation: bool,
    /// P3: the live token never journaled refused or spent.
    pub live_token: bool,
    /// Not a property: report the first presentation that P1 allows after an `unanswered`
    /// record's reuse wait (to show that the allowance is used).
    pub resend_after_the_wait: bool,
    /// Not a property: report the first recovery that journals the server's live token
    /// `unanswered` (to show that the situations in which it used to journal it `spent` are
    /// reached).
    pub live_token_unanswered: bool,
}

impl Properties {
    /// Nothing (the base of the others).
    pub const NONE: Properties = Properties {
        presented_twice: false,
        lost_rotation: false,
        live_token: false,
        resend_after_the_wait: false,
        live_token_unanswered: false,
    };
    pub const ALL: Properties = Properties {
        presented_twice: true,
        lost_rotation: true,
        live_token: true,
        ..Properties::NONE
    };
    /// P1 and P2.
    pub const SAFETY: Properties = Properties {
        presented_twice: true,
        lost_rotation: true,
        ..Properties::NONE
    };
    /// Only P1.
    pub const PRESENTED_TWICE: Properties = Properties {
        presented_twice: true,
        ..Properties::NONE
    };
    /// Only P2 (to see whether a change also guards against lost rotations, whose traces are
    /// longer than those of a token presented twice).
    pub const LOST_ROTATION: Properties = Properties {
        lost_rotation: true,
        ..Properties::NONE
    };
}

/// Explores every interleaving of `world` with the protocol `fixes`, until the first violation
/// of `properties` (a deadlock of the model is always one).
///
/// The visited set holds each state once; for the trace, each state keeps only its parent's
/// number and the position of its step among the parent's successors (the trace is replayed
/// from the initial state), so that millions of states fit in a few hundred megabytes.
pub fn explore(world: World, fixes: Fixes, properties: Properties) -> Outcome {
    let start = Instant::now();
    let initial = State::initial(&world);
    let mut visited: HashSet<Key, BuildHasherDefault<FxHasher>> = HashSet::default();
    visited.insert(initial.key());
    // Per state number: its parent's number and the position of the step in its successors.
    let mut parents: Vec<(u32, u8)> = vec![(0, u8::MAX)];
    let mut queue: VecDeque<(State, u32)> = VecDeque::from([(initial, 0)]);
    let mut next = Vec::new();
    let mut transitions = 0;
    let mut terminals = 0;
    let mut violation = None;
    'search: while let Some((state, id)) = queue.pop_front() {
        next.clear();
        state.successors(&world, fixes, &mut next);
        transitions += next.len();
        if state.quiescent() {
            terminals += 1;
            if let Some(v) = state
                .check_final(fixes)
                .filter(|_| properties.lost_rotation)
            {
                violation = Some((v, trace(&world, fixes, &parents, id, None)));
                break 'search;
            }
        }
        if next.is_empty() && !state.terminal() {
            violation = Some((
                Violation::Deadlock,
                trace(&world, fixes, &parents, id, None),
            ));
            break 'search;
        }
        for (pos, (_, succ, v)) in next.drain(..).enumerate() {
            let pos = u8::try_from(pos).expect("fewer than 255 successors");
            let v = v
                .filter(|v| match v {
                    Violation::PresentedAgainAfterTheWait { .. } => {
                        properties.resend_after_the_wait
                    }
                    Violation::LiveTokenJournaledUnanswered { .. } => {
                        properties.live_token_unanswered
                    }
                    _ => properties.presented_twice,
                })
                .or_else(|| succ.check_live_token().filter(|_| properties.live_token));
            if let Some(v) = v {
                violation = Some((v, trace(&world, fixes, &parents, id, Some(pos))));
                break 'search;
            }
            if visited.insert(succ.key()) {
                let succ_id = u32::try_from(parents.len()).expect("fewer than 2^32 states");
                parents.push((id, pos));
                queue.push_back((succ, succ_id));
            }
        }
    }
    Outcome {
        states: parents.len(),
        transitions,
        terminals,
        elapsed: start.elapsed(),
        violation,
    }
}

fn actor(a: Actor) -> String {
    match a {
        Actor::Store(i) => format!("store{i}"),
        Actor::Codex => "codex".into(),
        Actor::Env => "env".into(),
    }
}

/// The steps from the initial state to state number `end` (then the successor at `last`), one
/// per line, each followed by the state it leads to.
fn trace(world: &World, fixes: Fixes, parents: &[(u32, u8)], end: u32, last: Option<u8>) -> String {
    let mut positions: Vec<u8> = last.into_iter().collect();
    let mut at = end as usize;
    while at != 0 {
        let (parent, pos) = parents[at];
        positions.push(pos);
        at = parent as usize;
    }
    positions.reverse();
    let mut state = State::initial(world);
    let mut out = format!("    start: {}\n", state.summary());
    let mut next = Vec::new();
    for (n, pos) in positions.into_iter().enumerate() {
        next.clear();
        state.successors(world, fixes, &mut next);
        let (step, succ, _) = next.swap_remove(usize::from(pos));
        state = succ;
        out.push_str(&format!(
            "{:>5}. {}: {}\n         {}\n",
            n + 1,
            actor(step.actor),
            step.what,
            state.summary()
        ));
    }
    out
}
