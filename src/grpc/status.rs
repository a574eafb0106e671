//! The one place where the crate's errors become gRPC statuses.

use tonic::{Code as GrpcCode, Status};

use crate::error::{Code, Error};

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        let code = match error.code() {
            Code::InvalidArgument => GrpcCode::InvalidArgument,
            Code::NotFound => GrpcCode::NotFound,
            Code::Unavailable => GrpcCode::Unavailable,
            Code::ResourceExhausted => GrpcCode::ResourceExhausted,
            Code::DeadlineExceeded => GrpcCode::DeadlineExceeded,
            Code::Internal => GrpcCode::Internal,
            Code::Unimplemented => GrpcCode::Unimplemented,
            Code::FailedPrecondition => GrpcCode::FailedPrecondition,
            Code::Unauthenticated => GrpcCode::Unauthenticated,
            Code::PermissionDenied => GrpcCode::PermissionDenied,
        };
        Status::new(code, error.to_string())
    }
}
