//! The answers of the lease calls and of the authentication.

use codex_store::Secret;
use serde::Deserialize;

use super::super::adapters::{i64_string, object};
use super::{Answer, Header};

/// `/v3/lease/grant`'s answer: the lease's id (not 0) and time to live (positive).
#[derive(Debug, Deserialize)]
pub(in crate::fleet::etcd) struct GrantAnswer {
    #[serde(deserialize_with = "object")]
    header: Header,
    #[serde(rename = "ID", with = "i64_string")]
    pub(in crate::fleet::etcd) id: i64,
    #[serde(rename = "TTL", with = "i64_string")]
    ttl: i64,
}

impl Answer for GrantAnswer {
    fn check(&self) -> Result<(), String> {
        self.header.check()?;
        if self.id == 0 {
            return Err("no lease `ID`".into());
        }
        if self.ttl <= 0 {
            return Err("no lease `TTL`".into());
        }
        Ok(())
    }
}

/// `/v3/lease/keepalive`'s answer: a `result` whose `TTL` is absent once the lease is gone.
#[derive(Debug, Deserialize)]
pub(in crate::fleet::etcd) struct KeepAliveAnswer {
    #[serde(deserialize_with = "object")]
    pub(in crate::fleet::etcd) result: KeepAliveResult,
}

#[derive(Debug, Deserialize)]
pub(in crate::fleet::etcd) struct KeepAliveResult {
    #[serde(deserialize_with = "object")]
    header: Header,
    /// The remaining time to live in seconds (0: the lease is gone).
    #[serde(rename = "TTL", default, with = "i64_string")]
    pub(in crate::fleet::etcd) ttl: i64,
}

impl Answer for KeepAliveAnswer {
    fn check(&self) -> Result<(), String> {
        self.result.header.check()
    }
}

/// `/v3/lease/timetolive`'s answer: the remaining `TTL` (-1: gone) and the granted one.
#[derive(Debug, Deserialize)]
pub(in crate::fleet::etcd) struct TimeToLiveAnswer {
    #[serde(deserialize_with = "object")]
    header: Header,
    #[serde(rename = "TTL", with = "i64_string")]
    pub(in crate::fleet::etcd) ttl: i64,
    #[serde(rename = "grantedTTL", default, with = "i64_string")]
    pub(in crate::fleet::etcd) granted_ttl: i64,
}

impl Answer for TimeToLiveAnswer {
    fn check(&self) -> Result<(), String> {
        self.header.check()
    }
}

/// An answer of which only the header is read (`/v3/kv/lease/revoke`'s).
#[derive(Debug, Deserialize)]
pub(in crate::fleet::etcd) struct HeaderAnswer {
    #[serde(deserialize_with = "object")]
    header: Header,
}

impl Answer for HeaderAnswer {
    fn check(&self) -> Result<(), String> {
        self.header.check()
    }
}

/// `/v3/auth/authenticate`'s answer: a token.
#[derive(Deserialize)]
pub(in crate::fleet::etcd) struct AuthenticateAnswer {
    #[serde(deserialize_with = "object")]
    header: Header,
    pub(in crate::fleet::etcd) token: Secret,
}

impl Answer for AuthenticateAnswer {
    fn check(&self) -> Result<(), String> {
        self.header.check()?;
        if self.token.expose().is_empty() {
            return Err("no `token`".into());
        }
        Ok(())
    }
}
