//! A model of the refresh protocol, checked by an explicit-state search of our own (issue 15):
//! codex-store processes and a Codex 0.171 process in every interleaving, deaths at every step,
//! the refresh lock file deleted and re-created, and (in some worlds) the user signing in again,
//! auth.json rewritten with the same tokens, answers that keep the refresh token, requests
//! without a known outcome, and journal appends that fail.
//!
//! # The model ([`protocol`])
//!
//! - The token server: a chain t0, t1, ...; `live` is the newest. Presenting the live token
//!   rotates it (the answer is the next one), or (in worlds with `keeps`, chosen per answer to
//!   codex-store) answers without a new refresh token: the presented one stays live. Presenting
//!   any other is refused ("already used"). In worlds with `unknown_outcomes`, a codex-store
//!   request may end without an answer (a timeout, a 5xx): after the server rotated (the new
//!   token dies with the lost answer), or before it saw the request (nothing changed); a
//!   refusal may be lost the same way.
//! - auth.json: a token and a generation, bumped by every write; the two differ where it
//!   matters: a rewrite of the same refresh token (`rewrites`: Codex writing an answer that kept
//!   the token, an older Codex writing in place, a writer ignoring the locks) is a new
//!   generation of the same token. The journal: `refused`, `spent` and `saved` records by token
//!   (a `saved(t -> t)`, the record of an answer that kept the token, makes nothing spent, as in
//!   `journal::fate_of`), and the `unanswered(t)` records in order, each with whether the reuse
//!   wait since it has passed (`redeeming` and `recovered` records are not modelled: no step
//!   decides on the first, and after the second auth.json holds the new token, which tells every
//!   later reader more). The rotation files, one per codex-store process at most: base
//!   generation, redeemed token, content (spaces / half-written, with or without the new
//!   refresh token whole / marked "sent" with the outcome its owner could not journal / the
//!   answer, durable) and whether its owner holds an `flock` on it. The refresh lock file: an
//!   inode number; deleting it makes a new inode.
//! - The write locks (`auth.lock` + `auth.json.lock`): every step taken under them is one atomic
//!   step, so they need no state (a death under them is a death just before or after the step).
//! - A codex-store process refreshes once, starting again only after waiting out an
//!   `unanswered` record: (1) takes the refresh lock if no live process holds the current inode;
//!   (2) recovery; (3) reads auth.json; (4) checks the journal and the rotation files: a
//!   `refused`/`spent`/rotated `saved` record or a rotation file of its token stops it; an
//!   `unanswered` record less than the reuse wait old makes it release the refresh lock and wait
//!   (`wait_for_rotation`) until auth.json holds another token (adopted: done) or the reuse wait
//!   ends (a step of the environment), then start again (`Pass::Again`, within the world's
//!   `restarts`); (5) reserves its rotation file (+ its `flock` with change A); (6) re-checks
//!   under the write locks (change B, `Reserved::check_again`: auth.json still holds the token
//!   it read, whatever its generation; the journal's word on the token unchanged, the same
//!   `unanswered` record or none; no other rotation file of the token; without B a step that
//!   does nothing); (7) sends; (8) on a refusal journals it and removes its file (with change C
//!   in one step, the journal first; without, the file first and the journal in a later step);
//!   on no answer journals `unanswered(t)`, then removes its file (`abandon_recorded`); when the
//!   journal append fails (`journal_failures`), marks the file "sent" with that outcome
//!   (`refused` / `unanswered`) and keeps it instead; (9) writes the answer, not yet fsynced
//!   (what a crash leaves of it holds the new refresh token whole, or not: both are explored;
//!   an answer that kept the token shows no new one), then fsyncs it; (10) installs under the
//!   write locks (rename if auth.json is still its base generation, else merge if auth.json
//!   holds the redeemed token (change D; without D: always merge), else discard), then journals
//!   `saved` (best effort: the append may fail). It may die between any two steps: its
//!   `flock`s go, its files stay.
//! - The recovery journals what an unreadable rotation file shows (change C), then removes it
//!   (`recovery.rs`, `judge_bytes`): `spent(t)` for a half-written answer whose new refresh
//!   token reached the disk whole (`partial_refresh_token`), `unanswered(t)` for any other
//!   half-written one (cut before the token, or an answer that kept it: sent, outcome unknown),
//!   and for a file marked "sent" the outcome the mark names (`refused(t)` or
//!   `unanswered(t)`); if that append fails, the file stays.
//! - Codex 0.171 reads auth.json, sends its (always due) token before taking any lock, and on an
//!   answer writes it into auth.json under the write locks (no merge); refused, it is stuck. It
//!   may refresh twice, and die at any step. It never looks at the refresh lock, the journal or
//!   the rotation files. Its answers always rotate (an answer of Codex that keeps the token is a
//!   same-token rewrite, `rewrites`; one written over a newer token is Codex's own loss).
//! - Assumptions, each an atomic step: creating a rotation file and taking its `flock` (the code
//!   checks after the `flock` that the name still is its inode, and gives up otherwise); the
//!   whole recovery (under the write locks; within it what an unreadable file shows is
//!   journaled before the file goes); taking the refresh lock (the code checks after the
//!   `flock` that the path still names the inode it locked); a write of auth.json, also by a
//!   writer ignoring the locks (the save's compare-and-swap is not modelled). Not modelled:
//!   other accounts, logouts, answers the code cannot use (`unusable_answer`, and the file
//!   marked "sent: spent" it leaves when its record cannot be journaled), the waits after a
//!   re-check that fails or a rotation file of the token owned by another refresh (the model's
//!   process stops there instead of waiting and starting again), a codex-store process
//!   refreshing more than once.
//!
//! # The properties
//!
//! **P1, no token presented twice.** Checked when a codex-store process sends token `t`. It is a
//! violation iff `t` is no longer live (someone presented it before and was not told it stays
//! live: presenting a token is the only way it dies) and the process could have known:
//! - at its re-check (step 6, the last moment before the request that can be under the write
//!   locks; the step exists without change B too, doing nothing) the files already *showed*
//!   that `t` had been presented: a rotation file redeeming `t` had received an answer to
//!   another token (durable, or half-written with that token whole: what the recovery journals
//!   `spent`) or had been marked refused, or the journal held `refused`/`spent`/rotated `saved`
//!   for `t`, or auth.json had been written with a later token; or the journal held an
//!   `unanswered(t)` record less than the reuse wait old. The first kind of evidence is sticky
//!   ([`protocol::State::traced`]): a file that showed it and was removed without passing it on
//!   (a half-written rotation discarded without `spent`) still counts, since the process that
//!   removed it knew; or
//! - when it sends, another *live* codex-store process has sent `t` and got no answer that
//!   kept it (two codex-store processes redeeming one token is always ours to prevent, whatever
//!   the files say).
//!
//! So these second presentations are allowed: after Codex presented the token and had not yet
//! written its answer (Codex tells nobody before it writes), or was refused, or died; after a
//! codex-store process died between sending and the first byte of its answer in its rotation
//! file (its file holds only spaces: nobody can tell a request that was never sent from one whose
//! answer died); once more after a request without a known outcome, only when the reuse wait
//! since its `unanswered` record has passed (the first sender's answer was lost, like a death;
//! the test `p1_allows_a_token_sent_without_a_known_outcome_to_be_sent_once_more_after_the_reuse_wait`
//! shows the search reaches it), whoever journaled that record: its sender, or a recovery that
//! found the sender's answer cut off by a death before a new refresh token reached the file
//! (nobody can tell an answer that kept the token from one that rotated it: the test
//! `p1_allows_a_token_whose_answer_a_death_cut_off_before_a_new_token_to_be_sent_once_more_after_the_reuse_wait`)
//! or its file marked "sent: unanswered"; and when Codex wrote between the re-check and the
//! request (an unavoidable window: the request cannot be made under the write locks, Codex would
//! wait for them). This is the issue's "except after a death between sending and the durable
//! write", narrowed to "before the answer's new refresh token reached the file", and "count only
//! codex-store presenting second while it could know better", made precise as above.
//! Presentations by Codex are never counted.
//!
//! **P2, no rotation lost.** In every quiescent state (no process in the middle of a refresh:
//! each has not begun, is done, refused, stuck or dead; this includes every terminal state),
//! after one final recovery by a fresh codex-store process (no `flock` is held any more),
//! auth.json holds the server's live token, unless the answer that issued it died with its
//! receiver: a codex-store process that died after sending and before its answer was durable
//! (fsynced) in its rotation file, a request whose answer was lost (timeout, 5xx after the
//! server rotated), or Codex dying before its write. A live process whose answer is left only
//! in its memory (its rotation file removed by someone else) loses it: that counts.
//!
//! **P3, the live token is never journaled dead.** In no state does the journal hold
//! `refused(t)`, `spent(t)` or a rotated `saved(t)` for the server's live token `t`: every
//! codex-store process would refuse to send it (it waits for a rotation that never comes, then
//! says "sign in again"), although the login is fine.
//!
//! # What the search finds
//!
//! With all four changes: nothing, exhaustively, in every world of the tests (P1, P2 and P3;
//! a search that several tests need runs once). Each change removed alone: see the tests
//! `without_*`. Change D is needed only once someone writes auth.json with tokens that are not the answer to the
//! redeemed one while a save is under way: a new sign-in, or Codex rotating a token whose
//! codex-store answer kept it (see `without_d_*`). Without either, every
//! write of auth.json is the answer to the live token, so a save whose own request was answered
//! never finds newer tokens there and the discard branch is never reached (the state count is
//! the same with and without D). Without the wait for `unanswered` records, a token is sent
//! again during the reuse wait.
//!
//! All three also hold with answers that keep the token, with same-token rewrites, with
//! requests of unknown outcome and with failing journal appends, each world separately and all
//! of them together with two codex-store processes (smaller worlds than [`EVERYTHING`]: these
//! multiply the states; see the constants).
//!
//! P3 holds since e22830a. Before it, the recovery journaled `spent(t)` for every unreadable
//! rotation file, and the model found the live token journaled spent in two ways: an answer
//! that kept the refresh token, cut off in its rotation file by a crash before its fsync
//! (11 steps), and a request the server never saw whose `unanswered` record could not be
//! journaled, its file marked "sent" (10 steps). In both the file proved only that `t` was
//! sent, not that it was rotated away. Now the recovery journals `spent(t)` only when a new
//! refresh token reached the file whole, and a marked file names its outcome: the recovery
//! journals both files `unanswered(t)`, the next sender waits out the reuse wait and sends `t`
//! once more (an allowed presentation, above). The tests that found the counterexamples now
//! show that the search reaches those situations, with the recovery journaling the live token
//! `unanswered`, and that P3 holds in their worlds.

