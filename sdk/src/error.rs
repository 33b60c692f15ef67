//! The SDK's error type: the device could not be reached, it answered with an error, or the
//! host's input was bad.

use nearstore_proto::ErrorCode;

/// Errors of the SDK: the device could not be reached, or it answered with an error.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The device could not be reached, the connection dropped, or a call timed out.
    #[error("transport error talking to {url}: {message}")]
    Transport {
        /// Device URL.
        url: String,
        /// What happened.
        message: String,
    },
    /// The device rejected the request.
    #[error("device error ({}): {message}", code.as_str())]
    Device {
        /// Machine-readable code.
        code: ErrorCode,
        /// gRPC status code.
        status: tonic::Code,
        /// The device's message.
        message: String,
    },
    /// The device answered something this SDK cannot read.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Bad input on the host side (a plan that does not parse, an unreadable file).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// Result with the SDK's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
