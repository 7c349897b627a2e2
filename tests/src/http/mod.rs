//! HTTP/1.1 for the test kit, on one library (hyper, already in the tree through reqwest): the
//! servers on 127.0.0.1 that stand in for a token endpoint, Codex's backend or an endpoint that
//! is not etcd ([`Server`]), and the blocking client that talks to etcd's gateway and the token
//! endpoint ([`Client`]).
//!
//! The tests that check bytes on the wire (a request head as the client under test sends it, an
//! answer that no HTTP library would write) keep their raw sockets.

mod client;
mod server;

pub use client::{Answer, Client, Post};
pub use server::{Request, Response, Server, ServerOptions};

#[cfg(test)]
mod tests;