mod protocol;
mod search;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use protocol::{Fixes, JournalFirst, Violation, World};
use search::{Outcome, Properties};

/// Three codex-store processes, Codex refreshing twice, deaths at every step, the refresh lock
/// file deleted up to twice.
const EVERYTHING: World = World {
    stores: 3,
    codex_refreshes: 2,
    crashes: true,
    lock_deletions: 2,
    sign_ins: 0,
    ..World::EMPTY
};

/// [`EVERYTHING`] but smaller (Codex refreshes once, one deletion): for the searches that are
/// expected to find nothing, for a change they do not depend on.
const SMALLER: World = World {
    stores: 3,
    codex_refreshes: 1,
    crashes: true,
    lock_deletions: 1,
    sign_ins: 0,
    ..World::EMPTY
};

/// Three codex-store processes, deaths, two lock deletions, and the user signing in again
/// once. No Codex: Codex writes its answer over a new sign-in (it does not merge), which loses
/// the sign-in by Codex's own doing, not ours.
const SIGN_IN: World = World {
    stores: 3,
    codex_refreshes: 0,
    crashes: true,
    lock_deletions: 2,
    sign_ins: 1,
    ..World::EMPTY
};

/// No faults at all: no death, no lock deletion.
const NO_FAULTS: World = World {
    stores: 3,
    codex_refreshes: 2,
    crashes: false,
    lock_deletions: 0,
    sign_ins: 0,
    ..World::EMPTY
};

