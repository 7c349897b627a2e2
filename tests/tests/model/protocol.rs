//! The state and the steps of the model: the token server, the files, codex-store processes, a
//! Codex 0.171 process and the environment (deleting the refresh lock file, rewriting auth.json
//! with the same tokens, the reuse wait running out).
//!
//! Every step is atomic. A step "under the write locks" (`auth.lock` + `auth.json.lock`, shared
//! with Codex) is one atomic step, so the write locks need no state of their own: no critical
//! section spans two steps, and a process that dies holding them releases them with its death,
//! which is the same as dying just before or just after the step.

use std::fmt::Write as _;

/// The most codex-store processes a world may have (the arrays are this long; processes beyond
/// [`World::stores`] never run).
pub const MAX_STORES: usize = 3;

/// The most `unanswered` records the journal may hold: one per codex-store process, since a
/// process leaves at most one (journaled by itself after a request without a known outcome, or
/// by a recovery for its half-written or marked rotation file), and a process that left one
/// never starts again.
pub const MAX_UNANSWERED: usize = MAX_STORES;

/// The most tokens the server may issue (the token sets are bit masks).
const MAX_TOKENS: u8 = 16;

/// A refresh token: its index in the server's chain t0, t1, t2, ...
pub type Token = u8;
/// auth.json's generation: a counter bumped by every write (it stands for its bytes: a rewrite
/// of the same refresh token with another access token is another generation).
pub type Gen = u8;

/// The four changes of item 1 of issue 15, each of which can be switched off, and the wait for
/// an `unanswered` record (item 2), which can be switched off too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fixes {
    /// A: the owner of a rotation file holds an `flock` on it from its reservation until its
    /// save ends, and the recovery leaves a rotation file whose `flock` is held.
    pub a: bool,
    /// B: after reserving, the process checks again under the write locks (`Reserved::check_again`)
    /// before it sends anything: auth.json still holds the refresh token it read (a rewrite of
    /// the same token, another generation, is no change), the journal's word on the token is
    /// still the one it judged by (no new `refused`/`spent`/`saved`/`unanswered` record), and no
    /// other rotation file redeems it.
    pub b: bool,
    /// C: what a refusal or an unreadable rotation file teaches is journaled before the file
    /// that shows it goes (two halves, each of which can be switched off alone).
    pub c: JournalFirst,
    /// D: the save merges its tokens into a changed auth.json only while auth.json still holds
    /// the refresh token it redeemed (else newer tokens are there, and they win).
    pub d: bool,
    /// The next sender of a token journaled `unanswered` less than the reuse wait ago waits for
    /// a rotation until the reuse wait ends, and only then starts again (and sends it once
    /// more); without it, the record is ignored.
    pub wait_unanswered: bool,
}

/// The two halves of change C.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalFirst {
    /// On a refusal, `refused(t)` is journaled, then the rotation file removed, in one step;
    /// without it the file is removed first and the refusal journaled in a later step.
    pub refusal: bool,
    /// The recovery journals what an unreadable rotation file teaches before discarding it
    /// (`recovery.rs`, `judge_bytes`): `spent(t)` for a half-written answer whose new refresh
    /// token reached the disk whole, `unanswered(t)` for any other half-written one, and for a
    /// file marked "sent" the outcome its owner could not journal; without it the file is just
    /// discarded.
    pub unreadable: bool,
}

impl JournalFirst {
    pub const ON: JournalFirst = JournalFirst {
        refusal: true,
        unreadable: true,
    };
    pub const OFF: JournalFirst = JournalFirst {
        refusal: false,
        unreadable: false,
    };
}

