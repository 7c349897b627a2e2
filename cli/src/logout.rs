//! `codex-store logout`: remove the stored credentials, under the lock (with `--fleet ENDPOINTS`
//! on the command line, the fleet's login first).

use codex_refresh::{FleetRemoval, LocalRemoval, Login, Removal, SignOutError, SignedOut};

use crate::exit::{warn_not_durable, write_stdout, Failure};
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
    let fleet = if fleet_args.on_command_line() {
        fleet_args.fleet()?
    } else {
        None
    };
    let login = Login::new(ctx.store()?, fleet);
    // The fleet's removal is said first, also when this machine's then failed.
    let (fleet, local) = match ctx.runtime()?.block_on(login.sign_out()) {
        Ok(SignedOut { fleet, local }) => (fleet, Ok(local)),
        // Nothing was removed anywhere.
        Err(SignOutError::Fleet(e)) => return Err(Failure::from(e)),
        Err(SignOutError::Local { fleet, source, .. }) => (fleet, Err(source)),
    };
    if let Some(fleet) = fleet {
        report_fleet(&fleet)?;
    }
    report_local(&local?)?;
    if fleet_args.is_configured() && !fleet_args.on_command_line() {
        write_stdout(
            "Signed out this machine only: the fleet's login and the other machines are \
             untouched (CODEX_STORE_FLEET alone does not sign the fleet out; \
             `codex-store logout --fleet ENDPOINTS` does)\n",
        )?;
    }
    Ok(())
}

fn report_fleet(fleet: &FleetRemoval) -> Result<(), Failure> {
    let what = match fleet.removal {
        Removal::Removed => "Removed",
        Removal::NothingThere => "No login to remove in",
    };
    write_stdout(&format!(
        "{what} the fleet's login {}\n",
        crate::exit::escape_controls(&fleet.key)
    ))
}

fn report_local(local: &LocalRemoval) -> Result<(), Failure> {
    warn_not_durable(&local.durability);
    let what = match local.removal {
        Removal::Removed => "Removed the credentials in",
        Removal::NothingThere => "No credentials to remove in",
    };
    write_stdout(&format!(
        "{what} {}\n",
        crate::exit::escape_controls(&local.path.display().to_string())
    ))
}
