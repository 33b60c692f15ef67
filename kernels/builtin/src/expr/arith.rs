//! Arithmetic of the expression program: `+ - * /` column at a time, in 64-bit integers while
//! no valid row overflows, then checked in 128 bits; floats as IEEE does.

use alloc::vec::Vec;
use core::mem::MaybeUninit;

use nearstore_kernel::KernelResult;
use nearstore_kernel::abi::{expr, status};

use super::{Side, Vals, Value, and_valid, check_overflow, float_side, int_side, is_valid, wide};

/// `out[i] = f(a[i], b[i]).0` for every row (each element of `out` is written, so `out` may be
/// a vector's spare capacity: no zero-fill first, see [`filled`]), and whether `f` flagged any
/// row, eight rows per iteration (one back-edge, one interruption check) and then the rest.
/// `VECTOR`: over whole arrays of eight, which the compiler vectorises (floats); else a row at
/// a time (integers: Cranelift's 64-bit lane multiplies and the overflow checks' lane shuffles
/// are slower than scalar code). A function of its own per operation: inlined into the evaluator, Cranelift
/// kept the loop's counters on the stack.
#[inline(never)]
fn zip_with<const VECTOR: bool, T: Copy, R: Copy>(
    out: &mut [MaybeUninit<R>],
    a: Side<T>,
    b: Side<T>,
    f: impl Fn(T, T) -> (R, bool),
) -> bool {
    let mut any = false;
    let mut put = |o: &mut MaybeUninit<R>, x: T, y: T| {
        let (r, flag) = f(x, y);
        o.write(r);
        any |= flag;
    };
    const U: usize = 8;
    let n = out.len();
    if !VECTOR {
        let full = n / U * U;
        let (head, tail) = out.split_at_mut(full);
        macro_rules! rows {
            ($x:expr, $y:expr) => {{
                for (k, o) in head.chunks_exact_mut(U).enumerate() {
                    for (j, o) in o.iter_mut().enumerate() {
                        put(o, $x(k * U + j), $y(k * U + j));
                    }
                }
                for (j, o) in tail.iter_mut().enumerate() {
                    put(o, $x(full + j), $y(full + j));
                }
            }};
        }
        match (a, b) {
            (Side::Rows(x), Side::Rows(y)) => {
                let (x, y) = (&x[..n], &y[..n]);
                rows!(|i: usize| x[i], |i: usize| y[i])
            }
            (Side::Rows(x), Side::Const(c)) => {
                let x = &x[..n];
                rows!(|i: usize| x[i], |_| c)
            }
            (Side::Const(c), Side::Rows(y)) => {
                let y = &y[..n];
                rows!(|_| c, |i: usize| y[i])
            }
            (Side::Const(c), Side::Const(d)) => rows!(|_| c, |_| d),
        }
        return any;
    }
    let (head, tail) = out.as_chunks_mut::<U>();
    fn rows<T>(x: &[T], n: usize) -> (&[[T; U]], &[T]) {
        x[..n].as_chunks::<U>()
    }
    match (a, b) {
        (Side::Rows(x), Side::Rows(y)) => {
            let ((xh, xt), (yh, yt)) = (rows(x, n), rows(y, n));
            for ((o, x), y) in head.iter_mut().zip(xh).zip(yh) {
                for j in 0..U {
                    put(&mut o[j], x[j], y[j]);
                }
            }
            for ((o, &x), &y) in tail.iter_mut().zip(xt).zip(yt) {
                put(o, x, y);
            }
        }
        (Side::Rows(x), Side::Const(c)) => {
            let (xh, xt) = rows(x, n);
            for (o, x) in head.iter_mut().zip(xh) {
                for j in 0..U {
                    put(&mut o[j], x[j], c);
                }
            }
            for (o, &x) in tail.iter_mut().zip(xt) {
                put(o, x, c);
            }
        }
        (Side::Const(c), Side::Rows(y)) => {
            let (yh, yt) = rows(y, n);
            for (o, y) in head.iter_mut().zip(yh) {
                for j in 0..U {
                    put(&mut o[j], c, y[j]);
                }
            }
            for (o, &y) in tail.iter_mut().zip(yt) {
                put(o, c, y);
            }
        }
        (Side::Const(c), Side::Const(d)) => {
            for o in head.as_flattened_mut().iter_mut().chain(tail) {
                put(o, c, d);
            }
        }
    }
    any
}

