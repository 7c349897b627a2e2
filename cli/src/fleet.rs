//! The fleet options every subcommand shares (`--fleet ENDPOINTS`, ...), and `codex-store fleet
//! seed`: upload this machine's login to the fleet.

use std::path::PathBuf;
use std::time::Duration;

use codex_refresh::fleet::{Fleet, FleetConfig};
use codex_store::Secret;

use crate::exit::Failure;
use crate::home::Context;

/// The environment variable holding the etcd user's password (never a flag: flags show in `ps`).
pub const PASSWORD_ENV: &str = "CODEX_STORE_FLEET_PASSWORD";

/// Where the fleet is (global options).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FleetArgs {
    /// etcd endpoints of the fleet, comma-separated (`http://10.0.0.5:2379,https://...`)
    /// [env: CODEX_STORE_FLEET]. With it, `agent` mirrors the fleet's login, `inspect` shows it,
    /// `refresh` (and `token` with due tokens) refuse, leaving refreshing to the fleet's agents;
    /// `logout --fleet ENDPOINTS` on the command line signs every machine out.
    #[arg(
        long,
        global = true,
        value_name = "ENDPOINTS",
        env = "CODEX_STORE_FLEET"
    )]
    fleet: Option<String>,

    /// The fleet's key prefix: one per login [default: /codex-store/default].
    #[arg(
        long,
        global = true,
        value_name = "PREFIX",
        env = "CODEX_STORE_FLEET_PREFIX"
    )]
    fleet_prefix: Option<String>,

    /// The etcd user (its password comes from CODEX_STORE_FLEET_PASSWORD).
    #[arg(
        long,
        global = true,
        value_name = "USER",
        env = "CODEX_STORE_FLEET_USER"
    )]
    fleet_user: Option<String>,

    /// A CA certificate (PEM) for https:// endpoints.
    #[arg(long, global = true, value_name = "FILE")]
    fleet_ca: Option<PathBuf>,

    /// A client certificate (PEM) for etcd.
    #[arg(long, global = true, value_name = "FILE")]
    fleet_cert: Option<PathBuf>,

    /// The client certificate's key (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    fleet_key: Option<PathBuf>,

    /// This machine's name in the fleet's history [default: the host name].
    #[arg(long, global = true, value_name = "NAME")]
    machine: Option<String>,

    /// The time to live of the fleet lock's lease, like `60s` (longer than a refresh request).
    #[arg(long, global = true, value_name = "DURATION", value_parser = crate::parse_duration)]
    fleet_lock_ttl: Option<Duration>,

    /// Whether `--fleet` itself was on the command line (not only CODEX_STORE_FLEET): set by
    /// `main` from clap's value source.
    #[arg(skip)]
    fleet_on_command_line: bool,
}

/// The id clap gives `--fleet` (its field's name), for asking where its value came from.
pub const FLEET_ARG_ID: &str = "fleet";

impl FleetArgs {
    /// Records whether `--fleet` was given on the command line (`true`) or, if at all, only by
    /// CODEX_STORE_FLEET.
    pub fn with_fleet_on_command_line(mut self, on_command_line: bool) -> Self {
        self.fleet_on_command_line = on_command_line;
        self
    }

    /// Whether this machine is on a fleet: `--fleet` or CODEX_STORE_FLEET names endpoints (the
    /// same test as [`FleetArgs::fleet`], without building the client).
    pub fn is_configured(&self) -> bool {
        self.fleet.as_deref().is_some_and(|e| !e.trim().is_empty())
    }

    /// Whether the endpoints came from `--fleet` on the command line, not only from the
    /// environment: what an action on every machine (`logout`) requires.
    pub fn on_command_line(&self) -> bool {
        self.fleet_on_command_line && self.is_configured()
    }

