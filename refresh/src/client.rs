//! The token endpoint: the refresh request, its answer, and the classification of errors.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use codex_store::Secret;
use serde_json::Value;

use crate::config::{DEFAULT_TOKEN_URL, TOKEN_URL_ENV};
use crate::error::{PermanentReason, RefreshError, TransientReason, UrlOrigin};
use crate::http_body::{read_bounded, BodyError};

/// The largest answer body read from the token endpoint; reading stops there. Real answers are
/// a few KiB.
pub(crate) const MAX_ANSWER_SIZE: usize = 256 * 1024;

/// New tokens from a successful refresh. A missing (or `null`) field keeps its previous value;
/// the access token is required.
#[derive(Debug, Default)]
pub(crate) struct TokenAnswer {
    /// The new id token, if sent.
    pub(crate) id_token: Option<Secret>,
    /// The new access token, if sent.
    pub(crate) access_token: Option<Secret>,
    /// The new refresh token, if sent (the old one is dead when it is).
    pub(crate) refresh_token: Option<Secret>,
}

/// A client of the token endpoint.
#[derive(Clone, Debug)]
pub(crate) struct TokenClient {
    http: reqwest::Client,
    url: String,
    /// Where `url` came from ([`RefreshError::TokenUrl`]'s `origin`).
    origin: UrlOrigin,
    client_id: String,
    /// The endpoint's last permanent refusal, as it answered it, shared by the clones: the
    /// broker hands it to the callers of the refresh it refused.
    last_refusal: Arc<Mutex<Option<Refusal>>>,
}

/// A permanent refusal as the endpoint answered it: for the broker, which answers its callers
/// with the endpoint's own status and body. Kept in memory only, never stored.
#[derive(Clone, Debug)]
pub(crate) struct Refusal {
    /// The fingerprint of the refresh token refused.
    pub(crate) fingerprint: String,
    /// The HTTP status.
    pub(crate) status: u16,
    /// The body (at most [`MAX_ANSWER_SIZE`] bytes; empty when it was larger).
    pub(crate) body: Vec<u8>,
}

/// An answer relayed as it came: its status, content type and body.
#[derive(Debug)]
pub(crate) struct Relayed {
    /// The HTTP status.
    pub(crate) status: u16,
    /// The `Content-Type`, when it had a usable one.
    pub(crate) content_type: Option<String>,
    /// The body, at most [`MAX_ANSWER_SIZE`] bytes.
    pub(crate) body: Vec<u8>,
}

/// How long the token endpoint may take before the wait is said (it usually answers in well
/// under a second).
const SLOW_ANSWER: Duration = Duration::from_secs(2);
impl TokenClient {
    /// A client for `url` with a whole-request `timeout`.
    ///
    /// # Errors
    /// [`RefreshError::TokenUrl`] when `url` is not an absolute http(s) URL (or is the value of
    /// a [`TOKEN_URL_ENV`] that is empty, blank or not UTF-8);
    /// [`RefreshError::HttpSetup`] when the HTTP client cannot be built.
    pub(crate) fn new(url: &str, client_id: &str, timeout: Duration) -> Result<Self, RefreshError> {
        let origin = origin_of(url);
        check_url(url, origin)?;
        let mut builder = reqwest::Client::builder()
            // A redirect would re-send the refresh token to another origin: never followed.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)));
        if is_loopback(url) {
            // A proxy from the environment must not capture a local test endpoint.
            builder = builder.no_proxy();
        }
        let http = builder.build().map_err(|e| RefreshError::HttpSetup {
            message: e.to_string(),
        })?;
        Ok(TokenClient {
            http,
            url: url.to_owned(),
            origin,
            client_id: client_id.to_owned(),
            last_refusal: Arc::default(),
        })
    }

