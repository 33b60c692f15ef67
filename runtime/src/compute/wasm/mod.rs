//! The Wasm backend: filters, aggregates, computed columns and top-k pre-selection run inside
//! the wasmtime sandbox in the built-in kernel.
//!
//! The host compiles a bound predicate into the kernel's filter program and computed columns
//! into expression programs ([`super::program`]); anything else is `Unsupported` and placed
//! on the native backend. A query's predicate is compiled once and kept, with what it learnt
//! of each column's stored width, for the batches that follow.
//!
//! `ORDER BY key … LIMIT k` over rows, and over an aggregate's result (its groups a batch at a
//! time), pre-selects here (`nearstore_topk`, `topk=wasm`): the kernel keeps a min-heap of the
//! k best first-key values across batches in host-allocated state and returns the rows whose
//! key is at least the k-th best so far (every row of the final top k, few others); the
//! executor's sort settles ties and later keys.

pub mod call;
pub mod sandbox;

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, BooleanBufferBuilder};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use nearstore_kernel_abi::{agg, status as abi_status};
use nearstore_proto::{AggFunc, BackendKind};

use super::native::NativeBackend;
use super::program::{
    OwnedColumn, Seen, check_counts, marshal_aggregate, marshal_columns, project_array, type_code,
};
pub use super::program::{
    compile_filter, compile_project, filter_support, finish_state, fixed_width_filter_support,
};
use super::{
    AggInput, ComputeBackend, ComputeSession, KernelLimits, SKIP_ROW, SessionReport, Support,
};
use crate::error::{Error, Result};
use crate::plan::AggSpec;
use crate::plan::PhysExpr;
pub use call::KernelCall;
pub use sandbox::{
    ColumnBuffers, KernelError, KernelSession, Program, Sandbox, SandboxConfig, Stage,
};

/// The built-in kernels, compiled for wasm32 (+simd128) by the build script.
pub static BUILTIN_KERNELS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/builtin.wasm"));

impl From<KernelError> for Error {
    fn from(e: KernelError) -> Self {
        Error::Kernel(e.to_string())
    }
}

/// Sandboxed WebAssembly kernels.
#[derive(Debug, Clone)]
pub struct WasmBackend {
    sandbox: Arc<Sandbox>,
    filter: Arc<Program>,
}

impl WasmBackend {
    /// Sets up the sandbox and loads the built-in kernels.
    pub fn new(config: SandboxConfig) -> Result<Self> {
        let sandbox = Arc::new(Sandbox::new(config)?);
        let filter = sandbox.load(BUILTIN_KERNELS)?;
        Ok(WasmBackend { sandbox, filter })
    }

    /// The sandbox (for loading and running other kernels).
    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }
}

impl ComputeBackend for WasmBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Wasm
    }

    fn supports_filter(&self, predicate: &PhysExpr) -> Support {
        filter_support(predicate)
    }

    fn supports_expr(&self, expr: &PhysExpr) -> Support {
        // Computed columns (arithmetic) whose program the built-in kernel evaluates with
        // Arrow's results; plain columns and literals need no kernel.
        match expr {
            PhysExpr::Arith { .. } | PhysExpr::Cast { .. } if compile_project(expr).is_some() => {
                Support::Exact
            }
            _ => Support::Unsupported,
        }
    }

    fn supports_topk(&self, key: &DataType) -> Support {
        match type_code(key) {
            Some(_) => Support::Exact,
            None => Support::Unsupported,
        }
    }

    fn supports_aggregates(&self, aggs: &[AggSpec]) -> Support {
        let ok = aggs.iter().all(|a| match &a.input {
            // Aggregate kernels run in their own sandboxed instance, next to the built-in.
            _ if a.func == AggFunc::Kernel => false,
            None => true,
            Some(e) => matches!(
                e.data_type(),
                DataType::Int32
                    | DataType::Int64
                    | DataType::Date32
                    | DataType::Float64
                    | DataType::Decimal128(..)
            ),
        });
        if ok && !aggs.is_empty() {
            Support::Exact
        } else {
            Support::Unsupported
        }
    }

    fn open_with(&self, limits: Option<KernelLimits>) -> Result<Box<dyn ComputeSession>> {
        Ok(Box::new(self.session(limits)?))
    }
}

