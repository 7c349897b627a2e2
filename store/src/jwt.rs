//! JWT payload decoding (no signature check) and the claims the store and its users read.

use std::borrow::Cow;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;
use serde_json::{Map, Value};

/// Why a JWT could not be decoded. The message names the problem, never the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// The token is not three dot-separated parts.
    #[error("it is not a JWT (expected three parts separated by dots, found {parts})")]
    Shape {
        /// How many parts there were.
        parts: usize,
    },
    /// The payload is not base64url.
    #[error("its payload is not base64url")]
    Base64,
    /// The payload is not a JSON object.
    #[error("its payload is not a JSON object")]
    NotAnObject,
    /// A claim has the wrong JSON type.
    #[error("its claim `{claim}` has the wrong type")]
    ClaimType {
        /// The claim's name.
        claim: &'static str,
    },
}

/// Decodes the payload of a JWT into a JSON object, without checking the signature.
pub(crate) fn decode_payload(token: &str) -> Result<Map<String, Value>, JwtError> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(JwtError::Shape { parts: parts.len() });
    }
    // Some issuers pad; accept both.
    let payload = parts[1].trim_end_matches('=');
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| JwtError::Base64)?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(JwtError::NotAnObject),
    }
}

/// What the id token says about the signed-in user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IdTokenClaims {
    /// `email`, or `https://api.openai.com/profile` -> `email`.
    pub email: Option<String>,
    /// `https://api.openai.com/auth` -> `chatgpt_account_id`: the workspace.
    pub account_id: Option<String>,
    /// `https://api.openai.com/auth` -> `chatgpt_plan_type`, as written (unknown plans are kept).
    pub plan_type: Option<String>,
    /// `https://api.openai.com/auth` -> `chatgpt_user_id`, falling back to `user_id`.
    pub user_id: Option<String>,
}

const AUTH_CLAIM: &str = "https://api.openai.com/auth";
const PROFILE_CLAIM: &str = "https://api.openai.com/profile";

fn opt_str(
    map: Option<&Map<String, Value>>,
    key: &str,
    claim: &'static str,
) -> Result<Option<String>, JwtError> {
    match map.and_then(|m| m.get(key)) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(JwtError::ClaimType { claim }),
    }
}

fn opt_obj<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    claim: &'static str,
) -> Result<Option<&'a Map<String, Value>>, JwtError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(_) => Err(JwtError::ClaimType { claim }),
    }
}

/// The claims as serde reads them directly, borrowing from the payload where it can (the
/// fast path); any surprise falls back to the general decoder, which names the claim at fault.
#[derive(serde::Deserialize)]
struct TypedClaims<'a> {
    #[serde(borrow)]
    email: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "https://api.openai.com/auth")]
    auth: Option<TypedAuthClaim<'a>>,
    #[serde(borrow, rename = "https://api.openai.com/profile")]
    profile: Option<TypedProfileClaim<'a>>,
}

#[derive(serde::Deserialize)]
struct TypedAuthClaim<'a> {
    #[serde(borrow)]
    chatgpt_account_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    chatgpt_plan_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    chatgpt_user_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    user_id: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct TypedProfileClaim<'a> {
    #[serde(borrow)]
    email: Option<Cow<'a, str>>,
}

