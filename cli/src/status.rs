//! `codex-store status`: whether the login is usable and fresh, for scripts and monitors (like
//! `gh auth status`): exit 0 when it is, else one line per problem and the exit code of the
//! worst.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use codex_refresh::{CodexAuth, ErrorClass, Mode, CODEX_REFRESH_WINDOW};
use codex_store::codex_config::{self, CredentialsStore};
use codex_store::{AgentPresence, Problem, Store, StoreError, Timestamp, TokenFate};
use serde::Serialize;

use crate::exit::escape_controls as escape;
use crate::exit::{Failure, ATTENTION};
use crate::home::Context;

/// Options of `status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the report as JSON (also when there are problems).
    #[arg(long)]
    pub(crate) json: bool,

    /// An agent is expected to keep this home fresh: none running is a problem.
    #[arg(long)]
    agent: bool,
}

/// Without an agent, an access token expiring within this long is a problem: Codex's own
/// window, plus the agent's default lead (what an agent would have refreshed by now).
const SOON: Duration = Duration::from_secs(15 * 60);

/// What a status problem is about; its exit code follows from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Check {
    /// auth.json does not parse (exit 6).
    Corrupt,
    /// No credentials in auth.json (exit 3).
    NotSignedIn,
    /// Codex keeps the login in the OS keyring, not in auth.json (exit 3).
    LoginInKeyring,
    /// The token endpoint refused the current refresh token for good (exit 3).
    RefreshRefused,
    /// The credentials cannot be used as they are (an id token that is not a JWT, a workspace
    /// not allowed): sign in again (exit 3).
    Unusable,
    /// Credentials of a mode codex-store does not serve (exit 7).
    UnsupportedMode,
    /// auth.json could not be read at all (permissions, not a regular file, too large) (exit 1).
    Unreadable,
    /// The access token has expired (exit 10).
    Expired,
    /// The access token expires soon and no agent keeps it fresh (exit 10).
    ExpiringWithoutAgent,
    /// An agent is expected and none runs (exit 10).
    AgentNotRunning,
    /// A refresh's new tokens wait in a rotation file, not installed (exit 10).
    RotationLeftOver,
    /// Codex's `config.toml` cannot be read (exit 10).
    Config,
    /// Another problem of the files (permissions, owner, links, leftovers) (exit 10).
    Files,
    /// The fleet (with `--fleet`): unreachable, refused, stuck (exit 10).
    Fleet,
}

impl Check {
    fn exit_code(self) -> u8 {
        match self {
            Check::Corrupt => 6,
            Check::NotSignedIn
            | Check::LoginInKeyring
            | Check::RefreshRefused
            | Check::Unusable => 3,
            Check::UnsupportedMode => 7,
            Check::Unreadable => 1,
            _ => ATTENTION,
        }
    }

    fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// One problem: what it is about, and what to do.
#[derive(Debug, Serialize)]
pub(crate) struct StatusProblem {
    check: Check,
    message: String,
}

/// The status, for people (`Display`) and scripts (`Serialize`).
#[derive(Debug, Serialize)]
struct StatusReport {
    path: PathBuf,
    /// Whether the login is usable and fresh: no problem.
    ok: bool,
    /// The exit code of the command.
    exit_code: u8,
    auth_mode: Option<String>,
    account_id: Option<String>,
    access_token_expires_at: Option<String>,
    agent_running: bool,
    /// The URL of the token broker the running agent serves (`agent --serve`), as its status
    /// says.
    agent_broker: Option<String>,
    /// Where Codex keeps the login, by its `config.toml`.
    credentials_store: Option<CredentialsStore>,
    problems: Vec<StatusProblem>,
}

impl StatusReport {
    fn problem(&mut self, check: Check, message: impl Into<String>) {
        self.problems.push(StatusProblem {
            check,
            message: message.into(),
        });
    }
}

impl fmt::Display for StatusReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ok {
            write!(
                f,
                "ok: {} login",
                escape(self.auth_mode.as_deref().unwrap_or("-"))
            )?;
            if let Some(account) = &self.account_id {
                write!(f, " of account {}", escape(account))?;
            }
            write!(f, " in {}", escape(&self.path.display().to_string()))?;
            if let Some(at) = &self.access_token_expires_at {
                write!(f, "; access token expires {}", escape(at))?;
            }
            if self.agent_running {
                write!(f, "; an agent keeps it fresh")?;
                if let Some(broker) = &self.agent_broker {
                    write!(f, " and serves the token broker at {}", escape(broker))?;
                }
            }
            return writeln!(f);
        }
        for problem in &self.problems {
            writeln!(
                f,
                "problem ({}): {}",
                problem.check.name(),
                escape(&problem.message)
            )?;
        }
        Ok(())
    }
}

