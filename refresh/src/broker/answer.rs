//! The broker's answers, in the real token endpoint's format: 200 with the three tokens, or an
//! error body `{"error": {"code": ..., "message": ...}}` (never a token in an error).

use std::time::Duration;

use codex_store::TokenData;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde_json::{json, Map, Value};

use crate::client::{Refusal, Relayed};
use crate::error::{PermanentReason, RefreshError};

/// An answer of the broker.
pub(crate) type Answer = Response<Full<Bytes>>;

/// An answer of `status` with `body` of `content_type`, never cached (RFC 6749, 5.1).
fn answer(status: StatusCode, content_type: HeaderValue, body: impl Into<Bytes>) -> Answer {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, content_type);
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn json_answer(status: StatusCode, body: Vec<u8>) -> Answer {
    answer(status, HeaderValue::from_static("application/json"), body)
}

/// 200 with the tokens, as the endpoint answers a refresh.
pub(crate) fn tokens(tokens: &TokenData) -> Answer {
    let body = json!({
        "id_token": tokens.id_token.expose(),
        "access_token": tokens.access_token.expose(),
        "refresh_token": tokens.refresh_token.expose(),
    });
    json_answer(StatusCode::OK, body.to_string().into_bytes())
}

/// `status` with `{"error": {"code": code, "message": message}}` (no `code` when `None`).
pub(crate) fn error(status: StatusCode, code: Option<&str>, message: &str) -> Answer {
    let mut error = Map::new();
    if let Some(code) = code {
        error.insert("code".into(), Value::from(code));
    }
    error.insert("message".into(), Value::from(message));
    json_answer(status, json!({ "error": error }).to_string().into_bytes())
}

/// 400 `invalid_request`: the caller presented no refresh request.
pub(crate) fn invalid_request(why: &str) -> Answer {
    error(StatusCode::BAD_REQUEST, Some("invalid_request"), why)
}

/// 429 with `Retry-After` (whole seconds, at least 1).
pub(crate) fn too_many_requests(retry_after: Duration) -> Answer {
    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let mut response = error(
        StatusCode::TOO_MANY_REQUESTS,
        Some("rate_limit_exceeded"),
        "too many requests to the token broker; try again later",
    );
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}

/// 503: the refresh failed for now (nothing was stored); `why` says why, and holds no secret
/// (a [`RefreshError`]'s message never does).
pub(crate) fn unavailable(why: &str) -> Answer {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        Some("temporarily_unavailable"),
        why,
    )
}

/// 502: the real endpoint, to which an unknown token's request was forwarded, gave no answer.
pub(crate) fn no_upstream_answer(e: &RefreshError) -> Answer {
    error(
        StatusCode::BAD_GATEWAY,
        Some("temporarily_unavailable"),
        &format!("the token endpoint gave no answer: {e}"),
    )
}

/// The real endpoint's answer to a forwarded request: its status and body, with its content
/// type (no other header: not a `Location`, not a cookie).
pub(crate) fn relayed(relayed: Relayed) -> Answer {
    let status = StatusCode::from_u16(relayed.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = relayed
        .content_type
        .and_then(|t| HeaderValue::from_str(&t).ok())
        .unwrap_or(HeaderValue::from_static("application/json"));
    answer(status, content_type, relayed.body)
}

/// The endpoint's permanent refusal of a refresh: its own status and body when this process
/// heard it (`real`, kept when it is a JSON object), else the status it answers with for
/// `reason` (400 for `invalid_grant`, 401 otherwise) and a body carrying the same code.
pub(crate) fn refused(real: Option<Refusal>, reason: &PermanentReason) -> Answer {
    let fallback = match reason {
        PermanentReason::Unauthorized { code: Some(code) } if code == "invalid_grant" => {
            StatusCode::BAD_REQUEST
        }
        _ => StatusCode::UNAUTHORIZED,
    };
    let status = real
        .as_ref()
        .and_then(|r| StatusCode::from_u16(r.status).ok())
        .unwrap_or(fallback);
    if let Some(real) = real.filter(|r| {
        matches!(
            serde_json::from_slice::<Value>(&r.body),
            Ok(Value::Object(_))
        )
    }) {
        return json_answer(status, real.body);
    }
    let code = match reason {
        PermanentReason::Unauthorized { code: None } => None,
        reason => Some(reason.code()),
    };
    error(status, code.as_deref(), &format!("{reason}: sign in again"))
}

/// 404: the broker answers on its token path (and its health probe) only.
pub(crate) fn not_found() -> Answer {
    error(StatusCode::NOT_FOUND, Some("not_found"), "no such path")
}

/// 405: the token path takes `POST` only.
pub(crate) fn method_not_allowed() -> Answer {
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        Some("invalid_request"),
        "the token path takes POST only",
    );
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static("POST"));
    response
}

