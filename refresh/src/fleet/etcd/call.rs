//! One call: the endpoints in turn, the auth token, and what each endpoint's answer came to.

use codex_store::Secret;
use reqwest::StatusCode;
use serde::Serialize;

use super::grpc::{is_expired_token, Disposition, GrpcCode, Refusal};
use super::wire::{self, Answer, AuthenticateAnswer, AuthenticateRequest, ErrorField, ErrorFields};
use super::{body_error, describe, without_url, Etcd, FleetError, MAX_ANSWER};
use crate::http_body::read_bounded;

/// What one endpoint's answer to a call came to.
pub(super) enum Reply<T> {
    /// etcd's answer.
    Answer(T),
    /// etcd refused the call.
    Refused(Refusal),
    /// This endpoint cannot serve the call (down, no leader, an HTTP error): the next may.
    Unavailable(String),
    /// What came is not etcd's (described): the next endpoint may be etcd.
    Foreign(String),
}

impl Etcd {
    /// Runs `attempt` with an auth token when credentials are configured (authenticating first
    /// when there is none), and once more after authenticating again when etcd says the token
    /// expired or was revoked.
    pub(super) async fn authenticated<T, F>(&self, attempt: impl Fn() -> F) -> Result<T, FleetError>
    where
        F: std::future::Future<Output = Result<T, FleetError>>,
    {
        let mut retried = false;
        loop {
            if self.username.is_some() && self.current_token().is_none() {
                self.authenticate().await?;
            }
            match attempt().await {
                Err(e) if !retried && self.username.is_some() && is_expired_token(&e) => {
                    // An expired or revoked auth token: authenticate again, once.
                    *self.token.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    retried = true;
                }
                other => return other,
            }
        }
    }

    /// POSTs `body` to `path` on the first endpoint that answers as etcd does (an answer `T`
    /// that passes its check); authenticates first when credentials are configured.
    pub(super) async fn call<T: Answer>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, FleetError> {
        self.authenticated(|| self.call_once(path, body)).await
    }

    /// A POST to `path` on `endpoint`, with the auth token when there is one.
    pub(super) fn post(&self, endpoint: &str, path: &str) -> reqwest::RequestBuilder {
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
        let answer: AuthenticateAnswer = self
            .call_once(
                "/v3/auth/authenticate",
                &AuthenticateRequest { name, password },
            )
            .await?;
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = Some(answer.token);
        Ok(())
    }

    /// One POST per endpoint at most, in turn, until one answers as etcd does. An answer that
    /// is not etcd's (a 200 with `{}`, an HTML page, a proxy's page) is never taken for an
    /// empty one: the next endpoint is tried, and if none answers, the error says what came.
    async fn call_once<T: Answer>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, FleetError> {
        let mut last = None;
        let mut foreign = None;
        for endpoint in &self.endpoints {
            match self.ask(endpoint, path, body).await {
                Reply::Answer(answer) => return Ok(answer),
                Reply::Refused(refusal) => return Err(refusal.into()),
                Reply::Unavailable(reason) => last = Some(format!("{endpoint}: {reason}")),
                Reply::Foreign(answer) => {
                    foreign = Some(format!("{endpoint} answered {path} with {answer}"));
                }
            }
        }
        Err(self.none_answered(foreign, last, "no endpoint"))
    }

    /// `path` on `endpoint`: etcd's answer, its refusal, or why another endpoint is asked.
    async fn ask<T: Answer>(&self, endpoint: &str, path: &str, body: &impl Serialize) -> Reply<T> {
        let response = match self.post(endpoint, path).json(body).send().await {
            Ok(response) => response,
            Err(e) => return Reply::Unavailable(without_url(&e)),
        };
        let status = response.status();
        let bytes = match read_bounded(response, MAX_ANSWER).await {
            Ok(bytes) => bytes,
            Err(e) => return Reply::Unavailable(body_error(e)),
        };
        if let Some(refusal) = refusal_of(status, &bytes) {
            return match refusal.disposition() {
                // No leader, or this member is cut off: another member may answer.
                Disposition::TryAnotherMember => Reply::Unavailable(refusal.message),
                Disposition::Reauthenticate | Disposition::Refused => Reply::Refused(refusal),
            };
        }
        if !status.is_success() {
            return Reply::Unavailable(format!("HTTP {status}"));
        }
        match wire::parse::<T>(&bytes) {
            Ok(answer) => Reply::Answer(answer),
            Err(why) => Reply::Foreign(format!("{} ({why})", describe(&bytes))),
        }
    }

