//! The accept loop: loopback only, never the broker's own token URL, a bounded number of
//! connections (one request each, its head and body read within time and size bounds), and a
//! graceful stop.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::error::{shown_url, BrokerError};
use super::handle::{handle, Shared};

/// The most headers a request may have.
const MAX_HEADERS: usize = 32;
/// The largest request head (request line and headers), in bytes.
const MAX_HEAD: usize = 16 * 1024;
/// The most connections [`super::BrokerConfig::max_connections`] may allow.
const MAX_CONNECTIONS: usize = 65_536;
/// How long the loop pauses after a failed accept (out of file descriptors, ...), so that it
/// does not spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Serves `listener` until `shutdown` resolves, then lets the requests under way finish.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BrokerError> {
    check(&shared.manager, &listener)?;
    let addr = listener
        .local_addr()
        .map_err(|source| BrokerError::Address { source })?;
    let connections = shared.config.max_connections.clamp(1, MAX_CONNECTIONS);
    let permits = Arc::new(Semaphore::new(connections));
    let (stop, stopping) = watch::channel(false);
    tracing::info!(%addr, "the token broker is listening");
    tokio::pin!(shutdown);
    loop {
        // A connection over the cap waits in the listen queue until one ends.
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                tokio::spawn(connection(shared.clone(), stream, permit, stopping.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "the token broker cannot accept a connection");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_PAUSE) => {}
                }
            }
        }
    }
    drop(listener);
    let _ = stop.send(true);
    // Every connection holds a permit until it ends.
    let _ = permits.acquire_many(connections as u32).await;
    tracing::info!(%addr, "the token broker stopped");
    Ok(())
}

/// Serves one connection: one request (no keep-alive), its head within the configured time
/// and [`MAX_HEAD`] bytes; on stop, the request under way is answered first.
async fn connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    mut stopping: watch::Receiver<bool>,
) {
    let header_timeout = shared.config.header_timeout;
    let service = service_fn(move |request| handle(shared.clone(), request));
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(false)
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_headers(MAX_HEADERS)
        .max_header_size(MAX_HEAD)
        .max_buf_size(MAX_HEAD.max(8192));
    let served = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(served);
    let result = tokio::select! {
        result = served.as_mut() => result,
        () = async { let _ = stopping.wait_for(|stop| *stop).await; } => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "a token broker connection ended with an error");
    }
}

/// Whether `url` names the socket `addr` listens on: a loopback (or unspecified) host on the
/// same port. Then forwarding would go back to the broker itself.
fn points_at(url: &str, addr: SocketAddr) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return false;
    };
    let Some(host) = parsed.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let local = match host.parse::<IpAddr>() {
        Ok(ip) => is_local(ip),
        Err(_) => {
            let name = host.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
    };
    local && parsed.port_or_known_default() == Some(addr.port())
}

/// A loopback or unspecified address (`0.0.0.0` connects to this machine), also IPv4 mapped
/// into IPv6.
fn is_local(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    ip.is_loopback() || ip.is_unspecified()
}

/// What makes `listener` unfit to serve `manager`'s home: not on loopback, or the manager's
/// token URL is the listener's own address.
pub(crate) fn check(
    manager: &crate::manager::AuthManager,
    listener: &TcpListener,
) -> Result<(), BrokerError> {
    let addr = listener
        .local_addr()
        .map_err(|source| BrokerError::Address { source })?;
    if !addr.ip().is_loopback() {
        return Err(BrokerError::NotLoopback { addr });
    }
    let url = manager.client().url();
    if points_at(url, addr) {
        return Err(BrokerError::ForwardsToItself {
            url: shown_url(url),
            addr,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_url_on_the_brokers_own_port_of_this_machine_is_the_broker_itself() {
        let addr: SocketAddr = "127.0.0.1:14550".parse().expect("an address");
        for (url, itself) in [
            ("http://127.0.0.1:14550/oauth/token", true),
            ("http://localhost:14550/oauth/token", true),
            ("http://LOCALHOST.:14550/x", true),
            ("http://127.0.0.2:14550/oauth/token", true),
            ("http://[::1]:14550/oauth/token", true),
            ("http://[::ffff:127.0.0.1]:14550/oauth/token", true),
            ("http://0.0.0.0:14550/oauth/token", true),
            ("http://127.0.0.1:14551/oauth/token", false),
            ("http://127.0.0.1/oauth/token", false),
            ("https://auth.openai.com/oauth/token", false),
            ("http://10.0.0.1:14550/oauth/token", false),
        ] {
            assert_eq!(points_at(url, addr), itself, "{url}: wrong verdict");
        }
        let on_80: SocketAddr = "127.0.0.1:80".parse().expect("an address");
        assert!(
            points_at("http://localhost/oauth/token", on_80),
            "a URL without a port means port 80 for http"
        );
    }
}