/// [`SMALLER`] with auth.json rewritten twice with the tokens it holds (another generation).
const REWRITES: World = World {
    rewrites: 2,
    ..SMALLER
};

/// Answers that keep the refresh token (chosen per answer) and one same-token rewrite, no
/// death.
const KEEPS_NO_FAULTS: World = World {
    stores: 3,
    codex_refreshes: 1,
    lock_deletions: 1,
    keeps: true,
    rewrites: 1,
    ..World::EMPTY
};

/// [`KEEPS_NO_FAULTS`] with deaths: answers that kept the token cut off in their rotation files.
const KEEPS: World = World {
    crashes: true,
    ..KEEPS_NO_FAULTS
};

/// Two requests without a known outcome, a process starting again twice after the reuse wait,
/// deaths, one lock deletion, Codex once.
const UNKNOWN_OUTCOMES: World = World {
    unknown_outcomes: 2,
    restarts: 2,
    ..SMALLER
};

/// [`UNKNOWN_OUTCOMES`] with two journal appends that fail (rotation files marked "sent" with
/// their outcome), one restart.
const JOURNAL_FAILURES: World = World {
    journal_failures: 2,
    restarts: 1,
    ..UNKNOWN_OUTCOMES
};

/// Every new behaviour at once, with two codex-store processes (three would take minutes):
/// answers that keep the token, two same-token rewrites, two requests without a known outcome,
/// two failing journal appends, two restarts, two lock deletions, deaths, Codex once.
const ALL_BEHAVIOURS: World = World {
    stores: 2,
    codex_refreshes: 1,
    crashes: true,
    lock_deletions: 2,
    sign_ins: 0,
    keeps: true,
    rewrites: 2,
    unknown_outcomes: 2,
    journal_failures: 2,
    restarts: 2,
};

