//! [`AuthDotJson`] and [`TokenData`]: the auth.json document, with unknown keys kept in order.

use std::fmt;

use serde_json::{Map, Value};

use crate::jwt::{self, IdTokenClaims};
use crate::secret::Secret;
use crate::timestamp::Timestamp;

/// How the credentials authenticate (`auth_mode`). Unknown values are kept as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// `"apikey"`: an `OPENAI_API_KEY`.
    ApiKey,
    /// `"chatgpt"`: ChatGPT OAuth tokens.
    Chatgpt,
    /// `"chatgptAuthTokens"`: tokens supplied by a host application (memory only).
    ChatgptAuthTokens,
    /// Any other value (`"personalAccessToken"`, `"bedrockApiKey"`, future ones).
    Other(String),
}

impl AuthMode {
    /// The value as written in the file.
    pub fn as_str(&self) -> &str {
        match self {
            AuthMode::ApiKey => "apikey",
            AuthMode::Chatgpt => "chatgpt",
            AuthMode::ChatgptAuthTokens => "chatgptAuthTokens",
            AuthMode::Other(s) => s,
        }
    }

    /// Parses a file value; never fails.
    pub fn parse(s: &str) -> Self {
        match s {
            "apikey" => AuthMode::ApiKey,
            "chatgpt" => AuthMode::Chatgpt,
            "chatgptAuthTokens" => AuthMode::ChatgptAuthTokens,
            other => AuthMode::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The order in which an object's keys stood in the file, so that a rewrite keeps it.
/// [`KeyOrder::default()`] is a new document: keys are written in the canonical order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyOrder(Option<Vec<String>>);

impl KeyOrder {
    fn of(map: &Map<String, Value>) -> Self {
        KeyOrder(Some(map.keys().cloned().collect()))
    }

    /// Whether `key` stood in the file this document was read from.
    pub fn contains(&self, key: &str) -> bool {
        self.0
            .as_ref()
            .is_some_and(|keys| keys.iter().any(|k| k == key))
    }
}

/// Shows the names of unknown keys, never their values (they may be credentials of other modes,
/// such as `personal_access_token`).
struct KeyNames<'a>(&'a Map<String, Value>);

impl fmt::Debug for KeyNames<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// The whole auth.json document.
///
/// Keys it does not know survive in `extra`, and the file's key order is kept in `key_order`, so
/// that a document read and written back unchanged is the same bytes (for files written
/// pretty-printed, as existing installations write them). Secrets are [`Secret`]s.
#[derive(Clone, Default, PartialEq)]
pub struct AuthDotJson {
    /// `auth_mode`; omitted when `None`. See [`AuthDotJson::resolved_mode`].
    pub auth_mode: Option<AuthMode>,
    /// `OPENAI_API_KEY`; written as `null` when `None`.
    pub openai_api_key: Option<Secret>,
    /// `tokens`: ChatGPT OAuth tokens.
    pub tokens: Option<TokenData>,
    /// `last_refresh`: when the tokens were last obtained. Write it together with tokens.
    pub last_refresh: Option<Timestamp>,
    /// Top-level keys this crate does not know, in file order, untouched.
    pub extra: Map<String, Value>,
    /// The order of the keys in the file this was read from.
    pub key_order: KeyOrder,
}

/// The `tokens` object.
#[derive(Clone, Default, PartialEq)]
pub struct TokenData {
    /// `id_token`: a JWT with the user's identity; it must decode (see [`TokenData::id_claims`]).
    pub id_token: Secret,
    /// `access_token`: the bearer for API calls; its `exp` drives proactive refresh.
    pub access_token: Secret,
    /// `refresh_token`: rotating; each successful refresh returns a new one.
    pub refresh_token: Secret,
    /// `account_id`: the ChatGPT workspace, the identity for "still the same account?".
    pub account_id: Option<String>,
    /// Keys of `tokens` this crate does not know, in file order, untouched.
    pub extra: Map<String, Value>,
    /// The order of the keys of `tokens` in the file.
    pub key_order: KeyOrder,
}

impl fmt::Debug for AuthDotJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthDotJson")
            .field("auth_mode", &self.auth_mode)
            .field("openai_api_key", &self.openai_api_key)
            .field("tokens", &self.tokens)
            .field("last_refresh", &self.last_refresh)
            .field("extra", &KeyNames(&self.extra))
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for TokenData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenData")
            .field("id_token", &self.id_token)
            .field("access_token", &self.access_token)
            .field("refresh_token", &self.refresh_token)
            .field("account_id", &self.account_id)
            .field("extra", &KeyNames(&self.extra))
            .finish_non_exhaustive()
    }
}

