//! Errors as gRPC statuses: each [`ErrorCode`] maps to a gRPC code, and the status carries
//! the error code in `x-nearstore-error` (and a retry hint when the device is busy).

use nearstore_proto::{ERROR_CODE_METADATA, ErrorCode};
use tonic::Status;

use crate::error::Error;

/// Converts a runtime error into a gRPC status carrying its code.
pub fn status(e: &Error) -> Status {
    let code = e.code();
    let grpc = match code {
        ErrorCode::UnknownTable | ErrorCode::UnknownObject => tonic::Code::NotFound,
        ErrorCode::UnknownColumn
        | ErrorCode::TypeMismatch
        | ErrorCode::MalformedPlan
        | ErrorCode::InvalidUpload => tonic::Code::InvalidArgument,
        ErrorCode::TableExists => tonic::Code::AlreadyExists,
        ErrorCode::UnknownKernel => tonic::Code::NotFound,
        ErrorCode::InvalidKernel => tonic::Code::InvalidArgument,
        ErrorCode::ResourceExhausted => tonic::Code::ResourceExhausted,
        ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
        ErrorCode::PermissionDenied => tonic::Code::PermissionDenied,
        ErrorCode::CorruptObject => tonic::Code::DataLoss,
        ErrorCode::Unsupported => tonic::Code::Unimplemented,
        ErrorCode::KernelFailed => tonic::Code::Aborted,
        _ => tonic::Code::Internal,
    };
    let mut s = Status::new(grpc, e.to_string());
    if let Ok(v) = code.as_str().parse() {
        s.metadata_mut().insert(ERROR_CODE_METADATA, v);
    }
    if let Error::ResourceExhausted { retry_after_ms, .. } = e
        && *retry_after_ms > 0
        && let Ok(v) = retry_after_ms.to_string().parse()
    {
        s.metadata_mut().insert("retry-after-ms", v);
    }
    s
}