/// `op` over 64-bit integers with wrapping arithmetic, and whether a valid row overflowed
/// (then the caller redoes it in 128 bits): the flags are taken over every row in the same
/// loop, and only when one is set are the valid rows looked at.
#[inline(always)]
fn bin_i64(
    op: u8,
    rows: usize,
    a: Side<i64>,
    b: Side<i64>,
    valid: &Option<Vec<u64>>,
) -> (Vec<i64>, bool) {
    // Per row: the result, and whether it overflowed (for products: an operand beyond ±2^31,
    // which the wide path then settles); one monomorphised loop per operator.
    macro_rules! run {
        ($val:expr, $bad:expr) => {{
            let (val, bad) = ($val, $bad);
            let (out, any) = filled(rows, |o| {
                zip_with::<false, _, _>(o, a, b, |x, y| {
                    let r = val(x, y);
                    (r, bad(x, y, r))
                })
            });
            let over = any
                && match valid {
                    None => true,
                    Some(v) => (0..rows)
                        .any(|i| v[i / 64] >> (i % 64) & 1 == 1 && bad(a.at(i), b.at(i), out[i])),
                };
            (out, over)
        }};
    }
    match op {
        expr::ADD => run!(
            |x: i64, y: i64| x.wrapping_add(y),
            |x: i64, y: i64, r: i64| ((x ^ r) & (y ^ r)) < 0
        ),
        expr::SUB => run!(
            |x: i64, y: i64| x.wrapping_sub(y),
            |x: i64, y: i64, r: i64| ((x ^ y) & (x ^ r)) < 0
        ),
        expr::MUL => run!(
            |x: i64, y: i64| x.wrapping_mul(y),
            |x: i64, y: i64, _r: i64| (x as i32 as i64 != x) | (y as i32 as i64 != y)
        ),
        // Division by zero and `i64::MIN / -1` are left to the wide path, which reports them.
        _ => run!(
            |x: i64, y: i64| x.checked_div(y).unwrap_or(0),
            |x: i64, y: i64, _r: i64| (y == 0) | ((x == i64::MIN) & (y == -1))
        ),
    }
}

/// A vector of `rows` values written by `write` (which writes each element of the slice it is
/// given, as [`zip_with`] does), and what `write` returned: the values are not zero-filled
/// first (a pass of its own, 3 % of TPC-H Q1's time with the columns in memory).
#[inline(always)]
fn filled<R, X>(rows: usize, write: impl FnOnce(&mut [MaybeUninit<R>]) -> X) -> (Vec<R>, X) {
    let mut out = Vec::with_capacity(rows);
    let x = write(&mut out.spare_capacity_mut()[..rows]);
    // SAFETY: `write` initialised each of the first `rows` elements.
    unsafe { out.set_len(rows) };
    (out, x)
}

#[inline(always)]
fn bin_f64(op: u8, rows: usize, a: Side<f64>, b: Side<f64>) -> Vec<f64> {
    filled(rows, |o| match op {
        expr::ADD => zip_with::<true, _, _>(o, a, b, |x, y| (x + y, false)),
        expr::SUB => zip_with::<true, _, _>(o, a, b, |x, y| (x - y, false)),
        expr::MUL => zip_with::<true, _, _>(o, a, b, |x, y| (x * y, false)),
        _ => zip_with::<true, _, _>(o, a, b, |x, y| (x / y, false)),
    })
    .0
}

/// Checks a valid row's value against the result's range.
#[inline(always)]
fn in_range(x: i128, range: u8) -> KernelResult<i128> {
    let ok = match range {
        expr::range::I32 => i32::try_from(x).is_ok(),
        expr::range::I64 => i64::try_from(x).is_ok(),
        _ => true,
    };
    if ok { Ok(x) } else { Err(status::OVERFLOW) }
}

pub(super) fn arith(
    op: u8,
    range: u8,
    rows: usize,
    a: Value,
    b: Value,
) -> KernelResult<Value<'static>> {
    let valid = and_valid(a.valid, b.valid);
    check_overflow(&a.overflow, &valid)?;
    check_overflow(&b.overflow, &valid)?;
    if range == expr::range::F64 {
        let side = |v| float_side(v).ok_or(status::BAD_INPUT);
        let vals = bin_f64(op, rows, side(&a.vals)?, side(&b.vals)?);
        return Ok(Value {
            vals: Vals::F64(vals),
            valid,
            overflow: None,
        });
    }
    if let (Some(x), Some(y)) = (int_side(&a.vals), int_side(&b.vals)) {
        let (r, over) = bin_i64(op, rows, x, y, &valid);
        if !over {
            if range == expr::range::I32 {
                for (i, z) in r.iter().enumerate() {
                    if is_valid(&valid, i) && *z as i32 as i64 != *z {
                        return Err(status::OVERFLOW);
                    }
                }
            }
            return Ok(Value {
                vals: Vals::I64(r),
                valid,
                overflow: None,
            });
        }
    }
    // Wide, or a row needs more than 64 bits: 128-bit arithmetic, checked.
    let (Some(mut x), Some(y)) = (wide(&a.vals, rows), wide(&b.vals, rows)) else {
        return Err(status::BAD_INPUT);
    };
    for i in 0..rows {
        if is_valid(&valid, i) {
            let r = match op {
                expr::ADD => x[i].checked_add(y[i]),
                expr::SUB => x[i].checked_sub(y[i]),
                expr::MUL => x[i].checked_mul(y[i]),
                _ if y[i] == 0 => return Err(status::DIVIDE_BY_ZERO),
                _ => x[i].checked_div(y[i]),
            }
            .ok_or(status::OVERFLOW)?;
            x[i] = in_range(r, range)?;
        }
    }
    Ok(Value {
        vals: Vals::I128(x),
        valid,
        overflow: None,
    })
}