impl TokenData {
    /// The account these tokens belong to: `account_id`, else the id token's
    /// `chatgpt_account_id`; `None` when neither names one.
    pub fn account(&self) -> Option<String> {
        self.account_id
            .clone()
            .or_else(|| self.id_claims().ok().and_then(|c| c.account_id))
    }

    /// The id token's claims (email, workspace, plan, user).
    ///
    /// # Errors
    /// [`JwtError`](crate::JwtError) when the id token is not a JWT with a JSON-object payload, or
    /// a claim has the wrong type. The error never contains the token.
    pub fn id_claims(&self) -> Result<IdTokenClaims, jwt::JwtError> {
        IdTokenClaims::decode(self.id_token.expose())
    }

    /// The access token's `exp`; `Ok(None)` when it has none.
    ///
    /// # Errors
    /// [`JwtError`](crate::JwtError) when the access token is not a JWT with a JSON-object payload,
    /// or its `exp` is not a number. The error never contains the token.
    pub fn access_token_expiry(&self) -> Result<Option<std::time::SystemTime>, jwt::JwtError> {
        jwt::expiry(self.access_token.expose())
    }
}

/// Why bytes are not an auth.json document. The message names the key, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(String);

impl FormatError {
    pub(crate) fn new(reason: &str) -> Self {
        FormatError(reason.to_owned())
    }
}

/// Moves a key's value out of the parsed object (the parse is the document's only copy).
fn secret_field(map: &mut Map<String, Value>, key: &str, ctx: &str) -> Result<Secret, FormatError> {
    match map.shift_remove(key) {
        Some(Value::String(s)) => Ok(Secret::new(s)),
        None => Err(FormatError(format!("{ctx}{key} is missing"))),
        Some(_) => Err(FormatError(format!("{ctx}{key} must be a string"))),
    }
}

fn opt_string(
    map: &mut Map<String, Value>,
    key: &str,
    ctx: &str,
) -> Result<Option<String>, FormatError> {
    match map.shift_remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(FormatError(format!("{ctx}{key} must be a string or null"))),
    }
}

const TOP_KEYS: [&str; 4] = ["auth_mode", "OPENAI_API_KEY", "tokens", "last_refresh"];
const TOKEN_KEYS: [&str; 4] = ["id_token", "access_token", "refresh_token", "account_id"];

impl TokenData {
    fn from_value(value: Value) -> Result<Self, FormatError> {
        let Value::Object(mut map) = value else {
            return Err(FormatError("tokens must be an object or null".into()));
        };
        let key_order = KeyOrder::of(&map);
        let ctx = "tokens.";
        let id_token = secret_field(&mut map, "id_token", ctx)?;
        jwt::validate_id_token(id_token.expose())
            .map_err(|e| FormatError(format!("tokens.id_token cannot be decoded: {e}")))?;
        Ok(TokenData {
            id_token,
            access_token: secret_field(&mut map, "access_token", ctx)?,
            refresh_token: secret_field(&mut map, "refresh_token", ctx)?,
            account_id: opt_string(&mut map, "account_id", ctx)?,
            // What is left is what this crate does not know.
            extra: map,
            key_order,
        })
    }

    fn to_value(&self) -> Value {
        let known = |key: &str| -> Option<Value> {
            Some(match key {
                "id_token" => Value::String(self.id_token.expose().to_owned()),
                "access_token" => Value::String(self.access_token.expose().to_owned()),
                "refresh_token" => Value::String(self.refresh_token.expose().to_owned()),
                "account_id" => self.account_id.clone().map_or(Value::Null, Value::String),
                _ => return None,
            })
        };
        Value::Object(assemble(
            &TOKEN_KEYS,
            &self.key_order,
            &self.extra,
            known,
            |_| true,
        ))
    }
}

