//! The Wasm backend: filters, aggregates, computed columns and top-k pre-selection run inside
//! the wasmtime sandbox in the built-in kernel.
//!
//! The host compiles a bound predicate into the kernel's filter program (see
//! `nearstore_kernel_abi::program`): comparisons of a column (int32, int64, float64, decimal,
//! date32, utf8, boolean) with a literal or with a column of its type, comparisons with
//! arithmetic on either side (both sides as expression programs), IN lists, IS [NOT] NULL,
//! LIKE, AND/OR/NOT and boolean constants; and computed columns into expression programs
//! (`nearstore_kernel_abi::expr`). Anything else is `Unsupported` and placed on the native
//! backend.

pub mod call;
pub mod sandbox;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, BooleanBufferBuilder, StringArray};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use nearstore_kernel_abi::{agg, program, types};
use nearstore_proto::{AggFunc, ArithOp, BackendKind, CmpOp};

use super::native::NativeBackend;
use super::{ComputeBackend, ComputeSession, KernelLimits, SessionReport, Support};
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

    fn open(&self) -> Result<Box<dyn ComputeSession>> {
        self.open_with(None)
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

/// What the built-in filter learnt of a column's values over a query's batches.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    /// Bytes per value the last batch's values needed, or were staged in when that was not
    /// looked at (0: no batch yet).
    width: u8,
    /// Batches since the values were last looked at, while they need their full width.
    since: u32,
    /// Batches between looks at values that need their full width: 16, doubling at each look
    /// that finds them so again, to 256 (0: not yet doubled).
    every: u32,
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
        inputs: &[Option<ArrayRef>],
        rows: usize,
    ) -> Result<()> {
        let (params, owned) = marshal_aggregate(aggs, inputs)?;
        let group_bytes: Option<&[u8]> = groups.map(|g| {
            // SAFETY: u32 has no padding or invalid bit patterns; the byte view covers exactly
            // the slice's memory and lives as long as `g`.
            unsafe { std::slice::from_raw_parts(g.as_ptr().cast::<u8>(), std::mem::size_of_val(g)) }
        });
        let mut views = vec![ColumnBuffers {
            type_code: if groups.is_some() { types::INT32 } else { 0 },
            scale: 0,
            values: group_bytes.unwrap_or(&[]),
            validity: None,
            offsets: None,
            stage: Stage::Copy,
        }];
        views.extend(owned.iter().map(OwnedColumn::view));
        self.kernel
            .aggregate_update(rows, &views, &params, n_groups)?;
        self.rows_seen += rows as u64;
        Ok(())
    }

    fn aggregate_finish(&mut self, aggs: &[AggSpec], n_groups: usize) -> Result<Vec<ArrayRef>> {
        let (state, rows_seen) = self.raw_state(aggs, n_groups)?;
        finish_state(aggs, &state, n_groups, rows_seen, self.kernel.name())
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

/// Whether the built-in kernel stopped at an arithmetic error (a value out of its type's
/// range, a division by zero), which the native evaluation reports as Arrow does.
fn arithmetic_error(e: &KernelError) -> bool {
    use nearstore_kernel_abi::status;
    matches!(e, KernelError::Status { status, .. }
        if *status == status::OVERFLOW || *status == status::DIVIDE_BY_ZERO)
}

/// The result array of a computed column from the kernel's values (8 bytes wide, or 16 for a
/// decimal of precision above 18) and validity words, checking that each valid value fits `t`.
fn project_array(
    t: &DataType,
    buffer: &arrow::buffer::Buffer,
    validity: &[u64],
    rows: usize,
) -> std::result::Result<ArrayRef, String> {
    use arrow::buffer::ScalarBuffer;
    let values = buffer.as_slice();
    use arrow::array::{Decimal128Array, Float64Array, Int32Array, Int64Array};
    use arrow::buffer::{BooleanBuffer, NullBuffer};
    let bytes: Vec<u8> = validity.iter().flat_map(|w| w.to_le_bytes()).collect();
    let nulls = NullBuffer::new(BooleanBuffer::new(bytes.into(), 0, rows));
    let nulls = (nulls.null_count() > 0).then_some(nulls);
    let valid = |i: usize| nulls.as_ref().is_none_or(|n| n.is_valid(i));
    let words = |w: usize| -> std::result::Result<(), String> {
        if values.len() == rows * w {
            Ok(())
        } else {
            Err(format!("{} bytes of values for {rows} rows", values.len()))
        }
    };
    let i64s = || -> Vec<i64> {
        values
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect()
    };
    Ok(match t {
        DataType::Float64 => {
            words(8)?;
            Arc::new(Float64Array::new(
                ScalarBuffer::new(buffer.clone(), 0, rows),
                nulls,
            ))
        }
        DataType::Int64 => {
            words(8)?;
            Arc::new(Int64Array::new(
                ScalarBuffer::new(buffer.clone(), 0, rows),
                nulls,
            ))
        }
        DataType::Int32 => {
            words(8)?;
            let mut out = Vec::with_capacity(rows);
            for (i, v) in i64s().into_iter().enumerate() {
                out.push(match i32::try_from(v) {
                    Ok(x) => x,
                    Err(_) if !valid(i) => 0,
                    Err(_) => return Err("a valid value does not fit int32".into()),
                });
            }
            Arc::new(Int32Array::new(out.into(), nulls))
        }
        DataType::Decimal128(p, s) => {
            let v: Vec<i128> = if *p > 18 {
                words(16)?;
                values
                    .chunks_exact(16)
                    .map(|b| i128::from_le_bytes(b.try_into().expect("16 bytes")))
                    .collect()
            } else {
                words(8)?;
                i64s().into_iter().map(i128::from).collect()
            };
            Arc::new(
                Decimal128Array::new(v.into(), nulls)
                    .with_precision_and_scale(*p, *s)
                    .map_err(|e| e.to_string())?,
            )
        }
        other => return Err(format!("no computed columns of type {other}")),
    })
}

/// Compiles a computed column into the built-in kernel's expression program (see
/// `nearstore_kernel_abi::expr`) and the columns it reads. `None` when the kernel cannot
/// compute it exactly as Arrow does: only `+ - *` over int32, int64, decimal128 and float64
/// operands of one type (the binder unifies them), `/` over all of them (decimals of any
/// scales, as Arrow divides them), literals, and decimal casts that keep every value (scale
/// and integer digits not reduced).
pub fn compile_project(e: &PhysExpr) -> Option<(Vec<u8>, Vec<String>)> {
    let mut cols = Vec::new();
    let program = expr_program(e, &mut cols)?;
    Some((program, cols))
}

/// [`compile_project`]'s program, its columns numbered in `cols` (added to it as met).
fn expr_program(e: &PhysExpr, cols: &mut Vec<String>) -> Option<Vec<u8>> {
    use nearstore_kernel_abi::expr;
    fn range(t: &DataType) -> Option<u8> {
        Some(match t {
            DataType::Int32 => expr::range::I32,
            DataType::Int64 => expr::range::I64,
            DataType::Decimal128(..) => expr::range::I128,
            DataType::Float64 => expr::range::F64,
            _ => return None,
        })
    }
    fn emit(
        e: &PhysExpr,
        cols: &mut Vec<String>,
        out: &mut Vec<u8>,
        depth: usize,
    ) -> Option<usize> {
        use arrow::array::AsArray;
        use arrow::datatypes::{Decimal128Type, Float64Type, Int32Type, Int64Type};
        Some(match e {
            PhysExpr::Column { name, data_type } => {
                range(data_type)?;
                out.push(expr::COL);
                out.extend(col_index(cols, name)?);
                depth + 1
            }
            PhysExpr::Literal(a) if !a.is_null(0) => {
                match a.data_type() {
                    DataType::Float64 => {
                        out.push(expr::FLOAT);
                        out.extend(a.as_primitive::<Float64Type>().value(0).to_le_bytes());
                    }
                    t => {
                        let v: i128 = match t {
                            DataType::Int32 => a.as_primitive::<Int32Type>().value(0).into(),
                            DataType::Int64 => a.as_primitive::<Int64Type>().value(0).into(),
                            DataType::Decimal128(..) => a.as_primitive::<Decimal128Type>().value(0),
                            _ => return None,
                        };
                        out.push(expr::INT);
                        out.extend(v.to_le_bytes());
                    }
                }
                depth + 1
            }
            PhysExpr::Cast { expr: inner, to } => {
                let (DataType::Decimal128(p1, s1), DataType::Decimal128(p2, s2)) =
                    (inner.data_type(), to)
                else {
                    return None;
                };
                let (p1, s1, p2, s2) = (p1 as i16, s1 as i16, *p2 as i16, *s2 as i16);
                if s2 < s1 || p2 - s2 < p1 - s1 {
                    return None;
                }
                let d = emit(inner, cols, out, depth)?;
                if s2 > s1 {
                    out.extend([expr::RESCALE, (s2 - s1) as u8]);
                }
                d
            }
            PhysExpr::Arith {
                op,
                left,
                right,
                data_type,
            } => {
                // Arithmetic on literals alone (Arrow computes it, and may fail, even for no
                // rows) stays native.
                if !reads_column(left) && !reads_column(right) {
                    return None;
                }
                let r = range(data_type)?;
                let (lt, rt) = (left.data_type(), right.data_type());
                // The powers of ten the dividend and the divisor are raised by first.
                let (raise_left, raise_right) = if let (
                    ArithOp::Div,
                    DataType::Decimal128(_, s1),
                    DataType::Decimal128(_, s2),
                    DataType::Decimal128(_, so),
                ) = (op, &lt, &rt, data_type)
                {
                    // A decimal quotient as Arrow computes it: at the scale of the dividend
                    // plus four, the dividend raised by 10^k (k = that scale − its own + the
                    // divisor's; the divisor instead when k < 0), then an integer division
                    // truncating toward zero.
                    let k = i16::from(*so) - i16::from(*s1) + i16::from(*s2);
                    if *so != s1.saturating_add(4).min(38) || k.unsigned_abs() > 38 {
                        return None;
                    }
                    (k.max(0) as u8, (-k).max(0) as u8)
                } else {
                    // Operands of one type; for decimals, + and - keep the scale and * adds
                    // them, as the plain integer operations on unscaled values do.
                    let same = lt == rt && range(&lt) == Some(r);
                    let scales_ok = match (op, &lt, data_type) {
                        (_, DataType::Decimal128(..), DataType::Decimal128(_, so)) => {
                            let DataType::Decimal128(_, si) = lt else {
                                return None;
                            };
                            match op {
                                ArithOp::Add | ArithOp::Sub => *so == si,
                                ArithOp::Mul => *so == si * 2,
                                ArithOp::Div => false,
                            }
                        }
                        _ => true,
                    };
                    if !same || !scales_ok {
                        return None;
                    }
                    (0, 0)
                };
                let code = match op {
                    ArithOp::Add => expr::ADD,
                    ArithOp::Sub => expr::SUB,
                    ArithOp::Mul => expr::MUL,
                    ArithOp::Div => expr::DIV,
                };
                let d = emit(left, cols, out, depth)?;
                if raise_left > 0 {
                    out.extend([expr::RESCALE, raise_left]);
                }
                let d = emit(right, cols, out, d)?;
                if raise_right > 0 {
                    out.extend([expr::RESCALE, raise_right]);
                }
                if d > expr::STACK_MAX {
                    return None;
                }
                out.extend([code, r]);
                d - 1
            }
            _ => return None,
        })
    }
    let mut out = Vec::new();
    let depth = emit(e, cols, &mut out, 0)?;
    (depth == 1 && depth <= expr::STACK_MAX).then_some(out)
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

/// The aggregate program (see `nearstore_kernel_abi::agg`) for `aggs` and their input columns
/// in the kernel ABI's layout (column 0 is left for the groups).
pub(crate) fn marshal_aggregate(
    aggs: &[AggSpec],
    inputs: &[Option<ArrayRef>],
) -> Result<(Vec<u8>, Vec<OwnedColumn>)> {
    let mut params = Vec::with_capacity(aggs.len() * 4);
    let mut owned = Vec::new();
    for (a, input) in aggs.iter().zip(inputs) {
        let func = match a.func {
            AggFunc::CountStar => agg::COUNT_STAR,
            AggFunc::Count => agg::COUNT,
            AggFunc::Sum | AggFunc::Avg => agg::SUM,
            AggFunc::Min => agg::MIN,
            AggFunc::Max => agg::MAX,
            AggFunc::Kernel => {
                return Err(Error::Internal(
                    "aggregate kernels do not run in the built-in kernel".into(),
                ));
            }
        };
        let col = match input {
            Some(arr) => {
                owned.push(OwnedColumn::of(arr));
                owned.len() as u16
            }
            None => agg::NO_COLUMN,
        };
        params.push(func);
        params.extend(col.to_le_bytes());
        params.push(0);
    }
    Ok((params, owned))
}

/// Checks that every count in a kernel's aggregate slots lies within the `rows` it was given.
pub(crate) fn check_counts(state: &[u8], rows: u64, kernel: &str) -> Result<()> {
    for slot in state.chunks_exact(agg::SLOT_BYTES) {
        let count = i64::from_le_bytes(slot[16..24].try_into().expect("8 bytes"));
        if count < 0 || count as u64 > rows {
            return Err(Error::from(KernelError::BadOutput {
                kernel: kernel.to_string(),
                detail: format!("count {count} exceeds the {rows} rows given"),
            }));
        }
    }
    Ok(())
}

/// Adds the aggregate slots `src` into `dst` (both `groups × aggs` slots): counts and sums add
/// up (float sums as floats), minima and maxima keep the better of the two.
pub(crate) fn merge_state(aggs: &[AggSpec], dst: &mut [u8], src: &[u8]) -> Result<()> {
    let naggs = aggs.len();
    if dst.len() != src.len() || naggs == 0 || !dst.len().is_multiple_of(naggs * agg::SLOT_BYTES) {
        return Err(Error::Internal(
            "aggregate states of different shapes".into(),
        ));
    }
    let float: Vec<bool> = aggs
        .iter()
        .map(|a| a.input.as_ref().map(PhysExpr::data_type) == Some(DataType::Float64))
        .collect();
    for (i, (d, s)) in dst
        .chunks_exact_mut(agg::SLOT_BYTES)
        .zip(src.chunks_exact(agg::SLOT_BYTES))
        .enumerate()
    {
        let a = &aggs[i % naggs];
        let read = |b: &[u8]| {
            (
                i128::from_le_bytes(b[..16].try_into().expect("16 bytes")),
                i64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
            )
        };
        let ((da, dc), (sa, sc)) = (read(d), read(s));
        if dc < 0 || sc < 0 {
            return Err(Error::Internal(format!(
                "aggregate {} has a negative count to merge",
                a.name
            )));
        }
        if sc == 0 {
            continue;
        }
        let count = dc
            .checked_add(sc)
            .ok_or_else(|| Error::Internal(format!("aggregate {} count overflowed", a.name)))?;
        let acc = match a.func {
            AggFunc::Sum | AggFunc::Avg if float[i % naggs] => {
                let sum = f64::from_bits(da as u64) + f64::from_bits(sa as u64);
                sum.to_bits() as i128
            }
            AggFunc::Sum | AggFunc::Avg => da
                .checked_add(sa)
                .ok_or_else(|| Error::TypeMismatch(format!("aggregate {} overflowed", a.name)))?,
            AggFunc::Min if dc == 0 || sa < da => sa,
            AggFunc::Max if dc == 0 || sa > da => sa,
            _ => da,
        };
        d[..16].copy_from_slice(&acc.to_le_bytes());
        d[16..24].copy_from_slice(&count.to_le_bytes());
    }
    Ok(())
}

/// Turns a kernel's aggregate state into result arrays, checking what can be checked: every
/// count lies within the rows given to the kernel, and sums fit their result types.
pub fn finish_state(
    aggs: &[AggSpec],
    state: &[u8],
    n_groups: usize,
    rows_seen: u64,
    kernel: &str,
) -> Result<Vec<ArrayRef>> {
    use arrow::array::{Date32Array, Decimal128Array, Float64Array, Int32Array, Int64Array};
    let bad = |detail: String| {
        Error::from(KernelError::BadOutput {
            kernel: kernel.to_string(),
            detail,
        })
    };
    let naggs = aggs.len();
    if state.len() != n_groups * naggs * agg::SLOT_BYTES {
        return Err(bad("aggregate state has the wrong size".into()));
    }
    let slot = |g: usize, j: usize| -> (i128, i64) {
        let at = (g * naggs + j) * agg::SLOT_BYTES;
        let acc = i128::from_le_bytes(state[at..at + 16].try_into().expect("16 bytes"));
        let count = i64::from_le_bytes(state[at + 16..at + 24].try_into().expect("8 bytes"));
        (acc, count)
    };
    let f64_of = |acc: i128| f64::from_bits(acc as u64);
    let key_to_f64 = |k: i128| {
        let k = k as i64;
        f64::from_bits((k ^ ((((k >> 63) as u64) >> 1) as i64)) as u64)
    };
    let mut out = Vec::with_capacity(naggs);
    for (j, a) in aggs.iter().enumerate() {
        let mut accs = Vec::with_capacity(n_groups);
        for g in 0..n_groups {
            let (acc, count) = slot(g, j);
            if count < 0 || count as u64 > rows_seen {
                return Err(bad(format!(
                    "count {count} for {} exceeds the {rows_seen} rows given",
                    a.name
                )));
            }
            accs.push((acc, count));
        }
        let out_type = a.output_type()?;
        let in_type = a.input.as_ref().map(PhysExpr::data_type);
        let present = |c: i64| c > 0;
        let arr: ArrayRef = match (a.func, in_type.as_ref()) {
            (AggFunc::CountStar | AggFunc::Count, _) => Arc::new(Int64Array::from(
                accs.iter().map(|(_, c)| *c).collect::<Vec<_>>(),
            )),
            (AggFunc::Avg, Some(DataType::Float64)) => Arc::new(
                accs.iter()
                    .map(|(s, c)| present(*c).then(|| f64_of(*s) / *c as f64))
                    .collect::<Float64Array>(),
            ),
            (AggFunc::Avg, Some(t)) => {
                let scale = if let DataType::Decimal128(_, s) = t {
                    *s
                } else {
                    0
                };
                Arc::new(
                    accs.iter()
                        .map(|(s, c)| present(*c).then(|| crate::plan::avg_exact(*s, scale, *c)))
                        .collect::<Float64Array>(),
                )
            }
            (AggFunc::Sum, Some(DataType::Float64)) => Arc::new(
                accs.iter()
                    .map(|(s, c)| present(*c).then(|| f64_of(*s)))
                    .collect::<Float64Array>(),
            ),
            (AggFunc::Sum, Some(DataType::Decimal128(..))) => {
                let DataType::Decimal128(p, s) = out_type else {
                    return Err(Error::Internal("decimal sum without decimal type".into()));
                };
                let arr = accs
                    .iter()
                    .map(|(v, c)| present(*c).then_some(*v))
                    .collect::<Decimal128Array>()
                    .with_precision_and_scale(p, s)?;
                arr.validate_decimal_precision(p)
                    .map_err(|_| Error::TypeMismatch(format!("aggregate {} overflowed", a.name)))?;
                Arc::new(arr)
            }
            (AggFunc::Sum, Some(_)) => Arc::new(
                accs.iter()
                    .map(|(v, c)| {
                        present(*c)
                            .then(|| {
                                i64::try_from(*v).map_err(|_| {
                                    Error::TypeMismatch(format!("aggregate {} overflowed", a.name))
                                })
                            })
                            .transpose()
                    })
                    .collect::<Result<Int64Array>>()?,
            ),
            (AggFunc::Min | AggFunc::Max, Some(t)) => {
                let vals = accs.iter().map(|(v, c)| present(*c).then_some(*v));
                match t {
                    DataType::Float64 => {
                        Arc::new(vals.map(|v| v.map(key_to_f64)).collect::<Float64Array>())
                    }
                    DataType::Int64 => Arc::new(
                        vals.map(|v| {
                            v.map(|x| {
                                i64::try_from(x).map_err(|_| bad("min/max out of range".into()))
                            })
                            .transpose()
                        })
                        .collect::<Result<Int64Array>>()?,
                    ),
                    DataType::Int32 | DataType::Date32 => {
                        let ints = vals
                            .map(|v| {
                                v.map(|x| {
                                    i32::try_from(x).map_err(|_| bad("min/max out of range".into()))
                                })
                                .transpose()
                            })
                            .collect::<Result<Vec<Option<i32>>>>()?;
                        if *t == DataType::Date32 {
                            Arc::new(Date32Array::from(ints))
                        } else {
                            Arc::new(Int32Array::from(ints))
                        }
                    }
                    DataType::Decimal128(p, s) => {
                        let arr = vals
                            .collect::<Decimal128Array>()
                            .with_precision_and_scale(*p, *s)?;
                        arr.validate_decimal_precision(*p)
                            .map_err(|_| bad("min/max out of the column's precision".into()))?;
                        Arc::new(arr)
                    }
                    other => {
                        return Err(Error::Internal(format!(
                            "min/max of {other} placed on Wasm"
                        )));
                    }
                }
            }
            (f, t) => {
                return Err(Error::Internal(format!(
                    "{} of {t:?} placed on the Wasm backend",
                    f.as_str()
                )));
            }
        };
        out.push(arr);
    }
    Ok(out)
}

/// Compiles `predicate` and lays out the columns it reads in the kernel ABI's format.
pub(crate) fn marshal_filter(
    predicate: &PhysExpr,
    batch: &RecordBatch,
) -> Result<(Vec<u8>, Vec<OwnedColumn>)> {
    let (params, columns) = compile_filter(predicate).ok_or_else(|| {
        Error::Internal("predicate placed on a backend that cannot run it".into())
    })?;
    Ok((params, marshal_columns(batch, &columns)?))
}

/// The columns `names` of a decoded batch in the kernel ABI's layout.
fn marshal_columns(batch: &RecordBatch, names: &[String]) -> Result<Vec<OwnedColumn>> {
    names
        .iter()
        .map(|c| {
            batch.column_by_name(c).map(OwnedColumn::of).ok_or_else(|| {
                Error::Internal(format!("column '{c}' missing from the decoded batch"))
            })
        })
        .collect()
}

/// Buffers of one Arrow column in the layout the kernel ABI expects (offset-free).
pub(crate) struct OwnedColumn {
    type_code: u32,
    scale: i32,
    values: arrow::buffer::Buffer,
    stage: Stage,
    validity: Option<Vec<u8>>,
    /// `UTF8`: `rows + 1` offsets into `values`, from 0.
    offsets: Option<Vec<u8>>,
}

impl OwnedColumn {
    fn of(a: &ArrayRef) -> Self {
        let (mut type_code, scale) = type_code(a.data_type()).unwrap_or((0, 0));
        let width = types::width(type_code);
        let mut offsets = None;
        let (values, stage) = if let Some(b) = a.as_any().downcast_ref::<BooleanArray>() {
            type_code = types::BOOL;
            (
                arrow::buffer::Buffer::from_vec(bits_from_zero(b.values())),
                Stage::Copy,
            )
        } else if let Some(s) = a.as_any().downcast_ref::<StringArray>() {
            // The bytes the rows use, and their offsets from the first of them.
            type_code = types::UTF8;
            let o = s.value_offsets();
            let (first, last) = (o[0] as usize, o[o.len() - 1] as usize);
            offsets = Some(o.iter().flat_map(|x| (x - o[0]).to_le_bytes()).collect());
            (
                s.values().slice_with_length(first, last - first),
                Stage::Copy,
            )
        } else if matches!(
            (a.data_type(), type_code),
            (DataType::Decimal128(..), types::INT64)
        ) {
            // Narrow decimals travel as i64 (exact: precision <= 18), narrowed while staged,
            // not in a pass of their own.
            (fixed_values(a.as_ref()), Stage::Narrow { from: 16, to: 8 })
        } else if width > 0 {
            (fixed_values(a.as_ref()), Stage::Copy)
        } else {
            (
                arrow::buffer::Buffer::from_vec(Vec::<u8>::new()),
                Stage::Copy,
            )
        };
        let validity = a
            .nulls()
            .filter(|n| n.null_count() > 0)
            .map(|n| bits_from_zero(n.inner()));
        OwnedColumn {
            type_code,
            scale,
            values,
            stage,
            validity,
            offsets,
        }
    }

    /// The column with its integer values (INT32, DATE32, INT64 and narrow decimals) staged
    /// in the fewest bytes that hold every value of the batch, for the built-in filter kernel:
    /// a date or a price then takes 2 or 4 bytes, and the kernel compares 8 or 4 rows per
    /// SIMD instruction instead of 2 (int64) or 4 (int32, date32). `seen` is what earlier
    /// batches of the query showed:
    /// the values are tried at the width the last batch needed, in the one pass into the
    /// kernel's memory that also finds their range (see [`Stage::Guess`]). A column whose
    /// values did not narrow is copied, and looked at again 16 batches later, then 32, 64 and
    /// so on to every 256 while its values still need their full width (a look is a pass of
    /// its own).
    fn narrowest(mut self, seen: &mut Seen) -> Self {
        let from: u8 = match (self.type_code, self.stage) {
            (types::INT32 | types::DATE32, Stage::Copy) => 4,
            (types::INT64, Stage::Copy) => 8,
            (types::INT64, Stage::Narrow { from: 16, .. }) => 16,
            _ => return self,
        };
        if seen.width >= from {
            seen.since += 1;
            if seen.since < seen.every.max(16) {
                return self;
            }
            seen.since = 0;
            seen.every = (seen.every.max(16) * 2).min(256);
        } else {
            (seen.since, seen.every) = (0, 0);
        }
        let to = if seen.width == 0 || seen.width >= from {
            1
        } else {
            seen.width
        };
        self.stage = Stage::Guess { from, to };
        self
    }

    pub(crate) fn view(&self) -> ColumnBuffers<'_> {
        ColumnBuffers {
            type_code: self.type_code,
            scale: self.scale,
            values: self.values.as_slice(),
            validity: self.validity.as_deref(),
            offsets: self.offsets.as_deref(),
            stage: self.stage,
        }
    }
}

/// The values of a fixed-width column from its first row to its last (no copy; empty for a
/// type the kernels do not take).
fn fixed_values(a: &dyn Array) -> arrow::buffer::Buffer {
    use arrow::array::AsArray;
    use arrow::datatypes::{Date32Type, Decimal128Type, Float64Type, Int32Type, Int64Type};
    match a.data_type() {
        DataType::Int32 => a.as_primitive::<Int32Type>().values().inner().clone(),
        DataType::Int64 => a.as_primitive::<Int64Type>().values().inner().clone(),
        DataType::Float64 => a.as_primitive::<Float64Type>().values().inner().clone(),
        DataType::Decimal128(..) => a.as_primitive::<Decimal128Type>().values().inner().clone(),
        DataType::Date32 => a.as_primitive::<Date32Type>().values().inner().clone(),
        _ => arrow::buffer::Buffer::from_vec(Vec::<u8>::new()),
    }
}

/// The bytes of a bitmap with its first bit at bit 0 (LSB first), as the kernel ABI lays
/// bitmaps out.
fn bits_from_zero(bits: &arrow::buffer::BooleanBuffer) -> Vec<u8> {
    if bits.offset().is_multiple_of(8) {
        let start = bits.offset() / 8;
        bits.values()[start..start + bits.len().div_ceil(8)].to_vec()
    } else {
        let mut b = BooleanBufferBuilder::new(bits.len());
        b.append_buffer(bits);
        b.finish().values().to_vec()
    }
}

/// The ABI type of an Arrow type the kernel compares.
fn type_code(t: &DataType) -> Option<(u32, i32)> {
    Some(match t {
        DataType::Int32 => (types::INT32, 0),
        DataType::Int64 => (types::INT64, 0),
        DataType::Float64 => (types::FLOAT64, 0),
        DataType::Decimal128(p, s) if *p <= 18 => (types::INT64, *s as i32),
        DataType::Decimal128(_, s) => (types::DECIMAL128, *s as i32),
        DataType::Date32 => (types::DATE32, 0),
        _ => return None,
    })
}

fn literal_bytes(a: &ArrayRef) -> Option<Vec<u8>> {
    use arrow::array::AsArray;
    use arrow::datatypes::{Date32Type, Decimal128Type, Float64Type, Int32Type, Int64Type};
    if a.is_null(0) {
        return None;
    }
    Some(match a.data_type() {
        DataType::Int32 => a
            .as_primitive::<Int32Type>()
            .value(0)
            .to_le_bytes()
            .to_vec(),
        DataType::Date32 => a
            .as_primitive::<Date32Type>()
            .value(0)
            .to_le_bytes()
            .to_vec(),
        DataType::Int64 => a
            .as_primitive::<Int64Type>()
            .value(0)
            .to_le_bytes()
            .to_vec(),
        DataType::Float64 => a
            .as_primitive::<Float64Type>()
            .value(0)
            .to_le_bytes()
            .to_vec(),
        DataType::Decimal128(p, _) if *p <= 18 => {
            i64::try_from(a.as_primitive::<Decimal128Type>().value(0))
                .ok()?
                .to_le_bytes()
                .to_vec()
        }
        DataType::Decimal128(..) => a
            .as_primitive::<Decimal128Type>()
            .value(0)
            .to_le_bytes()
            .to_vec(),
        DataType::Utf8 => {
            let s = a.as_string::<i32>().value(0).as_bytes();
            let mut out = u16::try_from(s.len()).ok()?.to_le_bytes().to_vec();
            out.extend_from_slice(s);
            out
        }
        _ => return None,
    })
}

/// Whether a predicate compiles into the filter program (the set the Wasm kernel runs).
pub fn filter_support(pred: &PhysExpr) -> Support {
    match compile_filter(pred) {
        Some(_) => Support::Exact,
        None => Support::Unsupported,
    }
}

/// Whether a predicate compiles into the filter program, reads fixed-width columns only and
/// compares them with literals (the set the FPGA filter engine runs: no strings, no column
/// against column, no arithmetic).
pub fn fixed_width_filter_support(pred: &PhysExpr) -> Support {
    let mut beyond = false;
    pred.visit(&mut |e| {
        beyond |= matches!(e, PhysExpr::Like { .. } | PhysExpr::Arith { .. } | PhysExpr::Cast { .. })
            || matches!(e, PhysExpr::Column { data_type, .. } if !data_type.is_primitive())
            || matches!(e, PhysExpr::Cmp { left, right, .. }
                if matches!((&**left, &**right), (PhysExpr::Column { .. }, PhysExpr::Column { .. })));
    });
    if beyond {
        Support::Unsupported
    } else {
        filter_support(pred)
    }
}

/// Whether an expression reads a column.
fn reads_column(e: &PhysExpr) -> bool {
    let mut reads = false;
    e.visit(&mut |e| reads |= matches!(e, PhysExpr::Column { .. }));
    reads
}

/// Whether an operand is computed (arithmetic or a cast), not a column or a literal.
fn computed(e: &PhysExpr) -> bool {
    matches!(e, PhysExpr::Arith { .. } | PhysExpr::Cast { .. })
}

/// The filter program's code of a comparison.
fn cmp_code(op: CmpOp) -> u8 {
    match op {
        CmpOp::Eq => program::op::EQ,
        CmpOp::NotEq => program::op::NE,
        CmpOp::Lt => program::op::LT,
        CmpOp::LtEq => program::op::LE,
        CmpOp::Gt => program::op::GT,
        CmpOp::GtEq => program::op::GE,
    }
}

/// Whether the filter program compares values of this type.
fn filter_type(t: &DataType) -> Option<()> {
    (type_code(t).is_some() || *t == DataType::Utf8).then_some(())
}

/// Compiles a predicate into the filter program; also returns the columns it reads, in the
/// order of their program indices. `None` when the kernel cannot run it.
pub fn compile_filter(pred: &PhysExpr) -> Option<(Vec<u8>, Vec<String>)> {
    let mut out = Vec::new();
    let mut cols = Vec::new();
    emit(pred, &mut cols, &mut out)?;
    if out.len() > program::PROGRAM_BYTES_MAX || cols.len() > u16::MAX as usize {
        return None;
    }
    // The kernel's evaluation stack is bounded; so is the tree depth of what we emit.
    (max_stack(pred) <= program::STACK_MAX).then_some((out, cols))
}

fn max_stack(e: &PhysExpr) -> usize {
    match e {
        PhysExpr::And(v) | PhysExpr::Or(v) => v
            .iter()
            .enumerate()
            .map(|(i, c)| max_stack(c) + usize::from(i > 0))
            .max()
            .unwrap_or(1),
        PhysExpr::Not(e) => max_stack(e),
        _ => 1,
    }
}

fn col_index(cols: &mut Vec<String>, name: &str) -> Option<[u8; 2]> {
    let i = match cols.iter().position(|c| c == name) {
        Some(i) => i,
        None => {
            cols.push(name.to_string());
            cols.len() - 1
        }
    };
    u16::try_from(i).ok().map(u16::to_le_bytes)
}

fn emit(e: &PhysExpr, cols: &mut Vec<String>, out: &mut Vec<u8>) -> Option<()> {
    match e {
        PhysExpr::Cmp { op, left, right } => {
            let (op, name, dt, lit) = match (&**left, &**right) {
                (PhysExpr::Column { name, data_type }, PhysExpr::Literal(l)) => {
                    (*op, name, data_type, l)
                }
                (PhysExpr::Literal(l), PhysExpr::Column { name, data_type }) => {
                    (op.flip(), name, data_type, l)
                }
                (
                    PhysExpr::Column {
                        name: a,
                        data_type: ta,
                    },
                    PhysExpr::Column {
                        name: b,
                        data_type: tb,
                    },
                ) if ta == tb && (type_code(ta).is_some() || *ta == DataType::Utf8) => {
                    out.push(program::CMP_COLUMNS);
                    out.extend(col_index(cols, a)?);
                    out.push(cmp_code(*op));
                    out.extend(col_index(cols, b)?);
                    return Some(());
                }
                // Arithmetic on either side: both computed in the kernel, then compared.
                (l, r) if computed(l) || computed(r) => {
                    // Of one type, as Arrow compares (the binder unifies them).
                    if l.data_type() != r.data_type() {
                        return None;
                    }
                    out.extend([program::CMP_EXPR, cmp_code(*op)]);
                    for side in [l, r] {
                        let p = expr_program(side, cols)?;
                        out.extend(u16::try_from(p.len()).ok()?.to_le_bytes());
                        out.extend(p);
                    }
                    return Some(());
                }
                _ => return None,
            };
            if lit.data_type() != dt {
                return None;
            }
            if lit.is_null(0) {
                out.extend([program::CONST, 2]);
                return Some(());
            }
            if *dt == DataType::Boolean {
                // `b = true` is `b`; `b = false` and `b != true` are `NOT b`.
                use arrow::array::AsArray;
                let value = lit.as_boolean().value(0);
                let negate = match op {
                    CmpOp::Eq => !value,
                    CmpOp::NotEq => value,
                    _ => return None,
                };
                out.push(program::BOOL_COLUMN);
                out.extend(col_index(cols, name)?);
                if negate {
                    out.push(program::NOT);
                }
                return Some(());
            }
            filter_type(dt)?;
            out.push(program::CMP);
            out.extend(col_index(cols, name)?);
            out.push(cmp_code(op));
            out.extend(literal_bytes(lit)?);
        }
        PhysExpr::InList {
            expr,
            list,
            negated,
        } => {
            let PhysExpr::Column { name, data_type } = &**expr else {
                return None;
            };
            filter_type(data_type)?;
            if list.null_count() > 0
                || list.data_type() != data_type
                || list.len() > u16::MAX as usize
            {
                return None;
            }
            out.push(program::IN);
            out.extend(col_index(cols, name)?);
            out.extend((list.len() as u16).to_le_bytes());
            for i in 0..list.len() {
                out.extend(literal_bytes(&list.slice(i, 1))?);
            }
            if *negated {
                out.push(program::NOT);
            }
        }
        PhysExpr::IsNull(inner) | PhysExpr::IsNotNull(inner) => {
            let PhysExpr::Column { name, .. } = &**inner else {
                return None;
            };
            out.push(if matches!(e, PhysExpr::IsNull(_)) {
                program::IS_NULL
            } else {
                program::IS_NOT_NULL
            });
            out.extend(col_index(cols, name)?);
        }
        PhysExpr::And(v) | PhysExpr::Or(v) => {
            let join = if matches!(e, PhysExpr::And(_)) {
                program::AND
            } else {
                program::OR
            };
            if v.is_empty() {
                out.extend([program::CONST, u8::from(join == program::AND)]);
            }
            for (i, c) in v.iter().enumerate() {
                emit(c, cols, out)?;
                if i > 0 {
                    out.push(join);
                }
            }
        }
        PhysExpr::Not(inner) => {
            emit(inner, cols, out)?;
            out.push(program::NOT);
        }
        PhysExpr::Column {
            name,
            data_type: DataType::Boolean,
        } => {
            out.push(program::BOOL_COLUMN);
            out.extend(col_index(cols, name)?);
        }
        PhysExpr::Like {
            expr,
            pattern,
            negated,
        } => {
            use arrow::array::AsArray;
            let PhysExpr::Column { name, data_type } = &**expr else {
                return None;
            };
            if *data_type != DataType::Utf8 || *pattern.data_type() != DataType::Utf8 {
                return None;
            }
            if pattern.is_null(0) {
                out.extend([program::CONST, 2]);
                return Some(());
            }
            let (shape, text) = like_shape(pattern.as_string::<i32>().value(0))?;
            match shape {
                Some(shape) => {
                    out.push(program::LIKE);
                    out.extend(col_index(cols, name)?);
                    out.push(shape);
                }
                None => {
                    out.push(program::CMP);
                    out.extend(col_index(cols, name)?);
                    out.push(program::op::EQ);
                }
            }
            out.extend(u16::try_from(text.len()).ok()?.to_le_bytes());
            out.extend_from_slice(text.as_bytes());
            if *negated {
                out.push(program::NOT);
            }
        }
        PhysExpr::Literal(l)
            if *l.data_type() == DataType::Boolean || *l.data_type() == DataType::Null =>
        {
            use arrow::array::AsArray;
            let v = if l.is_null(0) {
                2
            } else {
                u8::from(l.as_boolean().value(0))
            };
            out.extend([program::CONST, v]);
        }
        _ => return None,
    }
    Some(())
}

/// The shape of a `LIKE` pattern and the text the kernel matches: `'text%'`, `'%text'`,
/// `'%text%'` or `'text'` (equality, shape `None`) with no other `%`, no `_` and no escape in
/// the text, matched byte-wise; any other pattern whole ([`program::like::PATTERN`]) up to
/// [`LIKE_PATTERN_MAX`] bytes (`None` beyond: native).
fn like_shape(p: &str) -> Option<(Option<u8>, &str)> {
    let (lead, rest) = match p.strip_prefix('%') {
        Some(r) => (true, r),
        None => (false, p),
    };
    let (trail, text) = match rest.strip_suffix('%') {
        Some(t) => (true, t),
        None => (false, rest),
    };
    if text.contains(['%', '_', '\\']) {
        // Arrow matches these with a regular expression, whose size limit a pattern this long
        // could pass (an error there, none here): longer ones stay native.
        if p.len() > LIKE_PATTERN_MAX {
            return None;
        }
        return Some((Some(program::like::PATTERN), p));
    }
    let shape = match (lead, trail) {
        (false, true) => Some(program::like::PREFIX),
        (true, false) => Some(program::like::SUFFIX),
        (true, true) => Some(program::like::CONTAINS),
        (false, false) => None,
    };
    Some((shape, text))
}

/// Longest `LIKE` pattern with wildcards inside it that the kernel matches.
const LIKE_PATTERN_MAX: usize = 1024;

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
