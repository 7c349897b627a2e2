//! The lease calls: grant, keep alive, time to live, revoke.

use std::time::Duration;

use super::grpc::{code_of, GrpcCode};
use super::wire::{
    GrantAnswer, GrantRequest, HeaderAnswer, KeepAliveAnswer, LeaseRequest, TimeToLiveAnswer,
};
use super::{Etcd, FleetError};

impl Etcd {
    /// A lease of `ttl` seconds; its id.
    pub(crate) async fn grant(&self, ttl: Duration) -> Result<i64, FleetError> {
        // Whole seconds, rounded up: the lease lives at least `ttl`.
        let seconds = (ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)).max(1);
        let request = GrantRequest {
            ttl: i64::try_from(seconds).unwrap_or(i64::MAX),
        };
        let answer: GrantAnswer = self.call("/v3/lease/grant", &request).await?;
        Ok(answer.id)
    }

    /// Renews the lease; its remaining TTL in seconds (0 or less: it is gone).
    pub(crate) async fn keep_alive(&self, lease: i64) -> Result<i64, FleetError> {
        let answer: KeepAliveAnswer = self
            .call("/v3/lease/keepalive", &LeaseRequest { id: lease })
            .await?;
        Ok(answer.result.ttl)
    }

    /// The lease's remaining and granted time to live in seconds (`None`: it is gone).
    pub(crate) async fn time_to_live(&self, lease: i64) -> Result<Option<(i64, i64)>, FleetError> {
        let answer: TimeToLiveAnswer = self
            .call("/v3/lease/timetolive", &LeaseRequest { id: lease })
            .await?;
        Ok((answer.ttl > 0).then_some((answer.ttl, answer.granted_ttl)))
    }

    /// Revokes the lease (deleting the keys attached to it). A lease etcd no longer has (gRPC
    /// `NotFound`) is revoked already.
    pub(crate) async fn revoke(&self, lease: i64) -> Result<(), FleetError> {
        match self
            .call::<HeaderAnswer>("/v3/kv/lease/revoke", &LeaseRequest { id: lease })
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if code_of(&e) == Some(GrpcCode::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
