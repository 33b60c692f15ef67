//! The built-in filter kernel: evaluates the device's filter program (see
//! `nearstore_kernel_abi::program`) over a batch in passes of 1 024 rows, with SQL three-valued
//! logic. Each stack value is a pair of masks per block of 64 rows: rows known true and rows
//! known false (a row in neither is NULL), so AND, OR and NOT are two bitwise operations per
//! block. Integer columns may come narrowed by the host (every value of the batch fits a
//! smaller width); compares are resolved against the width the values are stored in, so a
//! narrower column compares more rows per SIMD instruction.
#![no_std]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;

use nearstore_kernel::abi::{agg, expr, program, status, types};
use nearstore_kernel::{
    AggState, BLOCK, Batch, Cmp, Column, Ints, KernelResult, Selection, cmp_blocks, f64_order_key,
    lanes,
};

nearstore_kernel::export_filter!(filter);
nearstore_kernel::export_aggregate!(aggregate);
nearstore_kernel::export_project!(project);
nearstore_kernel::manifest!(
    b"abi=1\nkind=filter\nname=builtin.filter\nsignature=program\nstate_size=0\n"
);

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
enum Test<'a> {
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

enum Op<'a> {
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
enum Keys<'a> {
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
    fn get(&self, i: usize) -> i128 {
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

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> KernelResult<&'a [u8]> {
        let s = self
            .b
            .get(self.pos..self.pos + n)
            .ok_or(status::BAD_INPUT)?;
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> KernelResult<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> KernelResult<usize> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]) as usize)
    }
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
fn decode<'a>(batch: &'a Batch<'a>) -> KernelResult<(Vec<Op<'a>>, usize)> {
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

/// Blocks of 64 rows the program runs over per pass: each operation is dispatched once per
/// pass, its inner loop runs over all the blocks.
const CHUNK: usize = 16;

/// Rows known true and rows known false, one mask per block of a pass.
type Masks = ([u64; CHUNK], [u64; CHUNK]);

/// Masks of the blocks from row `base` where `test` holds (validity not applied).
fn test_blocks(test: &Test, op: Cmp, base: usize, live: &[u64], out: &mut [u64]) {
    match *test {
        Test::I8(v, l) => cmp_blocks(v, base, op, l, out),
        Test::I16(v, l) => cmp_blocks(v, base, op, l, out),
        Test::I32(v, l) => cmp_blocks(v, base, op, l, out),
        Test::I64(v, l) => cmp_blocks(v, base, op, l, out),
        Test::F64(v, l) => cmp_blocks(v, base, op, l, out),
        Test::I128(v, l) => cmp_blocks(v, base, op, l, out),
        Test::Str(c, l) => str_blocks(c, base, out, |s| op.holds(s, l)),
        Test::All => out.copy_from_slice(live),
        Test::Nothing => out.fill(0),
    }
}

/// Masks of the blocks from row `base` (of `rows`) where `f(row)` holds, a row at a time.
fn row_blocks(rows: usize, base: usize, out: &mut [u64], f: impl Fn(usize) -> bool) {
    for (b, o) in out.iter_mut().enumerate() {
        let at = base + b * BLOCK;
        let mut m = 0u64;
        for row in at..rows.min(at + BLOCK) {
            m |= (f(row) as u64) << (row - at);
        }
        *o = m;
    }
}

/// Masks of the blocks from row `base` of a string column where `f` holds, a row at a time.
fn str_blocks(col: &Column, base: usize, out: &mut [u64], f: impl Fn(&[u8]) -> bool) {
    row_blocks(col.rows(), base, out, |row| f(col.str_value(row)));
}

/// Whether `needle` occurs in `hay`: candidates found by their first byte, then compared.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    let last_start = match hay.len().checked_sub(needle.len()) {
        Some(n) => n,
        None => return false,
    };
    let mut from = 0;
    while let Some(p) = hay[from..=last_start].iter().position(|&b| b == first) {
        let at = from + p;
        if &hay[at + 1..at + needle.len()] == rest {
            return true;
        }
        from = at + 1;
        if from > last_start {
            break;
        }
    }
    false
}

/// One element of a `LIKE` pattern.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tok {
    /// This byte.
    Byte(u8),
    /// `_`: one character.
    One,
    /// `%`: any characters.
    Any,
}

/// A `LIKE` pattern's elements: `\` takes the next byte as it is (a trailing one is itself);
/// the bytes of a multi-byte character are never `%`, `_` or `\`.
fn like_tokens(p: &[u8]) -> Vec<Tok> {
    let mut out = Vec::with_capacity(p.len());
    let mut bytes = p.iter();
    while let Some(&b) = bytes.next() {
        out.push(match b {
            b'%' => Tok::Any,
            b'_' => Tok::One,
            b'\\' => Tok::Byte(bytes.next().copied().unwrap_or(b'\\')),
            b => Tok::Byte(b),
        });
    }
    out
}

