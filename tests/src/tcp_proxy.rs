//! A TCP proxy on 127.0.0.1 whose link can be cut and restored: a machine going offline, for
//! the fleet tests (each machine reaches etcd through one).

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// The proxy; dropping it stops accepting (open connections end with their peers).
pub struct TcpProxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
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
        let upstream = upstream.to_owned();
        {
            let (cut, open, stop, requests) =
                (cut.clone(), open.clone(), stop.clone(), requests.clone());
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
                    let mut list = open.lock().unwrap_or_else(|p| p.into_inner());
                    for s in [&client, &server] {
                        if let Ok(clone) = s.try_clone() {
                            list.push(clone);
                        }
                    }
                    drop(list);
                    pump(&client, &server, Some(requests.clone()));
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
        }
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

/// Copies `from` to `to` until either ends; counts the HTTP requests in it when `count` is set.
fn pump(from: &TcpStream, to: &TcpStream, count: Option<Arc<AtomicU64>>) {
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
            if let Some(count) = &count {
                carry.extend_from_slice(&buf[..n]);
                let found = carry.windows(5).filter(|w| *w == b"POST ").count();
                count.fetch_add(found as u64, Ordering::AcqRel);
                let keep = carry.len().saturating_sub(4);
                carry.drain(..keep);
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
        self.cut();
        // Wake the accept loop so that it sees `stop`.
        let _ = TcpStream::connect(self.addr);
    }
}
