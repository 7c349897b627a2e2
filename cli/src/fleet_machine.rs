//! One-shot refreshes (`refresh`, `token` with due tokens) on a fleet machine: whether this home
//! is one, and the refusal.

use codex_store::Store;

use crate::exit::Failure;
use crate::home::Context;

/// The refusal of a one-shot refresh (`refresh`, `token` with due tokens) on a fleet machine:
/// only the fleet's agents refresh the fleet's login, under the fleet lock and against the record;
/// a rotation made here alone would leave the record (and every other machine) with a spent
/// refresh token. `what` opens the message (what was not done, or why a refresh was needed).
pub fn refuse_one_shot_refresh(source: &str, what: &str) -> Failure {
    Failure::fleet_refreshes(format!(
        "{what}: this machine is on a fleet ({source}), whose login only the fleet's agents \
         refresh (a refresh here would rotate it on this machine alone and leave the fleet's \
         record with a spent refresh token); nothing was sent"
    ))
}

/// Why this home is a fleet machine, if it is: `--fleet` or `CODEX_STORE_FLEET` names a fleet,
/// or an agent synced this home with one (its `auth.json.fleet` exists: the fleet's options may
/// live only in the agent's service unit).
pub fn fleet_machine(ctx: &Context, store: &Store) -> Option<String> {
    let args = ctx.fleet_args();
    if args.is_configured() {
        return Some(
            if args.on_command_line() {
                "--fleet is set"
            } else {
                "CODEX_STORE_FLEET is set"
            }
            .to_owned(),
        );
    }
    // Only a regular file is an agent's: anything else at that name was planted.
    let state = store.fleet_state_path();
    codex_store::side_file::is_regular(&state).then(|| {
        format!(
            "{} exists: an agent synced this home with a fleet (remove it if this machine left \
             the fleet)",
            state.display()
        )
    })
}