impl Fixes {
    /// All four changes, and the wait for `unanswered` records: what the code does.
    pub const ALL: Fixes = Fixes {
        a: true,
        b: true,
        c: JournalFirst::ON,
        d: true,
        wait_unanswered: true,
    };
    /// None of the four changes (the wait for `unanswered` records stays: the worlds that use
    /// this have no request whose outcome is unknown).
    pub const NONE: Fixes = Fixes {
        a: false,
        b: false,
        c: JournalFirst::OFF,
        d: false,
        wait_unanswered: true,
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
    /// Whether the server may answer a codex-store process's request without a new refresh
    /// token (the presented one stays live, only the access token is new): chosen per answer.
    pub keeps: bool,
    /// How many times auth.json may be rewritten with the tokens it holds (another generation,
    /// the same refresh token): Codex writing an answer that kept the refresh token, an older
    /// Codex writing in place, a writer ignoring the locks.
    pub rewrites: u8,
    /// How many codex-store requests may end without a known outcome (a timeout or a 5xx,
    /// after the server rotated, or before it saw the request), at most [`MAX_UNANSWERED`].
    pub unknown_outcomes: u8,
    /// How many journal appends may fail.
    pub journal_failures: u8,
    /// How many times a codex-store process may start its refresh again, after waiting out the
    /// reuse wait of an `unanswered` record.
    pub restarts: u8,
}

impl World {
    /// No process, no fault: the base the worlds of the tests are built on.
    pub const EMPTY: World = World {
        stores: 0,
        codex_refreshes: 0,
        crashes: false,
        lock_deletions: 0,
        sign_ins: 0,
        keeps: false,
        rewrites: 0,
        unknown_outcomes: 0,
        journal_failures: 0,
        restarts: 0,
    };
}

/// What a rotation file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Content {
    /// The reserved spaces: no answer was written (maybe none came, maybe one died with its
    /// receiver).
    Spaces,
    /// An answer written but not fsynced, cut by a crash: unreadable as a document. `rotated`:
    /// what reached the disk holds the answer's new refresh token whole, another than the
    /// redeemed one (`partial_refresh_token`), which proves the redeemed token spent. Otherwise
    /// (the cut came before the token, or the answer kept the redeemed one) it proves only that
    /// the token was sent: the recovery journals it `unanswered`.
    Half { rotated: bool },
    /// `SENT_MARK` and the outcome its owner sent the token for and could not journal.
    /// Unreadable as a document, like [`Content::Half`].
    Marked(Mark),
    /// The answer, durable (the same token as the one redeemed when the answer kept it).
    Doc(Token),
}

/// The outcome a rotation file marked "sent" names (`unusable_answer`'s `spent` is not
/// modelled).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mark {
    Refused,
    Unanswered,
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

/// An `unanswered(t)` record of the journal (its place in the journal is its identity: what
/// `Reserved::check_again` compares is the record itself, time and all).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Unanswered {
    pub token: Token,
    /// Whether the reuse wait since it was written has passed.
    pub expired: bool,
}

/// The journal's `unanswered` record a process judged by: its index, or none.
pub type Fate = Option<u8>;

/// What the files showed a sender of its token at its re-check (for P1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Informed {
    /// Nothing against it.
    Nothing,
    /// Only that it was sent without a known outcome, more than the reuse wait ago (the
    /// `unanswered` record of its sender, or of a recovery that found its answer cut off before
    /// a new refresh token, or its rotation file marked with that outcome): sending it once
    /// more is what the protocol does (the first sender's answer was lost, like a death).
    WaitedOut,
    /// That it had been presented (a rotation file of it got an answer to another token, whole
    /// or with that token whole, or was marked refused; the journal said refused/spent/saved;
    /// auth.json got a later token), or that it was sent without a known outcome less than the
    /// reuse wait ago.
    Knew,
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
    /// 5: reserve (rotation file, its `flock`, `redeeming(t)` in the journal). `fate`: the
    /// (expired) `unanswered` record of `t` it judged by.
    Checked { t: Token, g: Gen, fate: Fate },
    /// 6: the re-check under the write locks (change B; without it a step that does nothing).
    Reserved { t: Token, fate: Fate },
    /// 7: send `t`. `informed`: what, at the re-check (the last moment before the request
    /// under the write locks), the files already showed of `t`.
    Committed { t: Token, informed: Informed },
    /// 8: refused: journal the refusal and remove the rotation file; if the journal fails, mark
    /// the file "sent: refused" instead and keep it (`abandon_recorded`).
    Refused { t: Token },
    /// 8, second half without change C: the rotation file is gone, the refusal not journaled.
    RefusedRemoved { t: Token },
    /// 8': no answer came (timeout, 5xx): journal `unanswered(t)`, then remove the rotation
    /// file (`abandon_recorded`); if the journal fails, mark the file "sent: unanswered"
    /// instead and keep it.
    Unanswered { t: Token },
    /// The refresh lock released, watching auth.json for a rotation of `t` until the reuse
    /// wait since `unanswered` record `rec` ends; then the refresh starts again.
    Waiting { t: Token, rec: u8 },
    /// 9: write the answer into the rotation file (not yet fsynced).
    Answered { t: Token, new: Token },
    /// 9: fsync it.
    HalfWritten { t: Token, new: Token },
    /// 10: install it under the write locks.
    Durable { t: Token, new: Token },
    /// 10: journal `saved(t -> new)`, release the rotation's `flock` and the refresh lock.
    Installed { t: Token, new: Token },
    /// Finished (sent nothing, or saved, or refused, or gave up).
    Done,
    /// Died.
    Dead,
}

impl Phase {
    /// Whether the process holds the refresh lock (an `flock` on the inode it took).
    fn holds_refresh_lock(self) -> bool {
        !matches!(
            self,
            Phase::Idle | Phase::Done | Phase::Dead | Phase::Waiting { .. }
        )
    }

