//! Block masks and block compares: [`mask_block`] for any predicate, [`cmp_blocks`] and the
//! `cmp_block_*` helpers for `value op literal` (explicit simd128 on wasm32, see `simd`), with
//! floats under IEEE total order as Arrow compares them.

use crate::BLOCK;

#[doc(hidden)]
pub mod pred;
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
mod scalar;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd;

/// Mask of the first `n` lanes of a block.
pub fn lanes(n: usize) -> u64 {
    if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
}

/// Evaluates `f` on rows `base..base + 64` of `values` (fewer at the end) and returns the mask
/// of rows where it holds. Branch-free: the body is a compare, a shift and an OR.
#[inline(always)]
pub fn mask_block<T: Copy>(values: &[T], base: usize, f: impl Fn(T) -> bool) -> u64 {
    let end = values.len().min(base + BLOCK);
    let mut m = 0u64;
    if base < end {
        for (i, v) in values[base..end].iter().enumerate() {
            m |= (f(*v) as u64) << i;
        }
    }
    m
}

/// Comparison operators of the block compare helpers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl Cmp {
    /// Whether `a op b` holds.
    #[inline(always)]
    pub fn holds<T: PartialOrd + ?Sized>(self, a: &T, b: &T) -> bool {
        match self {
            Cmp::Eq => a == b,
            Cmp::Ne => a != b,
            Cmp::Lt => a < b,
            Cmp::Le => a <= b,
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
        }
    }
}

/// Total-order key of an `f64` (IEEE 754 totalOrder as a signed integer): comparing keys
/// orders -0.0 before 0.0 and NaN after everything, as Arrow's float comparisons do.
#[inline(always)]
pub fn f64_order_key(x: f64) -> i64 {
    let b = x.to_bits() as i64;
    b ^ ((((b >> 63) as u64) >> 1) as i64)
}

/// Masks of the blocks of 64 rows from `base` where `values[row] op lit`, one per element of
/// `out` (block `b` starts at row `base + 64 b`; rows past the end are 0). The operator is
/// dispatched once for all the blocks; full blocks compare 128 bits of lanes at a time on
/// wasm32+simd128, so narrower values compare more rows per instruction.
#[inline]
pub fn cmp_blocks<T: Lane>(values: &[T], base: usize, op: Cmp, lit: T, out: &mut [u64]) {
    // `!=`, `<=` and `>=` are the complements of `=`, `>` and `<` (floats compare under a
    // total order): one NOT per block rather than one per vector, which SIMD compares lack.
    match op {
        Cmp::Eq => blocks::<T, pred::Eq>(values, base, lit, out),
        Cmp::Lt => blocks::<T, pred::Lt>(values, base, lit, out),
        Cmp::Gt => blocks::<T, pred::Gt>(values, base, lit, out),
        Cmp::Ne => {
            blocks::<T, pred::Eq>(values, base, lit, out);
            complement(values.len(), base, out);
        }
        Cmp::Le => {
            blocks::<T, pred::Gt>(values, base, lit, out);
            complement(values.len(), base, out);
        }
        Cmp::Ge => {
            blocks::<T, pred::Lt>(values, base, lit, out);
            complement(values.len(), base, out);
        }
    }
}

/// Flips the masks of the blocks from row `base` of `rows` rows (rows past the end stay 0).
#[inline(always)]
fn complement(rows: usize, base: usize, out: &mut [u64]) {
    for (b, o) in out.iter_mut().enumerate() {
        *o = !*o & lanes(rows.saturating_sub(base + b * BLOCK));
    }
}

#[inline(always)]
fn blocks<T: Lane, P: pred::Pred>(values: &[T], base: usize, lit: T, out: &mut [u64]) {
    let key = lit.key();
    for (b, o) in out.iter_mut().enumerate() {
        let at = base + b * BLOCK;
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        if at + BLOCK <= values.len() {
            // SAFETY: rows at..at + 64 are in bounds (checked).
            *o = unsafe { T::block::<P>(values.as_ptr().add(at), lit) };
            continue;
        }
        *o = mask_block(values, at, |x| P::holds(x.key(), key));
    }
}

/// Mask of rows `base..base + 64` where `values[row] op lit` (SIMD on wasm32+simd128).
#[inline]
pub fn cmp_block_i64(values: &[i64], base: usize, op: Cmp, lit: i64) -> u64 {
    let mut m = [0];
    cmp_blocks(values, base, op, lit, &mut m);
    m[0]
}

/// Mask of rows `base..base + 64` where `values[row] op lit` (SIMD on wasm32+simd128).
#[inline]
pub fn cmp_block_i32(values: &[i32], base: usize, op: Cmp, lit: i32) -> u64 {
    let mut m = [0];
    cmp_blocks(values, base, op, lit, &mut m);
    m[0]
}

/// Mask of rows `base..base + 64` where `values[row] op lit` under IEEE total order, as Arrow
/// compares floats (SIMD on wasm32+simd128).
#[inline]
pub fn cmp_block_f64(values: &[f64], base: usize, op: Cmp, lit: f64) -> u64 {
    let mut m = [0];
    cmp_blocks(values, base, op, lit, &mut m);
    m[0]
}

/// A value type the block compares take: `i8`, `i16`, `i32`, `i64`, `i128` and `f64` (floats compare
/// under IEEE total order, as Arrow does).
pub trait Lane: Copy + sealed::Sealed {
    /// What comparisons order.
    #[doc(hidden)]
    type Key: Copy + PartialOrd;
    #[doc(hidden)]
    fn key(self) -> Self::Key;
    /// Mask of the 64 values at `p` where `P` holds against `lit`.
    ///
    /// # Safety
    /// `p` must address 64 readable values.
    #[doc(hidden)]
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    unsafe fn block<P: pred::Pred>(p: *const Self, lit: Self) -> u64;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for i8 {}
    impl Sealed for i16 {}
    impl Sealed for i32 {}
    impl Sealed for i64 {}
    impl Sealed for f64 {}
    impl Sealed for i128 {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn compare_helpers_follow_arrow_float_order() {
        let v: Vec<f64> = [f64::NAN, -0.0, 0.0, 1.5, f64::NEG_INFINITY].repeat(13);
        let m = cmp_block_f64(&v, 0, Cmp::Gt, 0.0);
        // NaN sorts after everything; -0.0 is below 0.0.
        assert_eq!(m & 0b11111, 0b01001);
        assert_eq!(cmp_block_f64(&v, 0, Cmp::Eq, -0.0) & 0b11111, 0b00010);
        let i: Vec<i64> = (0..100).collect();
        assert_eq!(
            cmp_block_i64(&i, 64, Cmp::Ge, 98),
            0b1100_0000_0000_0000_0000_0000_0000_0000_0000
        );
        let d: Vec<i32> = (0..64).collect();
        assert_eq!(cmp_block_i32(&d, 0, Cmp::Lt, 2), 0b11);
    }
}
