//! The expression program (`nearstore_kernel_abi::expr`): its decoding and its evaluation
//! over a batch, column at a time, into stack values with validity and deferred overflow.

use alloc::vec::Vec;

use nearstore_kernel::abi::{expr, status, types};
use nearstore_kernel::{BLOCK, Batch, Column, Ints, KernelResult, lanes};

use crate::reader::Reader;
use arith::arith;

mod arith;

/// One instruction of the expression program.
#[derive(Clone, Copy)]
pub(crate) enum XOp {
    Col(usize),
    Int(i128),
    Float(f64),
    Arith(u8, u8),
    Rescale(u32),
}

/// A stack value over the whole batch, column at a time: a column as the batch holds it, a
/// computed column (64-bit integers while every value fits — the fast path the compiler
/// vectorises —, 128-bit integers for wide decimals, or floats), or a constant.
pub(crate) enum Vals<'a> {
    I64Ref(&'a [i64]),
    F64Ref(&'a [f64]),
    I64(Vec<i64>),
    I128(Vec<i128>),
    F64(Vec<f64>),
    ConstI(i128),
    ConstF(f64),
}

pub(crate) struct Value<'a> {
    pub(crate) vals: Vals<'a>,
    /// Validity words; `None`: every row valid.
    pub(crate) valid: Option<Vec<u64>>,
    /// Rows a rescale took past `i128` (words, a bit per row; `None`: none). An error only
    /// where the row is valid when the value is used: Arrow raises a decimal dividend only on
    /// the rows valid in both operands.
    overflow: Option<Vec<u64>>,
}

impl<'a> Value<'a> {
    /// A value whose rows were checked already (none overflowed).
    pub(crate) fn checked(vals: Vals<'a>, valid: Option<Vec<u64>>) -> Self {
        Value {
            vals,
            valid,
            overflow: None,
        }
    }
}

/// `OVERFLOW` when a row marked in `overflow` is valid in `valid`.
fn check_overflow(overflow: &Option<Vec<u64>>, valid: &Option<Vec<u64>>) -> KernelResult {
    let Some(o) = overflow else {
        return Ok(());
    };
    for (w, bits) in o.iter().enumerate() {
        let v = valid
            .as_ref()
            .map_or(u64::MAX, |v| v.get(w).copied().unwrap_or(0));
        if bits & v != 0 {
            return Err(status::OVERFLOW);
        }
    }
    Ok(())
}

pub(crate) fn decode_expr(params: &[u8], batch: &Batch) -> KernelResult<Vec<XOp>> {
    decode_after(params, batch, 0)
}

/// The rest of an expression program whose first `depth` values are on the stack already
/// (`depth` 0: a whole program).
pub(crate) fn decode_after(params: &[u8], batch: &Batch, depth: usize) -> KernelResult<Vec<XOp>> {
    let mut r = Reader { b: params, pos: 0 };
    let mut ops = Vec::new();
    let mut depth = depth;
    while r.pos < r.b.len() {
        let op = match r.u8()? {
            expr::COL => {
                let c = r.u16()?;
                batch.column(c)?;
                XOp::Col(c)
            }
            expr::INT => XOp::Int(i128::from_le_bytes(
                r.take(16)?.try_into().map_err(|_| status::BAD_INPUT)?,
            )),
            expr::FLOAT => XOp::Float(f64::from_le_bytes(
                r.take(8)?.try_into().map_err(|_| status::BAD_INPUT)?,
            )),
            op @ (expr::ADD | expr::SUB | expr::MUL | expr::DIV) => {
                let range = r.u8()?;
                if range > expr::range::F64 {
                    return Err(status::BAD_INPUT);
                }
                XOp::Arith(op, range)
            }
            expr::RESCALE => {
                let k = r.u8()? as u32;
                10i128.checked_pow(k).ok_or(status::BAD_INPUT)?;
                XOp::Rescale(k)
            }
            _ => return Err(status::BAD_INPUT),
        };
        depth = match op {
            XOp::Col(_) | XOp::Int(_) | XOp::Float(_) => depth + 1,
            XOp::Arith(..) => depth
                .checked_sub(1)
                .filter(|d| *d >= 1)
                .ok_or(status::BAD_INPUT)?,
            XOp::Rescale(_) if depth >= 1 => depth,
            XOp::Rescale(_) => return Err(status::BAD_INPUT),
        };
        if depth > expr::STACK_MAX {
            return Err(status::BAD_INPUT);
        }
        ops.push(op);
    }
    if depth != 1 {
        return Err(status::BAD_INPUT);
    }
    Ok(ops)
}

