//! Socket activation: the listening socket a service manager passes to `codex-store agent
//! --serve` (the shipped `codex-store-agent.socket`), by systemd's protocol (`sd_listen_fds(3)`):
//! `LISTEN_PID` names this process, `LISTEN_FDS` counts the sockets, the first is descriptor 3.
//!
//! Turning descriptor 3 into a `TcpListener` needs `unsafe` (`FromRawFd`), which this crate
//! forbids: the `listenfd` crate does it, after checking that the descriptor is a TCP socket.
//! The environment is read and checked here first, strictly as systemd's `sd_listen_fds` does
//! (listenfd alone would also take sockets without a `LISTEN_PID`, or at another first
//! descriptor).

use std::ffi::OsString;
use std::net::TcpListener;

use crate::exit::Failure;

const LISTEN_PID: &str = "LISTEN_PID";
const LISTEN_FDS: &str = "LISTEN_FDS";
/// listenfd's extension (another first descriptor than 3), which systemd never sets.
const LISTEN_FDS_FIRST_FD: &str = "LISTEN_FDS_FIRST_FD";

/// What the environment says of sockets passed to this process.
#[derive(Debug, PartialEq, Eq)]
enum Passed {
    /// None for this process: no `LISTEN_FDS`, none counted, or a `LISTEN_PID` of another
    /// process (a parent's variables inherited), as `sd_listen_fds` reads it.
    None,
    /// Exactly one, at descriptor 3.
    One,
    /// Variables meant for this process that the agent cannot use: what is wrong.
    Unusable(String),
}

/// Reads `LISTEN_PID` and `LISTEN_FDS` (their values, if set) for the process `own_pid`.
fn passed(pid: Option<&OsString>, fds: Option<&OsString>, own_pid: u32) -> Passed {
    let Some(fds) = fds else {
        return Passed::None;
    };
    let ours = pid
        .and_then(|p| p.to_str())
        .and_then(|p| p.parse::<u32>().ok())
        == Some(own_pid);
    if !ours {
        return Passed::None;
    }
    match fds.to_str().and_then(|n| n.parse::<u32>().ok()) {
        Some(0) => Passed::None,
        Some(1) => Passed::One,
        Some(n) => Passed::Unusable(format!(
            "the service manager passed {n} sockets ({LISTEN_FDS}={n}); the agent takes one: \
             give its socket unit a single ListenStream="
        )),
        None => Passed::Unusable(format!("{LISTEN_FDS} is {fds:?}, not a number of sockets")),
    }
}

/// The listening TCP socket the service manager passed to this process, if it passed one. The
/// variables are removed from the environment either way (as `sd_listen_fds(1)` does), so that
/// nothing this process starts takes them for its own.
///
/// # Errors
/// A usage error (exit 2) when the variables are meant for this process but the agent cannot
/// use them: more than one socket, descriptor 3 not a TCP socket, or a connection rather than
/// a listening socket (a socket unit with `Accept=yes`).
pub fn inherited_listener() -> Result<Option<TcpListener>, Failure> {
    let found = passed(
        std::env::var_os(LISTEN_PID).as_ref(),
        std::env::var_os(LISTEN_FDS).as_ref(),
        std::process::id(),
    );
    // Before listenfd reads the variables: systemd's first descriptor is 3, always.
    std::env::remove_var(LISTEN_FDS_FIRST_FD);
    // Reads and removes LISTEN_PID and LISTEN_FDS.
    let mut fds = listenfd::ListenFd::from_env();
    let hint = "check the agent's socket unit (codex-store-agent.socket): one ListenStream= on a \
                loopback address, without Accept=yes";
    match found {
        Passed::None => Ok(None),
        Passed::Unusable(why) => Err(Failure::usage_with(why, hint)),
        Passed::One => {
            let listener = fds.take_tcp_listener(0).map_err(|e| {
                Failure::usage_with(
                    format!(
                        "the socket the service manager passed (descriptor 3) is unusable: {e}"
                    ),
                    hint,
                )
            })?;
            let Some(listener) = listener else {
                return Ok(None);
            };
            // A listening socket has no peer; a connection (`Accept=yes`) has one.
            if let Ok(Some(_)) = rustix::net::getpeername(&listener) {
                return Err(Failure::usage_with(
                    "the socket the service manager passed (descriptor 3) is a connection, not \
                     a listening socket",
                    hint,
                ));
            }
            Ok(Some(listener))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::{passed, Passed};

    fn read(pid: Option<&str>, fds: Option<&str>) -> Passed {
        let pid = pid.map(OsString::from);
        let fds = fds.map(OsString::from);
        passed(pid.as_ref(), fds.as_ref(), 4242)
    }

    #[test]
    fn sockets_are_taken_only_when_listen_pid_names_this_process_as_sd_listen_fds_does() {
        assert_eq!(read(Some("4242"), Some("1")), Passed::One, "one for us");
        assert_eq!(read(None, None), Passed::None, "no variables");
        assert_eq!(
            read(None, Some("1")),
            Passed::None,
            "without LISTEN_PID the sockets are no one's (systemd always sets it)"
        );
        assert_eq!(
            read(Some("4241"), Some("1")),
            Passed::None,
            "a LISTEN_PID of another process (a parent's, inherited) is not ours"
        );
        assert_eq!(
            read(Some("x"), Some("1")),
            Passed::None,
            "a pid that is no number"
        );
        assert_eq!(read(Some("4242"), Some("0")), Passed::None, "none counted");
    }

    #[test]
    fn more_than_one_socket_or_a_count_that_is_no_number_is_refused_saying_so() {
        match read(Some("4242"), Some("2")) {
            Passed::Unusable(why) => assert!(
                why.contains("2 sockets") && why.contains("ListenStream="),
                "the refusal of two sockets must say how many and what to fix: {why}"
            ),
            other => panic!("two sockets must be refused, not {other:?}"),
        }
        match read(Some("4242"), Some("one")) {
            Passed::Unusable(why) => assert!(
                why.contains("LISTEN_FDS") && why.contains("one"),
                "the refusal must name the variable and its value: {why}"
            ),
            other => panic!("a count that is no number must be refused, not {other:?}"),
        }
    }
}
