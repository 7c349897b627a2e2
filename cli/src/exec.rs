//! `codex-store exec -- COMMAND [ARGS...]`: runs COMMAND (Codex) with its refresh requests
//! sent to the agent's token broker when a broker answers, and without the variable when none
//! does, so that a stopped agent never leaves Codex unable to refresh.

use std::ffi::OsString;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::process::Command;

use crate::broker::{self, HEALTH_TIMEOUT};
use crate::exit::escape_controls as escape;
use crate::exit::Failure;
use crate::home::Context;
use crate::options::{broker_url, TOKEN_URL_ENV};

/// Options of `exec`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The broker's address, a loopback address [default: the one the running agent serves
    /// (`agent --serve`), else 127.0.0.1:14550].
    #[arg(long, value_name = "ADDR")]
    addr: Option<String>,

    /// The command to run and its arguments (after `--`), e.g. `-- codex`.
    #[arg(
        value_name = "COMMAND",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    command: Vec<OsString>,
}

const ADDR_HINT: &str =
    "use a loopback address such as 127.0.0.1:14550 or [::1]:14550; see `codex-store exec --help`";

/// What to do with the variable for the command.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// Set it to the broker's URL: a broker answers.
    Set(String),
    /// Leave the environment as it is: the user chose another endpoint.
    Keep,
    /// Remove it (it may name the broker, from a profile): no broker answers.
    Remove,
}

/// Runs `exec`: replaces this process by the command. Returns only when the command cannot be
/// started: exit [`crate::exit::COMMAND_NOT_FOUND`] (127) or
/// [`crate::exit::COMMAND_NOT_RUNNABLE`] (126), as a shell would.
pub fn run(ctx: &Context, args: Args) -> Result<(), Failure> {
    let target = broker::target(&ctx.home()?, args.addr.as_deref(), ADDR_HINT)?;
    let url = broker_url(target.addr);
    let current = std::env::var_os(TOKEN_URL_ENV);
    let plan = match current {
        Some(current) if current != url.as_str() => {
            warn(&format!(
                "{TOKEN_URL_ENV} is already set to {}: kept, so the command uses that endpoint \
                 and not the agent's token broker at {url}; unset it to use the broker",
                escape(&format!("{:?}", current.to_string_lossy()))
            ));
            Plan::Keep
        }
        // Only a broker this home's running agent published, or an address the user named: a
        // process of another user listening on the default address must not receive Codex's
        // refresh tokens.
        _ if matches!(target.source, broker::Source::Default) => {
            let why = target
                .no_agent_broker
                .as_deref()
                .unwrap_or("no agent of this home serves a broker");
            warn(&format!(
                "{why}: the command runs without {TOKEN_URL_ENV} and refreshes on its own; start \
                 the agent with --serve (`codex-store agent --serve`, or its service) to send \
                 refreshes through it, or name a broker with --addr"
            ));
            Plan::Remove
        }
        _ => match broker::check_health(target.addr, HEALTH_TIMEOUT) {
            Ok(()) => Plan::Set(url),
            Err(why) => {
                let also = target
                    .no_agent_broker
                    .as_deref()
                    .map(|a| format!("; {a}"))
                    .unwrap_or_default();
                warn(&format!(
                    "no token broker answered at {url} ({why}{also}): the command runs without \
                     {TOKEN_URL_ENV} and refreshes on its own; start the agent with --serve \
                     (`codex-store agent --serve`, or its service) to send refreshes through it"
                ));
                Plan::Remove
            }
        },
    };
    let (program, program_args) = args.command.split_first().ok_or_else(|| {
        Failure::usage_with(
            "no command to run",
            "write it after --: `codex-store exec -- codex`",
        )
    })?;
    let mut command = Command::new(program);
    command.args(program_args);
    match plan {
        Plan::Set(url) => {
            command.env(TOKEN_URL_ENV, url);
        }
        Plan::Remove => {
            command.env_remove(TOKEN_URL_ENV);
        }
        Plan::Keep => {}
    }
    // Only returns when the command could not be started.
    let error = command.exec();
    Err(Failure::command_not_started(
        &program.to_string_lossy(),
        &error,
    ))
}

/// One warning line on stderr (a closed stderr loses it, never the command).
fn warn(message: &str) {
    let _ = writeln!(std::io::stderr(), "codex-store: warning: {message}");
}
