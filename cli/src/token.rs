//! `codex-store token`: the usable bearer on stdout, refreshed through the guarded protocol.

use std::io::Write;

use crate::exit::Failure;
use crate::home::Context;

/// Options of `token` (none).
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Prints the bearer and a newline, and nothing else, to stdout.
pub fn run(ctx: &Context, _args: Args) -> Result<(), Failure> {
    let manager = ctx.manager()?;
    let auth = ctx.runtime()?.block_on(manager.auth())?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", auth.bearer().expose())
        .and_then(|()| out.flush())
        .map_err(|e| Failure::other(format!("cannot write to stdout: {e}"), None))
}
