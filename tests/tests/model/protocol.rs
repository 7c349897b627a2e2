//! The state and the steps of the model: the token server, the files, codex-store processes, a
//! Codex 0.171 process and the environment (deleting the refresh lock file).
//!
//! Every step is atomic. A step "under the write locks" (`auth.lock` + `auth.json.lock`, shared
//! with Codex) is one atomic step, so the write locks need no state of their own: no critical
//! section spans two steps, and a process that dies holding them releases them with its death,
//! which is the same as dying just before or just after the step.

use std::fmt::Write as _;

/// The most codex-store processes a world may have (the arrays are this long; processes beyond
/// [`World::stores`] never run).
pub const MAX_STORES: usize = 3;

/// The most tokens the server may issue (the token sets are bit masks).
const MAX_TOKENS: u8 = 16;

/// A refresh token: its index in the server's chain t0, t1, t2, ...
pub type Token = u8;
/// auth.json's generation: a counter bumped by every write (it stands for its bytes).
pub type Gen = u8;

/// The four changes of item 1 of issue 15, each of which can be switched off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fixes {
    /// A: the owner of a rotation file holds an `flock` on it from its reservation until its
    /// save ends, and the recovery leaves a rotation file whose `flock` is held.
    pub a: bool,
    /// B: after reserving, the process checks again under the write locks (auth.json still the
    /// generation it read, no refusal/spent/saved record for the token, no other rotation file
    /// redeeming it) before it sends anything.
    pub b: bool,
    /// C: what a refusal or a half-written rotation teaches is journaled before the file that
    /// shows it goes (two halves, each of which can be switched off alone).
    pub c: JournalFirst,
    /// D: the save merges its tokens into a changed auth.json only while auth.json still holds
    /// the refresh token it redeemed (else newer tokens are there, and they win).
    pub d: bool,
}

/// The two halves of change C.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalFirst {
    /// On a refusal, `refused(t)` is journaled, then the rotation file removed, in one step;
    /// without it the file is removed first and the refusal journaled in a later step.
    pub refusal: bool,
    /// The recovery journals `spent(t)` for a half-written rotation file before discarding it;
    /// without it the file is just discarded.
    pub spent: bool,
}

impl JournalFirst {
    pub const ON: JournalFirst = JournalFirst {
        refusal: true,
        spent: true,
    };
    pub const OFF: JournalFirst = JournalFirst {
        refusal: false,
        spent: false,
    };
}

impl Fixes {
    /// All four changes.
    pub const ALL: Fixes = Fixes {
        a: true,
        b: true,
        c: JournalFirst::ON,
        d: true,
    };
    /// None of them.
    pub const NONE: Fixes = Fixes {
        a: false,
        b: false,
        c: JournalFirst::OFF,
        d: false,
    };
}

/// Who acts in the world, and which faults it has.
#[derive(Clone, Copy, Debug)]
pub struct World {
    /// How many codex-store processes run (each refreshes once), at most [`MAX_STORES`].
    pub stores: usize,
    /// How many times the Codex process refreshes (0: no Codex).
    pub codex_refreshes: u8,
    /// Whether processes may die at any step.
    pub crashes: bool,
    /// How many times the refresh lock file may be deleted (and re-created: a new inode).
    pub lock_deletions: u8,
    /// How many times the user may sign in again (with Codex, under the write locks): a new
    /// refresh token of the same account, not derived from the chain's live one.
    pub sign_ins: u8,
}

/// What a rotation file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Content {
    /// The reserved spaces: no answer was written (maybe none came, maybe one died with its
    /// receiver).
    Spaces,
    /// An answer written but not fsynced, cut by a crash: unreadable, but it proves the token
    /// was sent and answered.
    Half,
    /// The answer, durable.
    Doc(Token),
}

