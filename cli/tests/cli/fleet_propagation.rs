//! How a rotation reaches the machines of a fleet (issue 20): as the watch event itself, with no
//! request of the machines that did not make it, and made by the machine that made the last one
//! while it runs, by another one when it is gone. Real etcd, real `codex-store agent --fleet`
//! processes, each machine reaching etcd through a proxy of its own that counts its requests.
//!
//! Every wait is bounded; a bound only turns a hang into a failure. The harness is
//! [`crate::fleet_kit`].

use crate::fleet_kit::{etcd_get, Fleet, WAIT};
use serde_json::Value;

/// The machine that made the record's last change (`<prefix>/rotation`'s `machine`), and its
/// kind.
fn last_rotation(fleet: &Fleet) -> (String, String) {
    let kv = etcd_get(&fleet.cluster, &format!("{}/rotation", fleet.prefix))
        .expect("the fleet record's last rotation is described in etcd");
    let meta: Value = serde_json::from_slice(&kv.value).expect("the rotation is JSON");
    let field = |name: &str| meta[name].as_str().unwrap_or_default().to_owned();
    (field("machine"), field("kind"))
}

/// Waits until the endpoint rotated `n` times and every machine holds the live token.
fn settle_after(fleet: &Fleet, n: usize) {
    fleet.wait_rotations(n);
    fleet.wait_all_live_within(WAIT, |lag, live| {
        format!(
            "rotation {n} ({live}) did not reach {lag:?} within {WAIT:?}; agents:\n{}",
            fleet.agent_logs()
        )
    });
}

#[test]
fn a_rotation_reaches_the_machines_that_did_not_make_it_from_the_watch_without_a_request_of_theirs()
{
    let mut fleet = Fleet::new(1, 3, 3);
    fleet.start_all();
    // The first rotation: the agents' start-up reads and watches are behind it.
    settle_after(&fleet, 1);
    let (maker, kind) = last_rotation(&fleet);
    assert_eq!(kind, "refreshed", "the first rotation was not a refresh");
    let before: Vec<u64> = fleet.machines.iter().map(|m| m.link().requests()).collect();

    settle_after(&fleet, 2);
    let (next_maker, _) = last_rotation(&fleet);
    assert_eq!(
        next_maker,
        maker,
        "the machine that made the last rotation must make the next one while it runs (the \
         others let it go first); agents:\n{}",
        fleet.agent_logs()
    );
    for (i, machine) in fleet.machines.iter().enumerate() {
        if machine.name == maker {
            continue;
        }
        let requests = machine.link().requests() - before[i];
        assert_eq!(
            requests,
            0,
            "{} made {requests} etcd request(s) for a rotation it did not make: the watch event \
             carries the new record, and it must neither read it again nor race the holder for \
             the lock; agents:\n{}",
            machine.name,
            fleet.agent_logs()
        );
    }
    assert_eq!(
        fleet.idp.requests(),
        2,
        "two rotations must take two requests; agents:\n{}",
        fleet.agent_logs()
    );
}

#[test]
fn when_the_machine_that_made_the_last_rotation_is_gone_another_refreshes_after_its_grace() {
    // Seeded from machine 0, whose agent never runs: the record's last change names it.
    let mut fleet = Fleet::new(1, 2, 3);
    fleet.start_agent(1);
    fleet.wait_rotations(1);
    // The holder saves the new tokens here first, then publishes them.
    fleet.wait_until("the fleet record holds the rotated login", || {
        fleet.record_refresh_token().as_deref() == Some(fleet.idp.current_refresh_token().as_str())
    });
    let (maker, kind) = last_rotation(&fleet);
    assert_eq!(
        (maker.as_str(), kind.as_str()),
        ("machine-1", "refreshed"),
        "with the machine that made the last change gone, the one running must refresh; its \
         agent:\n{}",
        fleet.agent_logs()
    );
    assert_eq!(
        fleet.idp.requests(),
        1,
        "one rotation must take one request; agents:\n{}",
        fleet.agent_logs()
    );
}
