//! The Wasm backend: filters run inside the wasmtime sandbox by the built-in filter kernel.
//!
//! The host compiles a bound predicate into the kernel's filter program (see
//! `nearstore_kernel_abi::program`): comparisons of a fixed-width column (int32, int64, float64,
//! decimal128, date32) with a literal, IN lists without NULL, IS [NOT] NULL on any column,
//! AND/OR/NOT and boolean constants. Anything else (LIKE, arithmetic, column-to-column
//! comparisons, strings) is `Unsupported` and placed on the native backend.

pub mod sandbox;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, BooleanBufferBuilder};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use nearstore_kernel_abi::{program, types};
use nearstore_proto::{BackendKind, CmpOp};

use super::native::NativeBackend;
use super::{ComputeBackend, ComputeSession, Support};
use crate::error::{Error, Result};
use crate::exec::expr::PhysExpr;
pub use sandbox::{ColumnBuffers, KernelError, KernelSession, Program, Sandbox, SandboxConfig};

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
        match compile_filter(predicate) {
            Some(_) => Support::Exact,
            None => Support::Unsupported,
        }
    }

    fn supports_expr(&self, _expr: &PhysExpr) -> Support {
        Support::Unsupported
    }

    fn open(&self) -> Result<Box<dyn ComputeSession>> {
        Ok(Box::new(WasmSession {
            kernel: self.sandbox.session(&self.filter)?,
        }))
    }
}

struct WasmSession {
    kernel: KernelSession,
}

impl ComputeSession for WasmSession {
    fn filter(&mut self, predicate: &PhysExpr, batch: &RecordBatch) -> Result<BooleanArray> {
        let (params, owned) = marshal_filter(predicate, batch)?;
        let views: Vec<ColumnBuffers<'_>> = owned.iter().map(OwnedColumn::view).collect();
        let rows = batch.num_rows();
        if self.kernel.has_bitmap_filter() {
            let bytes = self.kernel.filter_bitmap(rows, &views, &params)?;
            let bits = arrow::buffer::BooleanBuffer::new(bytes.into(), 0, rows);
            return Ok(BooleanArray::new(bits, None));
        }
        let idx = self.kernel.filter(rows, &views, &params)?;
        let mut bits = BooleanBufferBuilder::new(rows);
        bits.append_n(rows, false);
        for i in idx {
            bits.set_bit(i as usize, true);
        }
        Ok(BooleanArray::new(bits.finish(), None))
    }

    fn evaluate(&mut self, expr: &PhysExpr, batch: &RecordBatch) -> Result<ArrayRef> {
        // Placement never sends expressions here (supports_expr is Unsupported); stay correct
        // if it ever does.
        NativeBackend.evaluate(expr, batch)
    }
}

/// Compiles `predicate` and lays out the columns it reads in the kernel ABI's format.
pub(crate) fn marshal_filter(
    predicate: &PhysExpr,
    batch: &RecordBatch,
) -> Result<(Vec<u8>, Vec<OwnedColumn>)> {
    let (params, columns) = compile_filter(predicate).ok_or_else(|| {
        Error::Internal("predicate placed on a backend that cannot run it".into())
    })?;
    let owned = columns
        .iter()
        .map(|c| {
            batch.column_by_name(c).map(OwnedColumn::of).ok_or_else(|| {
                Error::Internal(format!("column '{c}' missing from the decoded batch"))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((params, owned))
}

/// Buffers of one Arrow column in the layout the kernel ABI expects (offset-free).
pub(crate) struct OwnedColumn {
    type_code: u32,
    scale: i32,
    values: arrow::buffer::Buffer,
    validity: Option<Vec<u8>>,
}

impl OwnedColumn {
    fn of(a: &ArrayRef) -> Self {
        let data = a.to_data();
        let (type_code, scale) = type_code(a.data_type()).unwrap_or((0, 0));
        let width = types::width(type_code);
        let values = if let (DataType::Decimal128(..), types::INT64) = (a.data_type(), type_code) {
            // Narrow decimals travel as i64 (exact: precision <= 18), so the kernel compares
            // them with 64-bit SIMD lanes.
            use arrow::array::AsArray;
            let d = a.as_primitive::<arrow::datatypes::Decimal128Type>();
            arrow::buffer::Buffer::from_vec(
                d.values().iter().map(|v| *v as i64).collect::<Vec<i64>>(),
            )
        } else if width > 0 {
            data.buffers()[0].slice_with_length(data.offset() * width, data.len() * width)
        } else {
            arrow::buffer::Buffer::from_vec(Vec::<u8>::new())
        };
        let validity = data.nulls().filter(|n| n.null_count() > 0).map(|n| {
            let bits = n.inner();
            if bits.offset() % 8 == 0 {
                let start = bits.offset() / 8;
                bits.values()[start..start + data.len().div_ceil(8)].to_vec()
            } else {
                let mut b = BooleanBufferBuilder::new(data.len());
                for i in 0..data.len() {
                    b.append(n.is_valid(i));
                }
                b.finish().values().to_vec()
            }
        });
        OwnedColumn {
            type_code,
            scale,
            values,
            validity,
        }
    }

    pub(crate) fn view(&self) -> ColumnBuffers<'_> {
        ColumnBuffers {
            type_code: self.type_code,
            scale: self.scale,
            values: self.values.as_slice(),
            validity: self.validity.as_deref(),
            offsets: None,
        }
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
        _ => return None,
    })
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
                _ => return None,
            };
            type_code(dt)?;
            if lit.data_type() != dt {
                return None;
            }
            if lit.is_null(0) {
                out.extend([program::CONST, 2]);
                return Some(());
            }
            out.push(program::CMP);
            out.extend(col_index(cols, name)?);
            out.push(match op {
                CmpOp::Eq => program::op::EQ,
                CmpOp::NotEq => program::op::NE,
                CmpOp::Lt => program::op::LT,
                CmpOp::LtEq => program::op::LE,
                CmpOp::Gt => program::op::GT,
                CmpOp::GtEq => program::op::GE,
            });
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
            type_code(data_type)?;
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