    /// The token URL.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The last permanent refusal of the refresh token whose fingerprint is `fingerprint`, as
    /// the endpoint answered it (when this client sent it).
    pub(crate) fn refusal_of(&self, fingerprint: &str) -> Option<Refusal> {
        self.last_refusal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|r| r.fingerprint == fingerprint)
            .cloned()
    }

    /// Posts `body` (JSON, as a caller sent it) to the endpoint unchanged and returns its answer
    /// unjudged, whatever its status: for the broker, which relays it. Redirects are not
    /// followed (their status is relayed, without the `Location`).
    ///
    /// # Errors
    /// [`RefreshError::Transient`] when no answer came (a connection that fails or breaks, a
    /// timeout) or its body is larger than [`MAX_ANSWER_SIZE`].
    pub(crate) async fn forward(&self, body: Vec<u8>) -> Result<Relayed, RefreshError> {
        let response = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| transient_from(&e))?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = read_body(response).await?;
        Ok(Relayed {
            status,
            content_type,
            body,
        })
    }

    /// Redeems `refresh_token`, the whole request cut off after `within` when it is given
    /// (shorter than the client's own timeout: a fleet's send deadline). Errors are classified:
    /// permanent ones mean "sign in again", transient ones mean "nothing changed, try later",
    /// [`RefreshError::TokenUrl`] means the URL answered as no token endpoint does (a
    /// configuration error; nothing changed).
    pub(crate) async fn refresh(
        &self,
        refresh_token: &Secret,
        within: Option<Duration>,
    ) -> Result<TokenAnswer, RefreshError> {
        let body = serde_json::json!({
            "client_id": self.client_id,
            "grant_type": "refresh_token",
            "refresh_token": refresh_token.expose(),
        });
        let request = self.http.post(&self.url).json(&body);
        let request = match within {
            Some(within) => request.timeout(within),
            None => request,
        };
        let sent = request.send();
        tokio::pin!(sent);
        // A request that takes longer than an endpoint needs is said once, so that whoever waits
        // (a terminal, a log) knows what for; the request goes on until its timeout.
        let response = tokio::select! {
            answered = &mut sent => answered,
            () = tokio::time::sleep(SLOW_ANSWER) => {
                tracing::warn!(
                    "the token endpoint {} has not answered within {} s; still waiting for it",
                    self.url.escape_debug(),
                    SLOW_ANSWER.as_secs()
                );
                sent.await
            }
        }
        .map_err(|e| transient_from(&e))?;
        let status = response.status();
        if status.is_redirection() {
            return Err(RefreshError::Transient {
                reason: TransientReason::Redirect(status.as_u16()),
            });
        }
        let html = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.to_ascii_lowercase().contains("html"));
        let bytes = match read_body(response).await {
            Ok(bytes) => bytes,
            // An error answer that large holds no OAuth error (those are a few bytes): its status
            // alone classifies it.
            Err(RefreshError::Transient {
                reason: TransientReason::InvalidAnswer(_),
            }) if !status.is_success() => Vec::new(),
            Err(e) => return Err(e),
        };
        if status.is_success() {
            return TokenAnswer::parse(&bytes);
        }
        let classified = classify(status.as_u16(), &bytes);
        if let Some(RefreshError::Permanent { .. }) = classified {
            *self.last_refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(Refusal {
                fingerprint: refresh_token.fingerprint(),
                status: status.as_u16(),
                body: bytes,
            });
        }
        Err(classified.unwrap_or_else(|| {
            let what = if html {
                "an HTML page"
            } else {
                "no OAuth error code"
            };
            self.not_an_endpoint(format!(
                "is not a token endpoint: it answered HTTP {} with {what}, so the stored \
                 credentials are unchanged and the refresh token is not spent",
                status.as_u16()
            ))
        }))
    }

    /// [`RefreshError::TokenUrl`] for this client's URL.
    fn not_an_endpoint(&self, problem: String) -> RefreshError {
        token_url_error(&self.url, self.origin, problem)
    }
}

