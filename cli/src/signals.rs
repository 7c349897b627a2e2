//! SIGINT, SIGTERM and SIGHUP during a command that may redeem a refresh token (`token`,
//! `refresh`): a Ctrl-C or a closed terminal must not kill the process between the request
//! and the durable write of its answer, which would lose the only live refresh token. From the
//! signal on nothing new is sent. If a request is in flight (or new tokens wait in memory for
//! another try at writing them), the command finishes that and reports it; otherwise it exits
//! at once, even from a lock wait. Either way it exits as the signal would have it (128 + its
//! number).

use std::future::Future;

use codex_refresh::{AuthManager, RefreshError};
use tokio::signal::unix::{signal, SignalKind};

use crate::exit::Failure;

/// How a guarded command ended.
enum Ended<T> {
    /// Without a signal.
    Done(Result<T, RefreshError>),
    /// By a signal, after what was under way (if anything) finished.
    Signalled {
        name: &'static str,
        signo: i32,
        finished: Option<Result<T, RefreshError>>,
    },
}

/// Runs `work` (which refreshes through `manager`) on a one-command runtime, deferring the
/// stop signals as the module says.
///
/// # Errors
/// `work`'s error. A signal ends the process from here (see the module).
pub fn guarded<T>(
    runtime: &tokio::runtime::Runtime,
    manager: &AuthManager,
    work: impl Future<Output = Result<T, RefreshError>>,
) -> Result<T, Failure> {
    let ended = runtime.block_on(async {
        let listen = |kind| {
            signal(kind).map_err(|e| {
                Failure::other(
                    format!("cannot listen for SIGINT, SIGTERM and SIGHUP: {e}"),
                    "the system refused a signal handler: check the process's limits",
                )
            })
        };
        let mut int = listen(SignalKind::interrupt())?;
        let mut term = listen(SignalKind::terminate())?;
        let mut hup = listen(SignalKind::hangup())?;
        tokio::pin!(work);
        let (name, kind) = tokio::select! {
            result = &mut work => return Ok::<_, Failure>(Ended::Done(result)),
            _ = int.recv() => ("SIGINT", SignalKind::interrupt()),
            _ = term.recv() => ("SIGTERM", SignalKind::terminate()),
            _ = hup.recv() => ("SIGHUP", SignalKind::hangup()),
        };
        manager.stop_sending();
        // The refresh runs in a task of its own, which this runtime keeps driving: either it
        // ends (its answer saved, or its error to report), or nothing is in flight and nothing
        // waits to be written, and there is nothing to lose by exiting now.
        let finished = tokio::select! {
            result = &mut work => Some(result),
            () = manager.settled() => None,
        };
        Ok(Ended::Signalled {
            name,
            signo: kind.as_raw_value(),
            finished,
        })
    })?;
    match ended {
        Ended::Done(result) => result.map_err(Failure::from),
        Ended::Signalled {
            name,
            signo,
            finished,
        } => {
            // What the command finished is reported as it would have been, then the signal.
            // The process exits here: a lock wait still blocked in a thread of the runtime
            // must not hold it up.
            if let Some(Err(e)) = finished {
                let _ = Failure::from(e).report();
            }
            let _ = Failure::signalled(name).report();
            std::process::exit(128 + signo);
        }
    }
}