/// Bytes of the UTF-8 character that starts with `b`.
fn char_len(b: u8) -> usize {
    match b {
        0xF0.. => 4,
        0xE0.. => 3,
        0xC0.. => 2,
        _ => 1,
    }
}

/// Whether `s` (UTF-8) matches the pattern `p`: greedy, going back only to the last `%`
/// (enough, since a later `%` covers whatever an earlier one would), and only ever to a
/// character's first byte.
fn like(s: &[u8], p: &[Tok]) -> bool {
    let (mut si, mut pi) = (0, 0);
    let mut back: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(Tok::Any) => {
                back = Some((pi + 1, si));
                pi += 1;
                continue;
            }
            Some(Tok::One) => {
                si += char_len(s[si]);
                pi += 1;
                continue;
            }
            Some(Tok::Byte(b)) if *b == s[si] => {
                si += 1;
                pi += 1;
                continue;
            }
            _ => {}
        }
        match back {
            // The last `%` takes one more character.
            Some((after, from)) => {
                let from = from + char_len(s[from]);
                back = Some((after, from));
                (pi, si) = (after, from);
            }
            None => return false,
        }
    }
    p[pi.min(p.len())..].iter().all(|t| *t == Tok::Any)
}

/// Splits `m` (rows where a test holds) by validity into known true and known false; `live`
/// masks the rows of each block.
fn with_validity(col: &Column, base: usize, live: &[u64], m: &mut Masks) {
    if col.has_nulls() {
        split(m, live.len(), |b| col.validity_block(base + b * BLOCK));
    } else {
        split(m, live.len(), |b| live[b]);
    }
}

/// The first `n` masks of `m` from row `base` (of `rows`) where `f(row)` holds for a row of
/// two columns, a row at a time; known only where both are valid.
fn pair_blocks(
    a: &Column,
    b: &Column,
    rows: usize,
    base: usize,
    n: usize,
    m: &mut Masks,
    f: impl Fn(usize) -> bool,
) {
    row_blocks(rows, base, &mut m.0[..n], f);
    split(m, n, |blk| {
        a.validity_block(base + blk * BLOCK) & b.validity_block(base + blk * BLOCK)
    });
}

/// Splits the first `n` masks of `m` into known true and known false where `valid(block)`.
#[inline(always)]
fn split(m: &mut Masks, n: usize, valid: impl Fn(usize) -> u64) {
    for b in 0..n {
        let (hit, valid) = (m.0[b], valid(b));
        m.0[b] = hit & valid;
        m.1[b] = !hit & valid;
    }
}

