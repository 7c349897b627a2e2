//! `codex-store login --with-api-key`: store an API key read from stdin (with `--fleet`, also as
//! the fleet's login).

use std::io::{Read, Write};

use codex_refresh::{Login, SignInError, SignedIn, Stored};
use codex_store::{AuthDotJson, AuthMode, Secret};

use crate::exit::{warn_not_durable, write_stdout, Failure};
use crate::home::Context;

/// Options of `login`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Read an API key from stdin and store it (API-key mode).
    #[arg(long, required = true)]
    with_api_key: bool,
}

/// Runs `login --with-api-key`. Signing in replaces whatever is there, a corrupt file included
/// (the old file is not loaded first). With `--fleet` (or CODEX_STORE_FLEET) the key becomes
/// every machine's login, after it was stored here.
pub fn run(ctx: &Context, _args: Args) -> Result<(), Failure> {
    let key = read_key()?;
    let store = ctx.store()?;
    // What the key replaces, said after it is stored: a ChatGPT login is gone from this home.
    let replaced = store.load().ok().and_then(|snapshot| {
        let doc = snapshot.auth()?;
        (doc.resolved_mode() == AuthMode::Chatgpt).then(|| {
            doc.tokens
                .as_ref()
                .and_then(|t| t.account())
                .unwrap_or_else(|| "-".to_owned())
        })
    });
    let login = Login::new(store, ctx.fleet_args().fleet()?);
    let doc = AuthDotJson {
        auth_mode: Some(AuthMode::ApiKey),
        openai_api_key: Some(key),
        ..Default::default()
    };
    // What was stored here is said first, also when the fleet then did not take it.
    let (stored, fleet) = match ctx.runtime()?.block_on(login.sign_in(&doc)) {
        Ok(SignedIn { local, fleet }) => (local, Ok(fleet)),
        Err(SignInError::Local(e)) => return Err(Failure::from(e)),
        Err(SignInError::Fleet { stored, source }) => (stored, Err(source)),
    };
    report_stored(&stored)?;
    if let Some(account) = replaced {
        let _ = writeln!(
            std::io::stderr().lock(),
            "codex-store: note: the API key replaced the ChatGPT login of account {} in {} \
             (`codex login` signs it in again)",
            crate::exit::escape_controls(&account),
            crate::exit::escape_controls(&stored.path.display().to_string())
        );
    }
    if let Some(seeded) = fleet? {
        write_stdout(&format!(
            "Stored it as the fleet's login {} (revision {})\n",
            crate::exit::escape_controls(&seeded.key),
            seeded.revision
        ))?;
    }
    Ok(())
}

fn report_stored(stored: &Stored) -> Result<(), Failure> {
    warn_not_durable(&stored.durability);
    write_stdout(&format!(
        "Stored an API key in {} (generation {})\n",
        crate::exit::escape_controls(&stored.path.display().to_string()),
        stored.generation
    ))
}

/// The API key on stdin: one key, on one line (surrounding white space is dropped).
fn read_key() -> Result<Secret, Failure> {
    let mut input = Vec::new();
    std::io::stdin()
        .take(MAX_KEY_INPUT + 1)
        .read_to_end(&mut input)
        .map_err(|e| {
            Failure::other(
                format!("cannot read the API key from stdin: {e}"),
                "pipe the key in: `printenv OPENAI_API_KEY | codex-store login --with-api-key`",
            )
        })?;
    if input.len() as u64 > MAX_KEY_INPUT {
        return Err(Failure::other(
            format!("the input on stdin is longer than {MAX_KEY_INPUT} bytes; nothing was stored"),
            "pipe exactly one API key, on one line",
        ));
    }
    let input = String::from_utf8(input).map_err(|_| {
        Failure::other(
            "the API key on stdin is not UTF-8 text; nothing was stored",
            "pipe exactly one API key, on one line",
        )
    })?;
    let key = input.trim();
    if key.is_empty() {
        return Err(Failure::other(
            "no API key on stdin",
            "pipe the key in: `printenv OPENAI_API_KEY | codex-store login --with-api-key`",
        ));
    }
    let lines = key.lines().filter(|l| !l.trim().is_empty()).count();
    if lines > 1 {
        return Err(Failure::other(
            format!(
                "the input on stdin holds {lines} lines, and an API key is one; nothing was stored"
            ),
            "give exactly one key, on one line",
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(Failure::other(
            "the API key on stdin contains control characters (a NUL, an escape, ...); nothing \
             was stored",
            "give exactly one key, on one line",
        ));
    }
    if key.chars().any(char::is_whitespace) {
        return Err(Failure::other(
            "the API key on stdin contains white space",
            "give exactly one key, on one line",
        ));
    }
    Ok(Secret::new(key))
}

/// The most stdin is read for an API key (real keys are about 200 bytes); longer input is an
/// error, never silently cut.
const MAX_KEY_INPUT: u64 = 64 * 1024;
