//! Explicit simd128 block compares: Cranelift turns scalar selects into branches, so a
//! block compares a vector of lanes at a time. A lane's compare result is all ones or all
//! zeros, so saturating narrows pack the results of sixteen rows into one byte each
//! (lane order kept), and one bitmask takes their bits: fewer instructions than a bitmask,
//! a shift and an OR per vector. Two-lane (64-bit) results stop at 32-bit lanes (see
//! `sixteen`).
use core::arch::wasm32::*;

use super::Lane;
use super::pred::Pred;

/// The bits of sixteen rows from compare results of `lanes` lanes each: `v(j)` is the
/// `j`-th vector of results from the group's first row; `ordered`: the results of an
/// ordering, not of equality.
#[inline(always)]
fn sixteen(lanes: usize, ordered: bool, v: impl Fn(usize) -> v128) -> u64 {
    // A result lane of all ones or all zeros is a run of equal 16-bit lanes: each narrow
    // halves the bytes of a row, and keeps the rows in order.
    let n = i8x16_narrow_i16x8;
    let bytes = match lanes {
        // Two rows a vector (64-bit lanes) of an ordering: a bitmask per vector, no
        // narrows. x86 (Intel) runs 64-bit ordered compares and narrows on one port, so
        // the tree's seven narrows cost more there than eight bitmasks and their shifts,
        // which run on others: staging and filtering a full-range int64 column took 10 %
        // less time so on an Intel Xeon (AVX-512). Equality compares run elsewhere, and
        // the tree is the faster for them (bitmasks: 25 % slower).
        2 if ordered => {
            let two = |j: usize| u64::from(i64x2_bitmask(v(j))) << (2 * j);
            return two(0) | two(1) | two(2) | two(3) | two(4) | two(5) | two(6) | two(7);
        }
        2 => n(
            n(n(v(0), v(1)), n(v(2), v(3))),
            n(n(v(4), v(5)), n(v(6), v(7))),
        ),
        4 => n(n(v(0), v(1)), n(v(2), v(3))),
        8 => n(v(0), v(1)),
        _ => v(0),
    };
    u64::from(i8x16_bitmask(bytes))
}

/// The mask of a block of 64 values at `p`, `lanes` to a vector: `cmp` compares one vector
/// read from `p`. Written out, no loop: no back-edge, no interruption check. Each sixteen
/// rows' vectors are packed before the next are read (an optimisation barrier between the
/// groups keeps LLVM from loading more vectors at once than Cranelift has registers).
#[inline(always)]
unsafe fn block<T>(p: *const T, lanes: usize, ordered: bool, cmp: impl Fn(v128) -> v128) -> u64 {
    let at = p as usize;
    let width = core::mem::size_of::<T>();
    let group = |g: usize| {
        sixteen(lanes, ordered, |j| {
            // An address add that cannot wrap (the block lies in memory): LLVM folds the
            // vector's distance into the load as its offset, no add of its own.
            // SAFETY: the caller guarantees 64 readable values at p; j < 16 / lanes.
            let v = unsafe { at.unchecked_add((g * 16 + j * lanes) * width) };
            cmp(unsafe { v128_load(v as *const v128) })
        }) << (g * 16)
    };
    let black_box = core::hint::black_box;
    black_box(black_box(black_box(group(0)) | group(1)) | group(2)) | group(3)
}

/// An integer lane type: its lanes per vector.
macro_rules! int_lane {
    ($($t:ty: $lanes:literal, $splat:ident, $cmp:ident;)*) => {$(
        impl Lane for $t {
            type Key = $t;
            #[inline(always)]
            fn key(self) -> $t {
                self
            }
            #[inline(always)]
            unsafe fn block<P: Pred>(p: *const $t, lit: $t) -> u64 {
                let l = $splat(lit);
                // SAFETY: forwarded contract.
                unsafe { block(p, $lanes, P::ORDERED, |v| P::$cmp(v, l)) }
            }
        }
    )*};
}

int_lane! {
    i64: 2, i64x2_splat, x2;
    i32: 4, i32x4_splat, x4;
    i16: 8, i16x8_splat, x8;
    i8: 16, i8x16_splat, x16;
}

impl Lane for f64 {
    type Key = i64;
    #[inline(always)]
    fn key(self) -> i64 {
        super::f64_order_key(self)
    }
    #[inline(always)]
    unsafe fn block<P: Pred>(p: *const f64, lit: f64) -> u64 {
        let l = i64x2_splat(super::f64_order_key(lit));
        // The order key of each lane: flip the magnitude bits of negative values.
        let key = |v: v128| v128_xor(v, u64x2_shr(i64x2_shr(v, 63), 1));
        // SAFETY: forwarded contract.
        unsafe { block(p, 2, P::ORDERED, |v| P::x2(key(v), l)) }
    }
}

impl Lane for i128 {
    type Key = i128;
    #[inline(always)]
    fn key(self) -> i128 {
        self
    }
    /// No 128-bit lanes: a scalar loop.
    #[inline(always)]
    unsafe fn block<P: Pred>(p: *const i128, lit: i128) -> u64 {
        // SAFETY: the caller guarantees 64 readable values at p.
        let v = unsafe { core::slice::from_raw_parts(p, 64) };
        super::mask_block(v, 0, |x| P::holds(x, lit))
    }
}