/// A rotation file (at most one per codex-store process: the array index is its owner).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rotation {
    /// The generation of auth.json it replaces.
    pub base: Gen,
    /// The refresh token it redeems.
    pub redeemed: Token,
    pub content: Content,
    /// Whether its owner holds an `flock` on it (only with change A; released by a death).
    pub flocked: bool,
}

/// Where a codex-store process is: the step it takes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// 1: take the refresh lock.
    Idle,
    /// 2: the recovery, under the write locks.
    Locked,
    /// 3: read auth.json.
    Recovered,
    /// 4: the checks of the snapshot (journal, rotation files).
    Read { t: Token, g: Gen },
    /// 5: reserve (rotation file, its `flock`, `redeeming(t)` in the journal).
    Checked { t: Token, g: Gen },
    /// 6: the re-check under the write locks (change B; without it a step that does nothing).
    Reserved { t: Token, g: Gen },
    /// 7: send `t`. `informed`: whether, at the re-check (the last moment before the request
    /// under the write locks), the files already showed that `t` had been presented.
    Committed { t: Token, g: Gen, informed: bool },
    /// 8: refused: journal the refusal and remove the rotation file.
    Refused { t: Token },
    /// 8, second half without change C: the rotation file is gone, the refusal not journaled.
    RefusedRemoved { t: Token },
    /// 9: write the answer into the rotation file (not yet fsynced).
    Answered { t: Token, new: Token },
    /// 9: fsync it.
    HalfWritten { t: Token, new: Token },
    /// 10: install it under the write locks.
    Durable { t: Token, new: Token },
    /// 10: journal `saved(t -> new)`, release the rotation's `flock` and the refresh lock.
    Installed { t: Token, new: Token },
    /// Finished (sent nothing, or saved, or refused).
    Done,
    /// Died.
    Dead,
}

impl Phase {
    /// Whether the process holds the refresh lock (an `flock` on the inode it took).
    fn holds_refresh_lock(self) -> bool {
        !matches!(self, Phase::Idle | Phase::Done | Phase::Dead)
    }

    /// The token this live process has sent (and knows it sent), if any.
    fn presented(self) -> Option<Token> {
        match self {
            Phase::Refused { t }
            | Phase::RefusedRemoved { t }
            | Phase::Answered { t, .. }
            | Phase::HalfWritten { t, .. }
            | Phase::Durable { t, .. }
            | Phase::Installed { t, .. } => Some(t),
            _ => None,
        }
    }

    /// The answer this process holds only in memory (not yet durable anywhere).
    fn answer_in_memory(self) -> Option<Token> {
        match self {
            Phase::Answered { new, .. } | Phase::HalfWritten { new, .. } => Some(new),
            _ => None,
        }
    }
}

/// A codex-store process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StoreProc {
    pub phase: Phase,
    /// The inode of the refresh lock file it locked (meaningful while it holds the lock).
    pub inode: u8,
}

/// Where the Codex process is. `left`: refreshes still to do after this one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CodexPhase {
    /// Reads auth.json next.
    Start {
        left: u8,
    },
    /// Sends `c` next (the token is due; Codex sends before taking any lock).
    Read {
        c: Token,
        left: u8,
    },
    /// Answered `new`: writes it under the write locks next.
    Answered {
        new: Token,
        left: u8,
    },
    /// Finished its refreshes.
    Done,
    /// Refused: Codex's own behaviour, it stops refreshing.
    Stuck,
    Dead,
}