/// A column as a stack value (borrowed where its layout is already the one computed on).
fn load<'a>(c: &Column<'a>, rows: usize) -> KernelResult<Value<'a>> {
    let valid = c.has_nulls().then(|| {
        (0..rows)
            .step_by(BLOCK)
            .map(|b| c.validity_block(b) & lanes(rows - b))
            .collect()
    });
    let vals = match c.type_code() {
        types::FLOAT64 => Vals::F64Ref(&c.f64s()?[..rows]),
        // Either as its type's width or narrowed (a filter's columns may be).
        types::INT32 | types::INT64 => match c.ints()? {
            Ints::I64(s) => Vals::I64Ref(&s[..rows]),
            Ints::I32(s) => Vals::I64(s[..rows].iter().map(|&x| x.into()).collect()),
            Ints::I16(s) => Vals::I64(s[..rows].iter().map(|&x| x.into()).collect()),
            Ints::I8(s) => Vals::I64(s[..rows].iter().map(|&x| x.into()).collect()),
        },
        types::DECIMAL128 => Vals::I128(c.i128s()?[..rows].to_vec()),
        _ => return Err(status::UNSUPPORTED),
    };
    Ok(Value {
        vals,
        valid,
        overflow: None,
    })
}

pub(crate) fn is_valid(valid: &Option<Vec<u64>>, i: usize) -> bool {
    valid
        .as_ref()
        .is_none_or(|v| v[i / 64] >> (i % 64) & 1 == 1)
}

pub(crate) fn and_valid(a: Option<Vec<u64>>, b: Option<Vec<u64>>) -> Option<Vec<u64>> {
    match (a, b) {
        (Some(mut x), Some(y)) => {
            x.iter_mut().zip(&y).for_each(|(p, q)| *p &= q);
            Some(x)
        }
        (x, None) | (None, x) => x,
    }
}

/// The value as 128-bit integers (`None` for floats).
pub(crate) fn wide(v: &Vals, rows: usize) -> Option<Vec<i128>> {
    Some(match v {
        Vals::I64Ref(a) => a.iter().map(|&x| x as i128).collect(),
        Vals::I64(a) => a.iter().map(|&x| x as i128).collect(),
        Vals::I128(a) => a.clone(),
        Vals::ConstI(c) => alloc::vec![*c; rows],
        _ => return None,
    })
}

/// An operand of a column-at-a-time operation: a value per row, or one for every row.
#[derive(Clone, Copy)]
pub(crate) enum Side<'v, T> {
    Rows(&'v [T]),
    Const(T),
}

impl<T: Copy> Side<'_, T> {
    #[inline(always)]
    pub(crate) fn at(self, i: usize) -> T {
        match self {
            Side::Rows(x) => x[i],
            Side::Const(c) => c,
        }
    }
}

/// A float value as an operand (`None`: not floats).
pub(crate) fn float_side<'v>(v: &'v Vals) -> Option<Side<'v, f64>> {
    Some(match v {
        Vals::F64Ref(s) => Side::Rows(s),
        Vals::F64(s) => Side::Rows(s),
        Vals::ConstF(c) => Side::Const(*c),
        _ => return None,
    })
}

/// An integer value as a 64-bit operand (`None`: floats, or 128-bit integers).
pub(crate) fn int_side<'v>(v: &'v Vals) -> Option<Side<'v, i64>> {
    Some(match v {
        Vals::I64Ref(s) => Side::Rows(s),
        Vals::I64(s) => Side::Rows(s),
        Vals::ConstI(c) => Side::Const(i64::try_from(*c).ok()?),
        _ => return None,
    })
}