/// Where `url` came from: [`TOKEN_URL_ENV`] when it is that variable's value, else the
/// built-in default when it is [`DEFAULT_TOKEN_URL`], else the program's configuration.
fn origin_of(url: &str) -> UrlOrigin {
    match std::env::var_os(TOKEN_URL_ENV) {
        Some(value) if value.to_string_lossy() == url => UrlOrigin::Environment,
        _ if url == DEFAULT_TOKEN_URL => UrlOrigin::BuiltIn,
        _ => UrlOrigin::Configuration,
    }
}

/// [`RefreshError::TokenUrl`]: `url` shown quoted and escaped (outside input: no control
/// character, no escape sequence reaches a terminal or a log), with a password in it hidden.
fn token_url_error(url: &str, origin: UrlOrigin, problem: String) -> RefreshError {
    let shown = match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    };
    RefreshError::TokenUrl {
        url: format!(
            "\"{}\"",
            shown
                .chars()
                .flat_map(char::escape_default)
                .collect::<String>()
        ),
        origin,
        problem,
    }
}

/// Reads the body, stopping at [`MAX_ANSWER_SIZE`].
async fn read_body(response: reqwest::Response) -> Result<Vec<u8>, RefreshError> {
    read_bounded(response, MAX_ANSWER_SIZE)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge { limit } => RefreshError::Transient {
                reason: TransientReason::InvalidAnswer(format!("it is larger than {limit} bytes")),
            },
            BodyError::TimedOut { source } | BodyError::Broken { source } => {
                transient_from(&source)
            }
        })
}

/// Refuses a token URL that is not an absolute `http` or `https` URL, and a [`TOKEN_URL_ENV`]
/// that is set but empty, blank or not UTF-8 (never taken to mean the real endpoint), naming
/// where it came from.
fn check_url(url: &str, origin: UrlOrigin) -> Result<(), RefreshError> {
    let from_env = origin == UrlOrigin::Environment;
    let problem = if from_env
        && matches!(
            std::env::var(TOKEN_URL_ENV),
            Err(std::env::VarError::NotUnicode(_))
        ) {
        "is not usable: it is not valid UTF-8".to_owned()
    } else if url.trim().is_empty() {
        if from_env {
            format!("is not usable: {TOKEN_URL_ENV} is set but empty")
        } else {
            "is not usable: it is empty".to_owned()
        }
    } else {
        match reqwest::Url::parse(url) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => {
                return Ok(())
            }
            Ok(parsed) => format!(
                "is not usable: its scheme `{}` is not http or https",
                parsed.scheme()
            ),
            Err(e) => format!("is not usable: {e}"),
        }
    };
    Err(token_url_error(url, origin, problem))
}

impl TokenAnswer {
    /// Validates a 200 answer completely: an object whose `access_token` is a non-empty string
    /// and whose `refresh_token` and `id_token`, when present and not null, are non-empty
    /// strings. Anything else is an error: nothing of it may be stored.
    pub(crate) fn parse(body: &[u8]) -> Result<TokenAnswer, RefreshError> {
        let invalid = |what: &str| RefreshError::Transient {
            reason: TransientReason::InvalidAnswer(what.to_owned()),
        };
        let value: Value = serde_json::from_slice(body).map_err(|_| RefreshError::Transient {
            reason: TransientReason::UnparseableAnswer,
        })?;
        let Value::Object(map) = value else {
            return Err(invalid("it is not a JSON object"));
        };
        let field = |name: &'static str| -> Result<Option<Secret>, RefreshError> {
            match map.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(Secret::new(s.clone()))),
                Some(Value::String(_)) => Err(invalid(&format!("{name} is empty"))),
                Some(_) => Err(invalid(&format!("{name} is not a string"))),
            }
        };
        let access_token = field("access_token")?;
        if access_token.is_none() {
            return Err(invalid("it holds no access_token"));
        }
        Ok(TokenAnswer {
            id_token: field("id_token")?,
            access_token,
            refresh_token: field("refresh_token")?,
        })
    }
}

fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    if rest.starts_with("[::1]") {
        return true;
    }
    let host = rest.split(['/', ':']).next().unwrap_or("");
    host == "localhost" || host.starts_with("127.")
}

fn transient_from(e: &reqwest::Error) -> RefreshError {
    // A connection never made (refused, DNS, a connect timeout) carried no token; anything after
    // it may have.
    let reason = if e.is_connect() {
        TransientReason::Connect
    } else if e.is_timeout() {
        TransientReason::Timeout
    } else if e.is_decode() || e.is_body() {
        TransientReason::UnparseableAnswer
    } else {
        TransientReason::Interrupted
    };
    RefreshError::Transient { reason }
}

/// The error code of an error answer: `{"error": {"code": ..}}`, `{"error": ".."}` or
/// `{"code": ..}`, lower-cased.
pub(crate) fn error_code(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let code = match value.get("error") {
        Some(Value::Object(obj)) => obj.get("code").and_then(Value::as_str),
        Some(Value::String(s)) => Some(s.as_str()),
        _ => None,
    }
    .or_else(|| value.get("code").and_then(Value::as_str))?;
    // Server text goes into messages, the journal and event lines: only the characters an
    // error code is made of, at most 64 of them (no newline, no escape sequence, and nothing
    // long enough to carry a token).
    let code: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .take(64)
        .collect();
    (!code.is_empty()).then(|| code.to_ascii_lowercase())
}

/// The error codes a token endpoint answers with: OAuth 2.0's (RFC 6749, section 5.2, and the
/// authorization server's general ones) and the real endpoint's refresh refusals.
const OAUTH_ERROR_CODES: &[&str] = &[
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "access_denied",
    "server_error",
    "temporarily_unavailable",
    "refresh_token_expired",
    "refresh_token_reused",
    "refresh_token_invalidated",
];