fn without(change: char) -> Fixes {
    let mut f = Fixes::ALL;
    match change {
        'a' => f.a = false,
        'b' => f.b = false,
        'c' => f.c = JournalFirst::OFF,
        'd' => f.d = false,
        _ => unreachable!(),
    }
    f
}

/// [`search::explore`], each search once: several tests search the same world for what they
/// claim (and the tests run in parallel: one waits for the other's search).
fn explore(world: World, fixes: Fixes, properties: Properties) -> Outcome {
    type Searches = Mutex<HashMap<String, Arc<OnceLock<Outcome>>>>;
    static SEARCHES: OnceLock<Searches> = OnceLock::new();
    let cell = SEARCHES
        .get_or_init(Searches::default)
        .lock()
        .unwrap()
        .entry(format!("{world:?} {fixes:?} {properties:?}"))
        .or_default()
        .clone();
    cell.get_or_init(|| search::explore(world, fixes, properties))
        .clone()
}

/// Runs a search of P1, P2 and P3 that must find nothing and must explore at least
/// `min_states` states.
fn expect_nothing(what: &str, world: World, fixes: Fixes, min_states: usize) -> Outcome {
    let outcome = explore(world, fixes, Properties::ALL);
    eprintln!("{what}: {}", outcome.stats());
    if let Some((violation, trace)) = &outcome.violation {
        panic!(
            "{what}: the search found {violation:?} ({}); the counterexample:\n{trace}",
            outcome.stats()
        );
    }
    assert!(
        outcome.states >= min_states,
        "{what}: only {} states explored, fewer than {min_states}: the model explores too \
         little to mean anything",
        outcome.states
    );
    outcome
}

