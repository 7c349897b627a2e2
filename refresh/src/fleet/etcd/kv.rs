//! The key-value calls: a read of one key, and a transaction.

use super::wire::{CompareRequest, KeyRequest, OpRequest, RangeAnswer, TxnAnswer, TxnRequest};
use super::{Compare, Etcd, FleetError, Kv, Op, TxnResult};

impl Etcd {
    /// The key, or `None`, and etcd's revision at the time of the read.
    pub(crate) async fn get(&self, key: &str) -> Result<(Option<Kv>, i64), FleetError> {
        let answer: RangeAnswer = self.call("/v3/kv/range", &KeyRequest::new(key)).await?;
        Ok((answer.body.first(), answer.header.revision))
    }

    /// An atomic transaction: if every comparison holds, `success`, else `failure`.
    ///
    /// # Errors
    /// [`FleetError::NotEtcd`] when the answer does not hold one response per operation of the
    /// branch that ran; the errors of every call.
    pub(crate) async fn txn(
        &self,
        compare: &[Compare],
        success: &[Op],
        failure: &[Op],
    ) -> Result<TxnResult, FleetError> {
        let ops = |ops: &[Op]| ops.iter().map(OpRequest::from).collect();
        let request = TxnRequest {
            compare: compare.iter().map(CompareRequest::from).collect(),
            success: ops(success),
            failure: ops(failure),
        };
        let answer: TxnAnswer = self.call("/v3/kv/txn", &request).await?;
        // The branch etcd ran must have answered each of its operations.
        let ran = if answer.succeeded { success } else { failure };
        if answer.responses.len() != ran.len() {
            return Err(FleetError::NotEtcd {
                endpoints: self.endpoints.join(","),
                answer: format!(
                    "a transaction of {} operation(s) answered with {} response(s)",
                    ran.len(),
                    answer.responses.len()
                ),
            });
        }
        let mut result = TxnResult {
            succeeded: answer.succeeded,
            revision: answer.header.revision,
            gets: Vec::new(),
            deleted: Vec::new(),
        };
        for response in answer.responses {
            if let Some(range) = response.response_range {
                result.gets.push(range.first());
            }
            if let Some(delete) = response.response_delete_range {
                result.deleted.push(delete.deleted);
            }
        }
        Ok(result)
    }
}
