//! What the gateway sends: result and metadata streams, `FlightInfo`s, schemas, a
//! statement's statistics, and SDK errors as gRPC statuses.

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::sql::ProstMessageExt;
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, IpcMessage, SchemaAsIpc, Ticket};
use futures::TryStreamExt;
use nearstore_sdk::SqlResult;
use prost::Message;
use tonic::{Response, Status};

use super::service::DoGetStream;

/// A statement's statistics for the client: the mode, why, the bytes the devices sent and
/// the devices asked.
pub(super) fn statistics(r: &SqlResult, devices: usize) -> bytes::Bytes {
    serde_json::json!({
        "mode": r.mode.as_str(),
        "reason": r.reason,
        "bytes_moved": r.bytes_moved(),
        "device_scans": r.scans.len(),
        "devices": devices,
        "rows": r.num_rows(),
    })
    .to_string()
    .into()
}

/// An SDK error as the gRPC status a client sees: a bad query is `INVALID_ARGUMENT`, a wrong
/// token `UNAUTHENTICATED` (the device's own code), an unreachable device `UNAVAILABLE`.
pub(super) fn status(e: nearstore_sdk::Error) -> Status {
    use nearstore_sdk::Error;
    match e {
        Error::Device {
            status, message, ..
        } => Status::new(status, message),
        Error::InvalidArgument(m) => Status::invalid_argument(m),
        e @ Error::Transport { .. } => Status::unavailable(e.to_string()),
        e => Status::internal(e.to_string()),
    }
}

/// `batch` as a Flight stream with `schema`.
pub(super) fn stream_of(
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    metadata: Option<bytes::Bytes>,
) -> Response<DoGetStream> {
    let mut b = FlightDataEncoderBuilder::new().with_schema(schema);
    if let Some(m) = metadata {
        b = b.with_metadata(m);
    }
    let s = b
        .build(futures::stream::iter(batches.into_iter().map(Ok)))
        .map_err(Status::from);
    Response::new(Box::pin(s))
}

/// A metadata command's `FlightInfo`: its schema, and the command itself as the ticket.
pub(super) fn command_info(
    schema: &Schema,
    cmd: impl ProstMessageExt,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(cmd.as_any().encode_to_vec()));
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(format!("encoding a schema: {e}")))?
        .with_endpoint(endpoint)
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

pub(super) fn ipc_schema(schema: &Schema) -> Result<bytes::Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &Default::default())
        .try_into()
        .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
    Ok(bytes)
}

pub(super) fn built<E: std::fmt::Display>(
    b: Result<RecordBatch, E>,
) -> Result<RecordBatch, Status> {
    b.map_err(|e| Status::internal(format!("building a metadata answer: {e}")))
}

#[cfg(test)]
mod tests {
    use arrow_flight::sql::{CommandGetSqlInfo, CommandGetXdbcTypeInfo};

    use super::super::catalog::{SQL_INFO, TYPE_INFO};
    use super::*;

    #[test]
    fn sdk_errors_become_the_statuses_clients_expect() {
        let bad = status(nearstore_sdk::Error::InvalidArgument(
            "table 'nope' not found".into(),
        ));
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
        let gone = status(nearstore_sdk::Error::Transport {
            url: "grpc://x".into(),
            message: "refused".into(),
        });
        assert_eq!(gone.code(), tonic::Code::Unavailable);
    }

    #[test]
    fn the_metadata_answers_build() {
        let b = CommandGetSqlInfo { info: vec![] }.into_builder(&SQL_INFO);
        assert!(b.build().unwrap().num_rows() > 5);
        let t = CommandGetXdbcTypeInfo { data_type: None }.into_builder(&TYPE_INFO);
        assert_eq!(t.build().unwrap().num_rows(), 8);
    }
}