/// Runs a search that must find a violation; prints its (shortest) trace and returns it.
fn expect_violation(
    what: &str,
    world: World,
    fixes: Fixes,
    properties: Properties,
) -> (Violation, String) {
    let outcome = explore(world, fixes, properties);
    eprintln!("{what}: {}", outcome.stats());
    let Some((violation, trace)) = outcome.violation else {
        panic!(
            "{what}: the search found no violation in {}, but one was expected",
            outcome.stats()
        );
    };
    eprintln!("{what}: {violation:?}, shortest trace:\n{trace}");
    (violation, trace)
}

#[test]
fn the_protocol_with_all_four_changes_presents_no_token_twice_and_loses_no_rotation() {
    let outcome = expect_nothing(
        "all four changes, 3 stores, Codex x2, deaths, 2 lock deletions",
        EVERYTHING,
        Fixes::ALL,
        1_000_000,
    );
    assert!(
        outcome.terminals > 10_000,
        "only {} quiescent states: P2 was hardly checked",
        outcome.terminals
    );
}

#[test]
fn the_protocol_with_all_four_changes_loses_no_rotation_when_the_user_signs_in_again() {
    expect_nothing(
        "all four changes, 3 stores, a new sign-in, deaths, 2 lock deletions",
        SIGN_IN,
        Fixes::ALL,
        100_000,
    );
}

#[test]
fn without_faults_and_without_codex_the_model_finds_nothing_even_with_all_four_changes_removed() {
    let world = World {
        codex_refreshes: 0,
        ..NO_FAULTS
    };
    expect_nothing("no change, no fault, no Codex", world, Fixes::NONE, 100);
}

#[test]
fn without_faults_the_recheck_alone_suffices_next_to_codex() {
    let only_b = Fixes {
        b: true,
        ..Fixes::NONE
    };
    expect_nothing(
        "only change B, no fault, 3 stores, Codex x2",
        NO_FAULTS,
        only_b,
        4_000,
    );
}

#[test]
fn without_a_the_model_finds_a_live_reservation_recovered_and_its_token_presented_twice() {
    let (violation, trace) = expect_violation(
        "without A (P1 only)",
        EVERYTHING,
        without('a'),
        Properties::PRESENTED_TWICE,
    );
    assert!(
        matches!(violation, Violation::TokenPresentedTwice { .. }),
        "without A: expected a token presented twice, found {violation:?}:\n{trace}"
    );
    assert!(trace.contains("deletes the refresh lock file"), "{trace}");
}

#[test]
fn without_a_the_model_also_finds_a_rotation_lost() {
    let (violation, trace) = expect_violation(
        "without A (P2 only)",
        SMALLER,
        without('a'),
        Properties::LOST_ROTATION,
    );
    assert!(
        matches!(violation, Violation::RotationLost { .. }),
        "without A: expected a lost rotation, found {violation:?}:\n{trace}"
    );
}

#[test]
fn without_b_the_model_finds_a_token_presented_after_codex_rotated_it_even_without_faults() {
    let (violation, trace) = expect_violation(
        "without B, no fault",
        NO_FAULTS,
        without('b'),
        Properties::ALL,
    );
    assert!(
        matches!(violation, Violation::TokenPresentedTwice { .. }),
        "without B: expected a token presented twice, found {violation:?}:\n{trace}"
    );
}

#[test]
fn without_b_the_model_finds_two_stores_redeeming_one_token_after_a_lock_deletion() {
    // Without Codex, only a deleted lock file lets two codex-store processes read one token.
    let world = World {
        codex_refreshes: 0,
        ..EVERYTHING
    };
    let (violation, trace) =
        expect_violation("without B, no Codex", world, without('b'), Properties::ALL);
    assert!(
        matches!(violation, Violation::TokenPresentedTwice { .. }),
        "without B: expected a token presented twice, found {violation:?}:\n{trace}"
    );
    assert!(trace.contains("deletes the refresh lock file"), "{trace}");
}

