//! Decoding of the filter program (`nearstore_kernel_abi::program`) into operations, each
//! compare resolved against how its column is stored in this batch.

use alloc::vec::Vec;

use nearstore_kernel::abi::{program, status, types};
use nearstore_kernel::{Batch, Cmp, Column, Ints, KernelResult, f64_order_key};

use super::cmp_expr::Sides;
use super::like::{Tok, like_tokens};
use crate::expr::{Value, and_valid, decode_expr, eval};
use crate::reader::Reader;

/// A literal decoded for its column's type.
#[derive(Clone, Copy)]
enum Lit<'a> {
    I32(i32),
    I64(i64),
    /// A float (compared under IEEE total order, as Arrow does).
    F64(f64),
    I128(i128),
    /// UTF-8 bytes (compared byte-wise, as Arrow compares strings).
    Str(&'a [u8]),
}

/// A comparison resolved against how its column's values are stored: the literal in the
/// stored width, or — when it lies outside what that width holds — the answer for every row.
#[derive(Clone, Copy)]
pub(super) enum Test<'a> {
    I8(&'a [i8], i8),
    I16(&'a [i16], i16),
    I32(&'a [i32], i32),
    I64(&'a [i64], i64),
    F64(&'a [f64], f64),
    I128(&'a [i128], i128),
    Str(&'a Column<'a>, &'a [u8]),
    /// Holds for every row (before validity).
    All,
    /// Holds for no row.
    Nothing,
}

pub(super) enum Op<'a> {
    Cmp {
        col: &'a Column<'a>,
        op: Cmp,
        test: Test<'a>,
    },
    IsNull(&'a Column<'a>),
    IsNotNull(&'a Column<'a>),
    /// Equality with any of the tests (those that can hold).
    In {
        col: &'a Column<'a>,
        tests: Vec<Test<'a>>,
    },
    And,
    Or,
    Not,
    Const(u8),
    Like {
        col: &'a Column<'a>,
        shape: u8,
        text: &'a [u8],
        /// The pattern of [`program::like::PATTERN`].
        tokens: Vec<Tok>,
    },
    /// `a op b` for two string columns, byte-wise.
    CmpStrings {
        a: &'a Column<'a>,
        b: &'a Column<'a>,
        op: Cmp,
    },
    /// A boolean column's values.
    Bool(&'a Column<'a>),
    /// `a op b` for two computed values (evaluated over the whole batch at decode), `valid`
    /// where both are (`None`: every row).
    CmpExpr {
        sides: Sides<'a>,
        valid: Option<Vec<u64>>,
        op: Cmp,
    },
    /// `a op b` for two columns of one fixed-width type, each read as stored (`ka`, `kb`).
    CmpColumns {
        a: &'a Column<'a>,
        b: &'a Column<'a>,
        ka: Keys<'a>,
        kb: Keys<'a>,
        op: Cmp,
    },
}

/// A fixed-width column's values as stored, compared through a common key (floats by their
/// IEEE total-order key, as Arrow compares them).
#[derive(Clone, Copy)]
pub(super) enum Keys<'a> {
    Ints(Ints<'a>),
    F64(&'a [f64]),
    I128(&'a [i128]),
}

impl<'a> Keys<'a> {
    fn of(col: &Column<'a>) -> KernelResult<Self> {
        Ok(match col.type_code() {
            types::FLOAT64 => Keys::F64(col.f64s()?),
            types::DECIMAL128 => Keys::I128(col.i128s()?),
            _ => Keys::Ints(col.ints()?),
        })
    }

    #[inline(always)]
    pub(super) fn get(&self, i: usize) -> i128 {
        match *self {
            Keys::Ints(Ints::I8(v)) => v[i] as i128,
            Keys::Ints(Ints::I16(v)) => v[i] as i128,
            Keys::Ints(Ints::I32(v)) => v[i] as i128,
            Keys::Ints(Ints::I64(v)) => v[i] as i128,
            Keys::F64(v) => f64_order_key(v[i]) as i128,
            Keys::I128(v) => v[i],
        }
    }
}

impl<'a> Reader<'a> {
    fn lit(&mut self, col: &Column) -> KernelResult<Lit<'a>> {
        Ok(match col.type_code() {
            types::INT32 | types::DATE32 => {
                let s = self.take(4)?;
                Lit::I32(i32::from_le_bytes([s[0], s[1], s[2], s[3]]))
            }
            types::INT64 => {
                let mut w = [0u8; 8];
                w.copy_from_slice(self.take(8)?);
                Lit::I64(i64::from_le_bytes(w))
            }
            types::FLOAT64 => {
                let mut w = [0u8; 8];
                w.copy_from_slice(self.take(8)?);
                Lit::F64(f64::from_le_bytes(w))
            }
            types::DECIMAL128 => {
                let mut w = [0u8; 16];
                w.copy_from_slice(self.take(16)?);
                Lit::I128(i128::from_le_bytes(w))
            }
            types::UTF8 => {
                let n = self.u16()?;
                Lit::Str(self.take(n)?)
            }
            _ => return Err(status::UNSUPPORTED),
        })
    }
}

fn cmp_op(code: u8) -> KernelResult<Cmp> {
    Ok(match code {
        program::op::EQ => Cmp::Eq,
        program::op::NE => Cmp::Ne,
        program::op::LT => Cmp::Lt,
        program::op::LE => Cmp::Le,
        program::op::GT => Cmp::Gt,
        program::op::GE => Cmp::Ge,
        _ => return Err(status::BAD_INPUT),
    })
}

/// The literal in the stored type, or the answer when no stored value can equal it: it lies
/// above every value (`l > 0`) or below every value.
fn fit<'a, T: TryFrom<i64>>(
    v: &'a [T],
    l: i64,
    op: Cmp,
    test: fn(&'a [T], T) -> Test<'a>,
) -> Test<'a> {
    match T::try_from(l) {
        Ok(x) => test(v, x),
        Err(_) => match (op, l > 0) {
            (Cmp::Ne, _) | (Cmp::Lt | Cmp::Le, true) | (Cmp::Gt | Cmp::Ge, false) => Test::All,
            _ => Test::Nothing,
        },
    }
}

/// `column op lit` against the column's values as stored.
fn resolve<'a>(col: &'a Column<'a>, op: Cmp, lit: Lit<'a>) -> KernelResult<Test<'a>> {
    let int = |l: i64| -> KernelResult<Test<'a>> {
        Ok(match col.ints()? {
            Ints::I8(v) => fit(v, l, op, Test::I8),
            Ints::I16(v) => fit(v, l, op, Test::I16),
            Ints::I32(v) => fit(v, l, op, Test::I32),
            Ints::I64(v) => Test::I64(v, l),
        })
    };
    match lit {
        Lit::F64(l) => Ok(Test::F64(col.f64s()?, l)),
        Lit::I128(l) => Ok(Test::I128(col.i128s()?, l)),
        Lit::I32(l) => int(l as i64),
        Lit::I64(l) => int(l),
        Lit::Str(l) => Ok(Test::Str(col, l)),
    }
}

/// Decodes and checks the whole program and resolves its compares against the batch (the
/// sides of a [`program::CMP_EXPR`] are computed here); returns the operations and the
/// deepest the evaluation stack gets.
pub(super) fn decode<'a>(batch: &'a Batch<'a>) -> KernelResult<(Vec<Op<'a>>, usize)> {
    let bytes = batch.params();
    if bytes.len() > program::PROGRAM_BYTES_MAX {
        return Err(status::BAD_INPUT);
    }
    let mut r = Reader { b: bytes, pos: 0 };
    let mut ops = Vec::new();
    let (mut depth, mut deepest) = (0usize, 0usize);
    while r.pos < bytes.len() {
        let code = r.u8()?;
        let op = match code {
            program::CMP => {
                let col = batch.column(r.u16()?)?;
                let op = cmp_op(r.u8()?)?;
                let test = resolve(col, op, r.lit(col)?)?;
                Op::Cmp { col, op, test }
            }
            program::IS_NULL => Op::IsNull(batch.column(r.u16()?)?),
            program::IS_NOT_NULL => Op::IsNotNull(batch.column(r.u16()?)?),
            program::IN => {
                let col = batch.column(r.u16()?)?;
                let n = r.u16()?;
                let mut tests = Vec::with_capacity(n);
                for _ in 0..n {
                    let test = resolve(col, Cmp::Eq, r.lit(col)?)?;
                    if !matches!(test, Test::Nothing) {
                        tests.push(test);
                    }
                }
                Op::In { col, tests }
            }
            program::LIKE => {
                let col = batch.column(r.u16()?)?;
                let shape = r.u8()?;
                let n = r.u16()?;
                if col.type_code() != types::UTF8 || shape > program::like::PATTERN {
                    return Err(status::BAD_INPUT);
                }
                let text = r.take(n)?;
                Op::Like {
                    col,
                    shape,
                    text,
                    tokens: if shape == program::like::PATTERN {
                        like_tokens(text)
                    } else {
                        Vec::new()
                    },
                }
            }
            program::CMP_COLUMNS => {
                let a = batch.column(r.u16()?)?;
                let op = cmp_op(r.u8()?)?;
                let b = batch.column(r.u16()?)?;
                if a.type_code() != b.type_code() {
                    return Err(status::BAD_INPUT);
                }
                if a.type_code() == types::UTF8 {
                    Op::CmpStrings { a, b, op }
                } else {
                    if types::width(a.type_code()) == 0 {
                        return Err(status::BAD_INPUT);
                    }
                    // Both read as their type says (checked before any row).
                    let (ka, kb) = (Keys::of(a)?, Keys::of(b)?);
                    Op::CmpColumns { a, b, ka, kb, op }
                }
            }
            program::CMP_EXPR => {
                let op = cmp_op(r.u8()?)?;
                let mut side = || -> KernelResult<Value<'a>> {
                    let n = r.u16()?;
                    eval(&decode_expr(r.take(n)?, batch)?, batch)
                };
                let (a, b) = (side()?, side()?);
                Op::CmpExpr {
                    sides: Sides::of(a.vals, b.vals, batch.rows())?,
                    valid: and_valid(a.valid, b.valid),
                    op,
                }
            }
            program::BOOL_COLUMN => {
                let col = batch.column(r.u16()?)?;
                if col.type_code() != types::BOOL {
                    return Err(status::BAD_INPUT);
                }
                Op::Bool(col)
            }
            program::AND => Op::And,
            program::OR => Op::Or,
            program::NOT => Op::Not,
            program::CONST => {
                let v = r.u8()?;
                if v > 2 {
                    return Err(status::BAD_INPUT);
                }
                Op::Const(v)
            }
            _ => return Err(status::BAD_INPUT),
        };
        depth = match op {
            Op::And | Op::Or => depth
                .checked_sub(1)
                .filter(|d| *d >= 1)
                .ok_or(status::BAD_INPUT)?,
            Op::Not => {
                if depth == 0 {
                    return Err(status::BAD_INPUT);
                }
                depth
            }
            _ => depth + 1,
        };
        if depth > program::STACK_MAX {
            return Err(status::BAD_INPUT);
        }
        deepest = deepest.max(depth);
        ops.push(op);
    }
    if depth != 1 {
        return Err(status::BAD_INPUT);
    }
    Ok((ops, deepest))
}
