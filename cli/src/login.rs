//! `codex-store login --with-api-key`: store an API key read from stdin.

use std::io::Read;

use codex_store::{AuthDotJson, AuthMode, Expect, Secret};

use crate::exit::Failure;
use crate::home::Context;

/// Options of `login`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Read an API key from stdin and store it (API-key mode).
    #[arg(long, required = true)]
    with_api_key: bool,
}

/// Runs `login --with-api-key`.
pub fn run(ctx: &Context, _args: Args) -> Result<(), Failure> {
    let mut input = Vec::new();
    std::io::stdin()
        .take(MAX_KEY_INPUT + 1)
        .read_to_end(&mut input)
        .map_err(|e| Failure::other(format!("cannot read the API key from stdin: {e}"), None))?;
    if input.len() as u64 > MAX_KEY_INPUT {
        return Err(Failure::other(
            format!("the input on stdin is longer than {MAX_KEY_INPUT} bytes; nothing was stored"),
            Some("pipe exactly one API key, on one line"),
        ));
    }
    let input = String::from_utf8(input).map_err(|_| {
        Failure::other(
            "the API key on stdin is not UTF-8 text; nothing was stored",
            Some("pipe exactly one API key, on one line"),
        )
    })?;
    let key = input.trim();
    if key.is_empty() {
        return Err(Failure::other(
            "no API key on stdin",
            Some("pipe the key in: `printenv OPENAI_API_KEY | codex-store login --with-api-key`"),
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(Failure::other(
            "the API key on stdin contains control characters (a NUL, an escape, ...); nothing \
             was stored",
            Some("give exactly one key, on one line"),
        ));
    }
    if key.chars().any(char::is_whitespace) {
        return Err(Failure::other(
            "the API key on stdin contains white space",
            Some("give exactly one key, on one line"),
        ));
    }
    // Signing in replaces whatever is there, a corrupt file included, so the old file is not
    // loaded first: the write goes straight through the store, under the lock.
    let store = ctx.store()?;
    let doc = AuthDotJson {
        auth_mode: Some(AuthMode::ApiKey),
        openai_api_key: Some(Secret::new(key)),
        ..Default::default()
    };
    let generation = store
        .compare_and_swap(Expect::Any, Some(&doc))
        .or_else(crate::exit::warn_not_durable)?;
    crate::exit::write_stdout(&format!(
        "Stored an API key in {} (generation {generation})\n",
        store.path().display()
    ))?;
    // With --fleet, the key becomes every machine's login.
    if let Some(fleet) = ctx.fleet_args().fleet()? {
        let revision = ctx
            .runtime()?
            .block_on(fleet.seed(&doc, true))
            .map_err(crate::fleet::fleet_failure)?;
        crate::exit::write_stdout(&format!(
            "Stored it as the fleet's login {} (revision {revision})\n",
            fleet.record_key()
        ))?;
    }
    Ok(())
}

/// The most stdin is read for an API key (real keys are about 200 bytes); longer input is an
/// error, never silently cut.
const MAX_KEY_INPUT: u64 = 64 * 1024;