/// Classifies an error answer; `None` when it is no token endpoint's answer at all: a 4xx
/// (other than 401, 408 and 429) without an OAuth error code, such as the 404 or 405 of a URL
/// that names no token endpoint, or an HTML page. That is a configuration error
/// ([`RefreshError::TokenUrl`]), never "try again later".
pub(crate) fn classify(status: u16, body: &[u8]) -> Option<RefreshError> {
    let code = error_code(body);
    let reason = match code.as_deref() {
        Some("refresh_token_expired") => PermanentReason::Expired,
        Some("refresh_token_reused") => PermanentReason::Reused,
        Some("refresh_token_invalidated") => PermanentReason::Invalidated,
        // The standard OAuth answer for a dead refresh token.
        Some("invalid_grant") if status == 400 => PermanentReason::Unauthorized { code },
        _ if status == 401 => PermanentReason::Unauthorized { code },
        // Request timeout, too many requests: the endpoint is there, try again later.
        _ if matches!(status, 408 | 429) => {
            return Some(RefreshError::Transient {
                reason: TransientReason::Status(status),
            })
        }
        Some(code) if (400..500).contains(&status) && !OAUTH_ERROR_CODES.contains(&code) => {
            return None
        }
        None if (400..500).contains(&status) => return None,
        _ => {
            return Some(RefreshError::Transient {
                reason: TransientReason::Status(status),
            })
        }
    };
    Some(RefreshError::Permanent { reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_found_in_all_three_shapes() {
        assert_eq!(
            error_code(br#"{"error":{"code":"REFRESH_TOKEN_REUSED"}}"#).as_deref(),
            Some("refresh_token_reused"),
            "nested code"
        );
        assert_eq!(
            error_code(br#"{"error":"refresh_token_expired"}"#).as_deref(),
            Some("refresh_token_expired"),
            "string error"
        );
        assert_eq!(
            error_code(br#"{"code":"refresh_token_invalidated"}"#).as_deref(),
            Some("refresh_token_invalidated"),
            "top-level code"
        );
        assert_eq!(error_code(b"<html>"), None, "garbage has no code");
    }

    #[test]
    fn classification_follows_the_reference_table() {
        assert!(
            matches!(
                classify(400, br#"{"error":"refresh_token_expired"}"#),
                Some(RefreshError::Permanent {
                    reason: PermanentReason::Expired
                })
            ),
            "expired"
        );
        assert!(
            matches!(
                classify(401, b"{}"),
                Some(RefreshError::Permanent {
                    reason: PermanentReason::Unauthorized { code: None }
                })
            ),
            "bare 401"
        );
        assert!(
            matches!(
                classify(500, b"{}"),
                Some(RefreshError::Transient {
                    reason: TransientReason::Status(500)
                })
            ),
            "500"
        );
        assert!(
            matches!(
                classify(429, br#"{"error":"slow_down"}"#),
                Some(RefreshError::Transient {
                    reason: TransientReason::Status(429)
                })
            ),
            "429"
        );
        assert!(
            is_loopback("http://127.0.0.1:9/x")
                && is_loopback("http://localhost/x")
                && !is_loopback("https://auth.openai.com/oauth/token"),
            "loopback detection"
        );
    }

    #[test]
    fn a_4xx_without_an_oauth_error_code_is_no_token_endpoints_answer() {
        for (status, body) in [
            (404, &b"<html><body>Not Found</body></html>"[..]),
            (404, br#"{"error":"not_found"}"#),
            (405, b""),
            (403, b"<html>Forbidden</html>"),
            (400, b"Bad Request"),
            (415, br#"{"message":"unsupported media type"}"#),
        ] {
            assert!(
                classify(status, body).is_none(),
                "HTTP {status} with {:?} was taken for a token endpoint's answer: {:?}",
                String::from_utf8_lossy(body),
                classify(status, body)
            );
        }
    }

    #[test]
    fn an_oauth_error_408_429_and_5xx_stay_classified_as_before() {
        for (status, body) in [
            (408, &b""[..]),
            (429, b"<html>slow down</html>"),
            (500, b"<html>oops</html>"),
            (503, b""),
            (400, br#"{"error":"invalid_request"}"#),
            (403, br#"{"error":{"code":"unauthorized_client"}}"#),
        ] {
            assert!(
                matches!(
                    classify(status, body),
                    Some(RefreshError::Transient { reason: TransientReason::Status(s) }) if s == status
                ),
                "HTTP {status} with {:?} is no longer transient: {:?}",
                String::from_utf8_lossy(body),
                classify(status, body)
            );
        }
        assert!(
            matches!(
                classify(404, br#"{"error":"refresh_token_reused"}"#),
                Some(RefreshError::Permanent {
                    reason: PermanentReason::Reused
                })
            ),
            "a refusal code is a refusal whatever the status"
        );
        assert!(
            matches!(
                classify(401, b"<html>Unauthorized</html>"),
                Some(RefreshError::Permanent { .. })
            ),
            "any 401 is permanent"
        );
    }

    #[test]
    fn a_token_url_in_an_error_is_escaped_and_its_password_hidden() {
        let message = token_url_error(
            "http://user:hunter2@127.0.0.1:9/x\u{1b}[31m",
            UrlOrigin::Configuration,
            "is not a token endpoint".into(),
        )
        .to_string();
        assert!(
            !message.contains('\u{1b}'),
            "an escape character reached the message: {message:?}"
        );
        assert!(
            !message.contains("hunter2") && message.contains("***"),
            "the URL's password is not hidden: {message:?}"
        );
        let raw = token_url_error(
            "not a url\n\u{1b}[2J",
            UrlOrigin::Environment,
            "is not usable".into(),
        )
        .to_string();
        assert!(
            !raw.contains('\n') && !raw.contains('\u{1b}') && raw.contains(TOKEN_URL_ENV),
            "an unparseable URL reached the message unescaped, or the variable is not named: \
             {raw:?}"
        );
    }
}