/// The state of the world. Small and `Copy`, hashed into the visited set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct State {
    /// The newest token the server issued (the only one it accepts).
    pub live: Token,
    /// The answer that issued `live` died with its receiver (before it was durable anywhere).
    pub live_lost: bool,
    /// The tokens whose presentation the files have shown (sticky): a rotation file of it got an
    /// answer written (even half), the journal got `refused`/`spent`/`saved` for it, or auth.json
    /// was written with a later token.
    pub traced: u16,
    /// auth.json: the token it holds and its generation.
    pub auth_token: Token,
    pub auth_gen: Gen,
    /// The journal (`redeeming(t)` records are not modelled: nothing decides on them).
    pub refused: u16,
    pub spent: u16,
    pub saved: u16,
    /// The rotation files, by owner.
    pub rotations: [Option<Rotation>; MAX_STORES],
    /// The refresh lock file's current inode, and how often it was deleted.
    pub lock_inode: u8,
    pub deletions: u8,
    /// How many times the user signed in again.
    pub sign_ins: u8,
    pub stores: [StoreProc; MAX_STORES],
    pub codex: CodexPhase,
}

/// Who took a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Actor {
    Store(u8),
    Codex,
    Env,
}

/// A step, as printed in a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub actor: Actor,
    pub what: &'static str,
}

/// A violation of a property.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// P1: a codex-store process presented `token`, already presented, while it could know.
    TokenPresentedTwice {
        token: Token,
        by: u8,
        why: &'static str,
    },
    /// P2: in a terminal state, after one final recovery, auth.json does not hold the live
    /// token, and the answer that issued it did not die with its receiver.
    RotationLost { live: Token, auth: Token },
    /// A state that is not terminal and in which nobody can move (a deadlock of the model).
    Deadlock,
}

fn bit(t: Token) -> u16 {
    1 << t
}

fn below(t: Token) -> u16 {
    bit(t) - 1
}

impl State {
    /// The initial state: auth.json holds t0, generation 0, every process at its start.
    pub fn initial(world: &World) -> State {
        assert!(world.stores <= MAX_STORES);
        let mut stores = [StoreProc {
            phase: Phase::Done,
            inode: 0,
        }; MAX_STORES];
        for s in stores.iter_mut().take(world.stores) {
            s.phase = Phase::Idle;
        }
        State {
            live: 0,
            live_lost: false,
            traced: 0,
            auth_token: 0,
            auth_gen: 0,
            refused: 0,
            spent: 0,
            saved: 0,
            rotations: [None; MAX_STORES],
            lock_inode: 0,
            deletions: 0,
            sign_ins: 0,
            stores,
            codex: if world.codex_refreshes > 0 {
                CodexPhase::Start {
                    left: world.codex_refreshes - 1,
                }
            } else {
                CodexPhase::Done
            },
        }
    }

    /// Whether every process is finished (done, refused, stuck or dead).
    pub fn terminal(&self) -> bool {
        self.stores
            .iter()
            .all(|s| matches!(s.phase, Phase::Done | Phase::Dead))
            && matches!(
                self.codex,
                CodexPhase::Done | CodexPhase::Stuck | CodexPhase::Dead
            )
    }

    /// The server issues the next token.
    fn issue(&mut self) -> Token {
        self.live += 1;
        assert!(self.live < MAX_TOKENS, "the model issued too many tokens");
        self.live_lost = false;
        self.live
    }

    /// Writes auth.json (a new generation).
    fn write_auth(&mut self, token: Token) {
        self.auth_token = token;
        self.auth_gen += 1;
        // A later token in auth.json shows that every earlier one was presented.
        self.traced |= below(token);
    }

    fn journaled(&self, t: Token) -> bool {
        (self.refused | self.spent | self.saved) & bit(t) != 0
    }

    /// The recovery (step 2), by a process that owns no rotation file, under the write locks.
    fn recover(&mut self, fixes: Fixes) {
        for slot in 0..MAX_STORES {
            let Some(r) = self.rotations[slot] else {
                continue;
            };
            if fixes.a && r.flocked {
                continue; // its owner is alive and still in its save: theirs
            }
            match r.content {
                Content::Spaces => {}
                Content::Half => {
                    if fixes.c.spent {
                        self.spent |= bit(r.redeemed);
                        self.traced |= bit(r.redeemed);
                    }
                }
                Content::Doc(new) => {
                    if self.auth_gen == r.base || self.auth_token == r.redeemed {
                        // Roll forward, or merge into a rewrite of the redeemed token.
                        self.write_auth(new);
                    }
                    // else: auth.json holds other tokens; they win (discarded).
                }
            }
            self.rotations[slot] = None;
        }
    }

