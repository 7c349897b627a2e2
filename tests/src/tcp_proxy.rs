//! A TCP proxy on 127.0.0.1 whose link can be cut and restored: a machine going offline, for
//! the fleet tests (each machine reaches etcd through one).

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The proxy; dropping it stops accepting (open connections end with their peers).
pub struct TcpProxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
    gate: Arc<Gate>,
}

/// Where the proxy holds the client's bytes ([`TcpProxy::hold_request`]).
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    /// Hold from this request on (counted as [`TcpProxy::requests`] counts).
    from: Option<u64>,
    /// Whether bytes are held now.
    holding: bool,
}

impl Gate {
    /// Blocks while the requests counted so far (`seen`) reach the held one.
    fn pass(&self, seen: u64) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while state.from.is_some_and(|from| seen >= from) {
            if !state.holding {
                state.holding = true;
                self.changed.notify_all();
            }
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl TcpProxy {
    /// A proxy to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> TcpProxy {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("a port for the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let cut = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(Gate::default());
        let upstream = upstream.to_owned();
        {
            let (cut, open, stop, requests, gate) = (
                cut.clone(),
                open.clone(),
                stop.clone(),
                requests.clone(),
                gate.clone(),
            );
            thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    if cut.load(Ordering::Acquire) {
                        drop(client);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(&upstream) else {
                        continue;
                    };
                    // As transparent as a wire: no Nagle delay that the peers' own connections
                    // do not have (reqwest and etcd's Go server both set TCP_NODELAY). Without
                    // it, a watch event waits up to 40 ms for the delayed ACK of the bytes
                    // before it.
                    for s in [&client, &server] {
                        let _ = s.set_nodelay(true);
                    }
                    let mut list = open.lock().unwrap_or_else(|p| p.into_inner());
                    for s in [&client, &server] {
                        if let Ok(clone) = s.try_clone() {
                            list.push(clone);
                        }
                    }
                    drop(list);
                    pump(&client, &server, Some((requests.clone(), gate.clone())));
                    pump(&server, &client, None);
                }
            });
        }
        TcpProxy {
            addr,
            cut,
            open,
            stop,
            requests,
            gate,
        }
    }

    /// Holds the `n`-th request (counted from the proxy's start, as [`TcpProxy::requests`]
    /// counts them: `hold_request(self.requests() + 1)` holds the next one) and every byte
    /// clients send after it, until [`TcpProxy::release`]: the request is made, not delivered,
    /// so that a test can act between a client's requests.
    pub fn hold_request(&self, n: u64) {
        let mut state = self.gate.state.lock().unwrap_or_else(|p| p.into_inner());
        state.from = Some(n);
        state.holding = false;
    }

    /// Waits until the proxy holds a request ([`TcpProxy::hold_request`]); whether it did
    /// within `timeout`.
    pub fn wait_until_held(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.gate.state.lock().unwrap_or_else(|p| p.into_inner());
        while !state.holding {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .gate
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Delivers what [`TcpProxy::hold_request`] held, and holds nothing more.
    pub fn release(&self) {
        let mut state = self.gate.state.lock().unwrap_or_else(|p| p.into_inner());
        state.from = None;
        state.holding = false;
        self.gate.changed.notify_all();
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts the link: open connections are closed, new ones refused.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        let mut list = self.open.lock().unwrap_or_else(|p| p.into_inner());
        for stream in list.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// How many HTTP `POST` requests went through so far (etcd's gateway takes only POSTs).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Acquire)
    }

    /// Restores the link.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::Release);
    }
}

/// Copies `from` to `to` until either ends; counts the HTTP requests in it, and holds them at the
/// gate, when `count` is set.
fn pump(from: &TcpStream, to: &TcpStream, count: Option<(Arc<AtomicU64>, Arc<Gate>)>) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    thread::spawn(move || {
        use std::io::{Read, Write};
        let mut buf = [0u8; 16 * 1024];
        // The tail of the previous read, so that a request line split across reads is seen.
        let mut carry: Vec<u8> = Vec::new();
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some((count, gate)) = &count {
                carry.extend_from_slice(&buf[..n]);
                let found = carry.windows(5).filter(|w| *w == b"POST ").count();
                let seen = count.fetch_add(found as u64, Ordering::AcqRel) + found as u64;
                let keep = carry.len().saturating_sub(4);
                carry.drain(..keep);
                gate.pass(seen);
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.release();
        self.cut();
        // Wake the accept loop so that it sees `stop`.
        let _ = TcpStream::connect(self.addr);
    }
}
