//! `codex-store token`: the usable bearer on stdout, refreshed through the guarded protocol.

use std::time::SystemTime;

use codex_refresh::RefreshError;

use crate::exit::Failure;
use crate::home::Context;

/// Options of `token` (none).
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Prints the bearer and a newline, and nothing else, to stdout.
///
/// On a fleet machine (`--fleet` or CODEX_STORE_FLEET) nothing is ever sent from here: tokens
/// that are not due are printed, due ones are refused ([`crate::fleet_machine::refuse_one_shot_refresh`]),
/// because a rotation made here alone would leave the fleet's record with a spent refresh token.
pub fn run(ctx: &Context, _args: Args) -> Result<(), Failure> {
    let manager = ctx.manager()?;
    if let Some(source) = crate::fleet_machine::fleet_machine(ctx, manager.store()) {
        // What `new` just read, without the refreshing path of `auth()`.
        let Some(auth) = manager.cached() else {
            return Err(Failure::from(RefreshError::NotSignedIn {
                path: manager.store().path().to_path_buf(),
            }));
        };
        if auth.is_due(SystemTime::now(), manager.config()) {
            return Err(crate::fleet_machine::refuse_one_shot_refresh(
                &source,
                &format!(
                    "the tokens in {} are due for a refresh",
                    manager.store().path().display()
                ),
            ));
        }
        return crate::exit::write_stdout(&format!("{}\n", auth.bearer().expose()));
    }
    let auth = crate::signals::guarded(&ctx.runtime()?, &manager, manager.auth())?;
    crate::exit::write_stdout(&format!("{}\n", auth.bearer().expose()))
}
