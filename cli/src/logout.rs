//! `codex-store logout`: remove the stored credentials, under the lock.

use codex_store::backend::FileBackend;

use crate::exit::Failure;
use crate::home::Context;

/// Options of `logout` (none).
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `logout` (with `--fleet`, the fleet's login first: every machine is signed out).
/// Removing nothing is not an error.
pub fn run(ctx: &Context, _args: Args) -> Result<(), Failure> {
    if let Some(fleet) = ctx.fleet_args().fleet()? {
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
    let backend = FileBackend::from_store(ctx.store()?);
    let path = backend.store().path().display().to_string();
    let removed = match backend.delete() {
        Ok(removed) => removed,
        Err(e) => crate::exit::warn_not_durable(e).map(|_| true)?,
    };
    if removed {
        crate::exit::write_stdout(&format!("Removed the credentials in {path}\n"))
    } else {
        crate::exit::write_stdout(&format!("No credentials to remove in {path}\n"))
    }
}