/// Builds an object: keys in file order (or `known_keys` order for a new document), then the
/// known keys the file lacked, then new unknown keys. `value_of` gives a known key's value
/// (`Value::Null` for unset); an unset key is written only if it was in the file or
/// `null_when_new` says a new document writes it.
fn assemble(
    known_keys: &[&str],
    order: &KeyOrder,
    extra: &Map<String, Value>,
    value_of: impl Fn(&str) -> Option<Value>,
    null_when_new: impl Fn(&str) -> bool,
) -> Map<String, Value> {
    let mut out = Map::new();
    let put = |out: &mut Map<String, Value>, key: &str| {
        if out.contains_key(key) {
            return;
        }
        if let Some(value) = value_of(key) {
            let keep = !value.is_null()
                || order.contains(key)
                || (order.0.is_none() && null_when_new(key));
            if keep {
                out.insert(key.to_owned(), value);
            }
        } else if let Some(value) = extra.get(key) {
            out.insert(key.to_owned(), value.clone());
        }
    };
    if let Some(keys) = &order.0 {
        for key in keys {
            put(&mut out, key);
        }
    }
    for key in known_keys {
        put(&mut out, key);
    }
    for key in extra.keys() {
        put(&mut out, key);
    }
    out
}

impl AuthDotJson {
    /// Parses a document. Every failure names the key at fault (and never a secret value).
    ///
    /// # Errors
    /// [`FormatError`] when the bytes are empty, cut off, not JSON or not an object, a known key
    /// has the wrong type, the tokens lack a key, their id token is not a JWT, or `last_refresh` is
    /// not RFC 3339. The message names the key, never a value.
    pub fn from_json(bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(FormatError("the file is empty".into()));
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            let what = if e.is_eof() {
                "is cut off"
            } else {
                "is not valid JSON"
            };
            FormatError(format!(
                "the file {what} (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        Self::from_value(value)
    }

    /// The document from a parsed JSON value, with [`AuthDotJson::from_json`]'s checks: unknown
    /// keys and the key order are kept (with `serde_json`'s `preserve_order`, which this crate
    /// enables).
    ///
    /// # Errors
    /// [`FormatError`] when `value` is not an object, a known key has the wrong type, the
    /// tokens lack a key or their id token is not a JWT; the message names the key, never a
    /// value.
    pub fn from_value(value: Value) -> Result<Self, FormatError> {
        let Value::Object(mut map) = value else {
            return Err(FormatError("the file is not a JSON object".into()));
        };
        let key_order = KeyOrder::of(&map);
        let auth_mode = opt_string(&mut map, "auth_mode", "")?.map(|m| AuthMode::parse(&m));
        let openai_api_key = opt_string(&mut map, "OPENAI_API_KEY", "")?.map(Secret::new);
        let tokens = match map.shift_remove("tokens") {
            None | Some(Value::Null) => None,
            Some(v) => Some(TokenData::from_value(v)?),
        };
        let last_refresh = opt_string(&mut map, "last_refresh", "")?
            .map(|t| Timestamp::parse(&t).map_err(|e| FormatError(format!("last_refresh: {e}"))))
            .transpose()?;
        Ok(AuthDotJson {
            auth_mode,
            openai_api_key,
            tokens,
            last_refresh,
            extra: map,
            key_order,
        })
    }

    /// The document as existing installations write it: pretty-printed JSON, no trailing newline.
    ///
    /// # Security
    /// The bytes hold the secrets in clear, as the file does.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing a map of JSON values cannot fail.
        serde_json::to_vec_pretty(&self.to_value()).unwrap_or_default()
    }

    /// The document as a JSON object, keys in the order [`AuthDotJson::to_json`] writes them
    /// (the file's order, then new keys).
    ///
    /// # Security
    /// The value holds the secrets in clear.
    pub fn to_value(&self) -> Value {
        let known = |key: &str| -> Option<Value> {
            Some(match key {
                "auth_mode" => self
                    .auth_mode
                    .as_ref()
                    .map_or(Value::Null, |m| Value::String(m.as_str().to_owned())),
                "OPENAI_API_KEY" => self
                    .openai_api_key
                    .as_ref()
                    .map_or(Value::Null, |k| Value::String(k.expose().to_owned())),
                "tokens" => self
                    .tokens
                    .as_ref()
                    .map_or(Value::Null, TokenData::to_value),
                "last_refresh" => self
                    .last_refresh
                    .as_ref()
                    .map_or(Value::Null, |t| Value::String(t.as_str().to_owned())),
                _ => return None,
            })
        };
        Value::Object(assemble(
            &TOP_KEYS,
            &self.key_order,
            &self.extra,
            known,
            |k| k != "auth_mode",
        ))
    }

    /// The mode, inferred as existing installations do when `auth_mode` is absent: a personal
    /// access token, then a Bedrock key (`bedrock_api_key`), then Bedrock access keys
    /// (`bedrock_access_keys`), then a non-null `OPENAI_API_KEY`, else ChatGPT.
    pub fn resolved_mode(&self) -> AuthMode {
        if let Some(mode) = &self.auth_mode {
            return mode.clone();
        }
        let present = |k: &str| self.extra.get(k).is_some_and(|v| !v.is_null());
        if present("personal_access_token") {
            AuthMode::Other("personalAccessToken".into())
        } else if present("bedrock_api_key") {
            AuthMode::Other("bedrockApiKey".into())
        } else if present("bedrock_access_keys") {
            AuthMode::Other("bedrockAccessKeys".into())
        } else if self.openai_api_key.is_some() {
            AuthMode::ApiKey
        } else {
            AuthMode::Chatgpt
        }
    }

    /// The names of the top-level and `tokens` keys this crate does not know (`tokens.` prefixed).
    pub fn unknown_fields(&self) -> Vec<String> {
        let mut names: Vec<String> = self.extra.keys().cloned().collect();
        if let Some(tokens) = &self.tokens {
            names.extend(tokens.extra.keys().map(|k| format!("tokens.{k}")));
        }
        names
    }
}

/// Serializes as [`AuthDotJson::to_json`] writes: the same keys, in the same order, unknown keys
/// included, secrets in clear.
///
/// This is how a login crate with its own document type uses the store: convert through
/// `serde_json::Value`, and write with [`crate::Store::compare_and_swap_as`].
///
/// ```
/// use codex_store::AuthDotJson;
/// use serde::{Deserialize, Serialize};
///
/// /// A login crate's own view of auth.json; `rest` keeps every key it does not name.
/// #[derive(Serialize, Deserialize)]
/// struct MyAuth {
///     #[serde(rename = "OPENAI_API_KEY")]
///     api_key: Option<String>,
///     #[serde(flatten)]
///     rest: serde_json::Map<String, serde_json::Value>,
/// }
///
/// let doc = AuthDotJson::from_json(br#"{"OPENAI_API_KEY": "sk-1", "mine": [1]}"#)?;
/// let mine: MyAuth = serde_json::from_value(serde_json::to_value(&doc)?)?;
/// assert_eq!(mine.api_key.as_deref(), Some("sk-1"));
/// let back: AuthDotJson = serde_json::from_value(serde_json::to_value(&mine)?)?;
/// assert_eq!(back.to_json(), doc.to_json());          // unknown keys and order kept
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Security
/// The output holds the secrets in clear (as the file does): serialize only to where the file
/// itself could go.
impl serde::Serialize for AuthDotJson {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(serializer)
    }
}

