//! The filter's block loops: masks of the blocks of a pass where a test holds, a row at a
//! time or by the SDK's block compares, and their split by validity into known true and
//! known false.

use nearstore_kernel::{BLOCK, Cmp, Column, cmp_blocks};

use super::Masks;
use super::decode::Test;

/// Masks of the blocks from row `base` where `test` holds (validity not applied).
pub(super) fn test_blocks(test: &Test, op: Cmp, base: usize, live: &[u64], out: &mut [u64]) {
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
pub(super) fn row_blocks(rows: usize, base: usize, out: &mut [u64], f: impl Fn(usize) -> bool) {
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
pub(super) fn str_blocks(col: &Column, base: usize, out: &mut [u64], f: impl Fn(&[u8]) -> bool) {
    row_blocks(col.rows(), base, out, |row| f(col.str_value(row)));
}

/// Splits `m` (rows where a test holds) by validity into known true and known false; `live`
/// masks the rows of each block.
pub(super) fn with_validity(col: &Column, base: usize, live: &[u64], m: &mut Masks) {
    if col.has_nulls() {
        split(m, live.len(), |b| col.validity_block(base + b * BLOCK));
    } else {
        split(m, live.len(), |b| live[b]);
    }
}

/// The first `n` masks of `m` from row `base` (of `rows`) where `f(row)` holds for a row of
/// two columns, a row at a time; known only where both are valid.
pub(super) fn pair_blocks(
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
pub(super) fn split(m: &mut Masks, n: usize, valid: impl Fn(usize) -> u64) {
    for b in 0..n {
        let (hit, valid) = (m.0[b], valid(b));
        m.0[b] = hit & valid;
        m.1[b] = !hit & valid;
    }
}
