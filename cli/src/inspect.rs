//! `codex-store inspect`: what is on disk, without any secret, and without waiting or writing.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use codex_refresh::{CodexAuth, RefreshConfig};
use codex_store::{
    read_journal, AgentPresence, AuthDotJson, Generation, JournalRecord, Secret, Store, StoreError,
    StoreOptions, Timestamp,
};
use serde::Serialize;

use crate::exit::escape_controls as escape;
use crate::exit::Failure;
use crate::home::Context;

/// Options of `inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,

    /// Also show the journal of refresh outcomes (`auth.json.journal`): who rotated, adopted or
    /// was refused what, and when, with token fingerprints only.
    #[arg(long)]
    history: bool,
}

/// Fingerprints (the first 12 hex characters of the SHA-256) of the stored secrets, so that two
/// machines' tokens can be compared without showing them.
#[derive(Debug, Default, Serialize)]
struct Fingerprints {
    access_token: Option<String>,
    refresh_token: Option<String>,
    id_token: Option<String>,
    api_key: Option<String>,
}

/// Whether a `codex-store agent` keeps this auth.json fresh (its claim is held), and what it
/// published.
#[derive(Debug, Default, Serialize)]
struct AgentReport {
    running: bool,
    pid: Option<u32>,
    state: Option<String>,
    next_refresh: Option<String>,
    /// The URL of the token broker it serves (`agent --serve`), as its status says.
    broker: Option<String>,
}

impl fmt::Display for AgentReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.running {
            return f.write_str("not running");
        }
        write!(f, "running, pid {}", show(&self.pid))?;
        if let Some(state) = &self.state {
            write!(f, ", {state}")?;
        }
        if let Some(next) = &self.next_refresh {
            write!(f, ", next refresh {next}")?;
        }
        if let Some(broker) = &self.broker {
            write!(f, ", token broker {broker}")?;
        }
        Ok(())
    }
}

/// The report, for people (`Display`) and scripts (`Serialize`).
#[derive(Debug, Default, Serialize)]
struct InspectReport {
    path: PathBuf,
    /// The final target when auth.json is a symbolic link (where the store reads, locks and
    /// writes).
    link_target: Option<PathBuf>,
    exists: bool,
    generation: Option<String>,
    auth_mode: Option<String>,
    account_id: Option<String>,
    email: Option<String>,
    plan_type: Option<String>,
    user_id: Option<String>,
    access_token_expires_at: Option<String>,
    last_refresh: Option<String>,
    refresh_due: Option<bool>,
    file_mode: Option<String>,
    file_size: Option<u64>,
    lock_path: PathBuf,
    lock_held: Option<bool>,
    refresh_lock_held: Option<bool>,
    agent: AgentReport,
    unknown_fields: Vec<String>,
    fingerprints: Fingerprints,
    problems: Vec<String>,
    error: Option<String>,
    /// Where Codex keeps the login, by its `config.toml` (`cli_auth_credentials_store`).
    credentials_store: Option<codex_store::codex_config::CredentialsStore>,
    /// The fleet's record, with `--fleet`: revision, account, last rotation and its machine.
    #[serde(skip_serializing_if = "Option::is_none")]
    fleet: Option<codex_refresh::fleet::FleetStatus>,
    /// The journal's records, oldest first (only with `--history`).
    #[serde(skip_serializing_if = "Option::is_none")]
    history: Option<Vec<JournalRecord>>,
}

/// `t` in RFC 3339 UTC to the second (`2026-11-24T10:00:00Z`).
fn rfc3339(t: SystemTime) -> String {
    Timestamp::to_seconds(t)
}

fn fingerprint(s: &Secret) -> Option<String> {
    Some(s.fingerprint())
}

impl InspectReport {
    fn fill_from_document(&mut self, doc: &AuthDotJson, generation: Generation) {
        self.auth_mode = Some(doc.resolved_mode().as_str().to_owned());
        self.unknown_fields = doc.unknown_fields();
        self.last_refresh = doc.last_refresh.as_ref().map(|t| t.as_str().to_owned());
        self.fingerprints.api_key = doc.openai_api_key.as_ref().and_then(fingerprint);
        if let Some(tokens) = &doc.tokens {
            self.fingerprints.access_token = fingerprint(&tokens.access_token);
            self.fingerprints.refresh_token = fingerprint(&tokens.refresh_token);
            self.fingerprints.id_token = fingerprint(&tokens.id_token);
        }
        match CodexAuth::from_document(doc, generation) {
            Ok(Some(auth)) => {
                self.account_id = auth.account_id().map(str::to_owned);
                self.email = auth.email().map(str::to_owned);
                self.plan_type = auth.plan_type().map(str::to_owned);
                self.user_id = auth.user_id().map(str::to_owned);
                self.access_token_expires_at = auth.expires_at().map(rfc3339);
                self.refresh_due = Some(auth.is_due(SystemTime::now(), &RefreshConfig::default()));
            }
            Ok(None) => {}
            Err(e) => self.problems.push(e.to_string()),
        }
    }
}

