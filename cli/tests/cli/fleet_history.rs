//! The fleet's login through history (issue 16, items 3 and 4): an older auth.json restored on one
//! machine, and an etcd restored from a snapshot, never take the fleet's login back in time.
//! Simulated machines (separate homes, one `codex-store agent --fleet` each) share one login
//! through a real etcd started by the test, against the fake token endpoint enforcing rotation.
//!
//! Which token is live is decided by causality only (what each machine last synced, its journal,
//! the revisions), never by clocks. Orders are made by waiting for events (agent lines, requests
//! the endpoint counted, files holding a token); every wait is bounded. The harness is
//! [`crate::fleet_kit`].

use crate::fleet_kit::{Fleet, Setup, WAIT};
use crate::kit::{fingerprint, register_last_issued};

/// Tokens issued for this long are not due again during a test.
const LONG_LIFETIME: i64 = 2 * 3600;

/// `m` machines on a one-member etcd, the fleet seeded from machine 0 with a login due for the
/// agents in `due_in` seconds; no agent runs yet.
fn new_fleet(m: usize, due_in: i64) -> Fleet {
    Fleet::start(Setup {
        tag: "history",
        stop_within: WAIT,
        ..Setup::rotating(1, m, due_in)
    })
}

impl Fleet {
    /// Waits until every machine's auth.json holds the endpoint's live refresh token. Panics
    /// after [`WAIT`], naming the machines that lag.
    fn wait_all_live_or_lost(&self) {
        self.wait_all_live_within(WAIT, |lagging, live| {
            format!(
                "{lagging:?} do not hold the live token (refresh {}) {WAIT:?} after the \
                 rotation: it is lost there; agents:\n{}",
                fingerprint(live),
                self.agent_logs()
            )
        });
    }

    /// The guarantees after a run: one request per rotation, no refresh token presented twice.
    #[track_caller]
    fn assert_no_dead_token_and_one_request_per_rotation(&self) {
        register_last_issued(&self.idp);
        self.assert_no_reuse_refused(&format!(
            "a machine presented a used refresh token (the endpoint refused it {} time(s)): the \
             fleet's login went back to a dead token",
            self.idp.reuse_refusals()
        ));
        self.assert_requests_are_rotations("");
    }
}

#[test]
fn an_older_auth_json_restored_on_one_machine_is_kept_aside_and_never_replaces_the_live_token() {
    let mut fleet = new_fleet(3, 2);
    fleet.start_all();
    fleet.wait_rotations(1);
    // The second rotation's token lives long: it is the last one of the test.
    fleet.idp.set_access_token_lifetime(LONG_LIFETIME);
    fleet.wait_all_live_or_lost();
    // A backup of machine 1's auth.json, taken between the two rotations.
    let backup = std::fs::read(fleet.auth_json(1)).expect("read machine 1's auth.json");
    let old = fleet.idp.current_refresh_token();
    fleet.wait_rotations(2);
    fleet.wait_all_live_or_lost();
    let live = fleet.idp.current_refresh_token();
    assert_ne!(
        fingerprint(&old),
        fingerprint(&live),
        "the backup was taken after the second rotation: the test lost its premise"
    );
    let marks = fleet.stderr_marks();
    // The backup restored over machine 1's auth.json.
    crate::kit::write_file(&fleet.auth_json(1), &backup, 0o600);

    // Either it uploads the older token (the defect), or it reports what it found.
    let (old_fp, live_fp) = (fingerprint(&old), fingerprint(&live));
    let (machine, line) = fleet.wait_for_line_after(
        &marks,
        "an upload of the older token, or a report of it",
        |l| (l.contains("uploaded:") && l.contains(&old_fp)) || l.contains("older"),
    );
    assert!(
        !line.contains("uploaded:"),
        "{} uploaded the restored older auth.json (refresh {}) as the fleet's login over the \
         live one (refresh {}): {line}; agents:\n{}",
        fleet.machines[machine].name,
        fingerprint(&old),
        fingerprint(&live),
        fleet.agent_logs()
    );
    // Machine 1 says what it found: its auth.json held an older token of the fleet's login, by
    // fingerprint.
    let (reporter, report) = (machine, line);
    assert!(
        reporter == 1 && report.contains(&old_fp) && report.contains(&live_fp),
        "machine 1 must report the older auth.json, naming both refresh tokens by fingerprint \
         ({} here, {} the fleet's); got from {}: {report}",
        fingerprint(&old),
        fingerprint(&live),
        fleet.machines[reporter].name
    );
    fleet.wait_all_live_or_lost();
    assert_eq!(
        fleet.record_refresh(),
        Some(fingerprint(&live)),
        "the fleet's record no longer holds the live token; agents:\n{}",
        fleet.agent_logs()
    );
    let copies = fleet.replaced_copies(1);
    assert_eq!(
        copies.len(),
        1,
        "machine 1 must keep the restored auth.json beside the fleet's login, once: {copies:?}"
    );
    let kept = std::fs::read(&copies[0]).expect("read the kept copy");
    assert_eq!(
        kept, backup,
        "the kept copy on machine 1 is not the restored auth.json"
    );
    for i in [0, 2] {
        assert!(
            fleet.replaced_copies(i).is_empty(),
            "{}'s auth.json was replaced although it held the live token",
            fleet.machines[i].name
        );
    }
    fleet.stop_all();
    fleet.assert_no_dead_token_and_one_request_per_rotation();
}

