//! `codex-store fleet seed`: upload this machine's login to the fleet.

use codex_refresh::{FleetLogin, SeedError};

use crate::exit::Failure;
use crate::home::Context;

/// Options of `fleet`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: FleetCommand,
}

#[derive(Debug, clap::Subcommand)]
enum FleetCommand {
    /// Upload this machine's auth.json as the fleet's login (refused when the fleet holds one,
    /// unless --force).
    Seed {
        /// Replace the login the fleet holds; if it changes between the seed's read and its
        /// write (a machine uploaded a rotation), nothing is written and the seed fails.
        #[arg(long)]
        force: bool,
    },
}

/// Runs `fleet seed`.
pub fn run(ctx: &Context, args: Args) -> Result<(), Failure> {
    match args.command {
        FleetCommand::Seed { force } => {
            // The fleet first: without one, nothing is opened (a usage error).
            let fleet = ctx.fleet_args().required()?;
            let login = FleetLogin::new(ctx.store()?, fleet);
            let seeded = ctx
                .runtime()?
                .block_on(login.seed(force))
                .map_err(seed_failure)?;
            crate::exit::write_stdout(&format!(
                "Seeded the fleet ({}) with the login in {} (revision {})\n",
                crate::exit::escape_controls(&seeded.key),
                crate::exit::escape_controls(&login.store().path().display().to_string()),
                seeded.revision
            ))
        }
    }
}

/// A failed seed as a command failure: a home without credentials is told to sign in first.
fn seed_failure(e: SeedError) -> Failure {
    match e {
        SeedError::Local(e) => Failure::from(e),
        SeedError::NotSignedIn { .. } => Failure::other(
            e.to_string(),
            "sign in on this machine first (`codex login`)",
        ),
        SeedError::Fleet(e) => Failure::from(e),
    }
}