/// Runs `status`: the report on stdout, exit 0 when there is no problem, else the exit code of
/// the worst ([`Check::exit_code`]).
pub fn run(ctx: &Context, args: Args) -> Result<(), Failure> {
    let home = ctx.home()?;
    let store = ctx.quiet_store()?;
    let mut report = StatusReport {
        path: store.path().to_path_buf(),
        ok: true,
        exit_code: 0,
        auth_mode: None,
        account_id: None,
        access_token_expires_at: None,
        agent_running: false,
        agent_broker: None,
        credentials_store: None,
        problems: Vec::new(),
    };
    match codex_config::credentials_store(&home) {
        Ok(found) => report.credentials_store = Some(found),
        Err(e) => report.problem(Check::Config, e.to_string()),
    }
    report.agent_running = agent_running(&store, &args, &mut report);
    check_files(&store, &mut report);
    check_login(&store, &mut report);
    if let Some(fleet) = ctx.fleet_args().fleet()? {
        match ctx.runtime()?.block_on(fleet.status()) {
            Ok(status) => {
                for problem in crate::findings::fleet_problems(&status) {
                    report.problem(Check::Fleet, problem);
                }
            }
            Err(e) => report.problem(Check::Fleet, format!("the fleet: {e}")),
        }
    }
    report.problems.sort_by_key(|p| p.check);
    report.ok = report.problems.is_empty();
    report.exit_code = report.problems.first().map_or(0, |p| p.check.exit_code());
    crate::exit::print_report(&report, args.json)?;
    match report.exit_code {
        0 => Ok(()),
        code => Err(Failure::silent(code)),
    }
}

/// Whether an agent keeps the store fresh (the token broker it serves into `report`); a problem
/// when one is expected (`--agent`, or the status file of an agent that is gone) and none runs.
fn agent_running(store: &Store, args: &Args, report: &mut StatusReport) -> bool {
    match store.agent_presence() {
        Ok(AgentPresence::Running(status)) => {
            report.agent_broker = status.and_then(|s| s.broker);
            true
        }
        Ok(AgentPresence::NotRunning) => {
            let left_status = codex_store::side_file::is_regular(&store.agent_status_path());
            if args.agent || left_status {
                let why = if left_status {
                    "an agent kept this home fresh (its status file remains) but none runs now"
                } else {
                    "no agent runs for this home"
                };
                report.problem(
                    Check::AgentNotRunning,
                    format!(
                        "{why}: start it (`codex-store agent`, or `systemctl --user start \
                         codex-store-agent`)"
                    ),
                );
            }
            false
        }
        Err(e) => {
            report.problem(Check::Files, e.to_string());
            false
        }
    }
}

/// The store's own findings: rotation files left over, and the rest.
fn check_files(store: &Store, report: &mut StatusReport) {
    match store.diagnose() {
        Ok(problems) => {
            for problem in problems {
                let check = match problem {
                    Problem::PendingRotations { .. } => Check::RotationLeftOver,
                    _ => Check::Files,
                };
                report.problem(check, problem.to_string());
            }
        }
        Err(e) => report.problem(Check::Files, e.to_string()),
    }
}

/// The login itself: present, parseable, served, not refused, fresh.
fn check_login(store: &Store, report: &mut StatusReport) {
    let snapshot = match store.load() {
        Ok(snapshot) => snapshot,
        Err(e @ StoreError::Corrupt { .. }) => {
            return report.problem(
                Check::Corrupt,
                format!(
                "{e}; `codex-store inspect` shows what is wrong, `codex-store logout` removes it"
            ),
            )
        }
        Err(e) => return report.problem(Check::Unreadable, e.to_string()),
    };
    let Some(doc) = snapshot.auth() else {
        return not_signed_in(report);
    };
    let auth = match CodexAuth::from_document(doc, snapshot.generation()) {
        Ok(Some(auth)) => auth,
        Ok(None) => return not_signed_in(report),
        Err(e) => {
            let check = match e.class() {
                ErrorClass::UnsupportedMode => Check::UnsupportedMode,
                _ => Check::Unusable,
            };
            return report.problem(check, e.to_string());
        }
    };
    report.auth_mode = Some(doc.resolved_mode().as_str().to_owned());
    report.account_id = auth.account_id().map(str::to_owned);
    report.access_token_expires_at = auth.expires_at().map(Timestamp::to_seconds);
    if auth.mode() == Mode::ApiKey {
        return;
    }
    if let Some(TokenFate::Refused(record)) = store.token_fate(&snapshot) {
        report.problem(
            Check::RefreshRefused,
            format!(
                "the token endpoint refused this refresh token for good ({}, at {}): sign in \
                 again (`codex login`)",
                record.code.as_deref().unwrap_or("no code"),
                record.at
            ),
        );
    }
    let Some(expires) = auth.expires_at() else {
        return;
    };
    let now = SystemTime::now();
    let at = Timestamp::to_seconds(expires);
    match expires.duration_since(now) {
        Err(_) => report.problem(
            Check::Expired,
            if report.agent_running {
                format!(
                    "the access token expired at {at} although an agent runs: see its log \
                     (`journalctl --user -u codex-store-agent`) and `codex-store inspect`"
                )
            } else {
                format!(
                    "the access token expired at {at} and no agent keeps it fresh: the next Codex \
                     process refreshes it (several may race); `codex-store refresh` refreshes it \
                     now, `codex-store agent` keeps it fresh"
                )
            },
        ),
        Ok(left) if left <= SOON.max(CODEX_REFRESH_WINDOW) && !report.agent_running => report
            .problem(
                Check::ExpiringWithoutAgent,
                format!(
                    "the access token expires at {at} (in {} min) and no agent keeps it fresh: \
                     Codex processes will each refresh it; run `codex-store agent`",
                    left.as_secs() / 60
                ),
            ),
        Ok(_) => {}
    }
}

/// No credentials: signed out, or kept where codex-store cannot see them.
fn not_signed_in(report: &mut StatusReport) {
    match &report.credentials_store {
        Some(store) if store.may_bypass_auth_json() => {
            let message = crate::findings::keyring_message(store);
            report.problem(Check::LoginInKeyring, message);
        }
        _ => report.problem(
            Check::NotSignedIn,
            "no credentials in auth.json: sign in (`codex login`)",
        ),
    }
}