    /// Whether no process is in the middle of a refresh: every codex-store process has not
    /// begun, is done or dead, and Codex is between refreshes, done, stuck or dead. P2 is checked
    /// in these states (the terminal ones among them), so that a counterexample needs no process
    /// to die only to end the run.
    pub fn quiescent(&self) -> bool {
        self.stores
            .iter()
            .all(|s| matches!(s.phase, Phase::Idle | Phase::Done | Phase::Dead))
            && !matches!(
                self.codex,
                CodexPhase::Read { .. } | CodexPhase::Answered { .. }
            )
    }

    /// The final recovery of a fresh codex-store process in a quiescent state (no `flock` is held
    /// any more), then P2.
    pub fn check_final(&self, fixes: Fixes) -> Option<Violation> {
        let mut end = *self;
        end.recover(fixes);
        if end.auth_token != end.live && !end.live_lost {
            return Some(Violation::RotationLost {
                live: end.live,
                auth: end.auth_token,
            });
        }
        None
    }

    /// Every step possible from this state, with the violation it commits, if any.
    pub fn successors(
        &self,
        world: &World,
        fixes: Fixes,
        out: &mut Vec<(Step, State, Option<Violation>)>,
    ) {
        for i in 0..world.stores {
            self.store_steps(i, fixes, world.crashes, out);
        }
        self.codex_steps(world.crashes, out);
        if self.terminal() {
            return;
        }
        if self.deletions < world.lock_deletions {
            let mut s = *self;
            s.lock_inode += 1;
            s.deletions += 1;
            out.push((
                Step {
                    actor: Actor::Env,
                    what: "deletes the refresh lock file (a new one is a new inode)",
                },
                s,
                None,
            ));
        }
        if self.sign_ins < world.sign_ins {
            // `codex login` again, same account: a new session, whose refresh token the server
            // issued now (the model's server accepts only the newest token, so the old session's
            // tokens are dead from now on), written under the write locks.
            let mut s = *self;
            let new = s.issue();
            s.write_auth(new);
            s.sign_ins += 1;
            out.push((
                Step {
                    actor: Actor::Env,
                    what: "the user signs in again (same account, new tokens in auth.json)",
                },
                s,
                None,
            ));
        }
    }

