//! Output: errors as one line plus a hint on stderr with the documented exit codes, and reports.

use std::io::{self, Write};
use std::process::ExitCode;

use codex_refresh::fleet::FleetError;
use codex_refresh::{Durability, ErrorClass, RefreshError, UrlOrigin};
use codex_store::StoreError;

/// A failed command: what to print and the exit code.
pub struct Failure {
    message: String,
    hint: Option<&'static str>,
    code: u8,
}

impl Failure {
    /// An exit code alone: what went wrong was already printed (a `status` report).
    pub fn silent(code: u8) -> Self {
        Failure {
            message: String::new(),
            hint: None,
            code,
        }
    }

    /// A failure of class "other" (exit 1), with what to do about it: every failure that prints
    /// a message has a hint.
    pub fn other(message: impl Into<String>, hint: &'static str) -> Self {
        Failure {
            message: message.into(),
            hint: Some(hint),
            code: 1,
        }
    }

    /// A usage error (exit 2): a bad flag or environment value (also an unusable
    /// CODEX_REFRESH_TOKEN_URL_OVERRIDE, see `From<RefreshError>`).
    pub fn usage(message: impl Into<String>) -> Self {
        Self::usage_with(message, "see `codex-store --help`")
    }

    /// A usage error (exit 2) with its own hint (the help of the subcommand concerned).
    pub fn usage_with(message: impl Into<String>, hint: &'static str) -> Self {
        Failure {
            message: message.into(),
            hint: Some(hint),
            code: 2,
        }
    }

    /// Another agent already runs for this home (exit [`AGENT_RUNNING`]): the service units do not
    /// restart an agent that ends so (`RestartPreventExitStatus=8`).
    pub fn agent_running(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            hint: Some(
                "`codex-store inspect` shows the agent that runs; stop it first to start another",
            ),
            code: AGENT_RUNNING,
        }
    }

    /// A one-shot refresh (`refresh`, `token` with due tokens) on a fleet machine (exit
    /// [`FLEET_REFRESHES`]): only the fleet's agents refresh, through the fleet lock and the
    /// record; a local rotation would leave the fleet's refresh token spent.
    pub fn fleet_refreshes(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            hint: Some(
                "check the fleet's agents with `codex-store inspect --fleet ...` (the record's \
                 last rotation, its lock holder) and `codex-store inspect` (this machine's \
                 agent); start `codex-store agent --fleet ...` if none runs here",
            ),
            code: FLEET_REFRESHES,
        }
    }

    /// The line a command stopped by the signal `name` prints last (it then exits 128 + the
    /// signal's number, as a process killed by it would).
    pub fn signalled(name: &str) -> Self {
        Failure {
            message: format!(
                "stopped by {name}: nothing new was sent, and an answer already on its way was saved first"
            ),
            hint: Some("run the command again to finish what it was doing"),
            code: 1,
        }
    }

    /// `exec`: the command could not be started (`error` from `execve`), with the exit code a
    /// shell gives it: [`COMMAND_NOT_FOUND`] when there is no such program, else
    /// [`COMMAND_NOT_RUNNABLE`].
    pub fn command_not_started(command: &str, error: &io::Error) -> Self {
        let not_found = matches!(
            error.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
        );
        if not_found {
            Failure {
                message: format!("cannot run {command:?}: command not found ({error})"),
                hint: Some("check the command's name, and that its directory is on PATH"),
                code: COMMAND_NOT_FOUND,
            }
        } else {
            Failure {
                message: format!("cannot run {command:?}: {error}"),
                hint: Some(
                    "check that it is an executable file (`chmod +x`) of this machine, on a \
                     file system mounted without noexec",
                ),
                code: COMMAND_NOT_RUNNABLE,
            }
        }
    }

    /// Stdout was closed before the output could be written (`codex-store inspect | true`):
    /// exit [`CLOSED_STDOUT`] without a message, as a process killed by SIGPIPE would.
    pub fn closed_stdout() -> Self {
        Failure {
            message: String::new(),
            hint: None,
            code: CLOSED_STDOUT,
        }
    }

    /// The message (tests).
    #[cfg(test)]
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prints the message and hint to stderr and returns the exit code. Never panics: a closed
    /// stderr loses the message, not the exit code.
    pub fn report(self) -> ExitCode {
        if self.code != CLOSED_STDOUT && !self.message.is_empty() {
            let mut err = io::stderr().lock();
            // Messages carry outside text (an etcd endpoint's error, a path): no control
            // character reaches the terminal as such.
            let _ = writeln!(
                err,
                "codex-store: error: {}",
                escape_controls(&self.message)
            );
            if let Some(hint) = self.hint {
                let _ = writeln!(err, "hint: {hint}");
            }
        }
        ExitCode::from(self.code)
    }
}

/// With `--json`, a failure is also a JSON document on stdout (the message and hint stay on
/// stderr for people): `{"format_version": 1, "ok": false, "error": {...}}`.
impl Failure {
    /// Prints the failure as JSON on stdout too (unless it is silent, or stdout is closed),
    /// then [`Failure::report`]s it.
    pub fn report_json(self) -> ExitCode {
        if self.code != CLOSED_STDOUT && !self.message.is_empty() {
            let document = serde_json::json!({
                "format_version": FORMAT_VERSION,
                "ok": false,
                "error": {
                    "message": self.message,
                    "hint": self.hint,
                    "exit_code": self.code,
                },
            });
            let text = serde_json::to_string_pretty(&document).unwrap_or_default();
            let _ = write_stdout(&format!("{text}\n"));
        }
        self.report()
    }
}

