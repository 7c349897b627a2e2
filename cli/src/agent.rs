//! `codex-store agent`: keep one home's credentials fresh, in the foreground, so that the
//! Codex processes sharing it never have to refresh.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use codex_refresh::{
    Agent, AgentConfig, AgentError, AgentEvent, AuthManager, Broker, BrokerConfig, BrokerError,
};
use codex_store::{AgentPresence, StoreError};

use crate::exit::Failure;
use crate::home::Context;
use crate::options::{broker_url, parse_broker_addr, DEFAULT_BROKER_ADDR};

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

    /// Listen for Codex's refresh requests on ADDR, a loopback address [default ADDR:
    /// 127.0.0.1:14550], and publish its URL in the agent's status (`inspect`, `codex-store
    /// env`, `codex-store exec`). A socket passed by the service manager (systemd's socket
    /// activation: the shipped codex-store-agent.socket) is used instead of binding one, and
    /// served without --serve too.
    #[arg(long, value_name = "ADDR", num_args = 0..=1)]
    serve: Option<Option<String>>,
}

/// The hint under a bad `--serve`.
const SERVE_HINT: &str =
    "use a loopback address such as 127.0.0.1:14550 or [::1]:14550; see `codex-store agent --help`";

/// Runs `agent` until SIGTERM, SIGINT or SIGHUP (exit 0). When another agent already runs for
/// the home, exits [`crate::exit::AGENT_RUNNING`] at once, naming its pid.
pub fn run(ctx: &Context, args: Args) -> Result<(), Failure> {
    // First, before anything is claimed: a taken port is an error naming it, not an agent that
    // runs and serves nothing.
    let listener = broker_listener(ctx, args.serve.as_ref().map(Option::as_deref))?;
    let broker = listener
        .as_ref()
        .map(|l| l.local_addr().map(broker_url))
        .transpose()
        .map_err(|e| {
            Failure::other(
                format!("the token broker's socket has no address: {e}"),
                "start the agent again; if it persists, check the socket the service manager passes",
            )
        })?;
    let config = AgentConfig {
        lead: args.lead,
        ..AgentConfig::default()
    };
    // Every status the agent publishes names the broker's URL (`inspect`, `env`, `exec`).
    let store = ctx.quiet_store()?.with_agent_broker(broker);
    let fleet = ctx.fleet_args().fleet()?;
    let mut agent =
        Agent::new(store.clone(), ctx.refresh_config(), config).map_err(agent_failure)?;
    // The broker's own manager reads the home and forwards unknown tokens. Alone, its refreshes
    // run the same guarded protocol as the agent's; on a fleet machine, the agent makes them,
    // under the fleet's lock and reservation.
    let broker = match &listener {
        Some(_) => {
            let manager = AuthManager::new(store, ctx.refresh_config())
                .map_err(|e| Failure::other(e.to_string(), "check the token URL"))?;
            Some(if fleet.is_some() {
                let (asker, asks) = codex_refresh::refresh_asks();
                agent = agent.answering(asks);
                Broker::through_agent(manager, BrokerConfig::default(), asker)
            } else {
                Broker::new(manager, BrokerConfig::default())
            })
        }
        None => None,
    };
    if let Some(fleet) = fleet {
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
        let (stopping, stopped) = tokio::sync::watch::channel(false);
        let until_stopped = || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }
        };
        let broker = match (listener, broker) {
            (Some(listener), Some(broker)) => {
                Some(start_broker(listener, broker, until_stopped())?)
            }
            _ => None,
        };
        let signalled = async {
            stop.await;
            let _ = stopping.send(true);
        };
        let ran = match broker {
            None => agent.run(signalled, |event| print_event(event, json)).await,
            Some(mut serving) => {
                let agent_run = agent.run(until_stopped(), |event| print_event(event, json));
                tokio::pin!(agent_run);
                let ran = tokio::select! {
                    ran = &mut agent_run => ran,
                    () = signalled => agent_run.await,
                    served = &mut serving => {
                        // The broker ended before any stop: stop the agent too, and say why.
                        let _ = stopping.send(true);
                        let _ = agent_run.await;
                        return Err(broker_failure(served));
                    }
                };
                let _ = stopping.send(true);
                if let Err(failure) = serving
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()))
                {
                    eprintln!("codex-store agent: the token broker ended with an error: {failure}");
                }
                ran
            }
        };
        ran.map_err(agent_failure)
    })
}

/// Starts `broker` on `listener`, until `shutdown`.
fn start_broker(
    listener: TcpListener,
    broker: Broker,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<Result<(), BrokerError>>, Failure> {
    let listener = listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(listener))
        .map_err(|e| {
            Failure::other(
                format!("cannot serve the token broker's socket: {e}"),
                "start the agent again; if it persists, check the socket the service manager passes",
            )
        })?;
    // Refused before the agent starts, so that it publishes nothing it will not serve.
    if let Err(e) = broker.check(&listener) {
        return Err(broker_failure(Ok(Err(e))));
    }
    Ok(tokio::spawn(broker.serve(listener, shutdown)))
}

