//! SQL over device tables with DataFusion.
//!
//! Every table of the device becomes a [`DeviceTable`] provider. In [`Mode::Offload`] the
//! provider answers `Exact` for each filter it can translate into the plan IR with the device
//! computing exactly what DataFusion would (comparisons, AND/OR/NOT, BETWEEN, IN, IS [NOT]
//! NULL, LIKE, finite literals, and the arithmetic whose results agree: floats, decimal
//! `+ - *`, integer division) and `Unsupported` for the rest, and pushes the projection, the
//! translated filters and — when DataFusion offers it — the limit into one device plan;
//! DataFusion finishes everything else on the host. In [`Mode::FullTransfer`] nothing but the
//! column projection is pushed: the device sends the referenced columns in full and the host
//! computes the whole query, which is the comparison CI needs. In [`Mode::RemoteScan`] the
//! device computes nothing: DataFusion's own Parquet reader reads the stored objects through
//! [`DeviceStore`] (byte ranges, compressed, pruned by the file's statistics), which is what a
//! host would do without offload. `EXPLAIN` shows the device plan of each scan.
//!
//! In offload mode the [`PushAggregates`] optimizer rule also hands the device whole aggregates
//! over a single table scan; aggregates above joins stay on the host.
//!
//! The module map: `session` holds [`SqlSession`], `auto` its [`Mode::Auto`] choice and
//! `cost` the cost model behind it;
//! `provider` the device table, `scan` the operator that runs device plans, `merge` the merge
//! of several devices' partial aggregates, `pushed` and `layout` a pushed plan's stand-in
//! table and its output columns; `rules` the optimizer rules, one per file; `translate` the
//! expression translation and `udf` the kernel functions; `wire` the tables and scans as
//! bytes for engines that ship plans between processes (Ballista).

mod auto;
mod cost;
mod layout;
mod merge;
mod provider;
mod pushed;
mod remote;
mod rules;
mod scan;
mod session;
mod translate;
mod udf;
pub mod wire;

use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::common::DataFusionError;
use nearstore_proto::{Plan, QueryStats};

use crate::{Error, Result};

pub use cost::{Costs, GROUPS_ASSUMED, HostSpeeds, Work, host_rates};
pub use provider::DeviceTable;
pub use remote::{DeviceStore, RemoteReads};
pub use rules::{PushAggregates, PushKernelProjections, PushTopK};
pub use scan::DeviceScanExec;
pub use session::{DECISION_TTL, SqlSession};
pub use translate::to_plan_expr;
pub use udf::{KernelUdaf, KernelUdf};

/// What a SQL session pushes to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Push projections, filters and limits.
    Offload,
    /// Push only the column projection; compute everything on the host.
    FullTransfer,
    /// Push nothing: the host's Parquet reader reads the stored objects' byte ranges itself
    /// (with its own pruning) and computes everything.
    RemoteScan,
    /// Choose offload, remote scan or full transfer per query, whichever a cost model
    /// predicts to be fastest from the devices' estimates of the plans and rates learnt from
    /// the devices' telemetry and the host's own runs (see [`SqlSession::decide`]). A query
    /// run again with the same text within [`DECISION_TTL`] reuses its decision.
    Auto,
}

impl Mode {
    /// The spelling the CLI takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Offload => "offload",
            Mode::FullTransfer => "transfer",
            Mode::RemoteScan => "remote",
            Mode::Auto => "auto",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "offload" => Ok(Mode::Offload),
            "transfer" | "full-transfer" | "full_transfer" => Ok(Mode::FullTransfer),
            "remote" | "remote-scan" | "remote_scan" => Ok(Mode::RemoteScan),
            "auto" => Ok(Mode::Auto),
            o => Err(Error::InvalidArgument(format!(
                "unknown mode '{o}' (expected offload, transfer, remote or auto)"
            ))),
        }
    }
}

/// Statistics of the device scans one SQL query ran.
pub type ScanLog = Arc<Mutex<Vec<(Plan, QueryStats)>>>;

/// The result of a SQL query.
#[derive(Debug, Clone)]
pub struct SqlResult {
    /// Result schema.
    pub schema: SchemaRef,
    /// Result batches.
    pub batches: Vec<RecordBatch>,
    /// Each device scan: the plan sent and the device's statistics.
    pub scans: Vec<(Plan, QueryStats)>,
    /// In [`Mode::RemoteScan`]: the byte ranges read from the devices.
    pub remote: RemoteReads,
    /// The mode the query ran in (never [`Mode::Auto`]: the mode Auto chose).
    pub mode: Mode,
    /// Why that mode (for [`Mode::Auto`]; otherwise "set by the session").
    pub reason: String,
}

impl SqlResult {
    /// Bytes the devices sent for this query: result streams and range reads.
    pub fn bytes_moved(&self) -> u64 {
        self.scans.iter().map(|(_, s)| s.bytes_sent).sum::<u64>() + self.remote.bytes
    }

    /// Rows in the result.
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
}

fn df_err(e: Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Unwraps a DataFusion error back into the SDK error it carries, if any.
fn sdk_err(e: DataFusionError) -> Error {
    // A remote scan's read fails inside the Parquet reader: the device's error is deep in the
    // chain (DataFusion → Parquet → object store → SDK).
    if !matches!(e, DataFusionError::External(_))
        && let Some(found) = sdk_error_in(&e)
    {
        return found;
    }
    match e {
        DataFusionError::External(inner) => match inner.downcast::<Error>() {
            Ok(e) => *e,
            Err(other) => Error::InvalidArgument(other.to_string()),
        },
        DataFusionError::Context(_, inner) => sdk_err(*inner),
        DataFusionError::Shared(shared) => Error::InvalidArgument(shared.to_string()),
        other => Error::InvalidArgument(other.to_string()),
    }
}

/// The first SDK error in `e`'s source chain.
fn sdk_error_in(e: &(dyn std::error::Error + 'static)) -> Option<Error> {
    let mut at: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = at {
        if let Some(found) = err.downcast_ref::<Error>() {
            return Some(found.clone());
        }
        at = err.source();
    }
    None
}