/// Deserializes with [`AuthDotJson::from_value`]'s checks (unknown keys and their order kept;
/// an id token that is not a JWT is refused). Errors name the key, never a value.
impl<'de> serde::Deserialize<'de> for AuthDotJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        AuthDotJson::from_value(value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_round_trips_like_to_json_and_from_json() {
        let text = br#"{
  "zeta": 1,
  "OPENAI_API_KEY": "sk-secret-value",
  "tokens": null,
  "alpha": {
    "nested": true
  }
}"#;
        let doc = AuthDotJson::from_json(text).expect("a valid document");
        let value = serde_json::to_value(&doc).expect("serializes");
        assert_eq!(
            serde_json::to_vec_pretty(&value).expect("JSON"),
            doc.to_json(),
            "Serialize differs from to_json"
        );
        let back: AuthDotJson = serde_json::from_value(value).expect("deserializes");
        assert_eq!(back, doc, "Deserialize differs from from_json");
        assert_eq!(back.to_json(), text.to_vec(), "order or unknown keys lost");
    }

    #[test]
    fn deserialize_applies_the_checks_and_names_no_value() {
        let bad = serde_json::json!({
            "tokens": {
                "id_token": "not-a-jwt-secret",
                "access_token": "at-secret",
                "refresh_token": "rt-secret"
            }
        });
        let err = serde_json::from_value::<AuthDotJson>(bad).expect_err("a bad id token loads");
        let message = err.to_string();
        assert!(message.contains("tokens.id_token"), "{message}");
        assert!(!message.contains("secret"), "a value leaked: {message}");
    }
}
