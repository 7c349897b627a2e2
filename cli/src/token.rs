//! `codex-store token`: the usable bearer on stdout, refreshed through the guarded protocol.

use crate::exit::Failure;
use crate::home::Context;

/// Options of `token` (none).
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Prints the bearer and a newline, and nothing else, to stdout.
pub fn run(ctx: &Context, _args: Args) -> Result<(), Failure> {
    let manager = ctx.manager()?;
    let auth = crate::signals::guarded(&ctx.runtime()?, &manager, manager.auth())?;
    crate::exit::write_stdout(&format!("{}\n", auth.bearer().expose()))
}
