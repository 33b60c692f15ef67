//! The compute side of the drive: backends that run a query's operators next to the data.
//!
//! A [`ComputeBackend`] answers per operator whether it can run it ([`Support`], in the manner
//! of DataFusion's `supports_filters_pushdown`) and opens a [`ComputeSession`] per query, which
//! runs filters and expressions over decoded batches. The executor places each operator on the
//! query's backend when it answers [`Support::Exact`], and on the native backend otherwise
//! (documented placement policy); the placement is reported in the query statistics.
//!
//! Implementations: [`native::NativeBackend`] (trusted Rust operators over Arrow kernels; the
//! oracle and the benchmark baseline), [`wasm::WasmBackend`] (sandboxed WebAssembly kernels;
//! the default) and [`fpga::FpgaBackend`] (an emulated FPGA with a timing model, falling back
//! to Wasm on a device fault).

mod backends;
pub mod fpga;
pub(crate) mod lanes;
pub mod namespace;
pub mod native;
pub mod program;
pub mod wasm;

use std::time::Duration;

use arrow::array::{ArrayRef, BooleanArray};
use arrow::record_batch::RecordBatch;
use nearstore_proto::BackendKind;

pub use backends::{Backends, Kernel};
pub use wasm::SandboxConfig;

use crate::error::{Error, Result};
use crate::plan::{AggSpec, PhysExpr};

/// Limits on one query's use of untrusted code (a tenant's share of the sandbox): enforced by
/// the backends that run kernels, ignored by the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelLimits {
    /// Wall-clock budget of all kernel calls of the query.
    pub deadline: Duration,
    /// Wall-clock budget of any one kernel call.
    pub call_budget: Duration,
    /// Linear memory the instance may grow to.
    pub memory_bytes_max: usize,
}

/// Whether a backend can run an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Runs it with exactly the native result.
    Exact,
    /// Cannot run it; the planner places it elsewhere.
    Unsupported,
}

/// A compute backend.
pub trait ComputeBackend: Send + Sync + std::fmt::Debug {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;

    /// Whether this backend can evaluate `predicate` as a filter.
    fn supports_filter(&self, predicate: &PhysExpr) -> Support;

    /// Whether this backend can evaluate `expr` as a value expression.
    fn supports_expr(&self, expr: &PhysExpr) -> Support;

    /// Whether this backend can accumulate all of `aggs` (their inputs are evaluated by
    /// whichever backend runs expressions).
    fn supports_aggregates(&self, _aggs: &[AggSpec]) -> Support {
        Support::Unsupported
    }

    /// Whether this backend can pre-select the rows of `ORDER BY … LIMIT k` by a first sort
    /// key of type `key`.
    fn supports_topk(&self, _key: &arrow::datatypes::DataType) -> Support {
        Support::Unsupported
    }

    /// Opens the per-query context (for Wasm: a fresh instance, never shared across queries)
    /// without a tenant's kernel limits.
    fn open(&self) -> Result<Box<dyn ComputeSession>> {
        self.open_with(None)
    }

    /// Opens the per-query context under a tenant's kernel limits (backends that run no
    /// untrusted code ignore them).
    fn open_with(&self, limits: Option<KernelLimits>) -> Result<Box<dyn ComputeSession>>;
}

/// What a session reports at the end of a query.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SessionReport {
    /// Modelled device time (FPGA timing model), microseconds.
    pub modelled_us: f64,
    /// Times an operator fell back to another backend after a device fault.
    pub fallbacks: u64,
    /// Batches re-run natively after the kernel stopped at an arithmetic error (a value out
    /// of its type's range, a division by zero), so that the error is Arrow's.
    pub native_reruns: u64,
}

impl SessionReport {
    /// Adds another session's report (a parallel worker's) to this one.
    pub fn add(&mut self, other: &SessionReport) {
        self.modelled_us += other.modelled_us;
        self.fallbacks += other.fallbacks;
        self.native_reruns += other.native_reruns;
    }
}

/// A row's group that leaves the row out of [`ComputeSession::aggregate`] (the kernel ABI's
/// `agg::SKIP_ROW`).
pub const SKIP_ROW: u32 = nearstore_kernel_abi::agg::SKIP_ROW as u32;

/// An aggregate's input as [`ComputeSession::aggregate`] takes it.
#[derive(Clone)]
pub enum AggInput<'a> {
    /// Its values (a column as decoded, or an expression evaluated).
    Array(ArrayRef),
    /// An expression the session computes from the batch's columns inside the call.
    Computed(&'a PhysExpr),
}

/// One query's use of a backend.
pub trait ComputeSession: Send {
    /// Evaluates a filter: `true` keeps the row; nulls are already `false`.
    fn filter(&mut self, predicate: &PhysExpr, batch: &RecordBatch) -> Result<BooleanArray>;

    /// Evaluates a value expression, one value per row.
    fn evaluate(&mut self, expr: &PhysExpr, batch: &RecordBatch) -> Result<ArrayRef>;

    /// Accumulates one batch: `groups` gives each row's group (`None`: all in group 0;
    /// [`SKIP_ROW`] leaves a row out, where [`ComputeSession::skips_rows`] says so),
    /// `inputs[j]` the input of `aggs[j]` (`None` for count(*)), an array or an expression
    /// over `batch`'s columns (only where [`ComputeSession::computes_aggregate_input`] said
    /// so). Partial states persist across calls within the session.
    fn aggregate(
        &mut self,
        _aggs: &[AggSpec],
        _groups: Option<&[u32]>,
        _n_groups: usize,
        _inputs: &[Option<AggInput<'_>>],
        _batch: &RecordBatch,
    ) -> Result<()> {
        Err(Error::Unsupported("this backend does not aggregate".into()))
    }

    /// Whether [`ComputeSession::aggregate`] takes [`SKIP_ROW`] as a row's group: a batch
    /// handed over unfiltered, the rows the predicate rejected left out.
    fn skips_rows(&self) -> bool {
        false
    }

    /// Whether [`ComputeSession::aggregate`] takes `expr` as an input it computes from the
    /// batch inside the call ([`AggInput::Computed`]), rather than evaluated beforehand.
    fn computes_aggregate_input(&self, _expr: &PhysExpr) -> bool {
        false
    }

    /// Final values of the accumulated aggregates, one array per aggregate, `n_groups` long.
    fn aggregate_finish(&mut self, _aggs: &[AggSpec], _n_groups: usize) -> Result<Vec<ArrayRef>> {
        Err(Error::Unsupported("this backend does not aggregate".into()))
    }

    /// The accumulated aggregates as partial state, to be merged with another session's: the
    /// `n_groups × aggs` slots of `nearstore_kernel_abi::agg` (counts checked against the rows
    /// given) and the rows accumulated. What a query's parallel workers hand to the merge.
    fn aggregate_state(&mut self, _aggs: &[AggSpec], _n_groups: usize) -> Result<(Vec<u8>, u64)> {
        Err(Error::Unsupported(
            "this backend cannot hand out partial aggregates".into(),
        ))
    }

    /// The rows of a batch that may be in the query's top `k` by `key` (the first sort key of
    /// `ORDER BY … LIMIT k`): every row whose key is at least the k-th best seen so far in the
    /// query. The session keeps the best keys across batches.
    fn topk(
        &mut self,
        _key: &ArrayRef,
        _descending: bool,
        _nulls_first: bool,
        _k: usize,
    ) -> Result<BooleanArray> {
        Err(Error::Unsupported(
            "this backend does not select top-k rows".into(),
        ))
    }

    /// Device-side figures for the query statistics.
    fn report(&self) -> SessionReport {
        SessionReport::default()
    }
}
