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
    let mut input = String::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut input)
        .map_err(|e| Failure::other(format!("cannot read the API key from stdin: {e}"), None))?;
    let key = input.trim();
    if key.is_empty() {
        return Err(Failure::other(
            "no API key on stdin",
            Some("pipe the key in: `printenv OPENAI_API_KEY | codex-store login --with-api-key`"),
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
    let generation = store.compare_and_swap(Expect::Any, Some(&doc))?;
    println!(
        "Stored an API key in {} (generation {generation})",
        store.path().display()
    );
    Ok(())
}
