//! The token endpoint: the refresh request, its answer, and the classification of errors.

use std::time::Duration;

use codex_store::Secret;
use serde_json::Value;

use crate::config::{DEFAULT_TOKEN_URL, TOKEN_URL_ENV};
use crate::error::{PermanentReason, RefreshError, TransientReason};

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
    client_id: String,
}

impl TokenClient {
    /// A client for `url` with a whole-request `timeout`.
    pub(crate) fn new(url: &str, client_id: &str, timeout: Duration) -> Result<Self, RefreshError> {
        check_url(url)?;
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
            client_id: client_id.to_owned(),
        })
    }

    /// Redeems `refresh_token`. Errors are classified: permanent ones mean "sign in again",
    /// transient ones mean "nothing changed, try later".
    pub(crate) async fn refresh(
        &self,
        refresh_token: &Secret,
    ) -> Result<TokenAnswer, RefreshError> {
        let body = serde_json::json!({
            "client_id": self.client_id,
            "grant_type": "refresh_token",
            "refresh_token": refresh_token.expose(),
        });
        let response = self
            .http
            .post(&self.url)
            .json(&body)
            .send()
            .await
            .map_err(|e| transient_from(&e))?;
        let status = response.status();
        if status.is_redirection() {
            return Err(RefreshError::Transient {
                reason: TransientReason::Redirect(status.as_u16()),
            });
        }
        let bytes = read_bounded(response).await?;
        if status.is_success() {
            return TokenAnswer::parse(&bytes);
        }
        Err(classify(status.as_u16(), &bytes))
    }
}

/// Reads the body, stopping at [`MAX_ANSWER_SIZE`].
async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, RefreshError> {
    let too_large = || RefreshError::Transient {
        reason: TransientReason::InvalidAnswer(format!(
            "it is larger than {MAX_ANSWER_SIZE} bytes"
        )),
    };
    if response
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_SIZE as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| transient_from(&e))? {
        if body.len() + chunk.len() > MAX_ANSWER_SIZE {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Refuses a token URL that is not an absolute `http` or `https` URL, naming the setting.
fn check_url(url: &str) -> Result<(), RefreshError> {
    let problem = match reqwest::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => {
            return Ok(())
        }
        Ok(parsed) => format!("its scheme `{}` is not http or https", parsed.scheme()),
        Err(e) => e.to_string(),
    };
    Err(RefreshError::HttpSetup {
        message: format!(
            "the token URL {:?} (from {TOKEN_URL_ENV} or the configuration) is not usable: \
             {problem}; set it to an http(s) URL such as {DEFAULT_TOKEN_URL}",
            url.chars()
                .flat_map(char::escape_default)
                .collect::<String>()
        ),
    })
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
    let reason = if e.is_timeout() {
        TransientReason::Timeout
    } else if e.is_connect() {
        TransientReason::Connect
    } else if e.is_decode() || e.is_body() {
        TransientReason::UnparseableAnswer
    } else {
        TransientReason::Connect
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

/// Classifies an error answer.
pub(crate) fn classify(status: u16, body: &[u8]) -> RefreshError {
    let code = error_code(body);
    let reason = match code.as_deref() {
        Some("refresh_token_expired") => PermanentReason::Expired,
        Some("refresh_token_reused") => PermanentReason::Reused,
        Some("refresh_token_invalidated") => PermanentReason::Invalidated,
        // The standard OAuth answer for a dead refresh token.
        Some("invalid_grant") if status == 400 => PermanentReason::Unauthorized { code },
        _ if status == 401 => PermanentReason::Unauthorized { code },
        _ => {
            return RefreshError::Transient {
                reason: TransientReason::Status(status),
            }
        }
    };
    RefreshError::Permanent { reason }
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
                RefreshError::Permanent {
                    reason: PermanentReason::Expired
                }
            ),
            "expired"
        );
        assert!(
            matches!(
                classify(401, b"{}"),
                RefreshError::Permanent {
                    reason: PermanentReason::Unauthorized { code: None }
                }
            ),
            "bare 401"
        );
        assert!(
            matches!(
                classify(500, b"{}"),
                RefreshError::Transient {
                    reason: TransientReason::Status(500)
                }
            ),
            "500"
        );
        assert!(
            matches!(
                classify(429, br#"{"error":"slow_down"}"#),
                RefreshError::Transient {
                    reason: TransientReason::Status(429)
                }
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
}