/// 200 `{"ok":true}`: the broker is there (nothing else is said).
pub(crate) fn health() -> Answer {
    json_answer(StatusCode::OK, br#"{"ok":true}"#.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON body of `answer` (a `Full` body: ready at once).
    fn body_of(answer: &Answer) -> Value {
        use http_body_util::BodyExt;
        let collected = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("no runtime for reading a body")
            .block_on(answer.body().clone().collect());
        let bytes = match collected {
            Ok(collected) => collected.to_bytes(),
            Err(never) => match never {},
        };
        serde_json::from_slice(&bytes).expect("an answer body is not JSON")
    }

    #[test]
    fn a_refusal_keeps_the_endpoints_own_status_and_json_body() {
        let real = Refusal {
            fingerprint: "f".into(),
            status: 400,
            body: br#"{"error":{"code":"refresh_token_expired","message":"old"}}"#.to_vec(),
        };
        let answer = refused(Some(real), &PermanentReason::Expired);
        assert_eq!(answer.status(), 400, "the endpoint's status was not kept");
        assert_eq!(
            body_of(&answer)["error"]["message"],
            "old",
            "the endpoint's body was not kept"
        );
    }

    #[test]
    fn a_refusal_not_heard_here_carries_its_code_with_the_endpoints_status() {
        for (reason, status, code) in [
            (PermanentReason::Reused, 401, Some("refresh_token_reused")),
            (PermanentReason::Expired, 401, Some("refresh_token_expired")),
            (
                PermanentReason::Invalidated,
                401,
                Some("refresh_token_invalidated"),
            ),
            (
                PermanentReason::Unauthorized {
                    code: Some("invalid_grant".into()),
                },
                400,
                Some("invalid_grant"),
            ),
            (PermanentReason::Unauthorized { code: None }, 401, None),
        ] {
            let answer = refused(None, &reason);
            assert_eq!(answer.status(), status, "{reason:?}: wrong status");
            let body = body_of(&answer);
            assert_eq!(
                body["error"]["code"].as_str(),
                code,
                "{reason:?}: wrong code in {body}"
            );
        }
        let html = Refusal {
            fingerprint: "f".into(),
            status: 401,
            body: b"<html>no</html>".to_vec(),
        };
        let answer = refused(Some(html), &PermanentReason::Unauthorized { code: None });
        assert_eq!(
            answer.status(),
            401,
            "the status of a non-JSON refusal was not kept"
        );
        assert!(
            body_of(&answer)["error"]["message"].is_string(),
            "a non-JSON refusal body was relayed instead of an error object"
        );
    }

    #[test]
    fn too_many_requests_says_when_to_come_back_in_whole_seconds() {
        for (wait, seconds) in [
            (Duration::from_millis(1), "1"),
            (Duration::from_millis(1500), "2"),
            (Duration::from_secs(3), "3"),
        ] {
            let answer = too_many_requests(wait);
            assert_eq!(answer.status(), 429, "not a 429");
            assert_eq!(
                answer
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok()),
                Some(seconds),
                "Retry-After for a wait of {wait:?}"
            );
        }
    }
}
