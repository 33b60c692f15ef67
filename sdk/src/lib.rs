//! The Nearstore host SDK: a Flight client for computational storage devices.
//!
//! ```no_run
//! # async fn demo() -> nearstore_sdk::Result<()> {
//! use nearstore_sdk::{Client, Query};
//! let mut client = Client::connect("grpc://127.0.0.1:50051").await?;
//! let plan = Query::table("lineitem")
//!     .filter("l_quantity < 24")?
//!     .select(["l_orderkey", "l_quantity"])
//!     .limit(10)
//!     .build();
//! let result = client.query(&plan).await?;
//! println!("{} rows, {} bytes moved", result.num_rows(), result.stats.bytes_sent);
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod query;
pub mod sql;

mod client;
mod error;

pub use client::{Client, ClientOptions, MESSAGE_BYTES_MAX, QueryResult, UPLOAD_CHUNK_BYTES};
pub use error::{Error, Result};
pub use nearstore_proto as proto;
pub use query::Query;
pub use sql::{DECISION_TTL, Mode, SqlResult, SqlSession};