fn build(home: &Path, history: bool) -> InspectReport {
    let path = home.join(codex_store::AUTH_FILE);
    let mut report = InspectReport {
        lock_path: home.join("auth.json.lock"),
        path: path.clone(),
        ..Default::default()
    };
    if let Ok(meta) = std::fs::symlink_metadata(&path) {
        report.exists = true;
        report.file_mode = Some(format!("{:04o}", meta.mode() & 0o7777));
        report.file_size = Some(meta.len());
    }
    if !home.is_dir() {
        report.error = Some(format!("{} is not an existing directory", home.display()));
        return report;
    }
    // Opening an existing directory creates nothing; the lock wait is irrelevant (no lock taken).
    let store = match Store::with_options(home, StoreOptions::default()) {
        Ok(store) => store,
        Err(e) => {
            report.error = Some(e.to_string());
            return report;
        }
    };
    report.lock_path = store.lock_path().to_path_buf();
    report.link_target = store.link().map(|_| store.path().to_path_buf());
    if store.link().is_some() {
        // The link's own mode says nothing: show the target's.
        report.exists = false;
        report.file_mode = None;
        report.file_size = None;
        if let Ok(meta) = std::fs::metadata(store.path()) {
            report.exists = true;
            report.file_mode = Some(format!("{:04o}", meta.mode() & 0o7777));
            report.file_size = Some(meta.len());
        }
    }
    match store.lock_held() {
        Ok(held) => report.lock_held = Some(held),
        Err(e) => report.problems.push(e.to_string()),
    }
    match store.refresh_lock_held() {
        Ok(held) => report.refresh_lock_held = Some(held),
        Err(e) => report.problems.push(e.to_string()),
    }
    match store.agent_presence() {
        Ok(AgentPresence::NotRunning) => {}
        Ok(AgentPresence::Running(status)) => {
            report.agent.running = true;
            if let Some(status) = status {
                report.agent.pid = Some(status.pid);
                report.agent.state = serde_json::to_value(status.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned));
                report.agent.next_refresh = status.next_refresh;
                report.agent.broker = status.broker;
            }
        }
        Err(e) => report.problems.push(e.to_string()),
    }
    if history {
        match read_journal(store.journal_path()) {
            Ok(records) => report.history = Some(records),
            Err(e) => report.problems.push(e.to_string()),
        }
    }
    match store.diagnose() {
        Ok(problems) => report
            .problems
            .extend(problems.iter().map(|p| p.to_string())),
        Err(e) => report.problems.push(e.to_string()),
    }
    match codex_store::codex_config::credentials_store(home) {
        Ok(found) => report.credentials_store = Some(found),
        Err(e) => report.problems.push(e.to_string()),
    }
    match store.load() {
        Ok(snapshot) => {
            if !snapshot.generation().is_absent() {
                report.generation = Some(snapshot.generation().to_string());
            }
            if snapshot.auth().is_none() {
                if let Some(elsewhere) = report
                    .credentials_store
                    .as_ref()
                    .filter(|s| s.may_bypass_auth_json())
                {
                    report
                        .problems
                        .push(crate::findings::keyring_message(elsewhere));
                }
            }
            if let Some(doc) = snapshot.auth() {
                report.fill_from_document(doc, snapshot.generation());
            }
        }
        Err(e) => {
            if let StoreError::Corrupt { generation, .. } = &e {
                report.generation = Some(generation.to_string());
                // A problem like the others, for whoever reads only `problems`.
                report.problems.push(e.to_string());
            }
            report.error = Some(e.to_string());
        }
    }
    report
}

fn show<T: fmt::Display>(value: &Option<T>) -> String {
    value
        .as_ref()
        .map_or_else(|| "-".to_owned(), |v| v.to_string())
}

