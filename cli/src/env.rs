//! `codex-store env`: the line for a shell profile that sends Codex's refresh requests to the
//! agent's token broker (`CODEX_REFRESH_TOKEN_URL_OVERRIDE`).

use std::fmt;
use std::io::Write as _;

use serde::Serialize;

use crate::broker::{self, Source, HEALTH_TIMEOUT};
use crate::exit::Failure;
use crate::home::Context;
use crate::options::{broker_url, TOKEN_URL_ENV};

/// Options of `env`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The broker's address, a loopback address [default: the one the running agent serves
    /// (`agent --serve`), else 127.0.0.1:14550].
    #[arg(long, value_name = "ADDR")]
    addr: Option<String>,

    /// The shell whose syntax to print: `sh` (also bash and zsh: `export NAME=VALUE`) or
    /// `fish` (`set -gx NAME VALUE`).
    #[arg(long, value_enum, default_value_t = Shell::Sh)]
    shell: Shell,

    /// Print it as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// A shell's syntax.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Shell {
    /// POSIX sh, bash, zsh.
    #[value(alias = "bash", alias = "zsh")]
    Sh,
    /// fish.
    Fish,
}

const ADDR_HINT: &str =
    "use a loopback address such as 127.0.0.1:14550 or [::1]:14550; see `codex-store env --help`";

/// What `env` prints: the line, and what it is made of.
#[derive(Debug, Serialize)]
struct EnvReport {
    /// The variable Codex reads.
    variable: &'static str,
    /// Its value: the broker's token URL.
    value: String,
    shell: Shell,
    /// The line to put in the shell's profile.
    line: String,
    /// Where the address came from: `addr`, `agent` or `default`.
    source: Source,
}

impl fmt::Display for EnvReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.line)
    }
}

/// `value` as one word of sh and fish: as it is when every character is plain, else in single
/// quotes (an IPv6 URL's brackets would be a glob pattern). The URL holds no single quote.
fn quoted(value: &str) -> String {
    let plain = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-./:@%+=,".contains(c));
    if plain {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

/// The line that sets `name` to `value` in `shell`, for its profile.
fn line(shell: Shell, name: &str, value: &str) -> String {
    match shell {
        Shell::Sh => format!("export {name}={}", quoted(value)),
        Shell::Fish => format!("set -gx {name} {}", quoted(value)),
    }
}

/// Runs `env`: the line on stdout (a document with `--json`); on stderr a warning when no
/// broker answers at its address now.
pub fn run(ctx: &Context, args: Args) -> Result<(), Failure> {
    let target = broker::target(&ctx.home()?, args.addr.as_deref(), ADDR_HINT)?;
    let value = broker_url(target.addr);
    if let Err(why) = broker::check_health(target.addr, HEALTH_TIMEOUT) {
        let also = target
            .no_agent_broker
            .as_deref()
            .map(|a| format!("; {a}"))
            .unwrap_or_default();
        let _ = writeln!(
            std::io::stderr(),
            "codex-store: warning: no token broker answers at {value} now ({why}{also}): a \
             Codex started with this line cannot refresh until one does (`codex-store agent \
             --serve`); `codex-store exec -- codex` sets the variable only while one answers"
        );
    }
    let report = EnvReport {
        variable: TOKEN_URL_ENV,
        line: line(args.shell, TOKEN_URL_ENV, &value),
        value,
        shell: args.shell,
        source: target.source,
    };
    crate::exit::print_report(&report, args.json)
}

#[cfg(test)]
mod tests {
    use super::{line, Shell};

    #[test]
    fn the_line_is_plain_for_an_ipv4_url_and_quoted_where_the_shell_would_expand_it() {
        let url = "http://127.0.0.1:14550/oauth/token";
        assert_eq!(
            line(Shell::Sh, "V", url),
            format!("export V={url}"),
            "an IPv4 URL needs no quotes in sh"
        );
        assert_eq!(
            line(Shell::Fish, "V", url),
            format!("set -gx V {url}"),
            "an IPv4 URL needs no quotes in fish"
        );
        assert_eq!(
            line(Shell::Sh, "V", "http://[::1]:14550/oauth/token"),
            "export V='http://[::1]:14550/oauth/token'",
            "brackets are a glob pattern in sh: quoted"
        );
        assert_eq!(
            line(Shell::Sh, "V", "it's"),
            r"export V='it'\''s'",
            "a single quote inside is closed, escaped and reopened"
        );
    }
}
