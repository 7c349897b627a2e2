//! The agent's token broker as `env` and `exec` see it from outside: which address to point
//! Codex at (an explicit `--addr`, the running agent's published broker, or the default), and
//! whether a broker answers there (`GET /health`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use codex_store::{AgentPresence, Store, StoreOptions};

use crate::exit::escape_controls as escape;
use crate::exit::Failure;
use crate::options::{broker_addr_of_url, parse_broker_addr, DEFAULT_BROKER_ADDR};

/// How long `exec` waits for a broker's health answer before it runs the command without one:
/// a broker on loopback answers in well under a millisecond; a listening port that does not
/// answer (an agent stopped with SIGSTOP, a stranger's server) costs the command no more.
pub const HEALTH_TIMEOUT: Duration = Duration::from_millis(300);

/// The largest health answer read (it is a few dozen bytes).
const HEALTH_LIMIT: usize = 16 * 1024;

/// Where the broker's address came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `--addr`.
    Addr,
    /// The running agent's status (`agent --serve`).
    Agent,
    /// [`DEFAULT_BROKER_ADDR`]: no `--addr`, and no running agent names a broker.
    Default,
}

/// The broker address a command points Codex at, and what it knows of the home's agent.
#[derive(Debug)]
pub struct Target {
    /// The address.
    pub addr: SocketAddr,
    /// Where it came from.
    pub source: Source,
    /// Why the home's agent gave no address (it runs without `--serve`, none runs, its status
    /// names no usable URL), when it gave none; `None` with [`Source::Addr`], where it was not
    /// asked.
    pub no_agent_broker: Option<String>,
}

/// The broker to point Codex at: `--addr` (`addr`, checked), else the one the home's running
/// agent published (`agent --serve`), else [`DEFAULT_BROKER_ADDR`].
///
/// # Errors
/// A usage error (exit 2) for an `--addr` that is not a loopback address with a port.
pub fn target(home: &Path, addr: Option<&str>, hint: &'static str) -> Result<Target, Failure> {
    if let Some(text) = addr {
        return Ok(Target {
            addr: parse_broker_addr("--addr", text, false, hint)?,
            source: Source::Addr,
            no_agent_broker: None,
        });
    }
    let default = || -> SocketAddr {
        DEFAULT_BROKER_ADDR
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 14550)))
    };
    Ok(match agent_broker(home) {
        Ok(addr) => Target {
            addr,
            source: Source::Agent,
            no_agent_broker: None,
        },
        Err(why) => Target {
            addr: default(),
            source: Source::Default,
            no_agent_broker: Some(why),
        },
    })
}

/// The address of the token broker the home's running agent published, or why there is none.
/// Reads the status only (as `inspect` does: no lock waited for, nothing created). A URL in the
/// status that is not one the agent writes for a loopback address is not taken: the status is
/// a file others can write, and Codex's refresh tokens go where it points.
fn agent_broker(home: &Path) -> Result<SocketAddr, String> {
    if !home.is_dir() {
        return Err("no agent runs for this home".to_owned());
    }
    let store = Store::with_options(home, StoreOptions::default())
        .map_err(|e| format!("the home's agent cannot be looked up: {e}"))?;
    match store.agent_presence() {
        Ok(AgentPresence::Running(Some(status))) => match status.broker {
            Some(url) => broker_addr_of_url(&url).ok_or_else(|| {
                format!(
                    "the running agent's status names the broker {}, which is not a loopback \
                     http://IP:PORT/oauth/token URL: not used",
                    escape(&format!("{url:?}"))
                )
            }),
            None => Err("the agent that runs for this home serves no broker (no --serve)".into()),
        },
        Ok(AgentPresence::Running(None)) => {
            Err("the agent that runs for this home published no status".into())
        }
        Ok(AgentPresence::NotRunning) => Err("no agent runs for this home".into()),
        Err(e) => Err(format!("the home's agent cannot be looked up: {e}")),
    }
}

