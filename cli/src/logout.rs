//! `codex-store logout`: remove the stored credentials, under the lock.

use codex_store::backend::FileBackend;

use crate::exit::Failure;
use crate::home::Context;

/// Options of `logout` (none).
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `logout`. With `--fleet ENDPOINTS` on the command line, the fleet's login is removed
/// first: every machine is signed out. A fleet named only by CODEX_STORE_FLEET (exported for the
/// agent, `inspect`, ...) is left alone: the plain command signs out this home, and says so.
/// Removing nothing is not an error.
pub fn run(ctx: &Context, _args: Args) -> Result<(), Failure> {
    let fleet_args = ctx.fleet_args();
    if fleet_args.on_command_line() {
        if let Some(fleet) = fleet_args.fleet()? {
            let removed = ctx
                .runtime()?
                .block_on(fleet.delete())
                .map_err(crate::fleet::fleet_failure)?;
            let what = if removed {
                "Removed"
            } else {
                "No login to remove in"
            };
            crate::exit::write_stdout(&format!(
                "{what} the fleet's login {}\n",
                fleet.record_key()
            ))?;
        }
    }
    let backend = FileBackend::from_store(ctx.store()?);
    let path = backend.store().path().display().to_string();
    let removed = match backend.delete() {
        Ok(removed) => removed,
        Err(e) => crate::exit::warn_not_durable(e).map(|_| true)?,
    };
    if removed {
        crate::exit::write_stdout(&format!("Removed the credentials in {path}\n"))?;
    } else {
        crate::exit::write_stdout(&format!("No credentials to remove in {path}\n"))?;
    }
    if fleet_args.is_configured() && !fleet_args.on_command_line() {
        crate::exit::write_stdout(
            "Signed out this machine only: the fleet's login and the other machines are \
             untouched (CODEX_STORE_FLEET alone does not sign the fleet out; \
             `codex-store logout --fleet ENDPOINTS` does)\n",
        )?;
    }
    Ok(())
}