fn filter(batch: &Batch, sel: &mut Selection) -> KernelResult {
    let (ops, deepest) = decode(batch)?;
    let rows = batch.rows();
    let mut stack: Vec<Masks> = vec![([0; CHUNK], [0; CHUNK]); deepest];
    let mut any = [0u64; CHUNK];
    let mut last = [0u64; CHUNK];
    let mut out = [0u64; CHUNK];
    for base in (0..rows).step_by(CHUNK * BLOCK) {
        let n = (rows - base).div_ceil(BLOCK).min(CHUNK);
        // The rows of each block: all of them but in the last pass.
        let live: &[u64] = if rows - base >= CHUNK * BLOCK {
            &[u64::MAX; CHUNK]
        } else {
            for (b, l) in last[..n].iter_mut().enumerate() {
                *l = lanes(rows - base - b * BLOCK);
            }
            &last[..n]
        };
        let mut sp = 0;
        for op in &ops {
            match op {
                Op::Cmp { col, op, test } => {
                    let top = stack.get_mut(sp).ok_or(status::BAD_INPUT)?;
                    test_blocks(test, *op, base, live, &mut top.0[..n]);
                    with_validity(col, base, live, top);
                    sp += 1;
                }
                Op::CmpStrings { a, b, op } => {
                    let top = stack.get_mut(sp).ok_or(status::BAD_INPUT)?;
                    pair_blocks(a, b, rows, base, n, top, |row| {
                        op.holds(a.str_value(row), b.str_value(row))
                    });
                    sp += 1;
                }
                Op::CmpColumns { a, b, ka, kb, op } => {
                    let top = stack.get_mut(sp).ok_or(status::BAD_INPUT)?;
                    pair_blocks(a, b, rows, base, n, top, |row| {
                        op.holds(&ka.get(row), &kb.get(row))
                    });
                    sp += 1;
                }
                Op::CmpExpr { sides, valid, op } => {
                    let top = stack.get_mut(sp).ok_or(status::BAD_INPUT)?;
                    let out = &mut top.0[..n];
                    sides.blocks(*op, rows, base, out)?;
                    let first = base / BLOCK;
                    split(top, n, |blk| {
                        valid
                            .as_ref()
                            .map_or(live[blk], |v| v[first + blk] & live[blk])
                    });
                    sp += 1;
                }
                Op::Bool(col) => {
                    let top = stack.get_mut(sp).ok_or(status::BAD_INPUT)?;
                    for (b, o) in top.0[..n].iter_mut().enumerate() {
                        *o = col.bool_block(base + b * BLOCK)?;
                    }
                    with_validity(col, base, live, top);
                    sp += 1;
                }
                Op::Like {
                    col,
                    shape,
                    text,
                    tokens,
                } => {
                    let top = stack.get_mut(sp).ok_or(status::BAD_INPUT)?;
                    let out = &mut top.0[..n];
                    match *shape {
                        program::like::PREFIX => {
                            str_blocks(col, base, out, |s| s.starts_with(text))
                        }
                        program::like::SUFFIX => str_blocks(col, base, out, |s| s.ends_with(text)),
                        program::like::CONTAINS => {
                            str_blocks(col, base, out, |s| contains(s, text))
                        }
                        _ => str_blocks(col, base, out, |s| like(s, tokens)),
                    }
                    with_validity(col, base, live, top);
                    sp += 1;
                }
                Op::In { col, tests } => {
                    let top = stack.get_mut(sp).ok_or(status::BAD_INPUT)?;
                    top.0[..n].fill(0);
                    for test in tests {
                        test_blocks(test, Cmp::Eq, base, live, &mut any[..n]);
                        for (t, a) in top.0[..n].iter_mut().zip(&any[..n]) {
                            *t |= a;
                        }
                    }
                    with_validity(col, base, live, top);
                    sp += 1;
                }
                Op::IsNull(col) | Op::IsNotNull(col) => {
                    let top = stack.get_mut(sp).ok_or(status::BAD_INPUT)?;
                    for b in 0..n {
                        let valid = col.validity_block(base + b * BLOCK);
                        let (t, f) = if matches!(op, Op::IsNull(_)) {
                            (!valid & live[b], valid)
                        } else {
                            (valid, !valid & live[b])
                        };
                        top.0[b] = t;
                        top.1[b] = f;
                    }
                    sp += 1;
                }
                Op::And | Op::Or => {
                    sp = sp
                        .checked_sub(1)
                        .filter(|s| *s >= 1)
                        .ok_or(status::BAD_INPUT)?;
                    let (lower, upper) = stack.split_at_mut(sp);
                    let (a, b) = (&mut lower[sp - 1], &upper[0]);
                    let and = matches!(op, Op::And);
                    for i in 0..n {
                        if and {
                            a.0[i] &= b.0[i];
                            a.1[i] |= b.1[i];
                        } else {
                            a.0[i] |= b.0[i];
                            a.1[i] &= b.1[i];
                        }
                    }
                }
                Op::Not => {
                    let top = stack
                        .get_mut(sp.checked_sub(1).ok_or(status::BAD_INPUT)?)
                        .ok_or(status::BAD_INPUT)?;
                    core::mem::swap(&mut top.0, &mut top.1);
                }
                Op::Const(v) => {
                    let top = stack.get_mut(sp).ok_or(status::BAD_INPUT)?;
                    for b in 0..n {
                        top.0[b] = if *v == 1 { live[b] } else { 0 };
                        top.1[b] = if *v == 0 { live[b] } else { 0 };
                    }
                    sp += 1;
                }
            }
        }
        if sp != 1 {
            return Err(status::BAD_INPUT);
        }
        for ((o, t), l) in out.iter_mut().zip(&stack[0].0).zip(live) {
            *o = t & l;
        }
        sel.push_masks(base, &out[..n])?;
    }
    Ok(())
}

/// One aggregate's running value over some rows.
#[derive(Clone, Copy)]
struct Partial {
    acc: i128,
    fsum: f64,
    count: i64,
}

/// Folds `v` (an integer, or a float's order key / value) into a partial.
#[inline(always)]
fn fold(p: &mut Partial, func: u8, float: bool, v: i128, f: f64) -> KernelResult {
    match func {
        agg::SUM if float => p.fsum += f,
        agg::SUM => p.acc = p.acc.checked_add(v).ok_or(status::OVERFLOW)?,
        agg::MIN => {
            if p.count == 0 || v < p.acc {
                p.acc = v;
            }
        }
        agg::MAX => {
            if p.count == 0 || v > p.acc {
                p.acc = v;
            }
        }
        _ => {}
    }
    p.count += 1;
    Ok(())
}