    fn store_steps(
        &self,
        i: usize,
        fixes: Fixes,
        crashes: bool,
        out: &mut Vec<(Step, State, Option<Violation>)>,
    ) {
        let me = self.stores[i];
        let step = |what| Step {
            actor: Actor::Store(i as u8),
            what,
        };
        if crashes && !matches!(me.phase, Phase::Idle | Phase::Done | Phase::Dead) {
            let mut s = *self;
            s.stores[i].phase = Phase::Dead;
            if let Some(r) = s.rotations[i].as_mut() {
                r.flocked = false;
            }
            if me.phase.answer_in_memory() == Some(self.live) {
                s.live_lost = true;
            }
            out.push((step("dies"), s, None));
        }
        let mut s = *self;
        let mut violation = None;
        let what = match me.phase {
            Phase::Done | Phase::Dead => return,
            Phase::Idle => {
                let taken = self
                    .stores
                    .iter()
                    .any(|o| o.phase.holds_refresh_lock() && o.inode == self.lock_inode);
                if taken {
                    return; // waits
                }
                s.stores[i] = StoreProc {
                    phase: Phase::Locked,
                    inode: self.lock_inode,
                };
                "takes the refresh lock"
            }
            Phase::Locked => {
                s.recover(fixes);
                s.stores[i].phase = Phase::Recovered;
                "runs the recovery under the write locks"
            }
            Phase::Recovered => {
                s.stores[i].phase = Phase::Read {
                    t: self.auth_token,
                    g: self.auth_gen,
                };
                "reads auth.json"
            }
            Phase::Read { t, g } => {
                if self.journaled(t) {
                    s.stores[i].phase = Phase::Done;
                    "checks: the journal says its token is refused/spent/saved; stops"
                } else if self.rotations.iter().flatten().any(|r| r.redeemed == t) {
                    s.stores[i].phase = Phase::Done;
                    "checks: a rotation file redeems its token; stops"
                } else {
                    s.stores[i].phase = Phase::Checked { t, g };
                    "checks: nothing against its token"
                }
            }
            Phase::Checked { t, g } => {
                s.rotations[i] = Some(Rotation {
                    base: g,
                    redeemed: t,
                    content: Content::Spaces,
                    flocked: fixes.a,
                });
                s.stores[i].phase = Phase::Reserved { t, g };
                "reserves its rotation file (and journals redeeming)"
            }
            Phase::Reserved { t, g } => {
                let informed = self.traced & bit(t) != 0;
                let ok = self.auth_gen == g
                    && !self.journaled(t)
                    && !self
                        .rotations
                        .iter()
                        .enumerate()
                        .any(|(o, r)| o != i && r.is_some_and(|r| r.redeemed == t));
                if fixes.b && !ok {
                    s.rotations[i] = None;
                    s.stores[i].phase = Phase::Done;
                    "re-checks under the write locks: changed; removes its rotation file, stops"
                } else {
                    s.stores[i].phase = Phase::Committed { t, g, informed };
                    if fixes.b {
                        "re-checks under the write locks: unchanged"
                    } else {
                        "(no re-check)"
                    }
                }
            }
            Phase::Committed { t, informed, .. } => {
                if t != self.live {
                    let other_knows = self
                        .stores
                        .iter()
                        .enumerate()
                        .any(|(o, p)| o != i && p.phase.presented() == Some(t));
                    if informed || other_knows {
                        violation = Some(Violation::TokenPresentedTwice {
                            token: t,
                            by: i as u8,
                            why: if other_knows {
                                "another live codex-store process had presented it"
                            } else {
                                "the files showed it was presented before the re-check"
                            },
                        });
                    }
                    s.stores[i].phase = Phase::Refused { t };
                    "sends its token: refused (already used)"
                } else {
                    let new = s.issue();
                    s.stores[i].phase = Phase::Answered { t, new };
                    "sends its token: answered a new one"
                }
            }
            Phase::Refused { t } => {
                if fixes.c.refusal {
                    s.refused |= bit(t);
                    s.traced |= bit(t);
                    s.rotations[i] = None;
                    s.stores[i].phase = Phase::Done;
                    "journals refused, then removes its rotation file"
                } else {
                    s.rotations[i] = None;
                    s.stores[i].phase = Phase::RefusedRemoved { t };
                    "removes its rotation file (refusal not yet journaled)"
                }
            }
            Phase::RefusedRemoved { t } => {
                s.refused |= bit(t);
                s.traced |= bit(t);
                s.stores[i].phase = Phase::Done;
                "journals refused"
            }
            Phase::Answered { t, new } => {
                if let Some(r) = s.rotations[i].as_mut() {
                    r.content = Content::Half;
                    s.traced |= bit(t);
                }
                s.stores[i].phase = Phase::HalfWritten { t, new };
                "writes the answer into its rotation file (not fsynced)"
            }
            Phase::HalfWritten { t, new } => {
                if let Some(r) = s.rotations[i].as_mut() {
                    r.content = Content::Doc(new);
                }
                s.stores[i].phase = Phase::Durable { t, new };
                "fsyncs its rotation file"
            }
            Phase::Durable { t, new } => {
                s.stores[i].phase = Phase::Installed { t, new };
                match self.rotations[i] {
                    // Removed or installed by another process's recovery: the rename fails and
                    // the answer stays in this process's memory, which ends with it.
                    None => "installs: its rotation file is gone (answer only in memory)",
                    Some(r) => {
                        s.rotations[i] = None;
                        if self.auth_gen == r.base {
                            s.write_auth(new);
                            "installs: renames its rotation file over auth.json"
                        } else if !fixes.d || self.auth_token == t {
                            s.write_auth(new);
                            "installs: auth.json changed; merges into it"
                        } else {
                            "installs: auth.json holds other tokens; they win, discarded"
                        }
                    }
                }
            }
            Phase::Installed { t, .. } => {
                s.saved |= bit(t);
                s.traced |= bit(t);
                s.stores[i].phase = Phase::Done;
                "journals saved; releases its locks"
            }
        };
        out.push((step(what), s, violation));
    }