/// Whether a token broker answers at `addr` within `within`: `GET /health` over one plain
/// HTTP/1.1 connection, answered `200` with the JSON body `{"ok": true}`. Otherwise why not,
/// in a few words (escaped: the answer is outside text).
pub fn check_health(addr: SocketAddr, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let late = || format!("no answer within {} ms", within.as_millis());
    let mut stream = TcpStream::connect_timeout(&addr, within).map_err(|e| match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "nothing listens there".to_owned(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => late(),
        _ => format!("cannot connect: {e}"),
    })?;
    let left = |deadline: Instant| {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    };
    let request =
        format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n");
    stream
        .set_write_timeout(Some(left(deadline).ok_or_else(late)?))
        .and_then(|()| stream.write_all(request.as_bytes()))
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => late(),
            _ => format!("cannot send the request: {e}"),
        })?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 2048];
    loop {
        if answer_complete(&answer) {
            break;
        }
        stream
            .set_read_timeout(Some(left(deadline).ok_or_else(late)?))
            .map_err(|e| format!("cannot wait for the answer: {e}"))?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&chunk[..n]);
                if answer.len() > HEALTH_LIMIT {
                    return Err(format!("an answer over {HEALTH_LIMIT} bytes"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                ) =>
            {
                return Err(late())
            }
            Err(e) => return Err(format!("cannot read the answer: {e}")),
        }
    }
    judge(&answer)
}

/// What matters of an HTTP/1.x answer: its status code, its body's framing, and the body bytes
/// received so far.
struct Answer<'a> {
    status: Option<u16>,
    content_length: Option<usize>,
    chunked: bool,
    body: &'a [u8],
}

/// `answer` read as an HTTP/1.x answer; `None` until its head is complete.
fn parse(answer: &[u8]) -> Option<Answer<'_>> {
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&answer[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok());
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    Some(Answer {
        status,
        content_length,
        chunked,
        body: &answer[end + 4..],
    })
}

/// Whether the whole answer is in: its head and as many body bytes as `Content-Length` says,
/// or a chunked body's last chunk. (Otherwise it ends when the server closes: `Connection:
/// close`.)
fn answer_complete(answer: &[u8]) -> bool {
    match parse(answer) {
        None => false,
        Some(a) if a.chunked => dechunk(a.body).is_some(),
        Some(a) => a.content_length.is_some_and(|n| a.body.len() >= n),
    }
}

/// A chunked body decoded, once its last (empty) chunk is in.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if body.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// Whether `answer` is a broker's health answer: 200 and `{"ok": true}`.
fn judge(answer: &[u8]) -> Result<(), String> {
    let Some(parsed) = parse(answer) else {
        return Err("no HTTP answer".to_owned());
    };
    match parsed.status {
        Some(200) => {}
        Some(code) => return Err(format!("GET /health answered {code}, not 200")),
        None => return Err("no HTTP answer".to_owned()),
    }
    let body = if parsed.chunked {
        dechunk(parsed.body).ok_or("a cut-off answer")?
    } else {
        let n = parsed.content_length.unwrap_or(parsed.body.len());
        parsed.body.get(..n).ok_or("a cut-off answer")?.to_vec()
    };
    let ok = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("ok").and_then(serde_json::Value::as_bool));
    if ok == Some(true) {
        Ok(())
    } else {
        let shown: String = String::from_utf8_lossy(&body).chars().take(80).collect();
        Err(format!(
            "GET /health answered {}, not a broker's {{\"ok\":true}}",
            escape(&format!("{shown:?}"))
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::{answer_complete, judge};

    #[test]
    fn a_health_answer_counts_only_as_200_with_ok_true_whatever_its_framing() {
        // (framed: whether its end is known before the server closes)
        for (answer, framed) in [
            ("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}", true),
            ("HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n{ \"ok\": true}", true),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nb\r\n{\"ok\":true}\r\n0\r\n\r\n", true),
            ("HTTP/1.0 200 OK\r\n\r\n{\"ok\":true}", false),
        ] {
            assert_eq!(
                answer_complete(answer.as_bytes()),
                framed,
                "a framed answer is complete once in, an unframed one only at the close: {answer:?}"
            );
            assert_eq!(judge(answer.as_bytes()), Ok(()), "{answer:?} is a broker's health");
        }
        assert!(
            !answer_complete(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{\"ok\""),
            "an answer missing body bytes must not be seen as complete"
        );
        for (answer, why) in [
            ("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", "404"),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n{\"ok\":false}",
                "not a broker",
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
                "not a broker",
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 40\r\n\r\n{\"ok\":true}",
                "cut-off",
            ),
            ("SSH-2.0-OpenSSH_9.2\r\n", "no HTTP answer"),
        ] {
            let refused = judge(answer.as_bytes())
                .expect_err(&format!("{answer:?} must not count as a broker's health"));
            assert!(
                refused.contains(why),
                "{answer:?}: the reason must say {why:?}: {refused}"
            );
        }
    }

    #[test]
    fn a_body_shown_in_the_reason_is_escaped() {
        let answer = "HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\n\u{1b}[2Jok";
        let refused = judge(answer.as_bytes()).expect_err("not a broker's answer");
        assert!(
            !refused.contains('\u{1b}'),
            "a control character of the answer reached the reason: {refused:?}"
        );
    }
}