/// Merges a partial into a state slot.
fn merge(
    st: &mut AggState,
    group: usize,
    j: usize,
    func: u8,
    float: bool,
    p: &Partial,
) -> KernelResult {
    if p.count == 0 {
        return Ok(());
    }
    let (acc, count) = st.slot(group, j)?;
    let first = *count == 0;
    match func {
        agg::SUM if float => {
            let prev = f64::from_le_bytes(acc[..8].try_into().map_err(|_| status::BAD_INPUT)?);
            acc[..8].copy_from_slice(&(prev + p.fsum).to_le_bytes());
        }
        agg::SUM => {
            let prev = i128::from_le_bytes(*acc);
            *acc = prev
                .checked_add(p.acc)
                .ok_or(status::OVERFLOW)?
                .to_le_bytes();
        }
        agg::MIN | agg::MAX => {
            let prev = i128::from_le_bytes(*acc);
            let better = if func == agg::MIN {
                p.acc < prev
            } else {
                p.acc > prev
            };
            if first || better {
                *acc = p.acc.to_le_bytes();
            }
        }
        _ => {}
    }
    *count += p.count;
    Ok(())
}

/// Accumulates the aggregate program over a batch (see `nearstore_kernel_abi::agg`).
fn aggregate(batch: &Batch, st: &mut AggState) -> KernelResult {
    let p = batch.params();
    if p.len() % 4 != 0 {
        return Err(status::BAD_INPUT);
    }
    let rows = batch.rows();
    let gcol = batch.column(0)?;
    let groups: Option<&[i32]> = if gcol.type_code() == 0 {
        None
    } else {
        Some(gcol.i32s()?)
    };
    for j in 0..p.len() / 4 {
        let func = p[4 * j];
        let col = u16::from_le_bytes([p[4 * j + 1], p[4 * j + 2]]);
        let zero = Partial {
            acc: 0,
            fsum: 0.0,
            count: 0,
        };
        if func == agg::COUNT_STAR {
            match groups {
                None => merge(
                    st,
                    0,
                    j,
                    func,
                    false,
                    &Partial {
                        count: rows as i64,
                        ..zero
                    },
                )?,
                Some(g) => {
                    for &gi in g.iter().take(rows) {
                        st.fold(gi as u32 as usize, j, (), |acc, _, ()| Ok(acc))?;
                    }
                }
            }
            continue;
        }
        if !matches!(func, agg::COUNT | agg::SUM | agg::MIN | agg::MAX) || col == agg::NO_COLUMN {
            return Err(status::BAD_INPUT);
        }
        let c = batch.column(col as usize)?;
        let float = c.type_code() == types::FLOAT64;
        let args = Args {
            func,
            float,
            j,
            rows,
            groups,
        };
        match c.type_code() {
            types::INT32 | types::DATE32 => {
                accumulate(st, c, c.i32s()?, |x| (x as i128, 0.0), &args)?
            }
            types::INT64 => accumulate(st, c, c.i64s()?, |x| (x as i128, 0.0), &args)?,
            types::DECIMAL128 => accumulate(st, c, c.i128s()?, |x| (x, 0.0), &args)?,
            types::FLOAT64 => {
                accumulate(st, c, c.f64s()?, |x| (f64_order_key(x) as i128, x), &args)?
            }
            _ => return Err(status::UNSUPPORTED),
        }
    }
    Ok(())
}

struct Args<'a> {
    func: u8,
    float: bool,
    j: usize,
    rows: usize,
    groups: Option<&'a [i32]>,
}