    fn codex_steps(&self, crashes: bool, out: &mut Vec<(Step, State, Option<Violation>)>) {
        let step = |what| Step {
            actor: Actor::Codex,
            what,
        };
        if crashes
            && matches!(
                self.codex,
                CodexPhase::Read { .. } | CodexPhase::Answered { .. }
            )
        {
            let mut s = *self;
            s.codex = CodexPhase::Dead;
            if matches!(self.codex, CodexPhase::Answered { new, .. } if new == self.live) {
                s.live_lost = true;
            }
            out.push((step("dies"), s, None));
        }
        let mut s = *self;
        let what = match self.codex {
            CodexPhase::Done | CodexPhase::Stuck | CodexPhase::Dead => return,
            CodexPhase::Start { left } => {
                s.codex = CodexPhase::Read {
                    c: self.auth_token,
                    left,
                };
                "reads auth.json (its token is due)"
            }
            CodexPhase::Read { c, left } => {
                if c == self.live {
                    let new = s.issue();
                    s.codex = CodexPhase::Answered { new, left };
                    "sends its token (no lock): answered a new one"
                } else {
                    s.codex = CodexPhase::Stuck;
                    "sends its token (no lock): refused; stuck"
                }
            }
            CodexPhase::Answered { new, left } => {
                s.write_auth(new);
                s.codex = if left > 0 {
                    CodexPhase::Start { left: left - 1 }
                } else {
                    CodexPhase::Done
                };
                "writes its answer into auth.json under the write locks"
            }
        };
        out.push((step(what), s, None));
    }

    /// One line: the server, auth.json, the journal, the rotation files, the refresh lock.
    pub fn summary(&self) -> String {
        let set = |m: u16| {
            (0..MAX_TOKENS)
                .filter(|t| m & bit(*t) != 0)
                .map(|t| format!("t{t}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut out = format!(
            "live t{}{} | auth.json t{} g{}",
            self.live,
            if self.live_lost { " (answer lost)" } else { "" },
            self.auth_token,
            self.auth_gen
        );
        let mut journal = Vec::new();
        for (name, m) in [
            ("refused", self.refused),
            ("spent", self.spent),
            ("saved", self.saved),
        ] {
            if m != 0 {
                journal.push(format!("{name}{{{}}}", set(m)));
            }
        }
        if !journal.is_empty() {
            let _ = write!(out, " | journal {}", journal.join(" "));
        }
        for (o, r) in self.rotations.iter().enumerate() {
            if let Some(r) = r {
                let content = match r.content {
                    Content::Spaces => "spaces".to_string(),
                    Content::Half => "half-written".to_string(),
                    Content::Doc(t) => format!("t{t}"),
                };
                let _ = write!(
                    out,
                    " | rotation of store{o}: g{} redeems t{}, {content}{}",
                    r.base,
                    r.redeemed,
                    if r.flocked { ", flocked" } else { "" }
                );
            }
        }
        let _ = write!(out, " | lock inode {}", self.lock_inode);
        out
    }
}
