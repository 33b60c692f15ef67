//! The device's Arrow Flight service.
//!
//! - `GetFlightInfo` / `GetSchema`: the descriptor command is a JSON plan (or the descriptor
//!   path names a table, meaning a full scan); the plan is bound and checked, and the answer's
//!   one endpoint carries the plan as its ticket.
//! - `DoGet`: the ticket is a JSON plan; the result streams as Arrow IPC; the last message has no
//!   data and carries the query statistics as JSON in `app_metadata`.
//! - `DoPut`: the descriptor command is a [`PutCommand`](nearstore_proto::PutCommand); Arrow batches or raw Parquet bytes.
//! - `ListFlights`: one `FlightInfo` per table. `DoAction`: see [`nearstore_proto::actions`].
//!
//! Every error becomes a gRPC status with a specific message and the [`ErrorCode`](nearstore_proto::ErrorCode) in the
//! `x-nearstore-error` metadata; a failed call never affects other calls.
//!
//! Files: `flight` (the `FlightService` impl, which delegates), `service` (the service and
//! its failure accounting), `descriptor` (which plan a call names), `query` (planning and
//! streaming results), `upload` (`DoPut`), `actions` (`DoAction`), `ranges` (`read_ranges`:
//! the stored Parquet's bytes for a host that reads it itself), `status` (errors as gRPC
//! statuses); `auth`, `qos`, `link`, `metrics` and `telemetry` (the rates the device learns
//! from its own work) serve all of them.

mod actions;
pub mod auth;
mod descriptor;
mod flight;
pub mod link;
pub mod metrics;
pub mod qos;
mod query;
mod ranges;
mod service;
mod status;
pub mod telemetry;
mod upload;

use std::pin::Pin;

use futures::Stream;
use tonic::Status;

pub use auth::{Auth, Principal};
pub use link::Link;
pub use service::DeviceService;
pub use status::status;

type BoxStream<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send + 'static>>;

/// Largest gRPC message either side accepts (tonic's default is 4 MiB).
pub const MESSAGE_BYTES_MAX: usize = 64 << 20;

/// Largest raw Parquet upload.
pub const UPLOAD_BYTES_MAX: u64 = 16 << 30;
