//! The expression program (see `nearstore_kernel_abi::expr`): computed columns — projections
//! and aggregate inputs such as `l_extendedprice * (1 - l_discount)` — compiled for the
//! built-in kernel's `nearstore_project`, and the result array read back from its values.
//!
//! It takes `+ - *` over int32/int64/decimal/float64 operands of one type, `/` over
//! int32/int64/float64 and decimals (integers truncated and a division by zero an error,
//! floats IEEE; a decimal quotient at the dividend's scale plus four, the dividend raised
//! first, as Arrow's), literals, and decimal casts that keep every value. The kernel evaluates
//! it column at a time (an operation in 64 bits while its values fit, in 128 bits when a row
//! needs more; floats as `f64`), checked on valid rows as Arrow's arithmetic is; the host
//! checks each value fits the result type ([`project_array`]), and a kernel overflow re-runs
//! the batch natively so the error is Arrow's (`exprs=wasm` / `project=wasm` in the
//! placement). Other expressions run natively.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef};
use arrow::datatypes::DataType;
use nearstore_proto::ArithOp;

use super::col_index;
use crate::plan::PhysExpr;

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
pub(super) fn expr_program(e: &PhysExpr, cols: &mut Vec<String>) -> Option<Vec<u8>> {
    expr_program_with(e, &mut |name| col_index(cols, name))
}

/// The expression program of `e`, each column read numbered by `col` (its operand bytes;
/// `None`: the column cannot be read).
pub(super) fn expr_program_with(
    e: &PhysExpr,
    col: &mut dyn FnMut(&str) -> Option<[u8; 2]>,
) -> Option<Vec<u8>> {
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
        col: &mut dyn FnMut(&str) -> Option<[u8; 2]>,
        out: &mut Vec<u8>,
        depth: usize,
    ) -> Option<usize> {
        use arrow::array::AsArray;
        use arrow::datatypes::{Decimal128Type, Float64Type, Int32Type, Int64Type};
        Some(match e {
            PhysExpr::Column { name, data_type } => {
                range(data_type)?;
                out.push(expr::COL);
                out.extend(col(name)?);
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
                let d = emit(inner, col, out, depth)?;
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
                let d = emit(left, col, out, depth)?;
                if raise_left > 0 {
                    out.extend([expr::RESCALE, raise_left]);
                }
                let d = emit(right, col, out, d)?;
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
    let depth = emit(e, col, &mut out, 0)?;
    (depth == 1 && depth <= expr::STACK_MAX).then_some(out)
}

/// Whether an expression reads a column.
fn reads_column(e: &PhysExpr) -> bool {
    let mut reads = false;
    e.visit(&mut |e| reads |= matches!(e, PhysExpr::Column { .. }));
    reads
}

/// The result array of a computed column from the kernel's values (8 bytes wide, or 16 for a
/// decimal of precision above 18) and validity words, checking that each valid value fits `t`.
pub(crate) fn project_array(
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
