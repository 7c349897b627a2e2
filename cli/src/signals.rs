//! SIGINT, SIGTERM and SIGHUP during a command that may redeem a refresh token (`token`,
//! `refresh`): a Ctrl-C or a closed terminal must not kill the process between the request
//! and the durable write of its answer, which would lose the only live refresh token. From the
//! signal on nothing new is sent; an answer already on its way is saved first; then the
//! command exits as the signal would have it (128 + its number).

use std::future::Future;

use codex_refresh::{AuthManager, RefreshError};
use tokio::signal::unix::{signal, SignalKind};

use crate::exit::Failure;

/// Runs `work` (which refreshes through `manager`) on a one-command runtime, deferring the
/// stop signals as the module says.
///
/// # Errors
/// `work`'s error; [`Failure::signalled`] when a signal stopped it.
pub fn guarded<T>(
    runtime: &tokio::runtime::Runtime,
    manager: &AuthManager,
    work: impl Future<Output = Result<T, RefreshError>>,
) -> Result<T, Failure> {
    runtime.block_on(async {
        let listen = |kind| {
            signal(kind).map_err(|e| {
                Failure::other(
                    format!("cannot listen for SIGINT, SIGTERM and SIGHUP: {e}"),
                    None,
                )
            })
        };
        let mut int = listen(SignalKind::interrupt())?;
        let mut term = listen(SignalKind::terminate())?;
        let mut hup = listen(SignalKind::hangup())?;
        let signalled = tokio::select! {
            result = work => return result.map_err(Failure::from),
            _ = int.recv() => ("SIGINT", SignalKind::interrupt()),
            _ = term.recv() => ("SIGTERM", SignalKind::terminate()),
            _ = hup.recv() => ("SIGHUP", SignalKind::hangup()),
        };
        // The refresh runs in a task of its own, which this runtime keeps driving while the
        // manager waits for its answer to be durable.
        manager.stop().await;
        Err(Failure::signalled(signalled.0, signalled.1.as_raw_value()))
    })
}