    /// The fleet, when `--fleet` (or CODEX_STORE_FLEET) names one.
    pub fn fleet(&self) -> Result<Option<Fleet>, Failure> {
        let Some(endpoints) = self.fleet.as_deref().filter(|_| self.is_configured()) else {
            return Ok(None);
        };
        let mut config = FleetConfig::new(
            endpoints
                .split(',')
                .map(|e| e.trim().to_owned())
                .filter(|e| !e.is_empty())
                .collect(),
        );
        if let Some(prefix) = &self.fleet_prefix {
            config.prefix = prefix.clone();
        }
        if let Some(user) = &self.fleet_user {
            config.username = Some(user.clone());
            config.password = std::env::var(PASSWORD_ENV).ok().map(Secret::new);
            if config.password.is_none() {
                return Err(Failure::usage(format!(
                    "--fleet-user needs the password in {PASSWORD_ENV}"
                )));
            }
        }
        config.ca_file = self.fleet_ca.clone();
        config.cert_file = self.fleet_cert.clone();
        config.key_file = self.fleet_key.clone();
        if let Some(machine) = &self.machine {
            config.machine = machine.clone();
        }
        if let Some(ttl) = self.fleet_lock_ttl {
            config.lock_ttl = ttl;
        }
        Fleet::new(config)
            .map(Some)
            .map_err(|e| Failure::usage(e.to_string()))
    }

    /// The fleet, required.
    pub fn required(&self) -> Result<Fleet, Failure> {
        self.fleet()?.ok_or_else(|| {
            Failure::usage(
                "this needs the fleet: pass --fleet ENDPOINTS (or set CODEX_STORE_FLEET)",
            )
        })
    }
}

/// Options of `fleet`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: FleetCommand,
}

#[derive(Debug, clap::Subcommand)]
enum FleetCommand {
    /// Upload this machine's auth.json as the fleet's login (refused when the fleet holds one,
    /// unless --force).
    Seed {
        /// Replace the login the fleet holds; if it changes between the seed's read and its
        /// write (a machine uploaded a rotation), nothing is written and the seed fails.
        #[arg(long)]
        force: bool,
    },
}

/// Runs `fleet seed`.
pub fn run(ctx: &Context, args: Args) -> Result<(), Failure> {
    match args.command {
        FleetCommand::Seed { force } => {
            let fleet = ctx.fleet_args().required()?;
            let store = ctx.store()?;
            let snapshot = store.load()?;
            let Some(doc) = snapshot.auth() else {
                return Err(Failure::other(
                    format!(
                        "{} holds no credentials to seed the fleet with",
                        store.path().display()
                    ),
                    Some("sign in on this machine first (`codex login`)"),
                ));
            };
            let revision = ctx
                .runtime()?
                .block_on(fleet.seed(doc, force))
                .map_err(fleet_failure)?;
            crate::exit::write_stdout(&format!(
                "Seeded the fleet ({}) with the login in {} (revision {revision})\n",
                fleet.record_key(),
                store.path().display()
            ))
        }
    }
}

/// A fleet error as a command failure (exit 1, the message says what to do).
pub fn fleet_failure(e: codex_refresh::fleet::FleetError) -> Failure {
    Failure::other(e.to_string(), None)
}

/// The refusal of a one-shot refresh (`refresh`, `token` with due tokens) on a fleet machine:
/// only the fleet's agents refresh the fleet's login, under the fleet lock and against the record;
/// a rotation made here alone would leave the record (and every other machine) with a spent
/// refresh token. `what` opens the message (what was not done, or why a refresh was needed).
pub fn refuse_one_shot_refresh(source: &str, what: &str) -> Failure {
    Failure::fleet_refreshes(format!(
        "{what}: this machine is on a fleet ({source}), whose login only the fleet's agents \
         refresh (a refresh here would rotate it on this machine alone and leave the fleet's \
         record with a spent refresh token); nothing was sent"
    ))
}

/// Why this home is a fleet machine, if it is: `--fleet` or `CODEX_STORE_FLEET` names a fleet,
/// or an agent synced this home with one (its `auth.json.fleet` exists: the fleet's options may
/// live only in the agent's service unit).
pub fn fleet_machine(ctx: &Context, store: &codex_store::Store) -> Option<String> {
    let args = ctx.fleet_args();
    if args.is_configured() {
        return Some(
            if args.on_command_line() {
                "--fleet is set"
            } else {
                "CODEX_STORE_FLEET is set"
            }
            .to_owned(),
        );
    }
    // Only a regular file is an agent's: anything else at that name was planted.
    let state = store.fleet_state_path();
    codex_store::side_file::is_regular(&state).then(|| {
        format!(
            "{} exists: an agent synced this home with a fleet (remove it if this machine left \
             the fleet)",
            state.display()
        )
    })
}
