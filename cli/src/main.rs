//! `codex-store`: inspect, use and repair Codex's auth.json through the transactional store.

#![forbid(unsafe_code)]

mod activation;
mod agent;
mod broker;
mod completions;
mod env;
mod exec;
mod exit;
mod findings;
mod fleet;
mod fleet_machine;
mod home;
mod inspect;
mod login;
mod logout;
mod options;
mod refresh;
mod signals;
mod status;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::options::parse_duration;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  any other error (I/O, permissions, a --home or CODEX_HOME that is not an existing
     directory, ...)
  2  usage error: a bad flag or environment value, also a CODEX_REFRESH_TOKEN_URL_OVERRIDE
     that is empty, not an http(s) URL or not a token endpoint (it answered 404, 405, ...)
  3  sign-in required: no credentials, permanent refresh failure, account changed or logged out
  4  transient refresh failure: nothing was changed, try again later
  5  timed out waiting for the lock
  6  auth.json is corrupt (commands other than `inspect`)
  7  auth.json holds credentials of a mode codex-store does not serve (Bedrock, personal
     access token, ...): use `codex` itself
  8  `agent`: another agent already runs for this home (the message names its pid); the
     shipped service units do not restart an agent that exits 8
  9  `refresh`, or `token` with due tokens, on a fleet machine (--fleet or CODEX_STORE_FLEET):
     nothing was sent; the fleet's agents refresh (check them with `inspect --fleet`)
  10  `status`: the login works but needs attention (an expiry without an agent, an agent
     expected and not running, a rotation left over, a fleet problem: one line each)
  126  `exec`: the command exists but cannot be run (not executable)
  127  `exec`: the command was not found
  141  stdout was closed before the output was written (what was done stays done)";

/// Inspect and use Codex's auth.json safely: every access takes the store's lock, every write
/// is atomic and durable, every refresh runs the guarded protocol.
#[derive(Debug, Parser)]
#[command(name = "codex-store", version, after_help = EXIT_CODES)]
struct Cli {
    /// The Codex home directory, which must exist [default: $CODEX_HOME (which must exist),
    /// else ~/.codex].
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<PathBuf>,

    /// How long to wait for another process's lock, like `2s`, `500ms`, `1m`
    /// [default: $CODEX_STORE_LOCK_TIMEOUT, else 45s]; the one setting for every lock wait.
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration)]
    lock_timeout: Option<Duration>,

    /// After the token endpoint answers "refresh token was already used", how long to watch
    /// auth.json for the rotation another process (Codex) is about to store, like `8s`
    /// [default: 8s].
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration)]
    reuse_wait: Option<Duration>,

    #[command(flatten)]
    fleet: options::FleetArgs,

    /// The longest a refresh request may take, like `30s` [default: 30s].
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration)]
    http_timeout: Option<Duration>,

    /// Log what happens to stderr (RUST_LOG also works).
    #[arg(short, long, global = true)]
    verbose: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Keep the credentials fresh in the foreground (for a terminal, a systemd user unit,
    /// launchd or a container), so that Codex processes never refresh; stop with SIGTERM/SIGINT.
    Agent(agent::Args),
    /// Share one login across machines through etcd (`fleet seed`).
    Fleet(fleet::Args),
    /// Show what is on disk (account, mode, expiry, permissions, lock) without any secret.
    Inspect(inspect::Args),
    /// Check that the login is usable and fresh: exit 0, or one line per problem and a
    /// non-zero exit code (for scripts and monitors).
    Status(status::Args),
    /// Print the usable bearer token, refreshing it first when due.
    Token(token::Args),
    /// Refresh now through the guarded protocol and say what happened.
    Refresh(refresh::Args),
    /// Store credentials (an API key read from stdin).
    Login(login::Args),
    /// Remove the stored credentials.
    Logout(logout::Args),
    /// Print the line for a shell profile that sends Codex's refresh requests to the agent's
    /// token broker (`export CODEX_REFRESH_TOKEN_URL_OVERRIDE=...`).
    Env(env::Args),
    /// Run a command (Codex) with CODEX_REFRESH_TOKEN_URL_OVERRIDE set to the agent's token
    /// broker when one answers, and without it (and a warning) when none does, e.g.
    /// `codex-store exec -- codex`.
    Exec(exec::Args),
    /// Print the completion script of a shell on stdout, e.g. `codex-store completions bash >
    /// ~/.local/share/bash-completion/completions/codex-store`.
    Completions(completions::Args),
    /// Print the man page (roff) on stdout, e.g. `codex-store man >
    /// ~/.local/share/man/man1/codex-store.1`.
    Man,
}

/// Whether `NO_COLOR` asks for no color (set and not empty, <https://no-color.org>). Clap's help
/// and errors honour it by themselves.
fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

fn init_tracing(verbose: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => EnvFilter::new(spec),
        _ if verbose => EnvFilter::new("debug,hyper=info,reqwest=info,rustls=info"),
        _ => EnvFilter::new("warn"),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()) && !no_color())
        .with_target(false)
        .try_init();
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli =
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut Cli::command()).exit());
    // `--fleet` typed on the command line, or only exported (CODEX_STORE_FLEET): a sign-out of
    // every machine needs the former.
    let fleet_on_command_line =
        matches.value_source(options::FLEET_ARG_ID) == Some(ValueSource::CommandLine);
    init_tracing(cli.verbose);
    let ctx = home::Context::new(
        cli.home,
        cli.lock_timeout,
        cli.reuse_wait,
        cli.fleet.with_fleet_on_command_line(fleet_on_command_line),
    )
    .with_http_timeout(cli.http_timeout);
    // Every subcommand works on the home: a --home or CODEX_HOME that names no directory is
    // refused before anything is done (before `logout --fleet` signs the fleet out, before a
    // store would create the mistyped path).
    // (The completions and the man page come from the definition alone: no home needed.)
    // With --json, a failure is a JSON document on stdout too.
    let json = match &cli.command {
        Command::Inspect(args) => args.json,
        Command::Refresh(args) => args.json,
        Command::Status(args) => args.json,
        Command::Env(args) => args.json,
        _ => false,
    };
    let needs_home = !matches!(cli.command, Command::Completions(_) | Command::Man);
    if needs_home {
        if let Err(failure) = ctx.home() {
            return finish(Err(failure), json);
        }
    }
    let result = match cli.command {
        Command::Agent(args) => agent::run(&ctx, args),
        Command::Fleet(args) => fleet::run(&ctx, args),
        Command::Inspect(args) => inspect::run(&ctx, args),
        Command::Status(args) => status::run(&ctx, args),
        Command::Token(args) => token::run(&ctx, args),
        Command::Refresh(args) => refresh::run(&ctx, args),
        Command::Login(args) => login::run(&ctx, args),
        Command::Logout(args) => logout::run(&ctx, args),
        Command::Env(args) => env::run(&ctx, args),
        Command::Exec(args) => exec::run(&ctx, args),
        Command::Completions(args) => completions::completions(args),
        Command::Man => completions::man(),
    };
    finish(result, json)
}

/// The exit code of a command's result, its failure reported (as JSON on stdout too with
/// `--json`).
fn finish(result: Result<(), exit::Failure>, json: bool) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) if json => failure.report_json(),
        Err(failure) => failure.report(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
