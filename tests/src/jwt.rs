//! JWT and auth.json fixtures.
//!
//! The tokens built here are unsigned (`alg: none`) JWTs with a fixed fake signature: nothing in
//! Codex checks signatures, only the claims (as measured of Codex 0.171.0).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// The name of the object claim that carries the ChatGPT account, plan and user ids.
pub const AUTH_CLAIM: &str = "https://api.openai.com/auth";

/// The fixed, fake signature part of every JWT built here.
pub const FAKE_SIGNATURE: &str = "sig";

/// base64url without padding (RFC 4648 section 5), as in every JWT built here.
pub fn base64url(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Builds an unsigned JWT: header `{"alg":"none","typ":"JWT"}`, the given payload, both
/// base64url-encoded without padding, and the fake signature [`FAKE_SIGNATURE`].
pub fn make_jwt(payload: &Value) -> String {
    let header = json!({"alg": "none", "typ": "JWT"});
    format!(
        "{}.{}.{}",
        base64url(header.to_string()),
        base64url(payload.to_string()),
        FAKE_SIGNATURE
    )
}

/// Builds an id token with the claim `email` and the object claim [`AUTH_CLAIM`] holding
/// `chatgpt_account_id`, `chatgpt_plan_type` and `chatgpt_user_id` (`user-<account_id>`).
pub fn id_token(email: &str, account_id: &str, plan: &str) -> String {
    make_jwt(&json!({
        "email": email,
        AUTH_CLAIM: {
            "chatgpt_account_id": account_id,
            "chatgpt_plan_type": plan,
            "chatgpt_user_id": format!("user-{account_id}"),
        },
    }))
}

/// Builds an access token expiring at `exp_unix_secs` (seconds since the epoch). `marker` goes
/// into the `jti` claim so that two tokens with the same expiry still differ.
pub fn access_token(exp_unix_secs: i64, marker: &str) -> String {
    make_jwt(&json!({"exp": exp_unix_secs, "jti": marker}))
}

/// The `exp` claim of a JWT built here (or any JWT), `None` when it has no readable one.
pub fn exp_of(jwt: &str) -> Option<i64> {
    let payload = URL_SAFE_NO_PAD.decode(jwt.split('.').nth(1)?).ok()?;
    serde_json::from_slice::<Value>(&payload)
        .ok()?
        .get("exp")?
        .as_i64()
}

/// The current time in whole seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    let (secs, _) = now_secs_micros();
    secs
}

/// A pretty-printed ChatGPT-mode auth.json document holding these tokens, with
/// `"OPENAI_API_KEY": null` and `last_refresh` set to now (RFC 3339 UTC with microseconds).
pub fn auth_json(
    access_token: &str,
    refresh_token: &str,
    id_token: &str,
    account_id: &str,
) -> String {
    let (secs, micros) = now_secs_micros();
    let doc = json!({
        "auth_mode": "chatgpt",
        "OPENAI_API_KEY": null,
        "tokens": {
            "id_token": id_token,
            "access_token": access_token,
            "refresh_token": refresh_token,
            "account_id": account_id,
        },
        "last_refresh": rfc3339_micros(secs, micros),
    });
    serde_json::to_string_pretty(&doc).expect("a JSON value always serializes")
}

/// Formats seconds since the Unix epoch as an RFC 3339 UTC timestamp without fraction,
/// e.g. `2023-11-14T22:13:20Z`.
pub fn rfc3339(secs: i64) -> String {
    let (date, time) = civil(secs);
    format!("{date}T{time}Z")
}

/// Formats seconds plus microseconds since the Unix epoch as an RFC 3339 UTC timestamp with six
/// fractional digits, e.g. `2023-11-14T22:13:20.123456Z` (the shape `last_refresh` has on disk).
pub fn rfc3339_micros(secs: i64, micros: u32) -> String {
    let (date, time) = civil(secs);
    format!("{date}T{time}.{:06}Z", micros.min(999_999))
}

/// Now as (whole seconds, microseconds) since the epoch; times before the epoch count as the epoch.
fn now_secs_micros() -> (i64, u32) {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (
        i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        since.subsec_micros(),
    )
}

