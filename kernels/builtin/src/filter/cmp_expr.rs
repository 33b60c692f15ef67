//! A compare of two computed values (the filter program's `CMP_EXPR`): both sides in the
//! type they compare in, and the masks of the blocks where the compare holds.

use alloc::vec::Vec;

use nearstore_kernel::abi::status;
use nearstore_kernel::{Cmp, KernelResult, f64_order_key};

use super::blocks::row_blocks;
use crate::expr::{Side, Vals, float_side, int_side, wide};

/// Both sides of a compare of computed values, by the type they compare in.
pub(super) enum Sides<'a> {
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
    pub(super) fn of(a: Vals<'a>, b: Vals<'a>, rows: usize) -> KernelResult<Self> {
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
    pub(super) fn blocks(
        &self,
        op: Cmp,
        rows: usize,
        base: usize,
        out: &mut [u64],
    ) -> KernelResult {
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
