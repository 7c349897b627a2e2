//! The global options every subcommand shares: the durations' syntax and where the fleet is
//! (`--fleet ENDPOINTS`, ...); and the token broker's address, which `agent --serve`, `env
//! --addr` and `exec --addr` take.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use codex_refresh::fleet::{Fleet, FleetConfig};
use codex_store::Secret;

use crate::exit::Failure;

/// Parses a duration option (`2s`, `500ms`, `1m`) as the store does its environment values.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    codex_store::StoreOptions::parse_duration(text)
        .ok_or_else(|| format!("`{text}` is not a duration; write it like 2s, 500ms or 1m"))
}

/// Where the agent's token broker listens when `--serve` names no address (the library's
/// default), which Codex is pointed at by `codex-store env` and `codex-store exec`, and the
/// shipped socket unit's `ListenStream=`.
pub use codex_refresh::DEFAULT_BROKER_ADDR;

/// The path of the broker's token endpoint (Codex posts its refresh there), and the variable
/// through which unmodified Codex (and codex-store) sends its refresh requests to another token
/// endpoint: the library's.
pub use codex_refresh::{BROKER_TOKEN_PATH, TOKEN_URL_ENV};

/// The URL of the broker's token endpoint at `addr`, what [`TOKEN_URL_ENV`] names:
/// `http://127.0.0.1:14550/oauth/token`, `http://[::1]:14550/oauth/token`.
pub fn broker_url(addr: SocketAddr) -> String {
    format!("http://{addr}{BROKER_TOKEN_PATH}")
}

/// The address of a broker URL exactly as [`broker_url`] writes it for a loopback address with
/// a port; `None` for anything else (an agent's status is outside text: a URL sending Codex's
/// refresh tokens elsewhere must not be taken from it).
pub fn broker_addr_of_url(url: &str) -> Option<SocketAddr> {
    let authority = url
        .strip_prefix("http://")?
        .strip_suffix(BROKER_TOKEN_PATH)?;
    let addr: SocketAddr = authority.parse().ok()?;
    (is_loopback_ip(addr.ip()) && addr.port() != 0 && broker_url(addr) == url).then_some(addr)
}

/// Whether `ip` is a loopback address: 127.0.0.0/8 or `::1`.
pub fn is_loopback_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback(),
    }
}

/// Parses the token broker's address given to `option` (`--serve`, `--addr`): `IP:PORT` of a
/// loopback address (127.0.0.0/8, `[::1]`), or `localhost:PORT` (127.0.0.1). Port 0 (any free
/// port) only `with_any_port`, where the agent binds it and publishes the port it got.
///
/// # Errors
/// A usage error (exit 2) with `hint` for text that is no such address, naming the option and
/// the text (escaped when printed), and saying why only loopback.
pub fn parse_broker_addr(
    option: &str,
    text: &str,
    with_any_port: bool,
    hint: &'static str,
) -> Result<SocketAddr, Failure> {
    let parsed = match text.strip_prefix("localhost:") {
        Some(port) => port
            .parse::<u16>()
            .ok()
            .map(|port| SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
        None => text.parse::<SocketAddr>().ok(),
    };
    let Some(addr) = parsed else {
        return Err(Failure::usage_with(
            format!(
                "{option} {text:?} is not an address: write IP:PORT, like {DEFAULT_BROKER_ADDR} \
                 or [::1]:14550"
            ),
            hint,
        ));
    };
    if !is_loopback_ip(addr.ip()) {
        return Err(Failure::usage_with(
            format!(
                "{option} {addr} is not a loopback address: the token broker listens only on \
                 127.0.0.0/8 or [::1], where no other machine can reach it"
            ),
            hint,
        ));
    }
    if addr.port() == 0 && !with_any_port {
        return Err(Failure::usage_with(
            format!("{option} {addr} names no port: write the broker's port, like {DEFAULT_BROKER_ADDR}"),
            hint,
        ));
    }
    Ok(addr)
}

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
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration)]
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
        let fleet = Fleet::new(config).map_err(|e| Failure::usage(e.to_string()))?;
        let password = fleet.config().username.is_some();
        if let Some(warning) = plaintext_warning(&fleet.config().endpoints, password) {
            let _ = writeln!(std::io::stderr(), "{warning}");
        }
        Ok(Some(fleet))
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

/// The warning for a password sent in the clear: `None` unless one of `endpoints` is a plain
/// `http://` URL to a host that is not loopback, else one line naming those endpoints (escaped:
/// they are the user's text).
///
/// # Security
/// Over `http://` every answer and write carries the login's tokens, and etcd's authentication
/// request the password (with `password`) as it is: anyone on the path reads them. Loopback (127.0.0.0/8,
/// `::1`, `localhost`) never leaves the machine; any other host, or an endpoint this cannot read
/// as `http://HOST[:PORT]`, is warned about.
pub fn plaintext_warning(endpoints: &[String], password: bool) -> Option<String> {
    let exposed: Vec<String> = endpoints
        .iter()
        .filter(|e| {
            e.strip_prefix("http://")
                .is_some_and(|rest| !is_loopback(rest))
        })
        .map(|e| e.escape_debug().to_string())
        .collect();
    let what = if password {
        "the etcd password (--fleet-user) and every token of the login travel"
    } else {
        "every token of the login travels"
    };
    (!exposed.is_empty()).then(|| {
        format!(
            "codex-store: warning: {what} unencrypted over plain http:// to {}: anyone on the \
             path can read them; use https:// endpoints with --fleet-ca",
            exposed.join(", ")
        )
    })
}

