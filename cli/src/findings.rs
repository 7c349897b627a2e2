//! The findings `inspect` lists and `status` checks, in words: the fleet's stuck states, and a
//! login Codex keeps outside auth.json.

use codex_store::codex_config::{self, CredentialsStore};

/// The stuck states of the fleet, as problems of the report.
pub fn fleet_problems(fleet: &codex_refresh::fleet::FleetStatus) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(problem) = &fleet.record_problem {
        problems.push(format!("the fleet: {problem}"));
    }
    if let Some(r) = &fleet.refusal {
        problems.push(format!(
            "the fleet: the token endpoint refused the fleet's refresh token {} ({}, seen by {} \
             at {}): no machine sends it again; sign in on one machine and run `codex-store \
             fleet seed --force` there",
            r.refresh, r.code, r.machine, r.at
        ));
    }
    if fleet.lock_lease == Some(0) {
        problems.push(format!(
            "the fleet: the lock is held by {} on no lease: it never expires and no machine \
             refreshes while it stands; remove it (`etcdctl del {}`)",
            fleet.lock_holder.as_deref().unwrap_or("-"),
            fleet.key.trim_end_matches("auth.json").to_owned() + "lock"
        ));
    }
    problems
}

/// What to say of a home without auth.json whose Codex keeps the login elsewhere (`store` is
/// not [`CredentialsStore::File`]): where it is, and the setting that brings it back.
pub fn keyring_message(store: &CredentialsStore) -> String {
    format!(
        "no credentials in auth.json, and Codex's config.toml says `{key} = \"{store}\"`: \
         Codex keeps the login in the OS keyring, where codex-store cannot see it. To keep it in \
         auth.json, set `{key} = \"file\"` in config.toml and sign in again (`codex login`)",
        key = codex_config::CREDENTIALS_STORE_KEY,
    )
}