    /// The error when no endpoint gave etcd's answer: [`FleetError::NotEtcd`] when one
    /// answered with something else, else [`FleetError::Unreachable`] with the last failure
    /// (`otherwise` when there was none).
    pub(super) fn none_answered(
        &self,
        foreign: Option<String>,
        last: Option<String>,
        otherwise: &str,
    ) -> FleetError {
        let endpoints = self.endpoints.join(",");
        match foreign {
            Some(answer) => FleetError::NotEtcd { endpoints, answer },
            None => FleetError::Unreachable {
                endpoints,
                reason: last.unwrap_or_else(|| otherwise.to_owned()),
            },
        }
    }
}

/// etcd's refusal in an answer: etcd 3.4 writes `{"error": text, "code": n}` whatever the HTTP
/// status, 3.6 `{"code": n, "message": text}` with an error status; a bare 401 is an invalid
/// auth token. `None` when the answer is no refusal.
fn refusal_of(status: StatusCode, bytes: &[u8]) -> Option<Refusal> {
    let fields = ErrorFields::of(bytes);
    let message = match fields.error {
        Some(ErrorField::Text(text)) => Some(text),
        Some(ErrorField::Status(_) | ErrorField::Other(_)) => None,
        None => fields.message.0.filter(|_| !status.is_success()),
    };
    match message {
        Some(message) => Some(Refusal {
            code: GrpcCode::from_number(fields.code.0.unwrap_or(0)),
            message,
        }),
        None if status == StatusCode::UNAUTHORIZED => Some(Refusal {
            code: GrpcCode::Unauthenticated,
            message: "invalid auth token".into(),
        }),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_read_from_both_gateway_shapes_and_a_bare_401() {
        let r = refusal_of(
            StatusCode::OK,
            br#"{"error":"etcdserver: no leader","code":14}"#,
        )
        .expect("etcd 3.4's refusal");
        assert_eq!(
            r.disposition(),
            Disposition::TryAnotherMember,
            "no leader must try another member"
        );
        let r = refusal_of(
            StatusCode::FORBIDDEN,
            br#"{"code":7,"message":"etcdserver: permission denied"}"#,
        )
        .expect("etcd 3.6's refusal");
        assert_eq!(
            (r.code, r.message.as_str()),
            (GrpcCode::PermissionDenied, "etcdserver: permission denied"),
            "etcd 3.6's refusal was misread"
        );
        let r = refusal_of(StatusCode::UNAUTHORIZED, b"").expect("a bare 401");
        assert_eq!(
            r.disposition(),
            Disposition::Reauthenticate,
            "a bare 401 must renew the auth token"
        );
    }

    #[test]
    fn an_answer_without_an_error_is_no_refusal() {
        for (status, body) in [
            (StatusCode::OK, &br#"{"header":{"revision":"3"}}"#[..]),
            (StatusCode::OK, br#"{"message":"hello"}"#),
            (StatusCode::OK, br#"["error"]"#),
            (StatusCode::NOT_FOUND, b"<html>"),
            (StatusCode::BAD_GATEWAY, br#"{"error":{"code":14}}"#),
        ] {
            assert!(
                refusal_of(status, body).is_none(),
                "HTTP {status} with {:?} was read as etcd's refusal",
                String::from_utf8_lossy(body)
            );
        }
    }
}
