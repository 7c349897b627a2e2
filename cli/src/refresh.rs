//! `codex-store refresh`: refresh now and say what happened.

use std::fmt;

use codex_refresh::{Mode, RefreshError, RefreshOutcome};
use serde::Serialize;

use crate::exit::Failure;
use crate::home::Context;

/// Options of `refresh`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the report as JSON (a failure too).
    #[arg(long)]
    pub(crate) json: bool,
}

/// What the refresh did, for people and scripts.
#[derive(Debug, Serialize)]
struct RefreshReport {
    outcome: &'static str,
    generation_before: Option<String>,
    generation_after: Option<String>,
}

impl fmt::Display for RefreshReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.outcome {
            "refreshed" => "refreshed: new tokens were obtained and stored",
            "adopted_from_disk" => "adopted from disk: another process had already refreshed",
            _ => "not needed: nothing to refresh",
        };
        writeln!(f, "{what}")?;
        let show = |g: &Option<String>| g.clone().unwrap_or_else(|| "-".into());
        writeln!(f, "generation before  {}", show(&self.generation_before))?;
        writeln!(f, "generation after   {}", show(&self.generation_after))
    }
}

/// Runs `refresh`. On a fleet machine (`--fleet` or CODEX_STORE_FLEET) it sends nothing: an API
/// key is reported as not needing a refresh, anything else is refused
/// ([`crate::fleet_machine::refuse_one_shot_refresh`]).
pub fn run(ctx: &Context, args: Args) -> Result<(), Failure> {
    let manager = ctx.manager()?;
    let generation = |m: &codex_refresh::AuthManager| {
        m.cached()
            .map(|a| a.generation())
            .filter(|g| !g.is_absent())
            .map(|g| g.to_string())
    };
    let before = generation(&manager);
    if let Some(source) = crate::fleet_machine::fleet_machine(ctx, manager.store()) {
        match manager.cached() {
            None => {
                return Err(Failure::from(RefreshError::NotSignedIn {
                    path: manager.store().path().to_path_buf(),
                }))
            }
            // A key is never sent anywhere: nothing to refresh, here or in the fleet.
            Some(auth) if auth.mode() == Mode::ApiKey => {
                let report = RefreshReport {
                    outcome: "not_needed",
                    generation_after: before.clone(),
                    generation_before: before,
                };
                return crate::exit::print_report(&report, args.json);
            }
            Some(_) => {
                return Err(crate::fleet_machine::refuse_one_shot_refresh(
                    &source,
                    &format!(
                        "not refreshing the login in {}",
                        manager.store().path().display()
                    ),
                ))
            }
        }
    }
    let outcome = crate::signals::guarded(&ctx.runtime()?, &manager, manager.refresh())?;
    let report = RefreshReport {
        outcome: match outcome {
            RefreshOutcome::Refreshed => "refreshed",
            RefreshOutcome::AdoptedFromDisk => "adopted_from_disk",
            RefreshOutcome::NotNeeded => "not_needed",
        },
        generation_before: before,
        generation_after: generation(&manager),
    };
    crate::exit::print_report(&report, args.json)
}
