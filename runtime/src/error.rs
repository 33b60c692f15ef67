//! The device runtime's error type.

use nearstore_proto::ErrorCode;

/// Errors of the device runtime. Each maps to one [`ErrorCode`] and one gRPC status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Plan names an unknown table.
    #[error("unknown table '{0}'")]
    UnknownTable(String),
    /// A range read names an object that is not part of the table.
    #[error("table '{table}' has no object '{object}'")]
    UnknownObject {
        /// The caller's table name.
        table: String,
        /// The object id asked for.
        object: String,
    },
    /// Plan names an unknown column.
    #[error("unknown column '{column}' in table '{table}' (columns: {available})")]
    UnknownColumn {
        /// Table.
        table: String,
        /// Missing column.
        column: String,
        /// Columns the table has, comma separated.
        available: String,
    },
    /// Operand types do not fit.
    #[error("type mismatch: {0}")]
    TypeMismatch(String),
    /// Malformed plan.
    #[error("malformed plan: {0}")]
    MalformedPlan(String),
    /// Bytes on the media do not match their checksum.
    #[error("corrupt object {object}: {detail}")]
    CorruptObject {
        /// Object id.
        object: String,
        /// What failed to verify.
        detail: String,
    },
    /// Upload rejected.
    #[error("invalid upload: {0}")]
    InvalidUpload(String),
    /// Table exists.
    #[error("table '{0}' already exists (use append or replace mode)")]
    TableExists(String),
    /// Unsupported request.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Storage I/O.
    #[error("I/O error {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Kernel failure.
    #[error("kernel failed: {0}")]
    Kernel(String),
    /// Arrow error during execution.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// Parquet error.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// Broken invariant or unexpected state.
    #[error("internal: {0}")]
    Internal(String),
    /// The plan calls an unknown kernel.
    #[error("unknown kernel '{0}' (see `nearstore kernel list`)")]
    UnknownKernel(String),
    /// A kernel module was refused.
    #[error("kernel refused: {0}")]
    InvalidKernel(String),
    /// The caller has too many queries running and waiting, or too many kernels registered.
    #[error("resource exhausted: {message}{}", retry_hint(*retry_after_ms))]
    ResourceExhausted {
        /// What is exhausted.
        message: String,
        /// When a retry may succeed (0: not by waiting).
        retry_after_ms: u64,
    },
    /// No valid bearer token.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller's role does not allow the call.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The device's configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Result with the runtime's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with what was being done. A full disk is the device's storage
    /// being exhausted, whatever was being written.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::StorageFull {
            return Error::ResourceExhausted {
                message: format!(
                    "the device's storage is full ({}: {source}); drop tables to free space",
                    context.into()
                ),
                retry_after_ms: 0,
            };
        }
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The wire error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::UnknownTable(_) => ErrorCode::UnknownTable,
            Error::UnknownObject { .. } => ErrorCode::UnknownObject,
            Error::UnknownColumn { .. } => ErrorCode::UnknownColumn,
            Error::TypeMismatch(_) => ErrorCode::TypeMismatch,
            Error::MalformedPlan(_) => ErrorCode::MalformedPlan,
            Error::CorruptObject { .. } => ErrorCode::CorruptObject,
            Error::InvalidUpload(_) => ErrorCode::InvalidUpload,
            Error::TableExists(_) => ErrorCode::TableExists,
            Error::Unsupported(_) => ErrorCode::Unsupported,
            Error::Io { .. } => ErrorCode::Io,
            Error::Kernel(_) => ErrorCode::KernelFailed,
            Error::UnknownKernel(_) => ErrorCode::UnknownKernel,
            Error::InvalidKernel(_) => ErrorCode::InvalidKernel,
            Error::ResourceExhausted { .. } => ErrorCode::ResourceExhausted,
            Error::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Error::PermissionDenied(_) => ErrorCode::PermissionDenied,
            Error::Arrow(_) | Error::Parquet(_) | Error::Internal(_) | Error::Config(_) => {
                ErrorCode::Internal
            }
        }
    }
}

impl From<nearstore_proto::Error> for Error {
    fn from(e: nearstore_proto::Error) -> Self {
        match e {
            nearstore_proto::Error::MalformedPlan(m) => Error::MalformedPlan(m),
            other => Error::MalformedPlan(other.to_string()),
        }
    }
}

fn retry_hint(retry_after_ms: u64) -> String {
    if retry_after_ms == 0 {
        String::new()
    } else {
        format!("; retry after {retry_after_ms} ms")
    }
}