/// One aggregate over one column, monomorphised per value type.
#[inline(always)]
fn accumulate<T: Copy>(
    st: &mut AggState,
    c: &Column,
    vals: &[T],
    conv: impl Fn(T) -> (i128, f64),
    a: &Args,
) -> KernelResult {
    let zero = Partial {
        acc: 0,
        fsum: 0.0,
        count: 0,
    };
    match a.groups {
        // Float sums are folded row by row into the slot so the rounding order matches a
        // sequential sum over all batches.
        None if !(a.float && a.func == agg::SUM) => {
            let mut part = zero;
            for base in (0..a.rows).step_by(BLOCK) {
                let valid = c.validity_block(base);
                let end = (base + BLOCK).min(a.rows);
                if valid == lanes(end - base) {
                    for &x in &vals[base..end] {
                        let (v, f) = conv(x);
                        fold(&mut part, a.func, a.float, v, f)?;
                    }
                } else {
                    for (i, &x) in vals[base..end].iter().enumerate() {
                        if valid & (1 << i) != 0 {
                            let (v, f) = conv(x);
                            fold(&mut part, a.func, a.float, v, f)?;
                        }
                    }
                }
            }
            merge(st, 0, a.j, a.func, a.float, &part)
        }
        // Row at a time into each row's slot, one loop per function.
        _ => match a.func {
            agg::SUM if a.float => scatter(st, c, vals, a, |acc, _, x| {
                let (_, f) = conv(x);
                Ok((f64::from_bits(acc as u64) + f).to_bits() as i128)
            }),
            agg::SUM => scatter(st, c, vals, a, |acc, _, x| {
                acc.checked_add(conv(x).0).ok_or(status::OVERFLOW)
            }),
            agg::MIN => scatter(st, c, vals, a, |acc, n, x| {
                let v = conv(x).0;
                Ok(if n == 0 || v < acc { v } else { acc })
            }),
            agg::MAX => scatter(st, c, vals, a, |acc, n, x| {
                let v = conv(x).0;
                Ok(if n == 0 || v > acc { v } else { acc })
            }),
            _ => scatter(st, c, vals, a, |acc, _, _| Ok(acc)),
        },
    }
}

/// Folds each valid row of `vals` into its group's slot with `f`.
#[inline(always)]
fn scatter<T: Copy>(
    st: &mut AggState,
    c: &Column,
    vals: &[T],
    a: &Args,
    f: impl Fn(i128, i64, T) -> KernelResult<i128>,
) -> KernelResult {
    let vals = vals.get(..a.rows).ok_or(status::BAD_INPUT)?;
    for base in (0..a.rows).step_by(BLOCK) {
        let valid = c.validity_block(base);
        let end = (base + BLOCK).min(a.rows);
        for i in base..end {
            if valid >> (i - base) & 1 != 0 {
                let g = match a.groups {
                    Some(g) => *g.get(i).ok_or(status::BAD_INPUT)? as u32 as usize,
                    None => 0,
                };
                st.fold(g, a.j, vals[i], &f)?;
            }
        }
    }
    Ok(())
}

/// One instruction of the expression program.
#[derive(Clone, Copy)]
enum XOp {
    Col(usize),
    Int(i128),
    Float(f64),
    Arith(u8, u8),
    Rescale(u32),
}

/// A stack value over the whole batch, column at a time: a column as the batch holds it, a
/// computed column (64-bit integers while every value fits — the fast path the compiler
/// vectorises —, 128-bit integers for wide decimals, or floats), or a constant.
enum Vals<'a> {
    I64Ref(&'a [i64]),
    F64Ref(&'a [f64]),
    I64(Vec<i64>),
    I128(Vec<i128>),
    F64(Vec<f64>),
    ConstI(i128),
    ConstF(f64),
}

struct Value<'a> {
    vals: Vals<'a>,
    /// Validity words; `None`: every row valid.
    valid: Option<Vec<u64>>,
    /// Rows a rescale took past `i128` (words, a bit per row; `None`: none). An error only
    /// where the row is valid when the value is used: Arrow raises a decimal dividend only on
    /// the rows valid in both operands.
    overflow: Option<Vec<u64>>,
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

fn decode_expr(params: &[u8], batch: &Batch) -> KernelResult<Vec<XOp>> {
    let mut r = Reader { b: params, pos: 0 };
    let mut ops = Vec::new();
    let mut depth = 0usize;
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

fn is_valid(valid: &Option<Vec<u64>>, i: usize) -> bool {
    valid
        .as_ref()
        .is_none_or(|v| v[i / 64] >> (i % 64) & 1 == 1)
}

fn and_valid(a: Option<Vec<u64>>, b: Option<Vec<u64>>) -> Option<Vec<u64>> {
    match (a, b) {
        (Some(mut x), Some(y)) => {
            x.iter_mut().zip(&y).for_each(|(p, q)| *p &= q);
            Some(x)
        }
        (x, None) | (None, x) => x,
    }
}

/// The value as 128-bit integers (`None` for floats).
fn wide(v: &Vals, rows: usize) -> Option<Vec<i128>> {
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
enum Side<'v, T> {
    Rows(&'v [T]),
    Const(T),
}

impl<T: Copy> Side<'_, T> {
    #[inline(always)]
    fn at(self, i: usize) -> T {
        match self {
            Side::Rows(x) => x[i],
            Side::Const(c) => c,
        }
    }
}

/// A float value as an operand (`None`: not floats).
fn float_side<'v>(v: &'v Vals) -> Option<Side<'v, f64>> {
    Some(match v {
        Vals::F64Ref(s) => Side::Rows(s),
        Vals::F64(s) => Side::Rows(s),
        Vals::ConstF(c) => Side::Const(*c),
        _ => return None,
    })
}