/// Decodes the payload and reads it as [`TypedClaims`], handing them to `use_claims`.
fn with_typed<T>(token: &str, use_claims: impl FnOnce(TypedClaims<'_>) -> T) -> Option<T> {
    let mut parts = token.split('.');
    let (_, payload, _, None) = (parts.next()?, parts.next()?, parts.next()?, parts.next()) else {
        return None;
    };
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let claims: TypedClaims<'_> = serde_json::from_slice(&bytes).ok()?;
    Some(use_claims(claims))
}

fn decode_typed(token: &str) -> Option<IdTokenClaims> {
    with_typed(token, |claims| {
        let owned = |c: Option<Cow<'_, str>>| c.map(Cow::into_owned);
        let (account_id, plan_type, user_id) = match claims.auth {
            Some(a) => (
                owned(a.chatgpt_account_id),
                owned(a.chatgpt_plan_type),
                owned(a.chatgpt_user_id.or(a.user_id)),
            ),
            None => (None, None, None),
        };
        IdTokenClaims {
            email: owned(
                claims
                    .email
                    .or_else(|| claims.profile.and_then(|p| p.email)),
            ),
            account_id,
            plan_type,
            user_id,
        }
    })
}

/// The id token most recently found valid in this process. Validation is a pure function of
/// the token and the same file is read again and again, so an equal token is not decoded twice.
static LAST_VALID_ID_TOKEN: Mutex<Option<Box<str>>> = Mutex::new(None);

/// Checks that an id token decodes, without keeping its claims.
pub(crate) fn validate_id_token(token: &str) -> Result<(), JwtError> {
    let mut last = LAST_VALID_ID_TOKEN
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if last.as_deref() == Some(token) {
        return Ok(());
    }
    match with_typed(token, |_| ()) {
        Some(()) => {}
        None => {
            IdTokenClaims::decode(token)?;
        }
    }
    *last = Some(token.into());
    Ok(())
}

impl IdTokenClaims {
    /// Decodes an id token's claims, without checking the signature.
    ///
    /// # Errors
    /// [`JwtError`] when the token is not a JWT, its payload is not a JSON object, or a claim
    /// read here has the wrong type. The error never contains the token.
    pub fn decode(token: &str) -> Result<Self, JwtError> {
        if let Some(claims) = decode_typed(token) {
            return Ok(claims);
        }
        let payload = decode_payload(token)?;
        let auth = opt_obj(&payload, AUTH_CLAIM, AUTH_CLAIM)?;
        let profile = opt_obj(&payload, PROFILE_CLAIM, PROFILE_CLAIM)?;
        let email = match opt_str(Some(&payload), "email", "email")? {
            Some(e) => Some(e),
            None => opt_str(profile, "email", "email")?,
        };
        let user_id = match opt_str(auth, "chatgpt_user_id", "chatgpt_user_id")? {
            Some(u) => Some(u),
            None => opt_str(auth, "user_id", "user_id")?,
        };
        Ok(IdTokenClaims {
            email,
            account_id: opt_str(auth, "chatgpt_account_id", "chatgpt_account_id")?,
            plan_type: opt_str(auth, "chatgpt_plan_type", "chatgpt_plan_type")?,
            user_id,
        })
    }
}

/// The `exp` claim of a JWT access token (for example one a host application supplies), read
/// without checking the signature: `Ok(None)` when the token carries none.
///
/// [`crate::TokenData::access_token_expiry`] reads it for the tokens of a document.
///
/// # Errors
/// [`JwtError`] when the token is not a JWT, its payload is not a JSON object, or its `exp` is
/// not a number. The error never contains the token.
pub fn token_expiry(token: &crate::Secret) -> Result<Option<SystemTime>, JwtError> {
    expiry(token.expose())
}

/// The `exp` claim of an access token: `Ok(None)` when the token carries none.
pub(crate) fn expiry(token: &str) -> Result<Option<SystemTime>, JwtError> {
    let payload = decode_payload(token)?;
    match payload.get("exp") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let secs = n
                .as_f64()
                .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e11)
                .ok_or(JwtError::ClaimType { claim: "exp" })?;
            Ok(Some(UNIX_EPOCH + Duration::from_secs_f64(secs)))
        }
        Some(_) => Err(JwtError::ClaimType { claim: "exp" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(payload))
    }

    #[test]
    fn id_token_claims_are_read_with_their_fallbacks() {
        let t = jwt(
            r#"{"https://api.openai.com/profile":{"email":"a@b.c"},"https://api.openai.com/auth":{"chatgpt_account_id":"acc","chatgpt_plan_type":"galaxy","user_id":"u1"}}"#,
        );
        let c = IdTokenClaims::decode(&t).expect("a valid id token was refused");
        assert_eq!(
            c.email.as_deref(),
            Some("a@b.c"),
            "profile email fallback not used"
        );
        assert_eq!(c.account_id.as_deref(), Some("acc"), "account id not read");
        assert_eq!(
            c.plan_type.as_deref(),
            Some("galaxy"),
            "unknown plan not kept as written"
        );
        assert_eq!(
            c.user_id.as_deref(),
            Some("u1"),
            "user_id fallback not used"
        );
    }

    #[test]
    fn malformed_tokens_are_errors_not_panics() {
        assert_eq!(
            decode_payload("abc"),
            Err(JwtError::Shape { parts: 1 }),
            "one part"
        );
        assert_eq!(
            decode_payload("a.!!!.c"),
            Err(JwtError::Base64),
            "bad base64"
        );
        assert_eq!(
            decode_payload(&jwt("[1]")),
            Err(JwtError::NotAnObject),
            "array payload"
        );
        assert_eq!(
            expiry(&jwt(r#"{"exp":"soon"}"#)),
            Err(JwtError::ClaimType { claim: "exp" }),
            "string exp"
        );
        assert_eq!(
            expiry(&jwt(r#"{"exp":-5}"#)),
            Err(JwtError::ClaimType { claim: "exp" }),
            "negative exp"
        );
        assert_eq!(expiry(&jwt("{}")), Ok(None), "missing exp must be None");
    }
}
