//! A client of etcd's v3 JSON gateway (`/v3/kv/range`, `/v3/kv/txn`, `/v3/lease/...`,
//! `/v3/watch`, `/v3/auth/authenticate`) over the reqwest client the token endpoint already
//! uses: no gRPC stack, no `protoc` at build time. Keys and values travel base64-encoded; 64-bit
//! numbers as strings.
//!
//! Every call tries the endpoints in turn (a member that is down, or a follower without a
//! leader, passes the call to the next) and re-authenticates once when the token expired.

use std::sync::Mutex;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use codex_store::Secret;
use serde_json::{json, Value};

use super::{FleetConfig, FleetError};

/// The largest answer read from etcd (a record is an auth.json, a few KiB).
const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// One key as etcd returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Kv {
    pub(crate) value: Vec<u8>,
    pub(crate) mod_revision: i64,
    pub(crate) create_revision: i64,
    pub(crate) lease: i64,
}

/// A comparison of a transaction.
pub(crate) enum Compare {
    /// The key's `mod_revision` equals this (0: the key does not exist).
    ModRevision(String, i64),
    /// The key's `create_revision` equals this (0: the key does not exist).
    CreateRevision(String, i64),
}

/// An operation of a transaction.
pub(crate) enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: i64,
    },
    Get(String),
    Delete(String),
}

/// What a transaction did.
pub(crate) struct TxnResult {
    pub(crate) succeeded: bool,
    /// The store's revision after the transaction.
    pub(crate) revision: i64,
    /// The keys read by `Op::Get` operations, in order (`None` for a missing key).
    pub(crate) gets: Vec<Option<Kv>>,
}

/// How a watch ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Watched {
    /// The key changed, at this revision.
    Changed(i64),
    /// Nothing happened within the time.
    TimedOut,
    /// etcd compacted the history past the watch's start (it canceled the watch saying so),
    /// up to this revision (the oldest one a watch may start from): read again. A watch
    /// canceled for any other reason is an error, never this.
    Compacted(i64),
}

impl Watched {
    /// The revision after which a new watch need not hear again what this one reported (`None`
    /// when it reported nothing).
    pub(crate) fn heard(self) -> Option<i64> {
        match self {
            Watched::Changed(revision) => Some(revision),
            Watched::Compacted(oldest) => Some(oldest - 1),
            Watched::TimedOut => None,
        }
    }
}