/// Splits seconds since the epoch into `YYYY-MM-DD` and `hh:mm:ss` (proleptic Gregorian, UTC),
/// using Howard Hinnant's days-to-civil algorithm.
fn civil(secs: i64) -> (String, String) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (hour, minute, second) = (rem / 3600, rem % 3600 / 60, rem % 60);

    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = yoe + era * 400 + i64::from(month <= 2);

    (
        format!("{year:04}-{month:02}-{day:02}"),
        format!("{hour:02}:{minute:02}:{second:02}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload_of(jwt: &str) -> Value {
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(
            parts.len(),
            3,
            "a JWT must have three dot-separated parts: {jwt}"
        );
        let bytes = URL_SAFE_NO_PAD.decode(parts[1]).unwrap_or_else(|e| {
            panic!("the payload of {jwt} is not base64url without padding: {e}")
        });
        serde_json::from_slice(&bytes).expect("the payload of a JWT must be JSON")
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(
            rfc3339(0),
            "1970-01-01T00:00:00Z",
            "the epoch is formatted wrongly"
        );
        assert_eq!(
            rfc3339(1_700_000_000),
            "2023-11-14T22:13:20Z",
            "1.7e9 is formatted wrongly"
        );
        assert_eq!(
            rfc3339(951_782_400),
            "2000-02-29T00:00:00Z",
            "a leap day is formatted wrongly"
        );
        assert_eq!(
            rfc3339(1_795_514_400),
            "2026-11-24T10:00:00Z",
            "a 2026 instant is formatted wrongly"
        );
        assert_eq!(
            rfc3339(-1),
            "1969-12-31T23:59:59Z",
            "a second before the epoch is formatted wrongly"
        );
    }

    #[test]
    fn rfc3339_micros_always_has_six_fraction_digits() {
        assert_eq!(
            rfc3339_micros(1_700_000_000, 42),
            "2023-11-14T22:13:20.000042Z",
            "microseconds must be zero-padded to six digits"
        );
    }

    #[test]
    fn a_jwt_has_an_unsigned_header_the_payload_and_a_fake_signature() {
        let jwt = make_jwt(&json!({"a": 1}));
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3, "a JWT must have three parts: {jwt}");
        assert!(
            !jwt.contains('='),
            "base64url parts must not be padded: {jwt}"
        );
        let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap())
            .expect("the header must be JSON");
        assert_eq!(
            header,
            json!({"alg": "none", "typ": "JWT"}),
            "unexpected JWT header"
        );
        assert_eq!(
            payload_of(&jwt),
            json!({"a": 1}),
            "the payload did not round-trip"
        );
        assert_eq!(parts[2], FAKE_SIGNATURE, "unexpected signature part");
    }

    #[test]
    fn an_id_token_carries_email_account_plan_and_user() {
        let claims = payload_of(&id_token("a@example.com", "acc-1", "pro"));
        assert_eq!(
            claims["email"], "a@example.com",
            "the email claim is wrong: {claims}"
        );
        let auth = &claims[AUTH_CLAIM];
        assert_eq!(
            auth["chatgpt_account_id"], "acc-1",
            "the account id is wrong: {claims}"
        );
        assert_eq!(
            auth["chatgpt_plan_type"], "pro",
            "the plan is wrong: {claims}"
        );
        assert_eq!(
            auth["chatgpt_user_id"], "user-acc-1",
            "the user id is wrong: {claims}"
        );
    }

    #[test]
    fn access_tokens_carry_their_expiry_and_differ_by_marker() {
        let a = access_token(1_000, "one");
        let b = access_token(1_000, "two");
        assert_eq!(payload_of(&a)["exp"], 1_000, "the exp claim is wrong");
        assert_ne!(a, b, "tokens with different markers must differ");
    }

    #[test]
    fn auth_json_is_a_chatgpt_document_with_a_fresh_last_refresh() {
        let before = now_unix();
        let text = auth_json("at", "rt", "it", "acc");
        let doc: Value = serde_json::from_str(&text).expect("auth_json must produce JSON");
        assert!(
            text.contains('\n'),
            "auth_json must be pretty-printed: {text}"
        );
        assert_eq!(doc["auth_mode"], "chatgpt", "wrong auth_mode: {doc}");
        assert!(
            doc.as_object().unwrap().contains_key("OPENAI_API_KEY")
                && doc["OPENAI_API_KEY"].is_null(),
            "OPENAI_API_KEY must be present and null: {doc}"
        );
        assert_eq!(
            doc["tokens"],
            json!({"id_token": "it", "access_token": "at", "refresh_token": "rt", "account_id": "acc"}),
            "wrong tokens: {doc}"
        );
        let last = doc["last_refresh"]
            .as_str()
            .expect("last_refresh must be a string");
        let expected_prefix = &rfc3339(before)[..16]; // same minute, barring a minute boundary
        let alt_prefix = &rfc3339(before + 1)[..16];
        assert!(
            last.starts_with(expected_prefix) || last.starts_with(alt_prefix),
            "last_refresh {last} is not now ({})",
            rfc3339(before)
        );
        assert!(
            last.len() == "2026-11-24T10:00:00.123456Z".len() && last.ends_with('Z'),
            "last_refresh {last} does not have the expected shape"
        );
    }
}
