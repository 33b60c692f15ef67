//! The built-in filter kernel: evaluates the device's filter program (see
//! `nearstore_kernel_abi::program`) over a batch in passes of 1 024 rows, with SQL three-valued
//! logic. Each stack value is a pair of masks per block of 64 rows: rows known true and rows
//! known false (a row in neither is NULL), so AND, OR and NOT are two bitwise operations per
//! block. Integer columns may come narrowed by the host (every value of the batch fits a
//! smaller width); compares are resolved against the width the values are stored in, so a
//! narrower column compares more rows per SIMD instruction.

use alloc::vec;
use alloc::vec::Vec;

use nearstore_kernel::abi::status;
use nearstore_kernel::{BLOCK, Batch, Cmp, KernelResult, Selection, lanes};

use blocks::{pair_blocks, split, test_blocks, with_validity};
use decode::{Op, decode};
use like::like_blocks;

mod blocks;
mod cmp_expr;
mod decode;
mod like;

/// Blocks of 64 rows the program runs over per pass: each operation is dispatched once per
/// pass, its inner loop runs over all the blocks.
const CHUNK: usize = 16;

/// Rows known true and rows known false, one mask per block of a pass.
type Masks = ([u64; CHUNK], [u64; CHUNK]);

pub(crate) fn filter(batch: &Batch, sel: &mut Selection) -> KernelResult {
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
                    like_blocks(col, *shape, text, tokens, base, &mut top.0[..n]);
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
                    // Both masks and `live` are indexed by the block.
                    #[allow(clippy::needless_range_loop)]
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
                    combine(&mut lower[sp - 1], &upper[0], n, matches!(op, Op::And));
                }
                Op::Not => {
                    let top = stack
                        .get_mut(sp.checked_sub(1).ok_or(status::BAD_INPUT)?)
                        .ok_or(status::BAD_INPUT)?;
                    core::mem::swap(&mut top.0, &mut top.1);
                }
                Op::Const(v) => {
                    let top = stack.get_mut(sp).ok_or(status::BAD_INPUT)?;
                    // Both masks and `live` are indexed by the block.
                    #[allow(clippy::needless_range_loop)]
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

/// Three-valued AND (`and`) or OR of the first `n` blocks of `b` into `a`.
#[inline(always)]
fn combine(a: &mut Masks, b: &Masks, n: usize, and: bool) {
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