#[test]
fn without_c_the_model_finds_a_token_presented_again_after_its_answer_was_known() {
    let (violation, trace) =
        expect_violation("without C", EVERYTHING, without('c'), Properties::ALL);
    assert!(
        matches!(violation, Violation::TokenPresentedTwice { .. }),
        "without C: expected a token presented twice, found {violation:?}:\n{trace}"
    );
}

#[test]
fn without_journaling_the_refusal_before_removing_the_file_the_model_finds_a_refused_token_sent_again(
) {
    let fixes = Fixes {
        c: JournalFirst {
            refusal: false,
            unreadable: true,
        },
        ..Fixes::ALL
    };
    let (violation, trace) = expect_violation(
        "without C's refusal first",
        EVERYTHING,
        fixes,
        Properties::ALL,
    );
    assert!(
        matches!(violation, Violation::TokenPresentedTwice { .. }),
        "expected a token presented twice, found {violation:?}:\n{trace}"
    );
    assert!(trace.contains("refusal not yet journaled"), "{trace}");
}

#[test]
fn without_journaling_a_half_written_rotation_as_spent_the_model_finds_its_token_sent_again() {
    let fixes = Fixes {
        c: JournalFirst {
            refusal: true,
            unreadable: false,
        },
        ..Fixes::ALL
    };
    let (violation, trace) =
        expect_violation("without C's spent", EVERYTHING, fixes, Properties::ALL);
    assert!(
        matches!(violation, Violation::TokenPresentedTwice { .. }),
        "expected a token presented twice, found {violation:?}:\n{trace}"
    );
    assert!(trace.contains("half-written"), "{trace}");
}

#[test]
fn without_d_the_model_finds_a_new_sign_in_overwritten_by_an_older_rotation() {
    let (violation, trace) = expect_violation("without D", SIGN_IN, without('d'), Properties::ALL);
    assert!(
        matches!(violation, Violation::RotationLost { .. }),
        "without D: expected a lost rotation, found {violation:?}:\n{trace}"
    );
    assert!(trace.contains("signs in again"), "{trace}");
}

#[test]
fn without_d_but_without_a_new_sign_in_the_model_finds_nothing() {
    // Not a success: the model shows that D matters only when auth.json receives tokens that
    // are not the answer to the redeemed one during a save (a sign-in, or Codex rotating a
    // token whose answer kept it: see the module's documentation).
    let with_d = expect_nothing("all changes, smaller world", SMALLER, Fixes::ALL, 100_000);
    let without_d = expect_nothing("without D, smaller world", SMALLER, without('d'), 100_000);
    assert_eq!(
        with_d.states, without_d.states,
        "without D the state space differs, so the branch D guards is reachable without a \
         sign-in: the module's documentation is out of date"
    );
}

#[test]
fn without_d_the_model_finds_codex_rotation_overwritten_by_an_answer_that_kept_the_token() {
    let (violation, trace) = expect_violation(
        "without D, answers that keep the token",
        KEEPS,
        without('d'),
        Properties::SAFETY,
    );
    assert!(
        matches!(violation, Violation::RotationLost { .. }),
        "without D: expected a lost rotation, found {violation:?}:\n{trace}"
    );
    assert!(
        trace.contains("answered without a new refresh token"),
        "without D: expected the lost rotation to involve an answer that kept the token:\n{trace}"
    );
    assert!(
        !trace.contains("signs in again"),
        "without D: expected no sign-in in this world:\n{trace}"
    );
}