/// An integer value as a 64-bit operand (`None`: floats, or 128-bit integers).
fn int_side<'v>(v: &'v Vals) -> Option<Side<'v, i64>> {
    Some(match v {
        Vals::I64Ref(s) => Side::Rows(s),
        Vals::I64(s) => Side::Rows(s),
        Vals::ConstI(c) => Side::Const(i64::try_from(*c).ok()?),
        _ => return None,
    })
}

/// `out[i] = f(a[i], b[i]).0` for every row, and whether `f` flagged any row, eight rows per
/// iteration (one back-edge, one interruption check) and then the rest. `VECTOR`: over whole
/// arrays of eight, which the compiler vectorises (floats); else a row at a time (integers:
/// Cranelift's 64-bit lane multiplies and the overflow checks' lane shuffles are slower than
/// scalar code). A function of its own per operation: inlined into the evaluator, Cranelift
/// kept the loop's counters on the stack.
#[inline(never)]
fn zip_with<const VECTOR: bool, T: Copy, R: Copy>(
    out: &mut [R],
    a: Side<T>,
    b: Side<T>,
    f: impl Fn(T, T) -> (R, bool),
) -> bool {
    let mut any = false;
    let mut put = |o: &mut R, x: T, y: T| {
        let (r, flag) = f(x, y);
        *o = r;
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

/// 8-byte values (`i64`, `f64`) as the bits they are stored as.
fn bits<T: Eight>(x: &[T]) -> &[u64] {
    // SAFETY: `T` has the size and alignment of `u64` (`Eight`'s contract), and every bit
    // pattern is a valid `u64`.
    unsafe { core::slice::from_raw_parts(x.as_ptr().cast::<u64>(), x.len()) }
}

/// The plain 8-byte value types [`bits`] reads.
///
/// # Safety
/// Implementors have the size and alignment of `u64`.
unsafe trait Eight: Copy {}
// SAFETY: 8 bytes, aligned to 8, as `u64`.
unsafe impl Eight for i64 {}
// SAFETY: 8 bytes, aligned to 8, as `u64`.
unsafe impl Eight for f64 {}

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
    let mut out = vec![0i64; rows];
    // Per row: the result, and whether it overflowed (for products: an operand beyond ±2^31,
    // which the wide path then settles); one monomorphised loop per operator.
    macro_rules! run {
        ($val:expr, $bad:expr) => {{
            let (val, bad) = ($val, $bad);
            let any = zip_with::<false, _, _>(&mut out, a, b, |x, y| {
                let r = val(x, y);
                (r, bad(x, y, r))
            });
            any && match valid {
                None => true,
                Some(v) => (0..rows)
                    .any(|i| v[i / 64] >> (i % 64) & 1 == 1 && bad(a.at(i), b.at(i), out[i])),
            }
        }};
    }
    let over = match op {
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
    };
    (out, over)
}

#[inline(always)]
fn bin_f64(op: u8, rows: usize, a: Side<f64>, b: Side<f64>) -> Vec<f64> {
    let mut out = vec![0.0; rows];
    let o = &mut out;
    match op {
        expr::ADD => zip_with::<true, _, _>(o, a, b, |x, y| (x + y, false)),
        expr::SUB => zip_with::<true, _, _>(o, a, b, |x, y| (x - y, false)),
        expr::MUL => zip_with::<true, _, _>(o, a, b, |x, y| (x * y, false)),
        _ => zip_with::<true, _, _>(o, a, b, |x, y| (x / y, false)),
    };
    out
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

fn arith(op: u8, range: u8, rows: usize, a: Value, b: Value) -> KernelResult<Value<'static>> {
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

/// Evaluates an expression program (see `nearstore_kernel_abi::expr`) over the batch, column
/// at a time; integer arithmetic is checked on valid rows only, as Arrow's is: in 64 bits
/// while it fits, in 128 bits for what does not (decimals), an error for what leaves an
/// integer type's range or divides by zero.
fn eval<'a>(ops: &[XOp], batch: &'a Batch<'a>) -> KernelResult<Value<'a>> {
    let rows = batch.rows();
    let mut stack: Vec<Value> = Vec::with_capacity(expr::STACK_MAX);
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

/// Both sides of a compare of computed values, by the type they compare in.
enum Sides<'a> {
    /// 64-bit integers (each side as [`int_side`] reads it).
    Ints(Vals<'a>, Vals<'a>),
    /// 128-bit integers, where a side needs them.
    Wide(Vec<i128>, Vec<i128>),
    /// Floats (each side as [`float_side`] reads it), compared by IEEE total order as Arrow
    /// compares them.
    Floats(Vals<'a>, Vals<'a>),
}

impl<'a> Sides<'a> {
    /// Floats when both are, 64-bit integers when both fit, else 128-bit integers; sides of
    /// different kinds are malformed.
    fn of(a: Vals<'a>, b: Vals<'a>, rows: usize) -> KernelResult<Self> {
        Ok(match (float_side(&a), float_side(&b)) {
            (Some(_), Some(_)) => Sides::Floats(a, b),
            (None, None) if int_side(&a).is_some() && int_side(&b).is_some() => Sides::Ints(a, b),
            (None, None) => {
                let wide = |v: &Vals| wide(v, rows).ok_or(status::BAD_INPUT);
                Sides::Wide(wide(&a)?, wide(&b)?)
            }
            _ => return Err(status::BAD_INPUT),
        })
    }

    /// Masks of the blocks from row `base` where `a op b`.
    fn blocks(&self, op: Cmp, rows: usize, base: usize, out: &mut [u64]) -> KernelResult {
        fn cmp<T: Copy, K: PartialOrd>(
            (a, b): (Side<T>, Side<T>),
            key: impl Fn(T) -> K,
            op: Cmp,
            (rows, base, out): (usize, usize, &mut [u64]),
        ) {
            row_blocks(rows, base, out, |i| op.holds(&key(a.at(i)), &key(b.at(i))));
        }
        let at = (rows, base, out);
        fn both<'v, T>(
            x: Option<Side<'v, T>>,
            y: Option<Side<'v, T>>,
        ) -> KernelResult<(Side<'v, T>, Side<'v, T>)> {
            x.zip(y).ok_or(status::BAD_INPUT)
        }
        match self {
            Sides::Ints(a, b) => cmp(both(int_side(a), int_side(b))?, |x| x, op, at),
            Sides::Wide(a, b) => cmp((Side::Rows(a), Side::Rows(b)), |x| x, op, at),
            Sides::Floats(a, b) => cmp(both(float_side(a), float_side(b))?, f64_order_key, op, at),
        }
        Ok(())
    }
}

/// Evaluates the expression program (see [`eval`]) over a batch and writes 8-byte values
/// (`i64`, or `f64` bits) when the first parameter byte is 8, else 16-byte `i128`s.
fn project(batch: &Batch, out: &mut [u8], validity: &mut [u64]) -> KernelResult {
    let params = batch.params();
    let (&width, program) = params.split_first().ok_or(status::BAD_INPUT)?;
    let v = eval(&decode_expr(program, batch)?, batch)?;
    let rows = batch.rows();
    let words = rows.div_ceil(64);
    match width {
        8 => {
            let out = out.get_mut(..rows * 8).ok_or(status::OUTPUT_TOO_SMALL)?;
            // SAFETY: u64 has no invalid bit patterns; only the aligned middle is used.
            let (pre, out, post) = unsafe { out.align_to_mut::<u64>() };
            if !pre.is_empty() || !post.is_empty() {
                return Err(status::BAD_INPUT);
            }
            // Whole columns by one memory copy.
            match &v.vals {
                Vals::I64Ref(x) => out.copy_from_slice(bits(x)),
                Vals::I64(x) => out.copy_from_slice(bits(x)),
                Vals::F64Ref(x) => out.copy_from_slice(bits(x)),
                Vals::F64(x) => out.copy_from_slice(bits(x)),
                Vals::ConstF(c) => out.fill(c.to_bits()),
                _ => {
                    let x = wide(&v.vals, rows).ok_or(status::BAD_INPUT)?;
                    for (i, (d, z)) in out.iter_mut().zip(&x).enumerate() {
                        // A valid value beyond 64 bits: the host computes the batch instead.
                        *d = match i64::try_from(*z) {
                            Ok(n) => n as u64,
                            Err(_) if !is_valid(&v.valid, i) => 0,
                            Err(_) => return Err(status::OVERFLOW),
                        };
                    }
                }
            }
        }
        16 => {
            let out = out.get_mut(..rows * 16).ok_or(status::OUTPUT_TOO_SMALL)?;
            let x = wide(&v.vals, rows).ok_or(status::BAD_INPUT)?;
            for (i, z) in x.iter().enumerate() {
                out[16 * i..16 * i + 16].copy_from_slice(&z.to_le_bytes());
            }
        }
        _ => return Err(status::BAD_INPUT),
    }
    match &v.valid {
        Some(w) => validity[..words].copy_from_slice(w),
        None => validity[..words]
            .iter_mut()
            .enumerate()
            .for_each(|(w, x)| *x = lanes(rows - 64 * w)),
    }
    Ok(())
}

/// Top-k pre-selection entry point (Nearstore kernel ABI, `nearstore_topk`).
#[unsafe(no_mangle)]
pub extern "C" fn nearstore_topk(desc: u32, out: u32, state: u32) -> i32 {
    // SAFETY: the device calls this export with addresses it wrote per the ABI.
    match unsafe { topk(desc, out, state) } {
        Ok(n) => n as i32,
        Err(e) => e,
    }
}

/// A row's sort key as an `i128` where larger is better: descending keys as they are,
/// ascending ones bit-inverted (which reverses the order without overflow), NULLs above or
/// below every value (|values| < 10^38 < 2^127).
#[inline(always)]
fn order_key(v: Option<i128>, descending: bool, nulls_first: bool) -> i128 {
    match v {
        None if nulls_first => i128::MAX,
        None => i128::MIN,
        Some(v) if descending => v,
        Some(v) => !v,
    }
}

/// # Safety
/// `desc` as for `batch_from_memory`; `out` must address `ceil(rows / 64)` writable `u64`s and
/// `state` 16 + 16 k writable bytes, both aligned.
unsafe fn topk(desc: u32, out: u32, state: u32) -> KernelResult<usize> {
    // SAFETY: forwarded contract.
    let batch = unsafe { nearstore_kernel::batch_from_memory(desc) }?;
    let rows = batch.rows();
    let p = batch.params();
    if p.len() != 2 || !state.is_multiple_of(16) || !out.is_multiple_of(8) {
        return Err(status::BAD_INPUT);
    }
    let (descending, nulls_first) = (p[0] != 0, p[1] != 0);
    // SAFETY: per the contract, 16 header bytes at `state`.
    let header = unsafe { core::slice::from_raw_parts_mut(state as usize as *mut u32, 4) };
    let (k, mut n) = (header[0] as usize, header[1] as usize);
    if k == 0 || n > k {
        return Err(status::BAD_INPUT);
    }
    // SAFETY: per the contract, k i128s after the header, 16-byte aligned.
    let heap = unsafe { core::slice::from_raw_parts_mut((state as usize + 16) as *mut i128, k) };
    // SAFETY: per the contract.
    let words =
        unsafe { core::slice::from_raw_parts_mut(out as usize as *mut u64, rows.div_ceil(64)) };
    let c = batch.column(0)?;
    let (i32s, i64s, i128s, f64s) = match c.type_code() {
        types::INT32 | types::DATE32 => (c.i32s()?, &[][..], &[][..], &[][..]),
        types::INT64 => (&[][..], c.i64s()?, &[][..], &[][..]),
        types::DECIMAL128 => (&[][..], &[][..], c.i128s()?, &[][..]),
        types::FLOAT64 => (&[][..], &[][..], &[][..], c.f64s()?),
        _ => return Err(status::UNSUPPORTED),
    };
    let t = c.type_code();
    let value = |i: usize| -> i128 {
        match t {
            types::INT32 | types::DATE32 => i32s[i] as i128,
            types::INT64 => i64s[i] as i128,
            types::DECIMAL128 => i128s[i],
            _ => f64_order_key(f64s[i]) as i128,
        }
    };
    let mut selected = 0usize;
    for base in (0..rows).step_by(BLOCK) {
        let valid = c.validity_block(base);
        let end = (base + BLOCK).min(rows);
        let mut m = 0u64;
        for i in base..end {
            let v = (valid >> (i - base) & 1 == 1).then(|| value(i));
            let key = order_key(v, descending, nulls_first);
            if n < k {
                // Not full: every row may be in the top k.
                m |= 1 << (i - base);
                heap[n] = key;
                sift_up(&mut heap[..=n], n);
                n += 1;
            } else if key >= heap[0] {
                // At least the k-th best: a candidate (ties are settled by the later keys).
                m |= 1 << (i - base);
                if key > heap[0] {
                    heap[0] = key;
                    sift_down(&mut heap[..n], 0);
                }
            }
        }
        words[base / 64] = m;
        selected += m.count_ones() as usize;
    }
    header[1] = n as u32;
    Ok(selected)
}

fn sift_up(h: &mut [i128], mut i: usize) {
    while i > 0 {
        let parent = (i - 1) / 2;
        if h[i] >= h[parent] {
            break;
        }
        h.swap(i, parent);
        i = parent;
    }
}

fn sift_down(h: &mut [i128], mut i: usize) {
    loop {
        let (l, r) = (2 * i + 1, 2 * i + 2);
        let mut smallest = i;
        if l < h.len() && h[l] < h[smallest] {
            smallest = l;
        }
        if r < h.len() && h[r] < h[smallest] {
            smallest = r;
        }
        if smallest == i {
            return;
        }
        h.swap(i, smallest);
        i = smallest;
    }
}
