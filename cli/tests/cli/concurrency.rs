//! Many `codex-store token` processes started at once on due credentials: the guarded refresh
//! must send one request to the token endpoint, and every process must print the one token it
//! issued.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::kit::{
    assert_no_secret_leaked, exit, fingerprint, register_last_issued, sha256sum, signed_in_home,
    spawn, ChatgptCreds, Running, RUN_TIMEOUT,
};

const URL_ENV: &str = "CODEX_REFRESH_TOKEN_URL_OVERRIDE";
const PROCESSES: usize = 16;

#[test]
fn sixteen_concurrent_token_processes_send_one_refresh_request_and_print_the_one_issued_token() {
    let creds = ChatgptCreds::expired();
    let (home, path, before, idp) = signed_in_home(&creds);
    idp.set_delay(Duration::from_millis(100));
    let url = idp.url();

    // Spawn them all before collecting any: they race for the lock.
    let running: Vec<Running> = (0..PROCESSES)
        .map(|_| spawn(home.path(), &["token"], None, &[(URL_ENV, url.as_str())]))
        .collect();
    let outputs: Vec<_> = running.into_iter().map(|r| r.finish(RUN_TIMEOUT)).collect();
    register_last_issued(&idp);

    for out in &outputs {
        out.expect_code(exit::OK, "one of the concurrent token processes");
    }
    let issued = idp
        .last_issued()
        .unwrap_or_else(|| panic!("the endpoint issued no token at all"));
    let printed: BTreeSet<String> = outputs.iter().map(|o| o.stdout.clone()).collect();
    let fingerprints: Vec<String> = printed
        .iter()
        .map(|t| fingerprint(t.trim_end_matches('\n')))
        .collect();
    assert_eq!(
        idp.requests(),
        1,
        "{PROCESSES} concurrent token processes sent {} refresh requests (want 1)",
        idp.requests()
    );
    assert_eq!(
        printed.len(),
        1,
        "{PROCESSES} processes printed {} distinct tokens (fingerprints {fingerprints:?}), want 1",
        printed.len()
    );
    for out in &outputs {
        out.expect_token(
            &issued.access_token,
            "every process must print the token the endpoint issued",
        );
    }
    assert_ne!(
        sha256sum(&path),
        before,
        "the refreshed tokens were not stored"
    );
    assert_no_secret_leaked();
}
