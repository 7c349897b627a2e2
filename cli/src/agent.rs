//! `codex-store agent`: keep one home's credentials fresh, in the foreground, so that the
//! Codex processes sharing it never have to refresh.

use std::io::Write;
use std::time::Duration;

use codex_refresh::{Agent, AgentConfig, AgentError, AgentEvent};
use codex_store::StoreError;

use crate::exit::Failure;
use crate::home::Context;

/// Options of `agent`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Refresh this long before the access token expires, like `15m`. Must exceed Codex's own
    /// 5 minutes, so that Codex processes find fresh tokens and never refresh themselves.
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = crate::options::parse_duration)]
    lead: Duration,

    /// One JSON object per line on stderr instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs `agent` until SIGTERM, SIGINT or SIGHUP (exit 0). When another agent already runs for
/// the home, exits [`crate::exit::AGENT_RUNNING`] at once, naming its pid.
pub fn run(ctx: &Context, args: Args) -> Result<(), Failure> {
    let config = AgentConfig {
        lead: args.lead,
        ..AgentConfig::default()
    };
    let mut agent =
        Agent::new(ctx.quiet_store()?, ctx.refresh_config(), config).map_err(agent_failure)?;
    if let Some(fleet) = ctx.fleet_args().fleet()? {
        agent = agent.with_fleet(fleet).map_err(agent_failure)?;
    }
    let runtime = ctx.runtime()?;
    runtime.block_on(async move {
        let stop = stop_signal().map_err(|e| {
            Failure::other(
                format!("cannot listen for SIGTERM, SIGINT and SIGHUP: {e}"),
                "the system refused a signal handler: check the process's limits",
            )
        })?;
        let json = args.json;
        agent
            .run(stop, |event| print_event(event, json))
            .await
            .map_err(agent_failure)
    })
}

/// Resolves at the first SIGTERM, SIGINT or SIGHUP (a closed terminal: the agent stops as
/// cleanly as on SIGTERM, saving an answer already on its way).
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = hup.recv() => {}
        }
    })
}

/// One line on stderr. A closed stderr loses the line, never the agent.
fn print_event(event: &AgentEvent, json: bool) {
    let line = if json {
        json_line(event)
    } else {
        format!("codex-store agent: {event}")
    };
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// The event as one JSON object, its format version first (as in every JSON the command prints).
fn json_line(event: &AgentEvent) -> String {
    let value = serde_json::to_value(event).unwrap_or_default();
    crate::exit::versioned(value).to_string()
}

fn agent_failure(e: AgentError) -> Failure {
    match e {
        AgentError::LeadTooShort { .. } => {
            Failure::usage_with(e.to_string(), "see `codex-store agent --help`")
        }
        // Its own exit code, which the service units do not restart: trying again every few
        // seconds cannot help while the other agent runs.
        AgentError::Store(e @ StoreError::AgentRunning { .. }) => {
            Failure::agent_running(e.to_string())
        }
        AgentError::Store(e) => Failure::from(e),
        AgentError::Refresh(e) => Failure::from(e),
        AgentError::Watch { .. } => Failure::other(
            e.to_string(),
            "start the agent again once the directory exists (the service unit restarts it)",
        ),
    }
}
