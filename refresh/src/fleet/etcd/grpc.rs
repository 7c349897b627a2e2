//! etcd's refusals, classified by their gRPC status code (never by their text): whether another
//! member may serve the call, whether the auth token must be renewed, or whether etcd refused.

use super::FleetError;

/// A gRPC status code, as etcd's gateway reports it (`code`, or `grpc_code` in a watch stream).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum GrpcCode {
    Ok,
    Cancelled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    /// etcd's "no leader", "leader changed", "request timed out", "server stopped".
    Unavailable,
    DataLoss,
    /// etcd's "invalid auth token" (expired or revoked).
    Unauthenticated,
    /// A number gRPC does not define (kept for the message).
    Other(i64),
}

/// gRPC's codes, in the order of their numbers (0 to 16), with their names.
const CODES: [(GrpcCode, &str); 17] = [
    (GrpcCode::Ok, "OK"),
    (GrpcCode::Cancelled, "Canceled"),
    (GrpcCode::Unknown, "Unknown"),
    (GrpcCode::InvalidArgument, "InvalidArgument"),
    (GrpcCode::DeadlineExceeded, "DeadlineExceeded"),
    (GrpcCode::NotFound, "NotFound"),
    (GrpcCode::AlreadyExists, "AlreadyExists"),
    (GrpcCode::PermissionDenied, "PermissionDenied"),
    (GrpcCode::ResourceExhausted, "ResourceExhausted"),
    (GrpcCode::FailedPrecondition, "FailedPrecondition"),
    (GrpcCode::Aborted, "Aborted"),
    (GrpcCode::OutOfRange, "OutOfRange"),
    (GrpcCode::Unimplemented, "Unimplemented"),
    (GrpcCode::Internal, "Internal"),
    (GrpcCode::Unavailable, "Unavailable"),
    (GrpcCode::DataLoss, "DataLoss"),
    (GrpcCode::Unauthenticated, "Unauthenticated"),
];

impl GrpcCode {
    /// The code numbered `number`.
    pub(super) fn from_number(number: i64) -> GrpcCode {
        usize::try_from(number)
            .ok()
            .and_then(|i| CODES.get(i))
            .map_or(GrpcCode::Other(number), |(code, _)| *code)
    }

    /// The code named `name` as Go's gRPC prints it (`PermissionDenied`); `None` for another
    /// name.
    pub(super) fn from_name(name: &str) -> Option<GrpcCode> {
        CODES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(code, _)| *code)
    }

    /// Its number.
    pub(super) fn number(self) -> i64 {
        match self {
            GrpcCode::Other(number) => number,
            known => CODES
                .iter()
                .position(|(code, _)| *code == known)
                .map_or(0, |i| i as i64),
        }
    }
}

/// What the client does about a refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Disposition {
    /// This member cannot serve the call now (no leader, cut off, stopping): ask another.
    TryAnotherMember,
    /// The auth token expired or was revoked: authenticate again, once.
    Reauthenticate,
    /// etcd refused the call: report it.
    Refused,
}

/// etcd's refusal of a call: its gRPC code and its message (etcd's text, as sent).
#[derive(Debug)]
pub(super) struct Refusal {
    pub(super) code: GrpcCode,
    pub(super) message: String,
}

impl Refusal {
    /// What to do about it, by its code alone.
    pub(super) fn disposition(&self) -> Disposition {
        match self.code {
            GrpcCode::Unavailable => Disposition::TryAnotherMember,
            GrpcCode::Unauthenticated => Disposition::Reauthenticate,
            _ => Disposition::Refused,
        }
    }

    /// A refusal of a watch in the form of its `cancel_reason`: `rpc error: code =
    /// PermissionDenied desc = etcdserver: permission denied`. A reason of another form is kept
    /// whole, as [`GrpcCode::Ok`] (no code known).
    pub(super) fn from_cancel_reason(reason: &str) -> Refusal {
        let parsed = reason
            .strip_prefix("rpc error: code = ")
            .map(|rest| rest.split_once(" desc = ").unwrap_or((rest, "")));
        match parsed {
            Some((name, desc)) => Refusal {
                code: GrpcCode::from_name(name).unwrap_or(GrpcCode::Ok),
                message: desc.to_owned(),
            },
            None => Refusal {
                code: GrpcCode::Ok,
                message: reason.to_owned(),
            },
        }
    }
}

impl From<Refusal> for FleetError {
    fn from(refusal: Refusal) -> FleetError {
        FleetError::Etcd {
            code: refusal.code.number(),
            message: refusal.message,
        }
    }
}

/// The gRPC code of `error` when it is etcd's refusal.
pub(super) fn code_of(error: &FleetError) -> Option<GrpcCode> {
    match error {
        FleetError::Etcd { code, .. } => Some(GrpcCode::from_number(*code)),
        _ => None,
    }
}

/// Whether `error` is etcd's refusal of an expired or revoked auth token.
pub(super) fn is_expired_token(error: &FleetError) -> bool {
    code_of(error) == Some(GrpcCode::Unauthenticated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(code: i64) -> Refusal {
        Refusal {
            code: GrpcCode::from_number(code),
            message: "etcdserver: something".into(),
        }
    }

    #[test]
    fn every_grpc_code_round_trips_through_its_number() {
        for number in -1..=20 {
            assert_eq!(
                GrpcCode::from_number(number).number(),
                number,
                "code {number} did not keep its number"
            );
        }
        assert_eq!(
            GrpcCode::from_number(14),
            GrpcCode::Unavailable,
            "14 is Unavailable"
        );
        assert_eq!(
            GrpcCode::from_number(99),
            GrpcCode::Other(99),
            "an unknown number is kept as such"
        );
    }

    #[test]
    fn unavailable_goes_to_another_member_unauthenticated_renews_the_token_the_rest_is_refused() {
        assert_eq!(
            refusal(14).disposition(),
            Disposition::TryAnotherMember,
            "Unavailable (no leader, timed out) must try another member"
        );
        assert_eq!(
            refusal(16).disposition(),
            Disposition::Reauthenticate,
            "Unauthenticated (invalid auth token) must authenticate again"
        );
        for code in [0, 3, 5, 7, 9, 11, 99] {
            assert_eq!(
                refusal(code).disposition(),
                Disposition::Refused,
                "code {code} must be reported as etcd's refusal"
            );
        }
    }

    #[test]
    fn a_cancel_reason_gives_its_code_by_name_and_its_description() {
        let r = Refusal::from_cancel_reason(
            "rpc error: code = PermissionDenied desc = etcdserver: permission denied",
        );
        assert_eq!(
            r.code,
            GrpcCode::PermissionDenied,
            "the code must be read by name"
        );
        assert_eq!(
            r.message, "etcdserver: permission denied",
            "the description must be kept alone"
        );
        let r = Refusal::from_cancel_reason("rpc error: code = Unauthenticated desc = x");
        let shown = FleetError::from(r).to_string();
        assert!(
            shown.contains("code 16"),
            "Unauthenticated must be reported as code 16: {shown}"
        );
        let r = Refusal::from_cancel_reason("something else");
        assert_eq!(
            (r.code, r.message.as_str()),
            (GrpcCode::Ok, "something else"),
            "a reason of another form must be kept whole, without a code"
        );
    }

    #[test]
    fn only_an_unauthenticated_refusal_is_an_expired_token() {
        let etcd = |code| FleetError::Etcd {
            code,
            message: "token".into(),
        };
        assert!(is_expired_token(&etcd(16)), "code 16 is an expired token");
        assert!(
            !is_expired_token(&etcd(3)),
            "code 3 is no expired token, whatever its text says"
        );
    }
}