#[test]
fn an_etcd_restored_from_a_snapshot_before_two_rotations_is_repaired_with_the_live_token() {
    let mut fleet = new_fleet(3, 2);
    // The operator's backup of etcd, taken when the fleet was seeded.
    let backup_dir = crate::kit::temp_home();
    let snapshot = backup_dir.path().join("etcd.snapshot");
    fleet.cluster.snapshot_save(0, &snapshot);
    let seeded = fleet.creds.refresh_token.clone();
    fleet.start_all();
    fleet.wait_rotations(1);
    // The second rotation's token lives long: it is the last one of the test.
    fleet.idp.set_access_token_lifetime(LONG_LIFETIME);
    fleet.wait_rotations(2);
    fleet.wait_all_live_or_lost();
    let live = fleet.idp.current_refresh_token();

    let marks = fleet.stderr_marks();
    fleet.cluster.restore_snapshot(&snapshot);
    // The agents' watches broke with the member: a rewrite of each auth.json with the same bytes
    // (as a Codex process saving unchanged tokens) makes each agent look at the fleet again.
    for i in 0..fleet.machines.len() {
        let path = fleet.auth_json(i);
        let bytes = std::fs::read(&path).expect("read auth.json");
        crate::kit::write_file(&path, bytes, 0o600);
    }

    // Either a machine mirrors the restored record (the defect), or one uploads what descends
    // from it.
    let seeded_fp = fingerprint(&seeded);
    let (machine, line) = fleet.wait_for_line_after(
        &marks,
        "an upload, or a mirror of the restored record",
        |l| l.contains("uploaded:") || (l.contains("mirrored:") && l.contains(&seeded_fp)),
    );
    assert!(
        line.contains("uploaded:") && line.contains(&fingerprint(&live)),
        "after etcd went back to the seeded login (refresh {}), {} did not upload the live token \
         (refresh {}) that descends from it: {line}; agents:\n{}",
        fingerprint(&seeded),
        fleet.machines[machine].name,
        fingerprint(&live),
        fleet.agent_logs()
    );
    fleet.wait_all_live_or_lost();
    assert_eq!(
        fleet.record_refresh(),
        Some(fingerprint(&live)),
        "the fleet did not converge on the live token; agents:\n{}",
        fleet.agent_logs()
    );
    for (i, from) in marks.iter().enumerate() {
        let stderr = fleet.stderr(i);
        let mirrored_old = stderr[*from..]
            .lines()
            .find(|l| l.contains("mirrored:") && l.contains(&fingerprint(&seeded)));
        assert!(
            mirrored_old.is_none(),
            "{} mirrored the restored, older record over its live token: {mirrored_old:?}",
            fleet.machines[i].name
        );
    }
    fleet.stop_all();
    fleet.assert_no_dead_token_and_one_request_per_rotation();
}