impl WasmBackend {
    /// A session of the built-in kernel under `limits` (the FPGA backend's fallback).
    pub(crate) fn session(&self, limits: Option<KernelLimits>) -> Result<WasmSession> {
        Ok(WasmSession {
            kernel: self.sandbox.session_with(&self.filter, limits)?,
            rows_seen: 0,
            native_reruns: 0,
            compiled: None,
        })
    }
}

/// One query's instance of the built-in kernel.
pub(crate) struct WasmSession {
    kernel: KernelSession,
    /// Rows given to the aggregate kernel (bounds every count it reports).
    rows_seen: u64,
    /// Batches re-run natively after an arithmetic error in the kernel.
    native_reruns: u64,
    /// The last predicate compiled, kept for the batches after the first.
    compiled: Option<CompiledFilter>,
}

/// A predicate compiled into the filter program, and where the columns it reads were found.
struct CompiledFilter {
    predicate: PhysExpr,
    params: Vec<u8>,
    names: Vec<String>,
    /// Per column read, its index in the last batch's schema (checked by name before use).
    at: Vec<usize>,
    /// Per column read, what the filter learnt of its values so far (see
    /// `OwnedColumn::narrowest`).
    seen: Vec<Seen>,
}

impl CompiledFilter {
    /// `predicate` compiled; what `last` (the query's previous predicate) learnt of the columns
    /// both read is kept.
    fn new(predicate: &PhysExpr, last: Option<CompiledFilter>) -> Result<Self> {
        let (params, names) = compile_filter(predicate).ok_or_else(|| {
            Error::Internal("predicate placed on a backend that cannot run it".into())
        })?;
        let seen = names
            .iter()
            .map(|n| {
                last.as_ref()
                    .and_then(|l| Some(l.seen[l.names.iter().position(|m| m == n)?]))
                    .unwrap_or_default()
            })
            .collect();
        Ok(CompiledFilter {
            predicate: predicate.clone(),
            params,
            at: vec![0; names.len()],
            names,
            seen,
        })
    }

    /// The columns the program reads, from `batch`, in the kernel ABI's layout.
    fn columns(&mut self, batch: &RecordBatch) -> Result<Vec<OwnedColumn>> {
        let schema = batch.schema_ref();
        self.names
            .iter()
            .zip(&mut self.at)
            .map(|(name, at)| {
                if schema.fields().get(*at).is_none_or(|f| f.name() != name) {
                    *at = schema.index_of(name).map_err(|_| {
                        Error::Internal(format!("column '{name}' missing from the decoded batch"))
                    })?;
                }
                Ok(OwnedColumn::of(batch.column(*at)))
            })
            .collect()
    }
}

impl ComputeSession for WasmSession {
    fn filter(&mut self, predicate: &PhysExpr, batch: &RecordBatch) -> Result<BooleanArray> {
        // Compiled once per query: the executor hands every batch the same predicate.
        let compiled = match self.compiled.take() {
            Some(c) if c.predicate.is_clone_of(predicate) => c,
            last => CompiledFilter::new(predicate, last)?,
        };
        let compiled = self.compiled.insert(compiled);
        let owned: Vec<OwnedColumn> = compiled
            .columns(batch)?
            .into_iter()
            .zip(&mut compiled.seen)
            .map(|(c, seen)| c.narrowest(seen))
            .collect();
        let params = &compiled.params;
        let views: Vec<ColumnBuffers<'_>> = owned.iter().map(OwnedColumn::view).collect();
        let rows = batch.num_rows();
        let bits = if self.kernel.has_bitmap_filter() {
            let bytes = match self.kernel.filter_bitmap(rows, &views, params) {
                Ok(b) => b,
                // Arithmetic in the predicate failed: the native evaluation reports it as
                // Arrow does.
                Err(e) if arithmetic_error(&e) => return self.rerun_filter(predicate, batch),
                Err(e) => return Err(e.into()),
            };
            arrow::buffer::BooleanBuffer::new(bytes.into(), 0, rows)
        } else {
            let idx = match self.kernel.filter(rows, &views, params) {
                Ok(idx) => idx,
                Err(e) if arithmetic_error(&e) => return self.rerun_filter(predicate, batch),
                Err(e) => return Err(e.into()),
            };
            let mut bits = BooleanBufferBuilder::new(rows);
            bits.append_n(rows, false);
            for i in idx {
                bits.set_bit(i as usize, true);
            }
            bits.finish()
        };
        if let Some(c) = &mut self.compiled {
            for (seen, width) in c.seen.iter_mut().zip(self.kernel.value_widths()) {
                seen.width = *width;
            }
        }
        Ok(BooleanArray::new(bits, None))
    }