#[test]
fn rewrites_of_the_same_tokens_during_a_refresh_present_no_token_twice_and_lose_no_rotation() {
    let outcome = expect_nothing(
        "all changes, 3 stores, Codex x1, deaths, 1 lock deletion, 2 same-token rewrites",
        REWRITES,
        Fixes::ALL,
        500_000,
    );
    let without = expect_nothing(
        "all changes, the same world without rewrites",
        SMALLER,
        Fixes::ALL,
        100_000,
    );
    assert!(
        outcome.states > without.states,
        "the rewrites add no state ({} with, {} without): they are not modelled",
        outcome.states,
        without.states
    );
}

#[test]
fn without_faults_an_answer_that_keeps_the_refresh_token_is_never_journaled_spent() {
    expect_nothing(
        "all changes, answers that keep the token, 1 same-token rewrite, 3 stores, Codex x1, \
         1 lock deletion, no death",
        KEEPS_NO_FAULTS,
        Fixes::ALL,
        100_000,
    );
}

#[test]
fn with_deaths_answers_that_keep_the_refresh_token_present_no_token_twice_and_lose_no_rotation() {
    // The same search as the one for P3 below (one search, all three properties).
    expect_nothing(
        "all changes, answers that keep the token, deaths",
        KEEPS,
        Fixes::ALL,
        500_000,
    );
}

/// Once found by the model (the recovery journaled the token of a half-written rotation file
/// spent, though the answer may have kept it): a death that cuts off an answer that kept the
/// token now leaves it journaled `unanswered`, and in no state is the live token journaled
/// refused or spent.
#[test]
fn a_death_that_cuts_off_an_answer_that_kept_the_token_leaves_it_journaled_unanswered_never_spent()
{
    let (violation, trace) = expect_violation(
        "the recovery journals the live token unanswered, answers that keep the token, deaths",
        KEEPS,
        Fixes::ALL,
        Properties {
            live_token_unanswered: true,
            ..Properties::NONE
        },
    );
    assert!(
        matches!(violation, Violation::LiveTokenJournaledUnanswered { .. }),
        "expected the live token journaled unanswered, found {violation:?}:\n{trace}"
    );
    for step in [
        "answered without a new refresh token",
        "writes the answer into its rotation file (not fsynced)",
        "dies",
        "runs the recovery",
    ] {
        assert!(
            trace.contains(step),
            "expected the trace to contain {step:?}:\n{trace}"
        );
    }
    expect_nothing(
        "all changes, answers that keep the token, deaths",
        KEEPS,
        Fixes::ALL,
        1_000_000,
    );
}

#[test]
fn a_token_sent_without_a_known_outcome_is_sent_again_only_after_the_reuse_wait() {
    expect_nothing(
        "all changes, 2 unknown outcomes, 2 restarts, 3 stores, Codex x1, deaths, 1 lock deletion",
        UNKNOWN_OUTCOMES,
        Fixes::ALL,
        300_000,
    );
}

#[test]
fn p1_allows_a_token_sent_without_a_known_outcome_to_be_sent_once_more_after_the_reuse_wait() {
    // The allowance is not vacuous: the search reaches the second presentation it allows.
    let properties = Properties {
        resend_after_the_wait: true,
        ..Properties::ALL
    };
    let (violation, trace) = expect_violation(
        "the resend P1 allows",
        UNKNOWN_OUTCOMES,
        Fixes::ALL,
        properties,
    );
    assert!(
        matches!(violation, Violation::PresentedAgainAfterTheWait { .. }),
        "expected the resend after the reuse wait, found {violation:?}:\n{trace}"
    );
    for step in [
        "the server rotates it, the answer is lost",
        "journals unanswered",
        "the reuse wait since an unanswered record ends",
        "the reuse wait since has passed",
    ] {
        assert!(
            trace.contains(step),
            "expected the trace to contain {step:?}:\n{trace}"
        );
    }
}

