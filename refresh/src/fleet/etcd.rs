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
    /// How many keys each `Op::Delete` removed, in order.
    pub(crate) deleted: Vec<i64>,
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
    strict_num(value).unwrap_or(0)
}

/// A 64-bit number as etcd's gateway writes it (a string of digits, or a JSON number); `None`
/// for anything else.
fn strict_num(value: &Value) -> Option<i64> {
    match value {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// etcd's revision at the time of an answer (its header's).
fn header_revision(answer: &Value) -> i64 {
    answer
        .get("header")
        .and_then(|h| h.get("revision"))
        .map_or(0, num)
}

/// What makes an answer etcd's: a checker per call, run before the answer is used. An answer that
/// fails it is never read as "no key" or "not succeeded": it is an error (and another endpoint is
/// tried).
type Check = fn(&Value) -> Result<(), String>;

/// Every answer of etcd's KV and lease calls carries a `header` with the store's revision (at
/// least 1: etcd starts at revision 1).
fn check_header(answer: &Value) -> Result<(), String> {
    let header = answer
        .get("header")
        .filter(|h| h.is_object())
        .ok_or("no `header`")?;
    match header.get("revision").and_then(strict_num) {
        Some(revision) if revision >= 1 => Ok(()),
        _ => Err("a `header` without a revision".into()),
    }
}

/// A range answer: a header, and `kvs` (when present) an array of keys as etcd writes them.
fn check_range(answer: &Value) -> Result<(), String> {
    check_header(answer)?;
    kvs_of(answer).map(|_| ())
}

/// A transaction's answer: a header, `succeeded` absent (false) or a boolean, and `responses`
/// absent (no operation) or an array of etcd's responses, each of them well-formed.
fn check_txn(answer: &Value) -> Result<(), String> {
    check_header(answer)?;
    match answer.get("succeeded") {
        None | Some(Value::Bool(_)) => {}
        Some(_) => return Err("`succeeded` is not a boolean".into()),
    }
    let Some(responses) = answer.get("responses") else {
        return Ok(());
    };
    let responses = responses.as_array().ok_or("`responses` is not an array")?;
    for response in responses {
        let known = [
            "response_range",
            "response_put",
            "response_delete_range",
            "response_txn",
        ];
        let Some((name, body)) = response
            .as_object()
            .and_then(|o| o.iter().find(|(k, _)| known.contains(&k.as_str())))
        else {
            return Err("a response of no known kind".into());
        };
        if name == "response_range" {
            kvs_of(body)?;
        } else if !body.is_object() {
            return Err(format!("`{name}` is not an object"));
        }
    }
    Ok(())
}

/// A lease grant: a header, a lease id and its time to live.
fn check_grant(answer: &Value) -> Result<(), String> {
    check_header(answer)?;
    match answer.get("ID").and_then(strict_num) {
        Some(id) if id != 0 => {}
        _ => return Err("no lease `ID`".into()),
    }
    match answer.get("TTL").and_then(strict_num) {
        Some(ttl) if ttl > 0 => Ok(()),
        _ => Err("no lease `TTL`".into()),
    }
}

/// A keep-alive: a `result` with a header (its `TTL` is absent once the lease is gone).
fn check_keep_alive(answer: &Value) -> Result<(), String> {
    let result = answer.get("result").ok_or("no `result`")?;
    check_header(result)?;
    match result.get("TTL") {
        None => Ok(()),
        Some(ttl) => strict_num(ttl)
            .map(|_| ())
            .ok_or_else(|| "a `TTL` that is not a number".into()),
    }
}

/// A lease's time to live: a header, the lease, its `TTL` (-1: gone) and `grantedTTL`.
fn check_time_to_live(answer: &Value) -> Result<(), String> {
    check_header(answer)?;
    match answer.get("TTL").and_then(strict_num) {
        Some(_) => Ok(()),
        None => Err("no `TTL`".into()),
    }
}

/// An authentication: a token.
fn check_authenticate(answer: &Value) -> Result<(), String> {
    check_header(answer)?;
    match answer.get("token").and_then(Value::as_str) {
        Some(token) if !token.is_empty() => Ok(()),
        _ => Err("no `token`".into()),
    }
}

/// The keys of a range answer (`kvs`, absent when none), each checked: a key, its revisions,
/// its value in base64 (absent when empty).
fn kvs_of(answer: &Value) -> Result<Vec<Kv>, String> {
    let Some(kvs) = answer.get("kvs") else {
        return Ok(Vec::new());
    };
    kvs.as_array()
        .ok_or("`kvs` is not an array")?
        .iter()
        .map(kv_of)
        .collect()
}

fn kv_of(value: &Value) -> Result<Kv, String> {
    if value.get("key").and_then(Value::as_str).is_none() {
        return Err("a key without its name".into());
    }
    let data = match value.get("value") {
        None => "",
        Some(Value::String(data)) => data.as_str(),
        Some(_) => return Err("a value that is not base64".into()),
    };
    let revision = |name: &str| -> Result<i64, String> {
        match value.get(name).and_then(strict_num) {
            Some(revision) if revision >= 1 => Ok(revision),
            _ => Err(format!("a key without its `{name}`")),
        }
    };
    Ok(Kv {
        value: STANDARD
            .decode(data)
            .map_err(|_| "a value that is not base64".to_owned())?,
        mod_revision: revision("mod_revision")?,
        create_revision: revision("create_revision")?,
        lease: match value.get("lease") {
            None => 0,
            Some(lease) => strict_num(lease).ok_or("a `lease` that is not a number")?,
        },
    })
}

/// The first key of a checked range answer.
fn first_kv(answer: &Value) -> Option<Kv> {
    kvs_of(answer).ok().and_then(|kvs| kvs.into_iter().next())
}

/// A short, escaped description of an answer that is not etcd's, for a message.
fn describe(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    let mut shown: String = text.chars().take(40).collect();
    if text.chars().count() > 40 {
        shown.push_str("...");
    }
    if shown.is_empty() {
        "an empty body".to_owned()
    } else {
        format!("`{}`", shown.escape_debug())
    }
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
            // Checked here, so that a file that is PEM but no certificate is named with what is
            // wrong with it (the TLS library only says "builder error", later).
            tls::certificates(ca, &pem, false)?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| FleetError::Tls {
                path: ca.clone(),
                reason: e.to_string(),
            })?;
            builder = builder.add_root_certificate(cert);
        }
        match (&config.cert_file, &config.key_file) {
            (Some(cert), Some(key)) => {
                let mut pem = read_file(cert)?;
                tls::certificates(cert, &pem, true)?;
                let key_pem = read_file(key)?;
                tls::private_key(key, &key_pem)?;
                pem.extend_from_slice(b"\n");
                pem.extend_from_slice(&key_pem);
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
        let http = builder.build().map_err(|e| {
            let files: Vec<String> = [&config.ca_file, &config.cert_file, &config.key_file]
                .into_iter()
                .flatten()
                .map(|p| p.display().to_string())
                .collect();
            FleetError::Setting {
                message: if files.is_empty() {
                    format!("cannot build the etcd client: {}", error_chain(&e))
                } else {
                    format!(
                        "cannot use the fleet's TLS files ({}): {}; give PEM certificates \
                         (--fleet-ca, --fleet-cert) and a PEM private key (--fleet-key)",
                        files.join(", "),
                        error_chain(&e)
                    )
                },
            }
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

    /// Runs `attempt` with an auth token when credentials are configured (authenticating first
    /// when there is none), and once more after authenticating again when etcd says the token
    /// expired or was revoked.
    async fn authenticated<T, F>(&self, attempt: impl Fn() -> F) -> Result<T, FleetError>
    where
        F: std::future::Future<Output = Result<T, FleetError>>,
    {
        let mut retried = false;
        loop {
            if self.username.is_some() && self.current_token().is_none() {
                self.authenticate().await?;
            }
            match attempt().await {
                Err(FleetError::Etcd { message, code })
                    if !retried
                        && self.username.is_some()
                        && (code == 16 || message.contains("token")) =>
                {
                    // An expired or revoked auth token: authenticate again, once.
                    *self.token.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    retried = true;
                }
                other => return other,
            }
        }
    }

    /// POSTs `body` to `path` on the first endpoint that answers as etcd does (`check`);
    /// authenticates first when credentials are configured.
    async fn call(&self, path: &str, body: &Value, check: Check) -> Result<Value, FleetError> {
        self.authenticated(|| self.call_once(path, body, check))
            .await
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
        let answer = self
            .call_once("/v3/auth/authenticate", &body, check_authenticate)
            .await?;
        let token = answer
            .get("token")
            .and_then(Value::as_str)
            .unwrap_or_default();
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = Some(Secret::new(token));
        Ok(())
    }

    /// One POST per endpoint at most, in turn, until one answers as etcd does. An answer that
    /// is not etcd's (a 200 with `{}`, an HTML page, a proxy's page) is never taken for an
    /// empty one: the next endpoint is tried, and if none answers, the error says what came.
    async fn call_once(&self, path: &str, body: &Value, check: Check) -> Result<Value, FleetError> {
        let mut last = None;
        let mut foreign = None;
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
            if let Err(why) = value
                .is_object()
                .then_some(())
                .ok_or_else(|| "not a JSON object".to_owned())
                .and_then(|()| check(&value))
            {
                foreign = Some(format!(
                    "{endpoint} answered {path} with {} ({why})",
                    describe(&bytes)
                ));
                continue;
            }
            return Ok(value);
        }
        let endpoints = self.endpoints.join(",");
        match foreign {
            Some(answer) => Err(FleetError::NotEtcd { endpoints, answer }),
            None => Err(FleetError::Unreachable {
                endpoints,
                reason: last.unwrap_or_else(|| "no endpoint".into()),
            }),
        }
    }

    /// The key, or `None`, and etcd's revision at the time of the read.
    pub(crate) async fn get(&self, key: &str) -> Result<(Option<Kv>, i64), FleetError> {
        let answer = self
            .call(
                "/v3/kv/range",
                &json!({"key": b64(key.as_bytes())}),
                check_range,
            )
            .await?;
        Ok((first_kv(&answer), header_revision(&answer)))
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
        let answer = self.call("/v3/kv/txn", &body, check_txn).await?;
        let succeeded = answer
            .get("succeeded")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        // The branch etcd ran must have answered each of its operations.
        let ran = if succeeded { success } else { failure };
        let responses = answer
            .get("responses")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if responses.len() != ran.len() {
            return Err(FleetError::NotEtcd {
                endpoints: self.endpoints.join(","),
                answer: format!(
                    "a transaction of {} operation(s) answered with {} response(s)",
                    ran.len(),
                    responses.len()
                ),
            });
        }
        let revision = header_revision(&answer);
        let gets = responses
            .iter()
            .filter_map(|r| r.get("response_range"))
            .map(first_kv)
            .collect();
        let deleted = responses
            .iter()
            .filter_map(|r| r.get("response_delete_range"))
            .map(|r| r.get("deleted").map_or(0, num))
            .collect();
        Ok(TxnResult {
            succeeded,
            revision,
            gets,
            deleted,
        })
    }

    /// A lease of `ttl` seconds; its id.
    pub(crate) async fn grant(&self, ttl: Duration) -> Result<i64, FleetError> {
        let answer = self
            .call(
                "/v3/lease/grant",
                // Whole seconds, rounded up: the lease lives at least `ttl`.
                &json!({"TTL": (ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)).max(1).to_string()}),
                check_grant,
            )
            .await?;
        Ok(answer.get("ID").map_or(0, num))
    }

    /// Renews the lease; its remaining TTL in seconds (0 or less: it is gone).
    pub(crate) async fn keep_alive(&self, lease: i64) -> Result<i64, FleetError> {
        let answer = self
            .call(
                "/v3/lease/keepalive",
                &json!({"ID": lease.to_string()}),
                check_keep_alive,
            )
            .await?;
        Ok(answer
            .get("result")
            .and_then(|r| r.get("TTL"))
            .map_or(0, num))
    }

    /// The lease's remaining and granted time to live in seconds (`None`: it is gone).
    pub(crate) async fn time_to_live(&self, lease: i64) -> Result<Option<(i64, i64)>, FleetError> {
        let answer = self
            .call(
                "/v3/lease/timetolive",
                &json!({"ID": lease.to_string()}),
                check_time_to_live,
            )
            .await?;
        let left = answer.get("TTL").map_or(-1, num);
        let granted = answer.get("grantedTTL").map_or(0, num);
        Ok((left > 0).then_some((left, granted)))
    }

    /// Revokes the lease (deleting the keys attached to it).
    pub(crate) async fn revoke(&self, lease: i64) -> Result<(), FleetError> {
        match self
            .call(
                "/v3/kv/lease/revoke",
                &json!({"ID": lease.to_string()}),
                check_header,
            )
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
        self.authenticated(|| self.watch_once(key, revision, timeout))
            .await
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
        let mut foreign = None;
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
                    Ok(None) => match watch_message(&buffer, revision) {
                        WatchMessage::Done(result) => return result,
                        WatchMessage::Unavailable(reason) => break reason,
                        WatchMessage::Foreign(answer) => {
                            foreign = Some(format!("{endpoint} answered /v3/watch with {answer}"));
                            break "not etcd's answer".to_owned();
                        }
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
                    match watch_message(&line, revision) {
                        WatchMessage::Nothing => {}
                        WatchMessage::Done(result) => return result,
                        WatchMessage::Unavailable(reason) => {
                            unavailable = Some(reason);
                            break;
                        }
                        WatchMessage::Foreign(answer) => {
                            foreign = Some(format!("{endpoint} answered /v3/watch with {answer}"));
                            unavailable = Some("not etcd's answer".to_owned());
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
        if let Some(answer) = foreign {
            return Err(FleetError::NotEtcd {
                endpoints: self.endpoints.join(","),
                answer,
            });
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
    /// What came is not etcd's (described): another endpoint may be etcd.
    Foreign(String),
}

/// Reads one message of etcd 3.4's watch stream: `{"result": {...}}` with `events`, or with
/// `canceled`, `compact_revision` and `cancel_reason`; or `{"error": {"grpc_code",
/// "message"}}` when the stream fails (no leader, with `Grpc-Metadata-hasleader`).
///
/// `after` is the revision the watch starts after: a `created` answer whose header says etcd is
/// at an older revision (etcd restored from a snapshot) is a change, so that the caller reads
/// the record again rather than wait for revisions that may never come.
fn watch_message(line: &[u8], after: i64) -> WatchMessage {
    if line.iter().all(u8::is_ascii_whitespace) {
        return WatchMessage::Nothing;
    }
    let message = match serde_json::from_slice::<Value>(line) {
        Ok(message) if message.get("result").is_some_and(Value::is_object) => message,
        Ok(message) if message.get("error").is_some() => message,
        // Not etcd's: never a watch that runs quietly (a server answering 200 with `{}` or a
        // page would keep this machine deaf).
        _ => return WatchMessage::Foreign(describe(line)),
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
        return WatchMessage::Foreign(describe(line));
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
        let now = result
            .get("header")
            .and_then(|h| h.get("revision"))
            .map_or(0, num);
        if result.get("created").and_then(Value::as_bool) == Some(true) && now > 0 && now < after {
            return WatchMessage::Done(Ok(Watched::Changed(now)));
        }
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

/// An error with its sources, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The TLS files, checked before the TLS library sees them: PEM blocks of the right kind whose
/// contents are DER of the right shape, so that a wrong file is named with what is wrong with it.
mod tls {
    use std::path::Path;

    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;

    use super::FleetError;

    fn bad(path: &Path, reason: impl Into<String>) -> FleetError {
        FleetError::Tls {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    /// The PEM blocks of `text`: their labels and decoded contents.
    fn blocks(path: &Path, bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, FleetError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| bad(path, "it is not text (a DER file? give it in PEM)"))?;
        let mut found = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("-----BEGIN ") {
            let after = &rest[start + "-----BEGIN ".len()..];
            let label_end = after
                .find("-----")
                .ok_or_else(|| bad(path, "a BEGIN line that is not closed"))?;
            let label = after[..label_end].to_owned();
            let body = &after[label_end + 5..];
            let end_line = format!("-----END {label}-----");
            let end = body.find(&end_line).ok_or_else(|| {
                bad(
                    path,
                    format!("a `{}` block without its END line", label.escape_debug()),
                )
            })?;
            let data: String = body[..end]
                .chars()
                .filter(|c| !c.is_ascii_whitespace())
                .collect();
            let der = STANDARD.decode(data.as_bytes()).map_err(|_| {
                bad(
                    path,
                    format!("its `{}` block is not base64", label.escape_debug()),
                )
            })?;
            found.push((label, der));
            rest = &body[end + end_line.len()..];
        }
        if found.is_empty() {
            return Err(bad(path, "it holds no PEM block (-----BEGIN ...-----)"));
        }
        Ok(found)
    }

    /// One DER element at the start of `der`: its tag, its contents, and what follows it.
    fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = der.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }

    /// Whether `der` is shaped like an X.509 certificate: one SEQUENCE of the to-be-signed
    /// SEQUENCE, the algorithm SEQUENCE and the signature BIT STRING, and nothing after it.
    fn is_certificate(der: &[u8]) -> bool {
        let Some((0x30, inner, [])) = element(der) else {
            return false;
        };
        let Some((0x30, _, rest)) = element(inner) else {
            return false;
        };
        let Some((0x30, _, rest)) = element(rest) else {
            return false;
        };
        matches!(element(rest), Some((0x03, _, [])))
    }

    /// Checks that `path` holds PEM certificates, each shaped like one, and nothing else (but a
    /// private key, with `keys_too`: a client certificate's file may hold its key).
    pub(super) fn certificates(
        path: &Path,
        bytes: &[u8],
        keys_too: bool,
    ) -> Result<(), FleetError> {
        let blocks = blocks(path, bytes)?;
        let mut any = false;
        for (label, der) in &blocks {
            if keys_too && label.ends_with("PRIVATE KEY") {
                continue;
            }
            any = true;
            if label != "CERTIFICATE" {
                return Err(bad(
                    path,
                    format!(
                        "it holds a `{}` block where a CERTIFICATE was expected",
                        label.escape_debug()
                    ),
                ));
            }
            if !is_certificate(der) {
                return Err(bad(
                    path,
                    "its CERTIFICATE block does not hold a certificate (its contents are not an \
                     X.509 certificate's DER)",
                ));
            }
        }
        if !any {
            return Err(bad(path, "it holds no CERTIFICATE block"));
        }
        Ok(())
    }

    /// Checks that `path` holds a PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub(super) fn private_key(path: &Path, bytes: &[u8]) -> Result<(), FleetError> {
        let blocks = blocks(path, bytes)?;
        let key = blocks
            .iter()
            .find(|(label, _)| label.ends_with("PRIVATE KEY"))
            .ok_or_else(|| bad(path, "it holds no PRIVATE KEY block"))?;
        if label_is_encrypted(&key.0) {
            return Err(bad(
                path,
                "its private key is encrypted; give it unencrypted",
            ));
        }
        match element(&key.1) {
            Some((0x30, _, [])) => Ok(()),
            _ => Err(bad(
                path,
                "its PRIVATE KEY block does not hold a key (its contents are not DER)",
            )),
        }
    }

    fn label_is_encrypted(label: &str) -> bool {
        label.starts_with("ENCRYPTED")
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn pem(label: &str, der: &[u8]) -> String {
            format!(
                "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
                STANDARD.encode(der)
            )
        }

        #[test]
        fn a_pem_file_that_is_no_certificate_is_named_with_what_is_wrong() {
            let path = Path::new("/etc/ca.pem");
            let cases = [
                (pem("PRIVATE KEY", &[0x30, 0x00]), "PRIVATE KEY"),
                (pem("CERTIFICATE", b"hello"), "does not hold a certificate"),
                (
                    "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n".to_owned(),
                    "not base64",
                ),
                ("just text".to_owned(), "no PEM block"),
            ];
            for (text, want) in cases {
                let e = certificates(path, text.as_bytes(), false)
                    .expect_err(&text)
                    .to_string();
                assert!(
                    e.contains("/etc/ca.pem") && e.contains(want),
                    "{text:?}: the error must name the file and say `{want}`: {e}"
                );
            }
        }

        #[test]
        fn a_certificates_outline_passes() {
            // SEQUENCE { SEQUENCE {}, SEQUENCE {}, BIT STRING {0} }
            let der = [0x30, 0x07, 0x30, 0x00, 0x30, 0x00, 0x03, 0x01, 0x00];
            assert!(
                certificates(Path::new("x"), pem("CERTIFICATE", &der).as_bytes(), false).is_ok()
            );
        }
    }
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
        watch_message(line.as_bytes(), 0)
    }

    #[test]
    fn a_watch_created_at_an_older_revision_than_was_read_is_a_reason_to_read_again() {
        // etcd restored from a snapshot: it is at revision 2, the watch starts after 8.
        let line = r#"{"result":{"header":{"revision":"2"},"created":true}}"#;
        assert!(
            matches!(
                watch_message(line.as_bytes(), 8),
                WatchMessage::Done(Ok(Watched::Changed(2)))
            ),
            "a watch of revisions that may never come must end at once"
        );
        assert!(
            matches!(watch_message(line.as_bytes(), 2), WatchMessage::Nothing),
            "a watch created at the revision read is no change"
        );
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
    fn the_created_answer_is_not_the_end_of_a_watch_and_what_is_not_etcds_is_no_watch() {
        for line in [
            r#"{"result":{"header":{"revision":"4"},"created":true}}"#,
            "",
            "\r",
        ] {
            assert!(
                matches!(outcome(line), WatchMessage::Nothing),
                "{line:?} must neither end the watch nor count as a change"
            );
        }
        for line in ["{}", "<html>", "[1]", r#"{"result":1}"#] {
            assert!(
                matches!(outcome(line), WatchMessage::Foreign(_)),
                "{line:?} is not etcd's: it must not pass for a quiet watch"
            );
        }
        let line = r#"{"result":{"events":[{"kv":{"key":"YQ==","mod_revision":"9"}}]}}"#;
        assert!(
            matches!(outcome(line), WatchMessage::Done(Ok(Watched::Changed(9)))),
            "an event is a change at its revision"
        );
    }
}

#[cfg(test)]
mod answers {
    use super::*;

    #[test]
    fn an_empty_object_or_a_page_is_no_answer_of_etcd_to_any_call() {
        let checks: [(&str, Check); 7] = [
            ("range", check_range),
            ("txn", check_txn),
            ("grant", check_grant),
            ("keepalive", check_keep_alive),
            ("timetolive", check_time_to_live),
            ("revoke", check_header),
            ("authenticate", check_authenticate),
        ];
        for (name, check) in checks {
            for answer in [json!({}), json!({"header": {}}), json!({"kvs": []})] {
                assert!(
                    check(&answer).is_err(),
                    "{answer} was taken for etcd's answer to {name}"
                );
            }
        }
    }

    #[test]
    fn etcds_own_answers_pass_their_checks() {
        let header =
            json!({"cluster_id": "1", "member_id": "2", "revision": "7", "raft_term": "2"});
        assert!(
            check_range(&json!({"header": header})).is_ok(),
            "a range with no key"
        );
        let kv =
            json!({"key": "L2E=", "create_revision": "2", "mod_revision": "2", "version": "1"});
        assert!(
            check_range(&json!({"header": header, "kvs": [kv], "count": "1"})).is_ok(),
            "a key with an empty value (etcd omits it)"
        );
        assert!(
            check_txn(&json!({"header": header, "responses": [{"response_range": {"header": {"revision": "7"}}}]}))
                .is_ok(),
            "a failed transaction (etcd omits `succeeded: false`)"
        );
        assert!(
            check_keep_alive(&json!({"result": {"header": header, "ID": "5"}})).is_ok(),
            "a keep-alive of a lease that is gone (no TTL)"
        );
        let bad = json!({"key": "L2E=", "mod_revision": "2"});
        assert!(
            check_range(&json!({"header": header, "kvs": [bad]})).is_err(),
            "a key without its create revision is not etcd's"
        );
    }
}