    fn aggregate(
        &mut self,
        aggs: &[AggSpec],
        groups: Option<&[u32]>,
        n_groups: usize,
        inputs: &[Option<AggInput<'_>>],
        batch: &RecordBatch,
    ) -> Result<()> {
        let rows = batch.num_rows();
        let skipped = groups.map_or(0, |g| g.iter().filter(|&&g| g == SKIP_ROW).count());
        let (params, owned) = marshal_aggregate(aggs, inputs, batch)?;
        let group_bytes: Option<&[u8]> = groups.map(|g| {
            // SAFETY: u32 has no padding or invalid bit patterns; the byte view covers exactly
            // the slice's memory and lives as long as `g`.
            unsafe { std::slice::from_raw_parts(g.as_ptr().cast::<u8>(), std::mem::size_of_val(g)) }
        });
        let mut views = vec![ColumnBuffers::groups(group_bytes)];
        views.extend(owned.iter().map(OwnedColumn::view));
        match self
            .kernel
            .aggregate_update(rows, &views, &params, n_groups)
        {
            Ok(()) => {}
            Err(e) if skipped > 0 && arithmetic_error(&e) => {
                // A row left out may be what failed (a computed input is evaluated on every
                // row, a sum's partials add up the rows left out too): again on the kept rows.
                let groups = groups.expect("rows are left out by their group");
                let keep: BooleanArray = groups.iter().map(|&g| Some(g != SKIP_ROW)).collect();
                let kept: Vec<u32> = groups.iter().copied().filter(|&g| g != SKIP_ROW).collect();
                let inputs = inputs
                    .iter()
                    .map(|i| match i {
                        Some(AggInput::Array(a)) => {
                            Ok(Some(AggInput::Array(arrow::compute::filter(a, &keep)?)))
                        }
                        other => Ok(other.clone()),
                    })
                    .collect::<Result<Vec<_>>>()?;
                let batch = arrow::compute::filter_record_batch(batch, &keep)?;
                return self.aggregate(aggs, Some(&kept), n_groups, &inputs, &batch);
            }
            Err(e)
                if arithmetic_error(&e)
                    && inputs
                        .iter()
                        .any(|i| matches!(i, Some(AggInput::Computed(_)))) =>
            {
                // A computed input's arithmetic failed (the kernel evaluates them all before
                // folding anything, so the state is as it was), or a sum overflowed. The
                // inputs are evaluated as a projection's would be: one the kernel cannot
                // compute is re-run natively, giving Arrow's error or its answer, which is then
                // aggregated. If every input computes there, it was a sum that overflowed.
                let reruns = self.native_reruns;
                let arrays = inputs
                    .iter()
                    .map(|i| match i {
                        Some(AggInput::Computed(e)) => {
                            Ok(Some(AggInput::Array(self.evaluate(e, batch)?)))
                        }
                        other => Ok(other.clone()),
                    })
                    .collect::<Result<Vec<_>>>()?;
                if self.native_reruns == reruns {
                    return Err(sum_overflow(aggs));
                }
                return self.aggregate(aggs, groups, n_groups, &arrays, batch);
            }
            Err(KernelError::Status { status, .. }) if status == abi_status::OVERFLOW => {
                return Err(sum_overflow(aggs));
            }
            Err(e) => return Err(e.into()),
        }
        self.rows_seen += (rows - skipped) as u64;
        Ok(())
    }

    fn skips_rows(&self) -> bool {
        true
    }

    fn computes_aggregate_input(&self, expr: &PhysExpr) -> bool {
        compile_project(expr).is_some()
    }

    fn aggregate_finish(&mut self, aggs: &[AggSpec], n_groups: usize) -> Result<Vec<ArrayRef>> {
        let (state, rows_seen) = self.raw_state(aggs, n_groups)?;
        finish_state(aggs, &state, n_groups, rows_seen, self.kernel.name())
    }

    fn aggregate_state(&mut self, aggs: &[AggSpec], n_groups: usize) -> Result<(Vec<u8>, u64)> {
        let (state, rows_seen) = self.raw_state(aggs, n_groups)?;
        check_counts(&state, rows_seen, self.kernel.name())?;
        Ok((state, rows_seen))
    }

    fn topk(
        &mut self,
        key: &ArrayRef,
        descending: bool,
        nulls_first: bool,
        k: usize,
    ) -> Result<BooleanArray> {
        let col = OwnedColumn::of(key);
        let params = [u8::from(descending), u8::from(nulls_first)];
        let rows = key.len();
        let bytes = self.kernel.topk(rows, &[col.view()], &params, k)?;
        let bits = arrow::buffer::BooleanBuffer::new(bytes.into(), 0, rows);
        Ok(BooleanArray::new(bits, None))
    }

    fn evaluate(&mut self, expr: &PhysExpr, batch: &RecordBatch) -> Result<ArrayRef> {
        let Some((params, columns)) = compile_project(expr) else {
            return NativeBackend.evaluate(expr, batch);
        };
        let owned = marshal_columns(batch, &columns)?;
        let views: Vec<ColumnBuffers<'_>> = owned.iter().map(OwnedColumn::view).collect();
        let rows = batch.num_rows();
        let t = expr.data_type();
        // Results that fit 64 bits come back 8 bytes wide.
        let width: u8 = match t {
            DataType::Decimal128(p, _) if p > 18 => 16,
            _ => 8,
        };
        let params: Vec<u8> = std::iter::once(width).chain(params).collect();
        match self.kernel.project(rows, &views, &params) {
            Ok((values, validity)) => {
                project_array(&t, &values, &validity, rows).map_err(|detail| {
                    Error::from(KernelError::BadOutput {
                        kernel: self.kernel.name().to_string(),
                        detail,
                    })
                })
            }
            // A value out of its type's range or a division by zero: the native evaluation
            // reports it as Arrow does.
            Err(e) if arithmetic_error(&e) => {
                self.native_reruns += 1;
                NativeBackend.evaluate(expr, batch)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn report(&self) -> SessionReport {
        SessionReport {
            native_reruns: self.native_reruns,
            ..SessionReport::default()
        }
    }
}

impl WasmSession {
    /// The filter of a batch whose arithmetic stopped the kernel, natively (Arrow's error,
    /// or its answer).
    fn rerun_filter(&mut self, predicate: &PhysExpr, batch: &RecordBatch) -> Result<BooleanArray> {
        self.native_reruns += 1;
        NativeBackend.filter(predicate, batch)
    }
}

/// A sum the aggregate kernel could not hold (past 128 bits), named as the native
/// accumulators name it when the program has one sum (else every sum it has).
fn sum_overflow(aggs: &[AggSpec]) -> Error {
    let sums: Vec<&str> = aggs
        .iter()
        .filter(|a| matches!(a.func, AggFunc::Sum | AggFunc::Avg))
        .map(|a| a.name.as_str())
        .collect();
    Error::TypeMismatch(format!("aggregate {} overflowed", sums.join(" or ")))
}

/// Whether the built-in kernel stopped at an arithmetic error (a value out of its type's
/// range, a division by zero), which the native evaluation reports as Arrow does.
fn arithmetic_error(e: &KernelError) -> bool {
    use nearstore_kernel_abi::status;
    matches!(e, KernelError::Status { status, .. }
        if *status == status::OVERFLOW || *status == status::DIVIDE_BY_ZERO)
}

impl WasmSession {
    /// The name of the kernel the session runs.
    pub(crate) fn kernel_name(&self) -> &str {
        self.kernel.name()
    }

    /// The kernel's aggregate slots for `n_groups` groups (unchecked) and the rows it was
    /// given.
    pub(crate) fn raw_state(&self, aggs: &[AggSpec], n_groups: usize) -> Result<(Vec<u8>, u64)> {
        let state = if self.rows_seen == 0 {
            // No batch reached the kernel: every accumulator is empty.
            vec![0; n_groups * aggs.len() * agg::SLOT_BYTES]
        } else {
            self.kernel.aggregate_state(n_groups)?
        };
        Ok((state, self.rows_seen))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;

    use super::*;
    use crate::plan::Binder;

    /// A batch of `k`: 0, `bound`, `-bound` and 5.
    fn k_batch(bound: i64) -> RecordBatch {
        let k = Int64Array::from(vec![0, bound, -bound, 5]);
        RecordBatch::try_from_iter(vec![("k", Arc::new(k) as ArrayRef)]).unwrap()
    }

    /// `k < 3`, bound to [`k_batch`]'s schema.
    fn k_below_3() -> PhysExpr {
        Binder::new("t", &k_batch(1).schema())
            .bind_bool(&nearstore_proto::Expr::parse("k < 3").unwrap())
            .unwrap()
    }

    /// Filters a [`k_batch`] of each bound with `k < 3` in one session (0 and the negative
    /// bound selected every time); returns the width learnt of `k` after each batch.
    fn widths_learnt(bounds: impl IntoIterator<Item = i64>) -> Vec<u8> {
        let backend = WasmBackend::new(SandboxConfig::default()).unwrap();
        let mut s = backend.session(None).unwrap();
        let pred = k_below_3();
        bounds
            .into_iter()
            .map(|bound| {
                let selected = s.filter(&pred, &k_batch(bound)).unwrap();
                assert_eq!(selected.true_count(), 2, "0 and -{bound}");
                s.compiled.as_ref().unwrap().seen[0].width
            })
            .collect()
    }

    /// The filter stages each batch's int64 values in the fewest bytes that hold them: tried
    /// first at the width the last batch needed, learning a narrower or a wider one from the
    /// batch; a column that does not narrow is copied.
    #[test]
    fn filter_columns_are_staged_in_the_width_their_values_need() {
        let learnt = widths_learnt([100, 40_000, 100, 100, 1 << 40, 300]);
        assert_eq!(learnt, [1, 4, 1, 1, 8, 8]);
    }

    /// Values that needed their full width are looked at again 16 batches later, then 32
    /// batches after a look that found them so again.
    #[test]
    fn full_width_columns_are_looked_at_less_often_while_they_stay_so() {
        // Batch 1 needs 8 bytes; 2..=17 are wide too (17 is a look); 18..=49 narrow, but the
        // next look is batch 49.
        let learnt = widths_learnt((1..=50).map(|i| if i <= 17 { 1 << 40 } else { 100 }));
        assert!(learnt[..48].iter().all(|w| *w == 8), "{learnt:?}");
        assert_eq!(learnt[48..], [1, 1]);
    }

    /// The compiled predicate is kept while the same one (or a clone) comes, and compiled
    /// again for another; columns are found by name whatever their place in the batch.
    #[test]
    fn a_session_filters_with_the_predicate_it_is_given() {
        let backend = WasmBackend::new(SandboxConfig::default()).unwrap();
        let mut s = backend.session(None).unwrap();
        let k = Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5])) as ArrayRef;
        let j = Arc::new(Int64Array::from(vec![5, 4, 3, 2, 1])) as ArrayRef;
        let kj = RecordBatch::try_from_iter(vec![("k", k.clone()), ("j", j.clone())]).unwrap();
        let jk = RecordBatch::try_from_iter(vec![("j", j), ("k", k)]).unwrap();
        let bind = |text: &str| {
            Binder::new("t", &kj.schema())
                .bind_bool(&nearstore_proto::Expr::parse(text).unwrap())
                .unwrap()
        };
        let (lt, gt, lt_again) = (bind("k < 3"), bind("k > 3"), bind("k < 3"));
        assert!(lt.is_clone_of(&lt.clone()));
        assert!(!lt.is_clone_of(&gt));
        // Equal, but built apart: compiled again (the answer is the same).
        assert!(!lt.is_clone_of(&lt_again));
        let count = |s: &mut WasmSession, p: &PhysExpr, b: &RecordBatch| {
            s.filter(p, b).unwrap().true_count()
        };
        assert_eq!(count(&mut s, &lt, &kj), 2);
        assert_eq!(count(&mut s, &lt, &jk), 2);
        assert_eq!(count(&mut s, &gt, &jk), 2);
        assert_eq!(count(&mut s, &bind("k > 3 AND j < 2"), &kj), 1);
        assert_eq!(count(&mut s, &lt.clone(), &kj), 2);
        assert_eq!(count(&mut s, &lt_again, &jk), 2);
        let missing = RecordBatch::try_from_iter(vec![(
            "j",
            Arc::new(Int64Array::from(vec![1])) as ArrayRef,
        )])
        .unwrap();
        let err = s.filter(&lt, &missing).unwrap_err().to_string();
        assert!(err.contains("column 'k' missing"), "{err}");
    }
}