/// The etcd client.
pub(crate) struct Etcd {
    http: reqwest::Client,
    endpoints: Vec<String>,
    username: Option<String>,
    password: Option<Secret>,
    token: Mutex<Option<Secret>>,
}

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn num(value: &Value) -> i64 {
    match value {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// etcd's revision at the time of an answer (its header's).
fn header_revision(answer: &Value) -> i64 {
    answer
        .get("header")
        .and_then(|h| h.get("revision"))
        .map_or(0, num)
}

fn kv_of(value: &Value) -> Option<Kv> {
    let data = value.get("value").and_then(Value::as_str).unwrap_or("");
    Some(Kv {
        value: STANDARD.decode(data).ok()?,
        mod_revision: num(value.get("mod_revision")?),
        create_revision: num(value.get("create_revision").unwrap_or(&Value::Null)),
        lease: num(value.get("lease").unwrap_or(&Value::Null)),
    })
}

impl Etcd {
    /// A client for `config`'s endpoints, with its TLS files and credentials.
    pub(crate) fn new(config: &FleetConfig) -> Result<Etcd, FleetError> {
        if config.endpoints.is_empty() {
            return Err(FleetError::Setting {
                message: "no etcd endpoint given: pass --fleet http(s)://host:port[,...]".into(),
            });
        }
        for endpoint in &config.endpoints {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(FleetError::Setting {
                    message: format!(
                        "the etcd endpoint `{}` is not an http:// or https:// URL",
                        endpoint.escape_debug()
                    ),
                });
            }
        }
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(5)))
            // etcd is reached directly, never through a proxy from the environment.
            .no_proxy();
        if let Some(ca) = &config.ca_file {
            let pem = read_file(ca)?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| FleetError::Tls {
                path: ca.clone(),
                reason: e.to_string(),
            })?;
            builder = builder.add_root_certificate(cert);
        }
        match (&config.cert_file, &config.key_file) {
            (Some(cert), Some(key)) => {
                let mut pem = read_file(cert)?;
                pem.extend_from_slice(b"\n");
                pem.extend_from_slice(&read_file(key)?);
                let identity = reqwest::Identity::from_pem(&pem).map_err(|e| FleetError::Tls {
                    path: cert.clone(),
                    reason: e.to_string(),
                })?;
                builder = builder.identity(identity);
            }
            (None, None) => {}
            _ => {
                return Err(FleetError::Setting {
                    message: "a client certificate needs both --fleet-cert and --fleet-key".into(),
                })
            }
        }
        let http = builder.build().map_err(|e| FleetError::Setting {
            message: format!("cannot build the etcd client: {e}"),
        })?;
        Ok(Etcd {
            http,
            endpoints: config
                .endpoints
                .iter()
                .map(|e| e.trim_end_matches('/').to_owned())
                .collect(),
            username: config.username.clone(),
            password: config.password.clone(),
            token: Mutex::new(None),
        })
    }

    /// POSTs `body` to `path` on the first endpoint that answers; authenticates first when
    /// credentials are configured.
    async fn call(&self, path: &str, body: &Value) -> Result<Value, FleetError> {
        for attempt in 0..2 {
            if self.username.is_some() && self.current_token().is_none() {
                self.authenticate().await?;
            }
            match self.call_once(path, body).await {
                Err(FleetError::Etcd { message, code })
                    if attempt == 0
                        && self.username.is_some()
                        && (code == 16 || message.contains("token")) =>
                {
                    // An expired or revoked auth token: authenticate again, once.
                    *self.token.lock().unwrap_or_else(|p| p.into_inner()) = None;
                }
                other => return other,
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// A POST to `path` on `endpoint`, with the auth token when there is one.
    fn post(&self, endpoint: &str, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.post(format!("{endpoint}{path}"));
        match self.current_token() {
            Some(token) => request.header("Authorization", token.expose()),
            None => request,
        }
    }

    fn current_token(&self) -> Option<Secret> {
        self.token.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn authenticate(&self) -> Result<(), FleetError> {
        let (Some(name), Some(password)) = (&self.username, &self.password) else {
            return Err(FleetError::Setting {
                message: "an etcd user needs a password (CODEX_STORE_FLEET_PASSWORD)".into(),
            });
        };
        let body = json!({"name": name, "password": password.expose()});
        let answer = self.call_once("/v3/auth/authenticate", &body).await?;
        let token =
            answer
                .get("token")
                .and_then(Value::as_str)
                .ok_or_else(|| FleetError::Etcd {
                    code: 0,
                    message: "authenticate answered without a token".into(),
                })?;
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = Some(Secret::new(token));
        Ok(())
    }

    async fn call_once(&self, path: &str, body: &Value) -> Result<Value, FleetError> {
        let mut last = None;
        for endpoint in &self.endpoints {
            let response = match self.post(endpoint, path).json(body).send().await {
                Ok(response) => response,
                Err(e) => {
                    last = Some(format!("{endpoint}: {}", without_url(&e)));
                    continue;
                }
            };
            let status = response.status();
            let bytes = match read_bounded(response).await {
                Ok(bytes) => bytes,
                Err(e) => {
                    last = Some(format!("{endpoint}: {e}"));
                    continue;
                }
            };
            let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            // etcd 3.4 answers errors as {"error","code","message"}, 3.6 as {"code","message"}
            // with an HTTP error status.
            let message = value
                .get("error")
                .or_else(|| value.get("message").filter(|_| !status.is_success()))
                .and_then(Value::as_str);
            let message = match message {
                Some(m) => Some(m),
                None if status == reqwest::StatusCode::UNAUTHORIZED => Some("invalid auth token"),
                None => None,
            };
            if let Some(message) = message {
                let code = value.get("code").and_then(Value::as_i64).unwrap_or(0);
                // No leader, or this member is cut off: another member may answer.
                if code == 14 || message.contains("leader") || message.contains("timed out") {
                    last = Some(format!("{endpoint}: {message}"));
                    continue;
                }
                return Err(FleetError::Etcd {
                    code,
                    message: message.to_owned(),
                });
            }
            if !status.is_success() {
                last = Some(format!("{endpoint}: HTTP {status}"));
                continue;
            }
            return Ok(value);
        }
        Err(FleetError::Unreachable {
            endpoints: self.endpoints.join(","),
            reason: last.unwrap_or_else(|| "no endpoint".into()),
        })
    }

    /// The key, or `None`.
    pub(crate) async fn get(&self, key: &str) -> Result<(Option<Kv>, i64), FleetError> {
        let answer = self
            .call("/v3/kv/range", &json!({"key": b64(key.as_bytes())}))
            .await?;
        let revision = header_revision(&answer);
        let kv = answer
            .get("kvs")
            .and_then(Value::as_array)
            .and_then(|kvs| kvs.first())
            .and_then(kv_of);
        Ok((kv, revision))
    }

    /// An atomic transaction: if every comparison holds, `success`, else `failure`.
    pub(crate) async fn txn(
        &self,
        compare: &[Compare],
        success: &[Op],
        failure: &[Op],
    ) -> Result<TxnResult, FleetError> {
        let compare: Vec<Value> = compare
            .iter()
            .map(|c| match c {
                Compare::ModRevision(key, rev) => json!({
                    "key": b64(key.as_bytes()), "target": "MOD", "result": "EQUAL",
                    "mod_revision": rev.to_string()
                }),
                Compare::CreateRevision(key, rev) => json!({
                    "key": b64(key.as_bytes()), "target": "CREATE", "result": "EQUAL",
                    "create_revision": rev.to_string()
                }),
            })
            .collect();
        let ops = |ops: &[Op]| -> Vec<Value> {
            ops.iter()
                .map(|op| match op {
                    Op::Put { key, value, lease } => json!({"request_put": {
                        "key": b64(key.as_bytes()), "value": b64(value), "lease": lease.to_string()
                    }}),
                    Op::Get(key) => json!({"request_range": {"key": b64(key.as_bytes())}}),
                    Op::Delete(key) => {
                        json!({"request_delete_range": {"key": b64(key.as_bytes())}})
                    }
                })
                .collect()
        };
        let body = json!({"compare": compare, "success": ops(success), "failure": ops(failure)});
        let answer = self.call("/v3/kv/txn", &body).await?;
        let succeeded = answer
            .get("succeeded")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let revision = header_revision(&answer);
        let gets = answer
            .get("responses")
            .and_then(Value::as_array)
            .map(|responses| {
                responses
                    .iter()
                    .filter_map(|r| r.get("response_range"))
                    .map(|r| {
                        r.get("kvs")
                            .and_then(Value::as_array)
                            .and_then(|kvs| kvs.first())
                            .and_then(kv_of)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(TxnResult {
            succeeded,
            revision,
            gets,
        })
    }

    /// A lease of `ttl` seconds; its id.
    pub(crate) async fn grant(&self, ttl: Duration) -> Result<i64, FleetError> {
        let answer = self
            .call(
                "/v3/lease/grant",
                &json!({"TTL": ttl.as_secs().max(1).to_string()}),
            )
            .await?;
        let id = answer.get("ID").map_or(0, num);
        if id == 0 {
            return Err(FleetError::Etcd {
                code: 0,
                message: "lease grant answered without an id".into(),
            });
        }
        Ok(id)
    }

    /// Renews the lease; its remaining TTL in seconds (0 or less: it is gone).
    pub(crate) async fn keep_alive(&self, lease: i64) -> Result<i64, FleetError> {
        let answer = self
            .call("/v3/lease/keepalive", &json!({"ID": lease.to_string()}))
            .await?;
        Ok(answer
            .get("result")
            .and_then(|r| r.get("TTL"))
            .map_or(0, num))
    }

    /// Revokes the lease (deleting the keys attached to it).
    pub(crate) async fn revoke(&self, lease: i64) -> Result<(), FleetError> {
        match self
            .call("/v3/kv/lease/revoke", &json!({"ID": lease.to_string()}))
            .await
        {
            Ok(_) => Ok(()),
            Err(FleetError::Etcd { message, .. }) if message.contains("not found") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Waits until `key` changes after the store revision `revision` (or `timeout` passes).
    /// One watch stream on the first endpoint that accepts it, authenticated like every call,
    /// and sent with `Grpc-Metadata-hasleader: true` so that a member cut off from the quorum
    /// ends the watch (etcd's "no leader") instead of keeping it silently open.
    ///
    /// # Errors
    /// A watch etcd canceled for any other reason than compaction (permission denied, an
    /// invalid auth token, an empty user name) is [`FleetError::Etcd`]; a stream that ends, or
    /// no endpoint accepting the watch, is [`FleetError::Unreachable`]. Neither is a change:
    /// the caller retries with backoff.
    pub(crate) async fn wait_change(
        &self,
        key: &str,
        revision: i64,
        timeout: Duration,
    ) -> Result<Watched, FleetError> {
        for attempt in 0..2 {
            if self.username.is_some() && self.current_token().is_none() {
                self.authenticate().await?;
            }
            match self.watch_once(key, revision, timeout).await {
                Err(FleetError::Etcd { message, code })
                    if attempt == 0
                        && self.username.is_some()
                        && (code == 16 || message.contains("token")) =>
                {
                    // An expired or revoked auth token: authenticate again, once.
                    *self.token.lock().unwrap_or_else(|p| p.into_inner()) = None;
                }
                other => return other,
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    async fn watch_once(
        &self,
        key: &str,
        revision: i64,
        timeout: Duration,
    ) -> Result<Watched, FleetError> {
        let body = json!({"create_request": {
            "key": b64(key.as_bytes()),
            "start_revision": (revision + 1).to_string(),
        }});
        let mut last = None;
        for endpoint in &self.endpoints {
            let request = self
                .post(endpoint, "/v3/watch")
                .header("Grpc-Metadata-hasleader", "true")
                .timeout(timeout)
                .json(&body);
            let mut response = match request.send().await {
                Ok(r) if r.status().is_success() => r,
                // etcd 3.6 refuses an expired token before the stream starts.
                Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED => {
                    return Err(FleetError::Etcd {
                        code: 16,
                        message: "invalid auth token".into(),
                    })
                }
                Ok(r) => {
                    last = Some(format!("{endpoint}: HTTP {}", r.status()));
                    continue;
                }
                Err(e) if e.is_timeout() && !e.is_connect() => return Ok(Watched::TimedOut),
                Err(e) => {
                    last = Some(format!("{endpoint}: {}", without_url(&e)));
                    continue;
                }
            };
            let mut buffer = Vec::new();
            let ended = loop {
                let chunk = match response.chunk().await {
                    Ok(Some(chunk)) => chunk,
                    // etcd's last word (an error) may come without a newline.
                    Ok(None) => match watch_message(&buffer) {
                        WatchMessage::Done(result) => return result,
                        WatchMessage::Unavailable(reason) => break reason,
                        WatchMessage::Nothing => break "the watch ended".to_owned(),
                    },
                    Err(e) if e.is_timeout() => return Ok(Watched::TimedOut),
                    Err(e) => break without_url(&e),
                };
                buffer.extend_from_slice(&chunk);
                if buffer.len() > MAX_ANSWER {
                    buffer.clear();
                }
                // The gateway sends one JSON object per line.
                let mut unavailable = None;
                while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=end).collect();
                    match watch_message(&line) {
                        WatchMessage::Nothing => {}
                        WatchMessage::Done(result) => return result,
                        WatchMessage::Unavailable(reason) => {
                            unavailable = Some(reason);
                            break;
                        }
                    }
                }
                if let Some(reason) = unavailable {
                    break reason;
                }
            };
            // This member cannot serve the watch (no leader, or the stream broke): another may.
            last = Some(format!("{endpoint}: {ended}"));
        }
        Err(FleetError::Unreachable {
            endpoints: self.endpoints.join(","),
            reason: last.unwrap_or_else(|| "the watch ended".into()),
        })
    }
}

/// What one message of a watch stream says.
enum WatchMessage {
    /// Nothing to act on (the `created` answer, a progress notice, an unreadable line).
    Nothing,
    /// The watch is over: a change, a compaction, or a refusal.
    Done(Result<Watched, FleetError>),
    /// This member cannot serve the watch (it has no leader): another member may.
    Unavailable(String),
}

/// Reads one message of etcd 3.4's watch stream: `{"result": {...}}` with `events`, or with
/// `canceled`, `compact_revision` and `cancel_reason`; or `{"error": {"grpc_code",
/// "message"}}` when the stream fails (no leader, with `Grpc-Metadata-hasleader`).
fn watch_message(line: &[u8]) -> WatchMessage {
    let Ok(message) = serde_json::from_slice::<Value>(line) else {
        return WatchMessage::Nothing;
    };
    if let Some(error) = message.get("error") {
        let (code, text) = match error {
            Value::String(text) => (message.get("code"), text.as_str()),
            _ => (
                error.get("grpc_code").or_else(|| error.get("code")),
                error.get("message").and_then(Value::as_str).unwrap_or(""),
            ),
        };
        let code = code.map_or(0, num);
        let text = if text.is_empty() {
            "etcd ended the watch with an error".to_owned()
        } else {
            text.to_owned()
        };
        if code == 14 || text.contains("leader") {
            return WatchMessage::Unavailable(text);
        }
        return WatchMessage::Done(Err(FleetError::Etcd {
            code,
            message: text,
        }));
    }
    let Some(result) = message.get("result") else {
        return WatchMessage::Nothing;
    };
    if let Some(rev) = result
        .get("events")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("kv"))
        .map(|kv| kv.get("mod_revision").map_or(0, num))
        .max()
    {
        return WatchMessage::Done(Ok(Watched::Changed(rev)));
    }
    if result.get("canceled").and_then(Value::as_bool) != Some(true) {
        return WatchMessage::Nothing;
    }
    let compacted = result.get("compact_revision").map_or(0, num);
    if compacted > 0 {
        // Compacted past `revision`: the caller reads again (and watches from that read).
        return WatchMessage::Done(Ok(Watched::Compacted(compacted)));
    }
    // Refused (permission denied, an invalid auth token, no user name): a failure, never a
    // change, or a caller reading again at once would loop.
    let reason = result
        .get("cancel_reason")
        .and_then(Value::as_str)
        .unwrap_or("");
    let (code, message) = grpc_status(reason);
    WatchMessage::Done(Err(FleetError::Etcd {
        code,
        message: if message.is_empty() {
            "etcd canceled the watch without a reason".to_owned()
        } else {
            format!("the watch was canceled: {message}")
        },
    }))
}

/// The gRPC status code and description of a cancel reason like `rpc error: code =
/// PermissionDenied desc = etcdserver: permission denied`; a reason of another form is kept
/// whole, with code 0.
fn grpc_status(reason: &str) -> (i64, String) {
    let Some(rest) = reason.strip_prefix("rpc error: code = ") else {
        return (0, reason.to_owned());
    };
    let (name, desc) = rest.split_once(" desc = ").unwrap_or((rest, ""));
    let code = match name {
        "InvalidArgument" => 3,
        "NotFound" => 5,
        "PermissionDenied" => 7,
        "FailedPrecondition" => 9,
        "Unavailable" => 14,
        "Unauthenticated" => 16,
        _ => 0,
    };
    (code, desc.to_owned())
}

fn read_file(path: &std::path::Path) -> Result<Vec<u8>, FleetError> {
    std::fs::read(path).map_err(|source| FleetError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// reqwest's error without the URL (which names only the endpoint, but keep messages short).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| without_url(&e))? {
        if bytes.len() + chunk.len() > MAX_ANSWER {
            return Err(format!("an answer over {MAX_ANSWER} bytes"));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(line: &str) -> WatchMessage {
        watch_message(line.as_bytes())
    }

    #[test]
    fn a_watch_canceled_by_compaction_is_a_reason_to_read_again() {
        let line =
            r#"{"result":{"header":{"revision":"4"},"canceled":true,"compact_revision":"3"}}"#;
        assert!(
            matches!(outcome(line), WatchMessage::Done(Ok(Watched::Compacted(3)))),
            "a cancel naming a compact revision must be read as a compaction"
        );
    }

    #[test]
    fn a_watch_canceled_for_a_refusal_is_an_error_with_etcds_reason() {
        // etcd 3.4's answer to a watch of a prefix the user may not read.
        let line = r#"{"result":{"header":{"revision":"4"},"watch_id":"-1","created":true,"canceled":true,"cancel_reason":"rpc error: code = PermissionDenied desc = etcdserver: permission denied"}}"#;
        match outcome(line) {
            WatchMessage::Done(Err(FleetError::Etcd { code, message })) => {
                assert_eq!(code, 7, "PermissionDenied is gRPC code 7");
                assert!(
                    message.contains("permission denied"),
                    "etcd's reason must be kept: {message}"
                );
            }
            _ => panic!("a refused watch must be an error, never a change"),
        }
        let line = r#"{"result":{"watch_id":"-1","created":true,"canceled":true,"cancel_reason":"rpc error: code = Unauthenticated desc = etcdserver: invalid auth token"}}"#;
        assert!(
            matches!(
                outcome(line),
                WatchMessage::Done(Err(FleetError::Etcd { code: 16, .. }))
            ),
            "an invalid auth token must be code 16, so that the client authenticates again"
        );
    }

    #[test]
    fn a_member_without_a_leader_passes_the_watch_to_another_member() {
        // What etcd 3.4 sends, without a newline, on a watch with `Grpc-Metadata-hasleader`.
        let line = r#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service Unavailable"}}"#;
        assert!(
            matches!(outcome(line), WatchMessage::Unavailable(ref m) if m.contains("no leader")),
            "no leader must make the client try another member"
        );
    }

    #[test]
    fn the_created_answer_and_unreadable_lines_are_not_the_end_of_a_watch() {
        for line in [
            r#"{"result":{"header":{"revision":"4"},"created":true}}"#,
            "{}",
            "<html>",
            "",
        ] {
            assert!(
                matches!(outcome(line), WatchMessage::Nothing),
                "{line:?} must neither end the watch nor count as a change"
            );
        }
        let line = r#"{"result":{"events":[{"kv":{"key":"YQ==","mod_revision":"9"}}]}}"#;
        assert!(
            matches!(outcome(line), WatchMessage::Done(Ok(Watched::Changed(9)))),
            "an event is a change at its revision"
        );
    }
}