#[test]
fn p1_allows_a_token_whose_answer_a_death_cut_off_before_a_new_token_to_be_sent_once_more_after_the_reuse_wait(
) {
    // The recovery journals such a file `unanswered` (the answer may have kept the token): the
    // next sender waits out the reuse wait, then sends the token once more, which P1 allows. The
    // search reaches it in a world without requests of unknown outcome (every `unanswered`
    // record there is the recovery's); that no token is sent again otherwise is searched in
    // every world with deaths.
    let properties = Properties {
        resend_after_the_wait: true,
        ..Properties::ALL
    };
    let (violation, trace) = expect_violation(
        "the resend P1 allows after a cut-off answer",
        SMALLER,
        Fixes::ALL,
        properties,
    );
    assert!(
        matches!(violation, Violation::PresentedAgainAfterTheWait { .. }),
        "expected the resend after the reuse wait, found {violation:?}:\n{trace}"
    );
    for step in [
        "the new refresh token not yet on disk",
        "dies",
        "runs the recovery",
        "the reuse wait since an unanswered record ends",
        "the reuse wait since has passed",
    ] {
        assert!(
            trace.contains(step),
            "expected the trace to contain {step:?}:\n{trace}"
        );
    }
}

#[test]
fn without_waiting_for_an_unanswered_token_the_model_finds_it_sent_again_during_the_reuse_wait() {
    let fixes = Fixes {
        wait_unanswered: false,
        ..Fixes::ALL
    };
    let (violation, trace) = expect_violation(
        "without the wait for unanswered records",
        UNKNOWN_OUTCOMES,
        fixes,
        Properties::ALL,
    );
    assert!(
        matches!(violation, Violation::TokenPresentedTwice { .. }),
        "without the wait: expected a token presented twice, found {violation:?}:\n{trace}"
    );
    assert!(
        trace.contains("less than the reuse wait ago; does not wait"),
        "without the wait: expected the token sent during the reuse wait:\n{trace}"
    );
}

#[test]
fn with_failing_journal_appends_no_token_is_presented_twice_and_no_rotation_lost() {
    // The same search as the one for P3 below (one search, all three properties).
    expect_nothing(
        "all changes, 2 failing journal appends, 2 unknown outcomes, deaths",
        JOURNAL_FAILURES,
        Fixes::ALL,
        500_000,
    );
}

/// Once found by the model (the recovery journaled the token of a rotation file marked "sent"
/// spent, though the server may never have seen the request): the outcome the journal could not
/// take is journaled by the recovery, and in no state is the live token journaled refused or
/// spent.
#[test]
fn an_outcome_the_journal_could_not_take_is_journaled_by_the_recovery_and_the_live_token_never_spent(
) {
    let (violation, trace) = expect_violation(
        "the recovery journals the live token unanswered, failing journal appends, unknown \
         outcomes",
        JOURNAL_FAILURES,
        Fixes::ALL,
        Properties {
            live_token_unanswered: true,
            ..Properties::NONE
        },
    );
    assert!(
        matches!(violation, Violation::LiveTokenJournaledUnanswered { .. }),
        "expected the live token journaled unanswered, found {violation:?}:\n{trace}"
    );
    for step in [
        "the server never saw it",
        "journals unanswered: the append fails; marks its rotation file (sent: unanswered)",
        "runs the recovery",
    ] {
        assert!(
            trace.contains(step),
            "expected the trace to contain {step:?}:\n{trace}"
        );
    }
    expect_nothing(
        "all changes, 2 failing journal appends, 2 unknown outcomes, deaths",
        JOURNAL_FAILURES,
        Fixes::ALL,
        1_000_000,
    );
}

#[test]
fn with_every_new_behaviour_at_once_two_stores_present_no_token_twice_and_lose_no_rotation() {
    // P3 too (it holds everywhere now).
    expect_nothing(
        "all changes, 2 stores, keeps, rewrites, unknown outcomes, journal failures, restarts, \
         deaths, 2 lock deletions",
        ALL_BEHAVIOURS,
        Fixes::ALL,
        300_000,
    );
}
