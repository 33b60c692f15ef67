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
//! computes the whole query, which is the comparison CI needs. `EXPLAIN` shows the device
//! plan of each scan.
//!
//! In offload mode the [`PushAggregates`] optimizer rule also hands the device whole aggregates
//! over a single table scan; aggregates above joins stay on the host.
//!
//! The module map: `session` holds [`SqlSession`] and `auto` its [`Mode::Auto`] policy;
//! `provider` the device table, `scan` the operator that runs device plans, `merge` the merge
//! of several devices' partial aggregates, `pushed` and `layout` a pushed plan's stand-in
//! table and its output columns; `rules` the optimizer rules, one per file; `translate` the
//! expression translation and `udf` the kernel functions.

mod auto;
mod layout;
mod merge;
mod provider;
mod pushed;
mod rules;
mod scan;
mod session;
mod translate;
mod udf;

use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::common::DataFusionError;
use nearstore_proto::{Plan, QueryStats};

use crate::{Error, Result};

pub use auto::{AUTO_BUSY_QUERIES, AUTO_SELECTIVE};
pub use provider::DeviceTable;
pub use rules::{PushAggregates, PushKernelProjections, PushTopK};
pub use scan::DeviceScanExec;
pub use session::SqlSession;
pub use translate::to_plan_expr;
pub use udf::{KernelUdaf, KernelUdf};

/// What a SQL session pushes to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Push projections, filters and limits.
    Offload,
    /// Push only the column projection; compute everything on the host.
    FullTransfer,
    /// Choose offload or full transfer per query, from what would be pushed, the Parquet
    /// statistics of the pushed filters (see [`SqlSession::decide`]) and the devices' load.
    Auto,
}

impl Mode {
    /// The spelling the CLI takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Offload => "offload",
            Mode::FullTransfer => "transfer",
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
            "auto" => Ok(Mode::Auto),
            o => Err(Error::InvalidArgument(format!(
                "unknown mode '{o}' (expected offload, transfer or auto)"
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
    /// The mode the query ran in ([`Mode::Offload`] or [`Mode::FullTransfer`]).
    pub mode: Mode,
    /// Why that mode (for [`Mode::Auto`]; otherwise "set by the session").
    pub reason: String,
}

impl SqlResult {
    /// Bytes the device sent for this query.
    pub fn bytes_moved(&self) -> u64 {
        self.scans.iter().map(|(_, s)| s.bytes_sent).sum()
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