/// What a broker that ended before the agent was asked to stop means.
fn broker_failure(served: Result<Result<(), BrokerError>, tokio::task::JoinError>) -> Failure {
    match served {
        Ok(Err(e @ BrokerError::ForwardsToItself { .. })) => Failure::other(
            e.to_string(),
            "start the agent without CODEX_REFRESH_TOKEN_URL_OVERRIDE pointing at the broker \
             (a shell profile's `codex-store env` line is for Codex, not for the agent)",
        ),
        Ok(Err(e)) => Failure::other(e.to_string(), "see `codex-store agent --help` for --serve"),
        Ok(Ok(())) => Failure::other(
            "the token broker stopped on its own".to_owned(),
            "start the agent again",
        ),
        Err(e) => Failure::other(
            format!("the token broker failed: {e}"),
            "start the agent again",
        ),
    }
}

/// The token broker's listening socket: the one the service manager passed (systemd's socket
/// activation, the shipped codex-store-agent.socket: serving it is what enabling that unit
/// asks for, with or without `--serve`), else, with `--serve` (`serve`: `Some(None)` without
/// ADDR), ADDR bound now; else `None`. ADDR, and a passed socket's address, must be loopback;
/// an ADDR of port 0 binds any free port.
///
/// # Errors
/// A usage error (exit 2) for an ADDR that is no loopback address, for a passed socket the
/// agent cannot use (not loopback, not the ADDR given, more than one); exit
/// [`crate::exit::AGENT_RUNNING`] when the home's own agent already serves ADDR; another error
/// (exit 1) naming ADDR when it cannot be bound (taken by another process, not an address of
/// this machine).
pub fn broker_listener(
    ctx: &Context,
    serve: Option<Option<&str>>,
) -> Result<Option<TcpListener>, Failure> {
    // Read (and removed from the environment) in any case.
    let inherited = crate::activation::inherited_listener()?;
    if serve.is_none() && inherited.is_none() {
        return Ok(None);
    }
    let asked = serve
        .flatten()
        .map(|text| parse_broker_addr("--serve", text, true, SERVE_HINT))
        .transpose()?;
    let passed_hint = "make the socket unit's ListenStream= and --serve name the same loopback \
                       address, or give --serve no address";
    if let Some(listener) = inherited {
        let addr = listener.local_addr().map_err(|e| {
            Failure::usage_with(
                format!("the socket the service manager passed has no address: {e}"),
                passed_hint,
            )
        })?;
        if !crate::options::is_loopback_ip(addr.ip()) {
            return Err(Failure::usage_with(
                format!(
                    "the socket the service manager passed listens on {addr}, not a loopback \
                     address: the token broker listens only on 127.0.0.0/8 or [::1]"
                ),
                passed_hint,
            ));
        }
        if let Some(asked) = asked.filter(|a| a.port() != 0 && *a != addr) {
            return Err(Failure::usage_with(
                format!(
                    "--serve {asked} names another address than the socket the service manager \
                     passed, which listens on {addr}"
                ),
                passed_hint,
            ));
        }
        return Ok(Some(listener));
    }
    let addr = match asked {
        Some(addr) => addr,
        None => parse_broker_addr("--serve", DEFAULT_BROKER_ADDR, false, SERVE_HINT)?,
    };
    TcpListener::bind(addr)
        .map(Some)
        .map_err(|e| bind_failure(ctx, addr, &e))
}

/// Why `addr` could not be bound: the home's own agent serving it already (exit 8, as any
/// second agent), or the address named with what to do.
fn bind_failure(ctx: &Context, addr: SocketAddr, e: &std::io::Error) -> Failure {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        let url = broker_url(addr);
        let presence = ctx.quiet_store().ok().and_then(|s| s.agent_presence().ok());
        if let Some(AgentPresence::Running(Some(status))) = presence {
            if status.broker.as_deref() == Some(url.as_str()) {
                return Failure::agent_running(format!(
                    "another agent (pid {}) already runs for this home and serves the token \
                     broker at {url}",
                    status.pid
                ));
            }
        }
        return Failure::other(
            format!(
                "cannot listen on {addr} for the token broker (--serve): another process \
                 listens there ({e})"
            ),
            "find it with `ss -ltnp` (Linux) or `lsof -nP -iTCP -sTCP:LISTEN` (macOS): stop it, \
             or give the agent another loopback address (`--serve 127.0.0.1:PORT`, and \
             `codex-store env --addr` the same)",
        );
    }
    Failure::other(
        format!("cannot listen on {addr} for the token broker (--serve): {e}"),
        "use an address of this machine's loopback interface and a port of 1024 or above (the \
         default is 127.0.0.1:14550)",
    )
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