    /// The token this live process has sent (and knows it sent), if any.
    fn presented(self) -> Option<Token> {
        match self {
            Phase::Refused { t }
            | Phase::RefusedRemoved { t }
            | Phase::Unanswered { t }
            | Phase::Answered { t, .. }
            | Phase::HalfWritten { t, .. }
            | Phase::Durable { t, .. }
            | Phase::Installed { t, .. } => Some(t),
            _ => None,
        }
    }

    /// The token this live process knows may be spent by its own request: presented, and not
    /// answered with the same refresh token (an answer that kept it says it is still live).
    fn may_have_spent(self) -> Option<Token> {
        match self {
            Phase::Answered { t, new }
            | Phase::HalfWritten { t, new }
            | Phase::Durable { t, new }
            | Phase::Installed { t, new }
                if new == t =>
            {
                None
            }
            _ => self.presented(),
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
    /// How many times it started again.
    pub restarts: u8,
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
    /// The tokens whose presentation the files have shown (sticky): a rotation file of it got
    /// an answer to another token written (whole, or half with the new token whole) or was
    /// marked refused, the journal got `refused`/`spent`/`saved` (to another token) for it, or
    /// auth.json was written with a later token.
    pub traced: u16,
    /// auth.json: the token it holds and its generation.
    pub auth_token: Token,
    pub auth_gen: Gen,
    /// The journal: the tokens with a `refused`, a `spent`, or a `saved`/`recovered` record to
    /// another token (a `saved(t -> t)` makes nothing spent and is not kept); the `unanswered`
    /// records in order. (`redeeming(t)` records are not modelled: nothing decides on them.)
    pub refused: u16,
    pub spent: u16,
    pub saved: u16,
    pub unanswered: [Option<Unanswered>; MAX_UNANSWERED],
    /// The rotation files, by owner.
    pub rotations: [Option<Rotation>; MAX_STORES],
    /// The refresh lock file's current inode, and how often it was deleted.
    pub lock_inode: u8,
    pub deletions: u8,
    /// How many times the user signed in again, auth.json was rewritten with the same tokens,
    /// a request's outcome was unknown, a journal append failed.
    pub sign_ins: u8,
    pub rewrites: u8,
    pub unknowns: u8,
    pub journal_failures: u8,
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
    /// Not a violation of P1 but what P1 allows: a codex-store process presented `token`
    /// again, and dead, after the reuse wait of its `unanswered` record (reported only when a
    /// search asks, to show that the allowance is used).
    PresentedAgainAfterTheWait { token: Token, by: u8 },
    /// Not a violation but what keeps P3: a recovery journaled the server's live token
    /// `unanswered` (a half-written answer that kept it, or a rotation file marked "sent:
    /// unanswered" for a request the server never saw), where it journaled it `spent` before
    /// (reported only when a search asks, to show that these situations are reached).
    LiveTokenJournaledUnanswered { token: Token },
    /// P2: in a terminal state, after one final recovery, auth.json does not hold the live
    /// token, and the answer that issued it did not die with its receiver.
    RotationLost { live: Token, auth: Token },
    /// P3: the journal says the server's live token is refused or spent: no codex-store
    /// process will ever send it (it waits for a rotation, then says "sign in again"), though
    /// the login is fine.
    LiveTokenJournaledDead { token: Token },
    /// A state that is not terminal and in which nobody can move (a deadlock of the model).
    Deadlock,
}

fn bit(t: Token) -> u16 {
    1 << t
}

fn below(t: Token) -> u16 {
    bit(t) - 1
}

/// What may happen to one journal append: it succeeds, or (within the world's budget) fails.
fn appends(s: &State, world: &World) -> &'static [bool] {
    if s.journal_failures < world.journal_failures {
        &[true, false]
    } else {
        &[true]
    }
}

/// A state packed into 256 bits, for the visited set: a debug build spends most of its time
/// hashing and comparing the derived way otherwise. [`State::key`] is injective (every field
/// has its own bits, each value checked to fit).
pub type Key = [u64; 4];

/// The bits of a generation in the key (every world writes auth.json fewer than 64 times;
/// [`Packer::put`] checks it).
const GEN_BITS: u32 = 6;

/// Writes fields into a [`Key`]. (Written for a debug build: primitive casts and no iterators,
/// its functions inlined.)
struct Packer {
    key: Key,
    at: u32,
}

impl Packer {
    #[inline(always)]
    fn put(&mut self, value: u64, width: u32) {
        assert!(
            value < 1 << width,
            "a field does not fit its bits in the key"
        );
        let (word, shift) = ((self.at / 64) as usize, self.at % 64);
        self.key[word] |= value << shift;
        if shift + width > 64 {
            self.key[word + 1] |= value >> (64 - shift);
        }
        self.at += width;
    }
}

impl State {
    /// The initial state: auth.json holds t0, generation 0, every process at its start.
    pub fn initial(world: &World) -> State {
        assert!(world.stores <= MAX_STORES);
        assert!(usize::from(world.unknown_outcomes) <= MAX_UNANSWERED);
        // What the key's bits hold.
        assert!(world.lock_deletions <= 3 && world.sign_ins <= 3 && world.rewrites <= 3);
        assert!(world.journal_failures <= 3 && world.restarts <= 3);
        assert!(world.codex_refreshes <= 4);
        let mut stores = [StoreProc {
            phase: Phase::Done,
            inode: 0,
            restarts: 0,
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
            unanswered: [None; MAX_UNANSWERED],
            rotations: [None; MAX_STORES],
            lock_inode: 0,
            deletions: 0,
            sign_ins: 0,
            rewrites: 0,
            unknowns: 0,
            journal_failures: 0,
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

    /// The state packed for the visited set.
    pub fn key(&self) -> Key {
        let mut p = Packer { key: [0; 4], at: 0 };
        p.put(self.live as u64, 4);
        p.put(self.live_lost as u64, 1);
        p.put(self.traced as u64, 16);
        p.put(self.auth_token as u64, 4);
        p.put(self.auth_gen as u64, GEN_BITS);
        p.put(self.refused as u64, 16);
        p.put(self.spent as u64, 16);
        p.put(self.saved as u64, 16);
        let mut k = 0;
        while k < MAX_UNANSWERED {
            if let Some(u) = self.unanswered[k] {
                p.put(1 | (u.token as u64) << 1 | (u.expired as u64) << 5, 6);
            } else {
                p.put(0, 6);
            }
            k += 1;
        }
        let mut o = 0;
        while o < MAX_STORES {
            if let Some(r) = self.rotations[o] {
                let content = match r.content {
                    Content::Spaces => 0,
                    Content::Half { rotated } => 1 + rotated as u64,
                    Content::Marked(Mark::Refused) => 3,
                    Content::Marked(Mark::Unanswered) => 4,
                    Content::Doc(t) => 16 | t as u64,
                };
                p.put(
                    1 | (r.redeemed as u64) << 1 | content << 5 | (r.flocked as u64) << 10,
                    11,
                );
                p.put(r.base as u64, GEN_BITS);
            } else {
                p.put(0, 11 + GEN_BITS);
            }
            o += 1;
        }
        p.put(
            self.lock_inode as u64
                | (self.deletions as u64) << 2
                | (self.sign_ins as u64) << 4
                | (self.rewrites as u64) << 6
                | (self.unknowns as u64) << 8
                | (self.journal_failures as u64) << 10,
            12,
        );
        let fate = |f: Fate| match f {
            None => 0,
            Some(k) => k + 1,
        };
        let mut i = 0;
        while i < MAX_STORES {
            let s = self.stores[i];
            // The tag, then up to two tokens, a generation, and a fate or a flag.
            let (tag, a, b, g, x): (u8, Token, Token, Gen, u8) = match s.phase {
                Phase::Idle => (0, 0, 0, 0, 0),
                Phase::Locked => (1, 0, 0, 0, 0),
                Phase::Recovered => (2, 0, 0, 0, 0),
                Phase::Read { t, g } => (3, t, 0, g, 0),
                Phase::Checked { t, g, fate: f } => (4, t, 0, g, fate(f)),
                Phase::Reserved { t, fate: f } => (5, t, 0, 0, fate(f)),
                Phase::Committed { t, informed } => (6, t, 0, 0, informed as u8),
                Phase::Refused { t } => (7, t, 0, 0, 0),
                Phase::RefusedRemoved { t } => (8, t, 0, 0, 0),
                Phase::Unanswered { t } => (9, t, 0, 0, 0),
                Phase::Waiting { t, rec } => (10, t, 0, 0, rec),
                Phase::Answered { t, new } => (11, t, new, 0, 0),
                Phase::HalfWritten { t, new } => (12, t, new, 0, 0),
                Phase::Durable { t, new } => (13, t, new, 0, 0),
                Phase::Installed { t, new } => (14, t, new, 0, 0),
                Phase::Done => (15, 0, 0, 0, 0),
                Phase::Dead => (16, 0, 0, 0, 0),
            };
            p.put(
                tag as u64
                    | (a as u64) << 5
                    | (b as u64) << 9
                    | (x as u64) << 13
                    | (s.inode as u64) << 15
                    | (s.restarts as u64) << 17,
                19,
            );
            p.put(g as u64, GEN_BITS);
            i += 1;
        }
        let (tag, c, left) = match self.codex {
            CodexPhase::Start { left } => (0u8, 0, left),
            CodexPhase::Read { c, left } => (1, c, left),
            CodexPhase::Answered { new, left } => (2, new, left),
            CodexPhase::Done => (3, 0, 0),
            CodexPhase::Stuck => (4, 0, 0),
            CodexPhase::Dead => (5, 0, 0),
        };
        p.put(tag as u64 | (c as u64) << 3 | (left as u64) << 7, 9);
        assert!(p.at <= 256, "the key is too small");
        p.key
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

    /// Whether the journal says `t` is refused or spent (`fate_of`'s `Refused` or `Spent`).
    fn journaled(&self, t: Token) -> bool {
        (self.refused | self.spent | self.saved) & bit(t) != 0
    }

    /// The journal's newest `unanswered` record of `t` (what `fate_of` returns when the journal
    /// says nothing stronger of it).
    fn unanswered_of(&self, t: Token) -> Fate {
        (0..MAX_UNANSWERED)
            .rev()
            .find(|&k| self.unanswered[k].is_some_and(|u| u.token == t))
            .map(|k| k as u8)
    }

    /// Whether the journal says `t` was sent without a known outcome less than the reuse wait
    /// ago.
    fn unanswered_waiting(&self, t: Token) -> bool {
        self.unanswered_of(t)
            .is_some_and(|k| !self.unanswered[usize::from(k)].unwrap().expired)
    }

    fn journal_unanswered(&mut self, t: Token) {
        let free = self
            .unanswered
            .iter_mut()
            .find(|u| u.is_none())
            .expect("no more unanswered records than codex-store processes");
        *free = Some(Unanswered {
            token: t,
            expired: false,
        });
    }

    /// The recovery (step 2), by a process that owns no rotation file, under the write locks.
    /// `journal_ok`: whether its journal appends succeed (an unreadable rotation file whose
    /// outcome cannot be journaled stays).
    fn recover(&mut self, fixes: Fixes, journal_ok: bool) {
        for slot in 0..MAX_STORES {
            let Some(r) = self.rotations[slot] else {
                continue;
            };
            if fixes.a && r.flocked {
                continue; // its owner is alive and still in its save: theirs
            }
            match r.content {
                Content::Spaces => {}
                Content::Half { .. } | Content::Marked(_) => {
                    if fixes.c.unreadable {
                        if !journal_ok {
                            continue; // the file stays, and says it
                        }
                        let t = r.redeemed;
                        match r.content {
                            // The new refresh token reached the disk: `t` was rotated away.
                            Content::Half { rotated: true } => {
                                self.spent |= bit(t);
                                self.traced |= bit(t);
                            }
                            Content::Marked(Mark::Refused) => {
                                self.refused |= bit(t);
                                self.traced |= bit(t);
                            }
                            // Sent, outcome unknown: the next sender waits for a rotation, then
                            // sends it once more.
                            _ => self.journal_unanswered(t),
                        }
                    }
                }
                Content::Doc(new) => {
                    if self.auth_gen == r.base || self.auth_token == r.redeemed {
                        // Roll forward, or merge into a rewrite of the redeemed token. (The
                        // `recovered(t -> new)` record is not modelled: from now on auth.json
                        // holds `new`, so nobody reads `t` any more, and a reader that read it
                        // before fails its re-check on the token.)
                        self.write_auth(new);
                    }
                    // else: auth.json holds other tokens; they win (discarded).
                }
            }
            self.rotations[slot] = None;
        }
    }

    /// Whether the recovery would append to the journal (so that its append may fail).
    fn recovery_appends(&self, fixes: Fixes) -> bool {
        self.rotations.iter().flatten().any(|r| {
            !(fixes.a && r.flocked)
                && match r.content {
                    Content::Half { .. } | Content::Marked(_) => fixes.c.unreadable,
                    Content::Doc(_) | Content::Spaces => false,
                }
        })
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
    /// any more, the journal works), then P2.
    pub fn check_final(&self, fixes: Fixes) -> Option<Violation> {
        let mut end = *self;
        end.recover(fixes, true);
        if end.auth_token != end.live && !end.live_lost {
            return Some(Violation::RotationLost {
                live: end.live,
                auth: end.auth_token,
            });
        }
        None
    }

    /// P3: whether the journal says the server's live token is refused or spent.
    pub fn check_live_token(&self) -> Option<Violation> {
        self.journaled(self.live)
            .then_some(Violation::LiveTokenJournaledDead { token: self.live })
    }

    /// Every step possible from this state, with the violation it commits, if any.
    pub fn successors(
        &self,
        world: &World,
        fixes: Fixes,
        out: &mut Vec<(Step, State, Option<Violation>)>,
    ) {
        for i in 0..world.stores {
            self.store_steps(i, world, fixes, out);
        }
        self.codex_steps(world.crashes, out);
        if self.terminal() {
            return;
        }
        let env = |what| Step {
            actor: Actor::Env,
            what,
        };
        if self.deletions < world.lock_deletions {
            let mut s = *self;
            s.lock_inode += 1;
            s.deletions += 1;
            out.push((
                env("deletes the refresh lock file (a new one is a new inode)"),
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
                env("the user signs in again (same account, new tokens in auth.json)"),
                s,
                None,
            ));
        }
        if self.rewrites < world.rewrites {
            let mut s = *self;
            s.write_auth(self.auth_token);
            s.rewrites += 1;
            out.push((
                env("rewrites auth.json with the same refresh token (another generation)"),
                s,
                None,
            ));
        }
        for k in 0..MAX_UNANSWERED {
            if let Some(u) = self.unanswered[k].filter(|u| !u.expired) {
                let mut s = *self;
                s.unanswered[k] = Some(Unanswered { expired: true, ..u });
                out.push((
                    env("the reuse wait since an unanswered record ends"),
                    s,
                    None,
                ));
            }
        }
    }

    fn store_steps(
        &self,
        i: usize,
        world: &World,
        fixes: Fixes,
        out: &mut Vec<(Step, State, Option<Violation>)>,
    ) {
        let me = self.stores[i];
        let step = |what| Step {
            actor: Actor::Store(i as u8),
            what,
        };
        if world.crashes && !matches!(me.phase, Phase::Idle | Phase::Done | Phase::Dead) {
            let mut s = *self;
            s.stores[i].phase = Phase::Dead;
            if let Some(r) = s.rotations[i].as_mut() {
                r.flocked = false;
            }
            if me.phase.answer_in_memory() == Some(self.live)
                && me.phase.presented() != Some(self.live)
            {
                s.live_lost = true;
            }
            out.push((step("dies"), s, None));
        }
        let mut s = *self;
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
                s.stores[i].phase = Phase::Locked;
                s.stores[i].inode = self.lock_inode;
                "takes the refresh lock"
            }
            Phase::Locked => {
                s.stores[i].phase = Phase::Recovered;
                if self.recovery_appends(fixes) {
                    for &ok in appends(self, world) {
                        let mut s = s;
                        s.recover(fixes, ok);
                        if ok {
                            let live_unanswered = (0..MAX_UNANSWERED).any(|k| {
                                self.unanswered[k].is_none()
                                    && s.unanswered[k].is_some_and(|u| u.token == s.live)
                            });
                            out.push((
                                step(
                                    "runs the recovery under the write locks: journals what \
                                     unreadable rotation files show",
                                ),
                                s,
                                live_unanswered.then_some(
                                    Violation::LiveTokenJournaledUnanswered { token: s.live },
                                ),
                            ));
                        } else {
                            s.journal_failures += 1;
                            out.push((
                                step(
                                    "runs the recovery under the write locks: the journal \
                                     append fails",
                                ),
                                s,
                                None,
                            ));
                        }
                    }
                    return;
                }
                s.recover(fixes, true);
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
                    "checks: the journal says its token is refused/spent; stops"
                } else if self.rotations.iter().flatten().any(|r| r.redeemed == t) {
                    s.stores[i].phase = Phase::Done;
                    "checks: a rotation file redeems its token; stops"
                } else if fixes.wait_unanswered && self.unanswered_waiting(t) {
                    let rec = self.unanswered_of(t).unwrap();
                    s.stores[i].phase = Phase::Waiting { t, rec };
                    "checks: its token was sent without a known outcome less than the reuse \
                     wait ago; releases the refresh lock and waits for a rotation"
                } else {
                    s.stores[i].phase = Phase::Checked {
                        t,
                        g,
                        fate: self.unanswered_of(t),
                    };
                    if self.unanswered_waiting(t) {
                        "checks: its token was sent without a known outcome less than the \
                         reuse wait ago; does not wait"
                    } else if self.unanswered_of(t).is_some() {
                        "checks: its token was sent without a known outcome, the reuse wait \
                         since has passed"
                    } else {
                        "checks: nothing against its token"
                    }
                }
            }
            Phase::Waiting { t, rec } => {
                if self.auth_token != t {
                    let mut s = *self;
                    s.stores[i].phase = Phase::Done;
                    out.push((
                        step("waiting: auth.json holds another token; adopts it"),
                        s,
                        None,
                    ));
                }
                if !self.unanswered[usize::from(rec)].unwrap().expired {
                    return;
                }
                if me.restarts < world.restarts {
                    s.stores[i].phase = Phase::Idle;
                    s.stores[i].restarts += 1;
                    "the reuse wait ended without a rotation: starts again"
                } else {
                    s.stores[i].phase = Phase::Done;
                    "the reuse wait ended without a rotation: gives up (no more restarts)"
                }
            }
            Phase::Checked { t, g, fate } => {
                s.rotations[i] = Some(Rotation {
                    base: g,
                    redeemed: t,
                    content: Content::Spaces,
                    flocked: fixes.a,
                });
                s.stores[i].phase = Phase::Reserved { t, fate };
                "reserves its rotation file (and journals redeeming)"
            }
            Phase::Reserved { t, fate } => {
                let informed = if self.traced & bit(t) != 0 || self.unanswered_waiting(t) {
                    Informed::Knew
                } else if self.unanswered_of(t).is_some() {
                    Informed::WaitedOut
                } else {
                    Informed::Nothing
                };
                let ok = self.auth_token == t
                    && !self.journaled(t)
                    && self.unanswered_of(t) == fate
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
                    s.stores[i].phase = Phase::Committed { t, informed };
                    if fixes.b {
                        "re-checks under the write locks: unchanged"
                    } else {
                        "(no re-check)"
                    }
                }
            }
            Phase::Committed { t, informed } => {
                self.send(i, t, informed, world, out);
                return;
            }
            Phase::Refused { t } => {
                if fixes.c.refusal {
                    s.stores[i].phase = Phase::Done;
                    self.abandon_recorded(
                        i,
                        s,
                        world,
                        |s| {
                            s.refused |= bit(t);
                            s.traced |= bit(t);
                        },
                        Mark::Refused,
                        "journals refused, then removes its rotation file",
                        "journals refused: the append fails; marks its rotation file (sent: \
                         refused)",
                        out,
                    );
                    return;
                }
                s.rotations[i] = None;
                s.stores[i].phase = Phase::RefusedRemoved { t };
                "removes its rotation file (refusal not yet journaled)"
            }
            Phase::RefusedRemoved { t } => {
                s.refused |= bit(t);
                s.traced |= bit(t);
                s.stores[i].phase = Phase::Done;
                "journals refused"
            }
            Phase::Unanswered { t } => {
                s.stores[i].phase = Phase::Done;
                self.abandon_recorded(
                    i,
                    s,
                    world,
                    |s| s.journal_unanswered(t),
                    Mark::Unanswered,
                    "journals unanswered, then removes its rotation file",
                    "journals unanswered: the append fails; marks its rotation file (sent: \
                     unanswered)",
                    out,
                );
                return;
            }
            Phase::Answered { t, new } => {
                s.stores[i].phase = Phase::HalfWritten { t, new };
                if s.rotations[i].is_none() {
                    "writes the answer: its rotation file is gone"
                } else if new == t {
                    // What reached the disk can only name the redeemed token: no proof of a
                    // rotation.
                    s.rotations[i].as_mut().unwrap().content = Content::Half { rotated: false };
                    "writes the answer into its rotation file (not fsynced)"
                } else {
                    // What a crash leaves of it: with the new refresh token whole, or cut
                    // before it.
                    let mut cut = s;
                    cut.rotations[i].as_mut().unwrap().content = Content::Half { rotated: false };
                    out.push((
                        step(
                            "writes the answer into its rotation file (not fsynced; the new \
                             refresh token not yet on disk)",
                        ),
                        cut,
                        None,
                    ));
                    s.rotations[i].as_mut().unwrap().content = Content::Half { rotated: true };
                    s.traced |= bit(t);
                    "writes the answer into its rotation file (not fsynced; the new refresh \
                     token on disk)"
                }
            }
            Phase::HalfWritten { t, new } => {
                if let Some(r) = s.rotations[i].as_mut() {
                    r.content = Content::Doc(new);
                    if new != t {
                        s.traced |= bit(t);
                    }
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
            Phase::Installed { t, new } => {
                s.stores[i].phase = Phase::Done;
                if new == t {
                    // `saved(t -> t)`: the token stays live, and the journal says nothing of it.
                    "journals saved (the same refresh token); releases its locks"
                } else {
                    for &ok in appends(self, world) {
                        let mut s = s;
                        if ok {
                            s.saved |= bit(t);
                            s.traced |= bit(t);
                            out.push((step("journals saved; releases its locks"), s, None));
                        } else {
                            s.journal_failures += 1;
                            out.push((
                                step("journals saved: the append fails; releases its locks"),
                                s,
                                None,
                            ));
                        }
                    }
                    return;
                }
            }
        };
        out.push((step(what), s, None));
    }

    /// Step 7: store `i` sends `t`, with every answer the server may give.
    fn send(
        &self,
        i: usize,
        t: Token,
        informed: Informed,
        world: &World,
        out: &mut Vec<(Step, State, Option<Violation>)>,
    ) {
        let step = |what| Step {
            actor: Actor::Store(i as u8),
            what,
        };
        let unknown = self.unknowns < world.unknown_outcomes;
        let mut violation = None;
        if t != self.live {
            let other_knows = self
                .stores
                .iter()
                .enumerate()
                .any(|(o, p)| o != i && p.phase.may_have_spent() == Some(t));
            if informed == Informed::Knew || other_knows {
                violation = Some(Violation::TokenPresentedTwice {
                    token: t,
                    by: i as u8,
                    why: if other_knows {
                        "another live codex-store process had presented it (and no answer \
                         told it the token stays live)"
                    } else {
                        "the files showed it was presented (or sent without a known outcome \
                         less than the reuse wait ago) before the re-check"
                    },
                });
            } else if informed == Informed::WaitedOut {
                violation = Some(Violation::PresentedAgainAfterTheWait {
                    token: t,
                    by: i as u8,
                });
            }
            let mut s = *self;
            s.stores[i].phase = Phase::Refused { t };
            out.push((
                step("sends its token: refused (already used)"),
                s,
                violation.clone(),
            ));
            if unknown {
                let mut s = *self;
                s.unknowns += 1;
                s.stores[i].phase = Phase::Unanswered { t };
                out.push((
                    step("sends its token: no answer (the refusal is lost: timeout)"),
                    s,
                    violation,
                ));
            }
            return;
        }
        let mut s = *self;
        let new = s.issue();
        s.stores[i].phase = Phase::Answered { t, new };
        out.push((step("sends its token: answered a new one"), s, None));
        if world.keeps {
            let mut s = *self;
            s.stores[i].phase = Phase::Answered { t, new: t };
            out.push((
                step("sends its token: answered without a new refresh token (it stays live)"),
                s,
                None,
            ));
        }
        if unknown {
            let mut s = *self;
            s.unknowns += 1;
            s.issue();
            s.live_lost = true;
            s.stores[i].phase = Phase::Unanswered { t };
            out.push((
                step("sends its token: the server rotates it, the answer is lost (timeout, 5xx)"),
                s,
                None,
            ));
            let mut s = *self;
            s.unknowns += 1;
            s.stores[i].phase = Phase::Unanswered { t };
            out.push((
                step("sends its token: no answer, the server never saw it (timeout)"),
                s,
                None,
            ));
        }
    }

    /// `Reserved::abandon_recorded`: `record` journaled, then the rotation file removed; or, if
    /// the append fails, the file marked with `mark` (the outcome) and kept (its `flock`
    /// released: the file is closed). A file marked refused shows that its token is dead.
    #[allow(clippy::too_many_arguments)]
    fn abandon_recorded(
        &self,
        i: usize,
        s: State,
        world: &World,
        record: impl Fn(&mut State),
        mark: Mark,
        ok: &'static str,
        failed: &'static str,
        out: &mut Vec<(Step, State, Option<Violation>)>,
    ) {
        let step = |what| Step {
            actor: Actor::Store(i as u8),
            what,
        };
        for &appended in appends(self, world) {
            let mut s = s;
            if appended {
                record(&mut s);
                s.rotations[i] = None;
                out.push((step(ok), s, None));
            } else {
                s.journal_failures += 1;
                if let Some(r) = s.rotations[i].as_mut() {
                    r.content = Content::Marked(mark);
                    r.flocked = false;
                    if mark == Mark::Refused {
                        s.traced |= bit(r.redeemed);
                    }
                }
                out.push((step(failed), s, None));
            }
        }
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
        for u in self.unanswered.iter().flatten() {
            journal.push(format!(
                "unanswered(t{}{})",
                u.token,
                if u.expired { ", waited out" } else { "" }
            ));
        }
        if !journal.is_empty() {
            let _ = write!(out, " | journal {}", journal.join(" "));
        }
        for (o, r) in self.rotations.iter().enumerate() {
            if let Some(r) = r {
                let content = match r.content {
                    Content::Spaces => "spaces".to_string(),
                    Content::Half { rotated: true } => {
                        "half-written (the new refresh token whole)".to_string()
                    }
                    Content::Half { rotated: false } => {
                        "half-written (no new refresh token)".to_string()
                    }
                    Content::Marked(Mark::Refused) => "marked sent: refused".to_string(),
                    Content::Marked(Mark::Unanswered) => "marked sent: unanswered".to_string(),
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
