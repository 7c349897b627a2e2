//! `login`, `logout` and `fleet seed` when the fleet cannot be reached: what was done here is
//! said, what was not is not, and no credential is lost because the fleet failed.

use crate::kit::{api_key, exit, run, temp_home};

/// An http:// endpoint on the loopback where nothing listens.
fn dead_fleet() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port();
    format!("http://127.0.0.1:{port}")
}

#[test]
fn login_with_an_unreachable_fleet_keeps_the_key_stored_here_says_so_and_exits_1() {
    let home = temp_home();
    let key = api_key();
    let fleet = dead_fleet();
    let out = run(
        home.path(),
        &["login", "--with-api-key", "--fleet", &fleet],
        Some(&key),
        &[],
    );
    out.expect_code(exit::OTHER, "login with an unreachable fleet")
        .expect_stdout_contains(
            &["Stored an API key in"],
            "login must say the key was stored here although the fleet failed",
        )
        .expect_stderr_contains(
            &["no etcd endpoint of the fleet answered"],
            "login must say the fleet could not be reached",
        );
    assert!(
        !out.stdout.contains("fleet's login"),
        "login claimed the fleet took the key: {}",
        out.describe()
    );
    let stored = std::fs::read_to_string(home.path().join("auth.json")).unwrap_or_default();
    assert!(
        stored.contains(&key),
        "the key is not in auth.json although login said it was stored: {}",
        out.describe()
    );
}

#[test]
fn logout_with_an_unreachable_fleet_removes_nothing_here_and_says_nothing_was_removed() {
    let home = temp_home();
    let key = api_key();
    run(home.path(), &["login", "--with-api-key"], Some(&key), &[])
        .expect_code(exit::OK, "login without a fleet");
    let before = std::fs::read(home.path().join("auth.json")).expect("auth.json after login");
    let fleet = dead_fleet();
    let out = run(home.path(), &["logout", "--fleet", &fleet], None, &[]);
    out.expect_code(exit::OTHER, "logout with an unreachable fleet")
        .expect_stderr_contains(
            &["no etcd endpoint of the fleet answered"],
            "logout must say the fleet could not be reached",
        );
    assert!(
        !out.stdout.contains("Removed") && !out.stdout.contains("No login to remove"),
        "logout reported a removal although the fleet could not be signed out: {}",
        out.describe()
    );
    assert_eq!(
        std::fs::read(home.path().join("auth.json")).ok(),
        Some(before),
        "logout changed this machine's credentials although the fleet could not be signed out"
    );
}

#[test]
fn fleet_seed_from_a_home_without_credentials_exits_1_and_says_to_sign_in_first() {
    let home = temp_home();
    let fleet = dead_fleet();
    let out = run(
        home.path(),
        &["fleet", "seed", "--fleet", &fleet],
        None,
        &[],
    );
    out.expect_code(exit::OTHER, "fleet seed without credentials")
        .expect_stderr_contains(
            &[
                "holds no credentials to seed the fleet with",
                "sign in on this machine first",
            ],
            "fleet seed must say there is nothing to seed and what to do",
        );
    assert!(
        !out.stderr.contains("etcd"),
        "fleet seed asked the fleet although there was nothing to seed: {}",
        out.describe()
    );
}