/// `v` raised by `m` (a power of ten) in 64 bits, when `v` is 64-bit integers (or a
/// constant) of which no valid row leaves an `i64` so raised (TPC-H Q1's `1 + l_tax`, raised
/// to its product's scale): each row then needs no 128-bit multiply with an overflow check.
/// `None`: the 128-bit path, which marks the rows it takes past `i128`.
fn rescale_i64<'a>(v: &Value<'a>, m: i128, rows: usize) -> Option<Value<'a>> {
    let m = i64::try_from(m).ok()?;
    if v.overflow.is_some() {
        return None;
    }
    let vals = match int_side(&v.vals)? {
        Side::Const(c) => Vals::ConstI(c.checked_mul(m)?.into()),
        Side::Rows(x) => {
            // |x| <= lim raises within an i64; the test is one unsigned compare per row.
            let lim = i64::MAX / m;
            let x = &x[..rows];
            let out: Vec<i64> = x.iter().map(|&a| a.wrapping_mul(m)).collect();
            let over = |a: i64| (a.wrapping_add(lim) as u64) > 2 * lim as u64;
            if x.iter().any(|&a| over(a)) {
                let valid = |i: usize| is_valid(&v.valid, i);
                if (0..rows).any(|i| over(x[i]) && valid(i)) {
                    return None;
                }
            }
            Vals::I64(out)
        }
    };
    Some(Value {
        vals,
        valid: v.valid.clone(),
        overflow: None,
    })
}

/// Evaluates an expression program (see `nearstore_kernel_abi::expr`) over the batch, column
/// at a time; integer arithmetic is checked on valid rows only, as Arrow's is: in 64 bits
/// while it fits, in 128 bits for what does not (decimals), an error for what leaves an
/// integer type's range or divides by zero.
pub(crate) fn eval<'a>(ops: &[XOp], batch: &'a Batch<'a>) -> KernelResult<Value<'a>> {
    eval_over(ops, batch, Vec::with_capacity(expr::STACK_MAX))
}

/// [`eval`] of ops that follow the values on `stack` (as [`decode_after`] read them).
pub(crate) fn eval_over<'a>(
    ops: &[XOp],
    batch: &'a Batch<'a>,
    mut stack: Vec<Value<'a>>,
) -> KernelResult<Value<'a>> {
    let rows = batch.rows();
    for op in ops {
        let v = match *op {
            XOp::Col(c) => load(batch.column(c)?, rows)?,
            XOp::Int(x) => Value {
                vals: Vals::ConstI(x),
                valid: None,
                overflow: None,
            },
            XOp::Float(x) => Value {
                vals: Vals::ConstF(x),
                valid: None,
                overflow: None,
            },
            XOp::Rescale(k) => {
                let v = stack.pop().ok_or(status::BAD_INPUT)?;
                let m = 10i128.pow(k);
                if let Some(r) = rescale_i64(&v, m, rows) {
                    stack.push(r);
                    continue;
                }
                let mut a = wide(&v.vals, rows).ok_or(status::BAD_INPUT)?;
                let mut overflow = v.overflow;
                for (i, x) in a.iter_mut().enumerate() {
                    if is_valid(&v.valid, i) {
                        *x = x.checked_mul(m).unwrap_or_else(|| {
                            overflow.get_or_insert_with(|| alloc::vec![0; rows.div_ceil(64)])
                                [i / 64] |= 1 << (i % 64);
                            0
                        });
                    }
                }
                Value {
                    vals: Vals::I128(a),
                    valid: v.valid,
                    overflow,
                }
            }
            XOp::Arith(op, range) => {
                let b = stack.pop().ok_or(status::BAD_INPUT)?;
                let a = stack.pop().ok_or(status::BAD_INPUT)?;
                arith(op, range, rows, a, b)?
            }
        };
        stack.push(v);
    }
    let v = stack.pop().ok_or(status::BAD_INPUT)?;
    check_overflow(&v.overflow, &v.valid)?;
    Ok(v)
}
