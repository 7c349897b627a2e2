//! A token request as the caller sent it: its body read within bounds, and the refresh token
//! it presents. Anything that is not a well-formed refresh request is refused here, before any
//! lookup: such a caller never gets a token.

use std::time::Duration;

use codex_store::Secret;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_LENGTH;
use hyper::Request;
use serde_json::Value;

/// Why a request is refused as `invalid_request`; the text goes to the caller.
pub(crate) type Invalid = &'static str;

/// Reads the body of `request`: at most `limit` bytes, within `timeout`.
pub(crate) async fn read_body(
    request: Request<Incoming>,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, Invalid> {
    let announced = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return Err("the request body is too large");
    }
    let body = Limited::new(request.into_body(), limit).collect();
    match tokio::time::timeout(timeout, body).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err("the request body is too large")
        }
        Ok(Err(_)) => Err("the request body could not be read"),
        Err(_) => Err("the request body did not arrive in time"),
    }
}

/// The refresh token of a refresh request's JSON body: an object whose `grant_type` is
/// `refresh_token` and whose `refresh_token` is a non-empty string. Other members
/// (`client_id`, `refresh_reason`, ...) are not looked at.
pub(crate) fn refresh_token_of(body: &[u8]) -> Result<Secret, Invalid> {
    if body.is_empty() {
        return Err("the request has no body");
    }
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(body) else {
        return Err("the request body is not a JSON object");
    };
    match request.get("grant_type") {
        Some(Value::String(grant)) if grant == "refresh_token" => {}
        Some(_) => return Err("grant_type is not refresh_token"),
        None => return Err("the request has no grant_type"),
    }
    match request.get("refresh_token") {
        Some(Value::String(token)) if !token.trim().is_empty() => Ok(Secret::new(token.clone())),
        Some(Value::String(_)) => Err("refresh_token is empty"),
        Some(_) => Err("refresh_token is not a string"),
        None => Err("the request has no refresh_token"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refresh_request_with_a_token_presents_one() {
        let good = br#"{"client_id":"app_x","grant_type":"refresh_token","refresh_token":"rt_1","refresh_reason":"forced"}"#;
        assert_eq!(
            refresh_token_of(good).map(|t| t.expose().to_owned()),
            Ok("rt_1".to_owned()),
            "Codex's request was not understood"
        );
        for (case, body) in [
            ("no body", &b""[..]),
            ("not JSON", b"refresh_token=rt_1"),
            ("not an object", br#"["rt_1"]"#),
            ("no grant_type", br#"{"refresh_token":"rt_1"}"#),
            (
                "another grant",
                br#"{"grant_type":"password","refresh_token":"rt_1"}"#,
            ),
            ("no refresh_token", br#"{"grant_type":"refresh_token"}"#),
            (
                "an empty refresh_token",
                br#"{"grant_type":"refresh_token","refresh_token":" "}"#,
            ),
            (
                "a refresh_token that is no string",
                br#"{"grant_type":"refresh_token","refresh_token":7}"#,
            ),
        ] {
            assert!(
                refresh_token_of(body).is_err(),
                "{case}: taken for a refresh request"
            );
        }
    }
}