impl fmt::Display for InspectReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fp = &self.fingerprints;
        let rows: Vec<(&str, String)> = vec![
            ("path", self.path.display().to_string()),
            (
                "link target",
                self.link_target
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |t| t.display().to_string()),
            ),
            ("exists", self.exists.to_string()),
            ("generation", show(&self.generation)),
            ("auth mode", show(&self.auth_mode)),
            ("account id", show(&self.account_id)),
            ("email", show(&self.email)),
            ("plan", show(&self.plan_type)),
            ("access token expires", show(&self.access_token_expires_at)),
            ("last refresh", show(&self.last_refresh)),
            ("refresh due", show(&self.refresh_due)),
            ("file mode", show(&self.file_mode)),
            ("credentials store", show(&self.credentials_store)),
            ("lock", self.lock_path.display().to_string()),
            ("lock held", show(&self.lock_held)),
            ("refresh lock held", show(&self.refresh_lock_held)),
            ("agent", self.agent.to_string()),
            (
                "unknown fields",
                if self.unknown_fields.is_empty() {
                    "-".into()
                } else {
                    self.unknown_fields.join(", ")
                },
            ),
            ("access token sha256", show(&fp.access_token)),
            ("refresh token sha256", show(&fp.refresh_token)),
            ("api key sha256", show(&fp.api_key)),
            ("error", show(&self.error)),
        ];
        // Values come from the file (claims, key names) and the file system (paths): escaped,
        // so that no control character or newline in them can forge a line of the report.
        for (key, value) in rows {
            writeln!(f, "{key:<21} {}", escape(&value))?;
        }
        if self.problems.is_empty() {
            writeln!(f, "{:<21} none", "problems")?;
        } else {
            writeln!(f, "problems:")?;
            for problem in &self.problems {
                writeln!(f, "  - {}", escape(problem))?;
            }
        }
        if let Some(fleet) = &self.fleet {
            writeln!(f, "fleet:")?;
            let last = fleet.last_rotation.as_ref();
            let rows = [
                ("record", fleet.key.clone()),
                ("revision", show(&fleet.revision)),
                ("sha256", show(&fleet.generation)),
                ("account id", show(&fleet.account_id)),
                ("refresh token sha256", show(&fleet.refresh_token)),
                (
                    "last rotation",
                    last.map_or_else(
                        || "-".to_owned(),
                        |r| format!("{} by {} at {}", r.kind, r.machine, r.at),
                    ),
                ),
                ("lock holder", lock_line(fleet)),
                (
                    "refusal",
                    fleet.refusal.as_ref().map_or_else(
                        || "-".to_owned(),
                        |r| {
                            format!(
                                "{} for refresh token {}, seen by {} at {}",
                                r.code, r.refresh, r.machine, r.at
                            )
                        },
                    ),
                ),
                (
                    "redeeming",
                    fleet.redeeming.as_ref().map_or_else(
                        || "-".to_owned(),
                        |r| format!("refresh token {} by {} at {}", r.refresh, r.machine, r.at),
                    ),
                ),
                ("record problem", show(&fleet.record_problem)),
            ];
            for (key, value) in rows {
                writeln!(f, "  {key:<21} {}", escape(&value))?;
            }
        }
        if let Some(history) = &self.history {
            writeln!(f, "history ({} records, oldest first):", history.len())?;
            for record in history {
                writeln!(f, "  {}", HistoryLine(record))?;
            }
        }
        Ok(())
    }
}

/// The fleet lock's holder, since which revision and how many revisions ago (etcd's count of
/// writes, no machine's clock), and its lease.
fn lock_line(fleet: &codex_refresh::fleet::FleetStatus) -> String {
    let Some(holder) = &fleet.lock_holder else {
        return "-".to_owned();
    };
    let mut line = holder.clone();
    if let Some(since) = fleet.lock_since_revision {
        line.push_str(&format!(
            ", since revision {since} ({} revisions ago)",
            (fleet.revision_now - since).max(0)
        ));
    }
    match (fleet.lock_lease, fleet.lock_lease_ttl) {
        (Some(0), _) => line.push_str(", on no lease: it never expires"),
        (Some(_), Some(ttl)) => line.push_str(&format!(", lease {ttl} s left")),
        (Some(_), None) => line.push_str(", its lease is gone"),
        (None, _) => {}
    }
    line
}

/// One journal record on one line. The journal is untrusted input: every field is escaped, so
/// that no control character or newline in it can forge report lines.
struct HistoryLine<'a>(&'a JournalRecord);

fn short(value: &Option<String>) -> String {
    value.as_deref().map_or_else(
        || "-".to_owned(),
        |v| escape(&v.chars().take(12).collect::<String>()),
    )
}

impl fmt::Display for HistoryLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        let event = serde_json::to_value(r.event)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        write!(
            f,
            "{} pid {} {event:<9} generation {}",
            escape(&r.at),
            r.pid,
            short(&r.generation)
        )?;
        if r.new_generation.is_some() {
            write!(f, " -> {}", short(&r.new_generation))?;
        }
        if let Some(account) = &r.account {
            write!(f, " account {}", escape(account))?;
        }
        if r.refresh.is_some() || r.new_refresh.is_some() {
            write!(f, " refresh token {}", short(&r.refresh))?;
            if r.new_refresh.is_some() {
                write!(f, " -> {}", short(&r.new_refresh))?;
            }
        }
        if let Some(code) = &r.code {
            write!(f, " ({})", escape(code))?;
        }
        Ok(())
    }
}

/// Runs `inspect`: exits 0 whenever a report was produced.
pub fn run(ctx: &Context, args: Args) -> Result<(), Failure> {
    let mut report = build(&ctx.home()?, args.history);
    if let Some(fleet) = ctx.fleet_args().fleet()? {
        match ctx.runtime()?.block_on(fleet.status()) {
            Ok(status) => {
                report
                    .problems
                    .extend(crate::findings::fleet_problems(&status));
                report.fleet = Some(status);
            }
            Err(e) => report.problems.push(format!("the fleet: {e}")),
        }
    }
    crate::exit::print_report(&report, args.json)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::rfc3339;

    #[test]
    fn an_expiry_is_shown_to_the_second_in_utc_and_its_fraction_is_cut_not_rounded() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_999);
        assert_eq!(
            rfc3339(t),
            "2023-11-14T22:13:20Z",
            "the expiry is not RFC 3339 to the second with the fraction cut"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH),
            "1970-01-01T00:00:00Z",
            "a whole second is not shown as itself"
        );
    }
}