/// `value` as a JSON document of the command: [`FORMAT_VERSION`] first, then the value's own
/// fields in their order (a value that is no object goes under `report`).
pub fn versioned(value: serde_json::Value) -> serde_json::Value {
    let mut document = serde_json::Map::new();
    document.insert("format_version".into(), FORMAT_VERSION.into());
    match value {
        serde_json::Value::Object(fields) => document.extend(fields),
        other => {
            document.insert("report".into(), other);
        }
    }
    serde_json::Value::Object(document)
}

/// The version of every JSON document the command prints (`format_version`): it changes only
/// when a field changes meaning or goes away; new fields may come without it.
pub const FORMAT_VERSION: u32 = 1;

/// `text` with every character that could end a line, move the cursor or drive a terminal (C0
/// and C1 controls, DEL, the Unicode line and paragraph separators, bidirectional overrides)
/// written as an escape (`\u{1b}`); everything else, quotes included, as it is. Every value from
/// outside (a file, a journal, an endpoint, a path) goes through it before it is printed.
pub(crate) fn escape_controls(text: &str) -> String {
    let needs_escape = |c: char| {
        c.is_control()
            || matches!(
                c,
                '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}'
                    | '\u{2066}'..='\u{2069}'
            )
    };
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if needs_escape(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// The exit code of `agent` when another agent already runs for the home (the message names its
/// pid). Not a failure to retry: the shipped systemd unit lists it in `RestartPreventExitStatus=`.
pub const AGENT_RUNNING: u8 = 8;

/// The exit code of `refresh`, and of `token` with due tokens, on a fleet machine (fleet options
/// given as flags or in the environment): nothing was sent, the fleet's agents refresh.
pub const FLEET_REFRESHES: u8 = 9;

/// The exit code of `status` when the login works but needs attention (one `problem` line says
/// what: an expiry without an agent, an agent expected and gone, a rotation left over, ...).
pub const ATTENTION: u8 = 10;

/// The exit code of `exec` when its command does not exist (as a shell's: 127).
pub const COMMAND_NOT_FOUND: u8 = 127;

/// The exit code of `exec` when its command exists but cannot be run (not executable, not a
/// program of this machine; as a shell's: 126).
pub const COMMAND_NOT_RUNNABLE: u8 = 126;

/// The exit code when stdout was closed before the output was written (128 + SIGPIPE, as shells
/// report a process killed by it). What the command did before (a stored key) stays done.
pub const CLOSED_STDOUT: u8 = 141;

/// Writes `text` to stdout and flushes it. A closed stdout is [`Failure::closed_stdout`]; other
/// write errors are reported.
pub fn write_stdout(text: &str) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(Failure::closed_stdout()),
        Err(e) => Err(Failure::other(
            format!("cannot write to stdout: {e}"),
            "check where stdout goes (a full disk, a closed file)",
        )),
    }
}

fn class_code(class: ErrorClass) -> (u8, &'static str) {
    match class {
        ErrorClass::SignInRequired => (3, "sign in again (e.g. `codex login`), then retry"),
        ErrorClass::Transient => (4, "nothing was changed; try again later"),
        // The message says how to wait longer: the hint says where to see the holder.
        ErrorClass::LockTimeout => (
            5,
            "`codex-store inspect` shows which lock is held, and whether an agent holds it",
        ),
        ErrorClass::Corrupt => (
            6,
            "run `codex-store inspect` to see what is wrong; `codex-store logout` removes the file",
        ),
        ErrorClass::UnsupportedMode => (
            7,
            "codex-store serves `chatgpt` tokens and `apikey` keys; get this mode's credentials from `codex` itself",
        ),
        ErrorClass::Other => (
            1,
            "`codex-store inspect` shows the state of the home's files",
        ),
    }
}

impl From<RefreshError> for Failure {
    fn from(e: RefreshError) -> Self {
        if let RefreshError::TokenUrl { origin, .. } = &e {
            // A configuration error, never "try again later": a bad environment value is a
            // usage error (exit 2, like a bad CODEX_STORE_LOCK_TIMEOUT); the built-in URL (or a
            // program's) answering as no token endpoint does is another error (exit 1).
            let code = if *origin == UrlOrigin::Environment {
                2
            } else {
                1
            };
            return Failure {
                message: e.to_string(),
                hint: Some(
                    "nothing was changed; trying again does not help until the token URL is fixed",
                ),
                code,
            };
        }
        let (code, hint) = class_code(e.class());
        Failure {
            message: e.to_string(),
            hint: Some(hint),
            code,
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::from(RefreshError::from(e))
    }
}

/// A fleet error (exit 1): its message says what to do.
impl From<FleetError> for Failure {
    fn from(e: FleetError) -> Self {
        Failure::other(
            e.to_string(),
            "`codex-store inspect --fleet ENDPOINTS` shows the fleet's record, lock and refusal",
        )
    }
}

/// Prints a report: JSON for `--json`, else its `Display` for people.
pub fn print_report<T: serde::Serialize + std::fmt::Display>(
    report: &T,
    json: bool,
) -> Result<(), Failure> {
    if json {
        let encoded = serde_json::to_value(report).map_err(|e| {
            Failure::other(
                format!("cannot encode the report: {e}"),
                "this is a defect of codex-store: please report it",
            )
        })?;
        let json = serde_json::to_string_pretty(&versioned(encoded)).map_err(|e| {
            Failure::other(
                format!("cannot encode the report: {e}"),
                "this is a defect of codex-store: please report it",
            )
        })?;
        write_stdout(&format!("{json}\n"))
    } else {
        write_stdout(&report.to_string())
    }
}

/// A change that happened but whose directory could not be fsynced: a warning on stderr (the
/// command goes on as successful).
pub fn warn_not_durable(durability: &Durability) {
    if let Durability::NotDurable(e) = durability {
        let _ = writeln!(io::stderr(), "codex-store: warning: {e}");
    }
}