/// Whether the part of an `http://` URL after the scheme names a loopback host: exactly
/// `HOST[:PORT]` (then nothing, or a path, query or fragment), HOST being `localhost`, an IPv4
/// address in 127.0.0.0/8 or `[::1]`. Anything else (user info, a backslash, spaces, a name that
/// merely contains `localhost`) is not.
fn is_loopback(rest: &str) -> bool {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let bracketed = authority.starts_with('[');
    let (host, port) = if bracketed {
        match authority[1..].split_once(']') {
            Some(split) => split,
            None => return false,
        }
    } else {
        authority.split_at(authority.find(':').unwrap_or(authority.len()))
    };
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    port_ok
        && if bracketed {
            host.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback())
        } else {
            host.eq_ignore_ascii_case("localhost")
                || host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
        }
}

#[cfg(test)]
mod tests {
    use super::{broker_addr_of_url, broker_url, parse_broker_addr, plaintext_warning};

    fn broker_addr(text: &str, with_any_port: bool) -> Result<String, String> {
        parse_broker_addr("--addr", text, with_any_port, "hint")
            .map(|a| a.to_string())
            .map_err(|f| f.message().to_owned())
    }

    #[test]
    fn a_broker_address_is_a_loopback_address_with_a_port() {
        for (text, want) in [
            ("127.0.0.1:14550", "127.0.0.1:14550"),
            ("127.8.9.10:1", "127.8.9.10:1"),
            ("[::1]:14550", "[::1]:14550"),
            ("localhost:14551", "127.0.0.1:14551"),
        ] {
            assert_eq!(
                broker_addr(text, false).as_deref(),
                Ok(want),
                "{text} must be accepted as {want}"
            );
        }
        for (text, why) in [
            ("0.0.0.0:14550", "loopback"),
            ("10.0.0.5:14550", "loopback"),
            ("[::]:14550", "loopback"),
            ("[::ffff:127.0.0.1]:14550", "loopback"),
            ("127.0.0.1", "not an address"),
            ("localhost", "not an address"),
            ("example.com:14550", "not an address"),
            ("127.0.0.1:0", "names no port"),
        ] {
            let refused = broker_addr(text, false)
                .expect_err(&format!("{text} must be refused as a broker address"));
            assert!(
                refused.contains(why) && refused.contains("--addr"),
                "the refusal of {text} must name the option and say {why:?}: {refused}"
            );
        }
        assert_eq!(
            broker_addr("127.0.0.1:0", true).as_deref(),
            Ok("127.0.0.1:0"),
            "port 0 (any free port) must be accepted where the agent binds it"
        );
    }

    #[test]
    fn only_a_url_as_the_agent_writes_it_for_a_loopback_address_is_a_broker_url() {
        for addr in ["127.0.0.1:14550", "[::1]:14551"] {
            let addr = addr.parse().expect("an address");
            assert_eq!(
                broker_addr_of_url(&broker_url(addr)),
                Some(addr),
                "the URL of {addr} must read back as it"
            );
        }
        for url in [
            "http://10.0.0.5:14550/oauth/token",
            "https://127.0.0.1:14550/oauth/token",
            "http://127.0.0.1:14550/oauth/token?x",
            "http://127.0.0.1:14550/other",
            "http://127.0.0.1/oauth/token",
            "http://127.0.0.1:0/oauth/token",
            "http://user@127.0.0.1:14550/oauth/token",
            "http://127.0.0.1:014550/oauth/token",
            "http://127.0.0.1:14550/oauth/token\n",
        ] {
            assert_eq!(
                broker_addr_of_url(url),
                None,
                "{url} must not be taken for a broker URL"
            );
        }
    }

    fn warns(endpoint: &str) -> bool {
        plaintext_warning(&[endpoint.to_owned()], true).is_some()
    }

    #[test]
    fn a_password_over_http_is_warned_about_unless_the_host_is_loopback() {
        for quiet in [
            "http://127.0.0.1:2379",
            "http://127.8.9.10:2379/",
            "http://localhost:2379",
            "http://LocalHost",
            "http://[::1]:2379",
            "https://10.0.0.5:2379",
            "https://etcd.example:2379",
        ] {
            assert!(!warns(quiet), "{quiet} must not be warned about");
        }
        for loud in [
            "http://10.0.0.5:2379",
            "http://etcd.example:2379",
            "http://128.0.0.1:2379",
            "http://[::2]:2379",
            "http://localhost.example:2379",
            "http://127.0.0.1.example:2379",
            "http://127.0.0.1:2379@10.0.0.5",
            "http://10.0.0.5\\@127.0.0.1",
            "http://127.0.0.1:23x9",
            "http://[::1",
            "http://",
        ] {
            assert!(warns(loud), "{loud} must be warned about");
        }
    }

    #[test]
    fn the_warning_is_one_line_naming_every_exposed_endpoint_escaped() {
        let endpoints = [
            "http://127.0.0.1:2379".to_owned(),
            "http://10.0.0.5:2379".to_owned(),
            "http://evil\u{1b}[2J:2379".to_owned(),
        ];
        let warning = plaintext_warning(&endpoints, true).expect("a warning");
        assert_eq!(warning.lines().count(), 1, "not one line: {warning:?}");
        assert!(
            warning.contains("http://10.0.0.5:2379") && warning.contains("http://evil\\u{1b}[2J"),
            "the exposed endpoints are not named (escaped): {warning:?}"
        );
        assert!(
            !warning.contains("127.0.0.1") && !warning.contains('\u{1b}'),
            "a loopback endpoint is named, or a control character went through: {warning:?}"
        );
        assert!(
            warning.contains("https://") && warning.contains("--fleet-ca"),
            "the warning does not say what to use instead: {warning:?}"
        );
    }
}
