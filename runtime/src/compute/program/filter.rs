//! The filter program (see `nearstore_kernel_abi::program`): bound predicates compiled into
//! the stack program the built-in kernel runs (and, for fixed-width columns against literals,
//! the FPGA's compare-filter engine: [`fixed_width_filter_support`]).
//!
//! It takes comparisons of int32/int64/float64/decimal/date32/utf8 columns with literals, of
//! two columns of one type (fixed-width row by row, each at its stored width, or two strings),
//! boolean columns (`b`, `b = false`), IN, IS [NOT] NULL, LIKE (the shapes `'t%'`, `'%t'`,
//! `'%t%'`, `'t'` matched byte-wise; any other pattern with `_`, inner `%` and `\` escapes
//! matched a character at a time, as Arrow's), AND/OR/NOT; decimals of precision ≤ 18 travel
//! as i64. Compares with arithmetic on either side (`CMP_EXPR`: both sides as expression
//! programs, [`super::expr`]) are computed over the batch at decode and compared row by row;
//! an arithmetic error re-runs the batch natively so the error is Arrow's. Everything else
//! (date arithmetic, arithmetic on literals alone, casts other than widening decimal ones, IN
//! lists and null tests over computed values, LIKE patterns with wildcards over 1 KiB) is
//! Unsupported and runs natively.
//!
//! The kernel resolves each compare against the column's stored width (see
//! [`super::columns`]), so it compares 16, 8 or 4 rows per SIMD instruction instead of 2
//! (int64) or 4 (int32); it runs the program in passes of 1 024 rows, each operation
//! dispatched once per pass, and the SDK's block compares pack sixteen rows' lane results into
//! bytes with saturating narrows before one bitmask (but for `<` and `>` on 64-bit lanes, which
//! take a bitmask per vector: x86 runs those compares and the narrows on one port).

use arrow::array::{Array, ArrayRef};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use nearstore_kernel_abi::program;
use nearstore_proto::CmpOp;

use super::col_index;
use super::columns::{OwnedColumn, marshal_columns, type_code};
use super::expr::expr_program;
use crate::compute::Support;
use crate::error::{Error, Result};
use crate::plan::PhysExpr;

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

/// The evaluation stack the program of `e` needs.
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

/// Emits the program of `e` into `out`, numbering the columns it reads in `cols`.
fn emit(e: &PhysExpr, cols: &mut Vec<String>, out: &mut Vec<u8>) -> Option<()> {
    match e {
        PhysExpr::Cmp { op, left, right } => emit_cmp(op, left, right, cols, out)?,
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
        } => emit_like(expr, pattern, *negated, cols, out)?,
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

/// Emits a comparison: of a column with a literal, of two columns of one type, or of two
/// sides with arithmetic (both as expression programs).
fn emit_cmp(
    op: &CmpOp,
    left: &PhysExpr,
    right: &PhysExpr,
    cols: &mut Vec<String>,
    out: &mut Vec<u8>,
) -> Option<()> {
    let (op, name, dt, lit) = match (left, right) {
        (PhysExpr::Column { name, data_type }, PhysExpr::Literal(l)) => (*op, name, data_type, l),
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
    Some(())
}

/// Emits a `LIKE` over a string column: a byte-wise shape, an equality, or the whole pattern.
fn emit_like(
    expr: &PhysExpr,
    pattern: &ArrayRef,
    negated: bool,
    cols: &mut Vec<String>,
    out: &mut Vec<u8>,
) -> Option<()> {
    use arrow::array::AsArray;
    let PhysExpr::Column { name, data_type } = expr else {
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
    if negated {
        out.push(program::NOT);
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

/// A literal as the filter program holds it (at the ABI width of its type; a string as a
/// `u16` length and its bytes); `None` for a null or a type the program does not compare.
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
