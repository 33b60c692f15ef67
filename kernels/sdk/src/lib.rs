//! `nearstore-kernel`: the guest-side SDK for writing Nearstore kernels in plain Rust.
//!
//! A filter kernel is a function from a [`Batch`] to a [`Selection`]; [`export_filter!`]
//! generates the exports the device calls, [`manifest!`] embeds the manifest. Column data is
//! reached through typed views ([`Column::i64s`], [`Column::f64s`], …) and processed in blocks
//! of [`BLOCK`] rows: the helpers take a whole block and return a 64-bit mask, so the loops the
//! compiler sees are short, branch-free and vectorisable, and the sandbox's interruption checks
//! (one per loop back-edge) are paid once per block rather than once per row.
//!
//! ```
//! use nearstore_kernel::{Batch, Selection, BLOCK, KernelResult};
//! // Keep rows whose first column (i64) is even.
//! fn even(batch: &Batch, sel: &mut Selection) -> KernelResult {
//!     let col = batch.column(0)?;
//!     let v = col.i64s()?;
//!     for base in (0..batch.rows()).step_by(BLOCK) {
//!         let m = nearstore_kernel::mask_block(v, base, |x| x % 2 == 0) & col.validity_block(base);
//!         sel.push_mask(base, m)?;
//!     }
//!     Ok(())
//! }
//! // In the kernel crate: nearstore_kernel::export_filter!(even);
//! # let data: Vec<i64> = (0..100).collect();
//! # let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
//! # let col = nearstore_kernel::Column::from_parts(nearstore_kernel::abi::types::INT64, 0, &bytes, None, None, 100);
//! # let batch = Batch::from_parts(100, vec![col], &[]);
//! # let mut out = vec![0u32; 100];
//! # let mut sel = Selection::new(&mut out);
//! # even(&batch, &mut sel).unwrap();
//! # assert_eq!(sel.len(), 50);
//! ```
#![no_std]

extern crate alloc;

use alloc::vec::Vec;

use abi::{BatchDesc, COLUMN_DESC_BYTES, ColumnDesc, status, types};
pub use nearstore_kernel_abi as abi;

/// Rows per block: the unit of every helper loop.
pub const BLOCK: usize = 64;

/// A kernel's result: `Err` carries a negative [`abi::status`] code.
pub type KernelResult<T = ()> = Result<T, i32>;

/// One column of a batch, borrowed from the kernel's memory.
#[derive(Debug, Clone, Copy)]
pub struct Column<'a> {
    type_code: u32,
    scale: i32,
    values: &'a [u8],
    validity: Option<&'a [u8]>,
    offsets: Option<&'a [u8]>,
    rows: usize,
    /// Bytes per stored value when the host narrowed the column, else 0.
    stored_width: u32,
}

/// Integer values of an `INT32`, `DATE32` or `INT64` column as held in memory: in the type's
/// own width, or narrowed by the host to a smaller signed width that every value fits (see
/// [`abi::ColumnDesc::stored_width`]).
#[derive(Debug, Clone, Copy)]
pub enum Ints<'a> {
    /// Values narrowed to `i8`.
    I8(&'a [i8]),
    /// Values narrowed to `i16`.
    I16(&'a [i16]),
    /// `INT32`/`DATE32` values, or `INT64` values narrowed to `i32`.
    I32(&'a [i32]),
    /// `INT64` values.
    I64(&'a [i64]),
}

impl<'a> Column<'a> {
    /// A column from its parts (for tests of kernels on the host).
    pub fn from_parts(
        type_code: u32,
        scale: i32,
        values: &'a [u8],
        validity: Option<&'a [u8]>,
        offsets: Option<&'a [u8]>,
        rows: usize,
    ) -> Self {
        Column {
            type_code,
            scale,
            values,
            validity,
            offsets,
            rows,
            stored_width: 0,
        }
    }

    /// The same column with its values held narrowed to `width` bytes (for tests of kernels
    /// that read [`Column::ints`]).
    pub fn narrowed(mut self, width: u32) -> Self {
        self.stored_width = width;
        self
    }

    /// The [`abi::types`] code.
    pub fn type_code(&self) -> u32 {
        self.type_code
    }

    /// Decimal scale.
    pub fn scale(&self) -> i32 {
        self.scale
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    fn typed<T: Copy>(&self, want: &[u32]) -> KernelResult<&'a [T]> {
        if !want.contains(&self.type_code) || self.stored_width != 0 {
            return Err(status::BAD_INPUT);
        }
        self.stored()
    }

    /// The values as `T`s, whatever the type code says.
    fn stored<T: Copy>(&self) -> KernelResult<&'a [T]> {
        if self.rows == 0 {
            // An empty buffer's address need not be aligned.
            return Ok(&[]);
        }
        let width = core::mem::size_of::<T>();
        if self.values.len() < self.rows * width
            || !(self.values.as_ptr() as usize).is_multiple_of(core::mem::align_of::<T>())
        {
            return Err(status::BAD_INPUT);
        }
        // SAFETY: the slice is long enough for `rows` values of T and aligned for T (both
        // checked above); T is a plain integer or float type for which every bit pattern is valid.
        Ok(unsafe { core::slice::from_raw_parts(self.values.as_ptr().cast::<T>(), self.rows) })
    }

    /// Values of an `INT32` or `DATE32` column.
    pub fn i32s(&self) -> KernelResult<&'a [i32]> {
        self.typed(&[types::INT32, types::DATE32])
    }

    /// Values of an `INT64` column.
    pub fn i64s(&self) -> KernelResult<&'a [i64]> {
        self.typed(&[types::INT64])
    }

    /// Values of a `FLOAT64` column.
    pub fn f64s(&self) -> KernelResult<&'a [f64]> {
        self.typed(&[types::FLOAT64])
    }

    /// Values of an `INT32`, `DATE32` or `INT64` column as held in memory, narrowed or not.
    /// The typed views ([`Column::i64s`], [`Column::i32s`]) refuse a narrowed column.
    pub fn ints(&self) -> KernelResult<Ints<'a>> {
        let natural = match self.type_code {
            types::INT32 | types::DATE32 => 4,
            types::INT64 => 8,
            _ => return Err(status::BAD_INPUT),
        };
        Ok(match (self.stored_width, natural) {
            (1, _) => Ints::I8(self.stored()?),
            (2, _) => Ints::I16(self.stored()?),
            (4, 8) | (0, 4) => Ints::I32(self.stored()?),
            (0, 8) => Ints::I64(self.stored()?),
            _ => return Err(status::BAD_INPUT),
        })
    }

    /// Unscaled values of a `DECIMAL128` column.
    pub fn i128s(&self) -> KernelResult<&'a [i128]> {
        self.typed(&[types::DECIMAL128])
    }

    /// Whether row `i` is non-null.
    pub fn is_valid(&self, i: usize) -> bool {
        match self.validity {
            None => true,
            Some(bits) => bits.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0),
        }
    }

    /// Whether the column has a validity bitmap (may hold NULLs).
    pub fn has_nulls(&self) -> bool {
        self.validity.is_some()
    }

    /// Validity of rows `base..base + 64` as a mask (bit i = row base + i), zero past the end.
    pub fn validity_block(&self, base: usize) -> u64 {
        match self.validity {
            None => lanes(self.rows.saturating_sub(base).min(BLOCK)),
            Some(bits) => self.bitmap_block(bits, base),
        }
    }

    /// Values of rows `base..base + 64` of a `BOOL` column as a mask (bit i = row base + i),
    /// zero past the end; `BAD_INPUT` for another type.
    pub fn bool_block(&self, base: usize) -> KernelResult<u64> {
        if self.type_code != types::BOOL {
            return Err(status::BAD_INPUT);
        }
        Ok(self.bitmap_block(self.values, base))
    }

    /// Bits `base..base + 64` of a bitmap of this column's rows (LSB first), zero past the end.
    fn bitmap_block(&self, bits: &[u8], base: usize) -> u64 {
        let n = self.rows.saturating_sub(base).min(BLOCK);
        let bit = |i: usize| bits.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0);
        let mut m = 0u64;
        if base.is_multiple_of(8) {
            for k in 0..8 {
                let byte = bits.get(base / 8 + k).copied().unwrap_or(0);
                m |= (byte as u64) << (8 * k);
            }
        } else {
            for i in 0..n {
                m |= (bit(base + i) as u64) << i;
            }
        }
        m & lanes(n)
    }

    /// String value of row `i` of a `UTF8` column (empty for nulls and bad offsets).
    pub fn str_value(&self, i: usize) -> &'a [u8] {
        let Some(off) = self.offsets else {
            return &[];
        };
        let at = |k: usize| -> Option<usize> {
            let b = off.get(k * 4..k * 4 + 4)?;
            usize::try_from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])).ok()
        };
        match (at(i), at(i + 1)) {
            (Some(s), Some(e)) if s <= e => self.values.get(s..e).unwrap_or(&[]),
            _ => &[],
        }
    }
}

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

#[doc(hidden)]
pub mod pred {
    //! The six comparisons as types, so a block compare is compiled once per operator.
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    use core::arch::wasm32::*;

    /// One comparison, on scalars and on each lane width.
    pub trait Pred {
        /// An ordering (`<`, `>`), not equality: on 64-bit lanes x86 runs it on the port
        /// that also narrows (see `simd::sixteen`).
        const ORDERED: bool;
        fn holds<T: PartialOrd>(a: T, b: T) -> bool;
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        fn x2(a: v128, b: v128) -> v128;
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        fn x4(a: v128, b: v128) -> v128;
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        fn x8(a: v128, b: v128) -> v128;
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        fn x16(a: v128, b: v128) -> v128;
    }

    macro_rules! preds {
        ($($name:ident $op:tt $ordered:literal $x2:ident $x4:ident $x8:ident $x16:ident;)*) => {$(
            pub struct $name;
            impl Pred for $name {
                const ORDERED: bool = $ordered;
                #[inline(always)]
                fn holds<T: PartialOrd>(a: T, b: T) -> bool {
                    a $op b
                }
                #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
                #[inline(always)]
                fn x2(a: v128, b: v128) -> v128 {
                    $x2(a, b)
                }
                #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
                #[inline(always)]
                fn x4(a: v128, b: v128) -> v128 {
                    $x4(a, b)
                }
                #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
                #[inline(always)]
                fn x8(a: v128, b: v128) -> v128 {
                    $x8(a, b)
                }
                #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
                #[inline(always)]
                fn x16(a: v128, b: v128) -> v128 {
                    $x16(a, b)
                }
            }
        )*};
    }

    preds! {
        Eq == false i64x2_eq i32x4_eq i16x8_eq i8x16_eq;
        Lt < true i64x2_lt i32x4_lt i16x8_lt i8x16_lt;
        Gt > true i64x2_gt i32x4_gt i16x8_gt i8x16_gt;
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd {
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
    unsafe fn block<T>(
        p: *const T,
        lanes: usize,
        ordered: bool,
        cmp: impl Fn(v128) -> v128,
    ) -> u64 {
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
}

/// The scalar keys (every target but wasm32+simd128).
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
mod scalar {
    use super::Lane;

    macro_rules! identity {
        ($($t:ty)*) => {$(
            impl Lane for $t {
                type Key = $t;
                #[inline(always)]
                fn key(self) -> $t {
                    self
                }
            }
        )*};
    }
    identity!(i8 i16 i32 i64 i128);

    impl Lane for f64 {
        type Key = i64;
        #[inline(always)]
        fn key(self) -> i64 {
            super::f64_order_key(self)
        }
    }
}

/// A batch handed to a kernel.
#[derive(Debug)]
pub struct Batch<'a> {
    rows: usize,
    columns: Vec<Column<'a>>,
    params: &'a [u8],
}

impl<'a> Batch<'a> {
    /// A batch from its parts (for tests of kernels on the host).
    pub fn from_parts(rows: usize, columns: Vec<Column<'a>>, params: &'a [u8]) -> Self {
        Batch {
            rows,
            columns,
            params,
        }
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns.
    pub fn num_columns(&self) -> usize {
        self.columns.len()
    }

    /// Column `i`.
    pub fn column(&self, i: usize) -> KernelResult<&Column<'a>> {
        self.columns.get(i).ok_or(status::BAD_INPUT)
    }

    /// The query's parameter bytes.
    pub fn params(&self) -> &'a [u8] {
        self.params
    }
}

/// The output of a filter: indices of selected rows, strictly increasing.
#[derive(Debug)]
pub struct Selection<'a> {
    out: Out<'a>,
    len: usize,
}

#[derive(Debug)]
enum Out<'a> {
    Indices(&'a mut [u32]),
    Bitmap(&'a mut [u64]),
}

impl<'a> Selection<'a> {
    /// A selection writing row indices into `out`.
    pub fn new(out: &'a mut [u32]) -> Self {
        Selection {
            out: Out::Indices(out),
            len: 0,
        }
    }

    /// A selection writing a bitmap into `words` (zeroed here).
    pub fn bitmap(words: &'a mut [u64]) -> Self {
        words.fill(0);
        Selection {
            out: Out::Bitmap(words),
            len: 0,
        }
    }

    /// Selected rows so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is selected.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Selects the rows `base + i` for each set bit `i` of `mask`. Blocks must come in order.
    #[inline]
    pub fn push_mask(&mut self, base: usize, mut mask: u64) -> KernelResult {
        let n = mask.count_ones() as usize;
        match &mut self.out {
            Out::Indices(out) => {
                if self.len + n > out.len() {
                    return Err(status::OUTPUT_TOO_SMALL);
                }
                while mask != 0 {
                    let i = mask.trailing_zeros() as usize;
                    out[self.len] = (base + i) as u32;
                    self.len += 1;
                    mask &= mask - 1;
                }
            }
            Out::Bitmap(words) => {
                if mask == 0 {
                    return Ok(());
                }
                let (w, shift) = (base / 64, base % 64);
                let spill = if shift == 0 { 0 } else { mask >> (64 - shift) };
                if w >= words.len() || (spill != 0 && w + 1 >= words.len()) {
                    return Err(status::OUTPUT_TOO_SMALL);
                }
                words[w] |= mask << shift;
                if spill != 0 {
                    words[w + 1] |= spill;
                }
                self.len += n;
            }
        }
        Ok(())
    }

    /// Selects the rows of consecutive blocks: `masks[i]` is the mask of the 64 rows from
    /// `base + 64 * i`, as [`Selection::push_mask`] takes it. A bitmap output from a row
    /// that starts one of its words takes them in one pass, a word each.
    pub fn push_masks(&mut self, base: usize, masks: &[u64]) -> KernelResult {
        if let Out::Bitmap(words) = &mut self.out
            && base.is_multiple_of(BLOCK)
        {
            let first = base / BLOCK;
            let out = first
                .checked_add(masks.len())
                .and_then(|end| words.get_mut(first..end))
                .ok_or(status::OUTPUT_TOO_SMALL)?;
            let mut n = 0;
            for (w, m) in out.iter_mut().zip(masks) {
                *w |= m;
                n += m.count_ones() as usize;
            }
            self.len += n;
            return Ok(());
        }
        for (i, m) in masks.iter().enumerate() {
            self.push_mask(base + i * BLOCK, *m)?;
        }
        Ok(())
    }
}

/// Reads a batch descriptor and its columns from the kernel's memory.
///
/// # Safety
/// `desc` must be the address of a [`BatchDesc`] written by the host, whose column descriptors
/// and buffers lie inside this module's linear memory and stay unchanged during the call.
/// (In the sandbox any address is at worst a trap, never an escape.)
pub unsafe fn batch_from_memory<'a>(desc: u32) -> KernelResult<Batch<'a>> {
    // SAFETY: per the function contract, desc points at BATCH_DESC_BYTES readable bytes.
    let d = BatchDesc::read(unsafe {
        core::slice::from_raw_parts(desc as usize as *const u8, abi::BATCH_DESC_BYTES)
    });
    if d.abi != abi::ABI_VERSION {
        return Err(status::BAD_INPUT);
    }
    let mut columns = Vec::with_capacity(d.ncols as usize);
    for i in 0..d.ncols as usize {
        let at = d.cols_ptr as usize + i * COLUMN_DESC_BYTES;
        // SAFETY: column descriptors lie in memory per the contract.
        let c = ColumnDesc::read(unsafe {
            core::slice::from_raw_parts(at as *const u8, COLUMN_DESC_BYTES)
        });
        let slice = |ptr: u32, len: u32| -> &'a [u8] {
            if ptr == 0 || len == 0 {
                &[]
            } else {
                // SAFETY: buffers lie in memory per the contract.
                unsafe { core::slice::from_raw_parts(ptr as usize as *const u8, len as usize) }
            }
        };
        let bitmap_len = (d.rows as usize).div_ceil(8) as u32;
        columns.push(Column {
            type_code: c.type_code,
            scale: c.scale as i32,
            values: slice(c.values_ptr, c.values_len),
            validity: (c.validity_ptr != 0).then(|| slice(c.validity_ptr, bitmap_len)),
            offsets: (c.offsets_ptr != 0).then(|| slice(c.offsets_ptr, c.offsets_len)),
            rows: d.rows as usize,
            stored_width: c.stored_width,
        });
    }
    Ok(Batch {
        rows: d.rows as usize,
        columns,
        // SAFETY: parameters lie in memory per the contract.
        params: if d.params_len == 0 {
            &[]
        } else {
            unsafe {
                core::slice::from_raw_parts(
                    d.params_ptr as usize as *const u8,
                    d.params_len as usize,
                )
            }
        },
    })
}

/// Runs a filter function for the generated exports. Not for direct use.
///
/// # Safety
/// As [`batch_from_memory`]; `out` must address `out_len` writable `u32`s (indices) or `u64`s
/// (bitmap), aligned for them.
#[doc(hidden)]
pub unsafe fn __run_filter(
    desc: u32,
    out: u32,
    out_len: u32,
    bitmap: bool,
    f: fn(&Batch, &mut Selection) -> KernelResult,
) -> i32 {
    // SAFETY: forwarded contract.
    with_scratch(|| unsafe { run_filter_inner(desc, out, out_len, bitmap, f) })
}

/// Runs `call` and then releases everything it allocated, so a kernel instance runs any
/// number of batches in bounded memory. Only for export bodies, whose allocations never
/// outlive the call.
fn with_scratch<R>(call: impl FnOnce() -> R) -> R {
    let mark = scratch_mark();
    let result = call();
    // SAFETY: every allocation made since `mark` belonged to `call`, which has returned and
    // whose result holds no allocation (export results are plain integers).
    unsafe { scratch_reset(mark) };
    result
}

/// The body of [`__run_filter`].
///
/// # Safety
/// As [`__run_filter`].
unsafe fn run_filter_inner(
    desc: u32,
    out: u32,
    out_len: u32,
    bitmap: bool,
    f: fn(&Batch, &mut Selection) -> KernelResult,
) -> i32 {
    // SAFETY: forwarded contract.
    let batch = match unsafe { batch_from_memory(desc) } {
        Ok(b) => b,
        Err(e) => return e,
    };
    let mut sel = if bitmap {
        if !out.is_multiple_of(8) || (out_len as usize) < batch.rows().div_ceil(64) {
            return status::BAD_INPUT;
        }
        // SAFETY: the host reserved out_len u64s at `out` (contract), 8-byte aligned (checked).
        Selection::bitmap(unsafe {
            core::slice::from_raw_parts_mut(out as usize as *mut u64, out_len as usize)
        })
    } else {
        if !out.is_multiple_of(4) {
            return status::BAD_INPUT;
        }
        // SAFETY: the host reserved out_len u32s at `out` (contract), 4-byte aligned (checked).
        Selection::new(unsafe {
            core::slice::from_raw_parts_mut(out as usize as *mut u32, out_len as usize)
        })
    };
    match f(&batch, &mut sel) {
        Ok(()) => sel.len() as i32,
        Err(e) => e,
    }
}

/// Runs an aggregate function for the generated export. Not for direct use.
///
/// # Safety
/// As [`batch_from_memory`]; `state` must address `groups × aggregates` slots of
/// [`abi::agg::SLOT_BYTES`] writable bytes, 16-byte aligned.
#[doc(hidden)]
pub unsafe fn __run_aggregate(
    desc: u32,
    state: u32,
    groups: u32,
    f: fn(&Batch, &mut AggState) -> KernelResult,
) -> i32 {
    let result = with_scratch(|| -> KernelResult {
        // SAFETY: forwarded contract.
        let batch = unsafe { batch_from_memory(desc) }?;
        let naggs = batch.params().len() / 4;
        if !state.is_multiple_of(16) {
            return Err(status::BAD_INPUT);
        }
        let len = (groups as usize)
            .checked_mul(naggs)
            .and_then(|n| n.checked_mul(abi::agg::SLOT_BYTES))
            .ok_or(status::BAD_INPUT)?;
        // SAFETY: the host reserved `len` bytes at `state` (contract), aligned (checked).
        let bytes = unsafe { core::slice::from_raw_parts_mut(state as usize as *mut u8, len) };
        let mut st = AggState {
            bytes,
            groups: groups as usize,
            naggs,
        };
        f(&batch, &mut st)
    });
    match result {
        Ok(()) => 0,
        Err(e) => e,
    }
}

/// Aggregate state: `groups × aggregates` slots of [`abi::agg::SLOT_BYTES`].
#[derive(Debug)]
pub struct AggState<'a> {
    bytes: &'a mut [u8],
    groups: usize,
    naggs: usize,
}

impl AggState<'_> {
    /// Groups.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// Aggregates per group.
    pub fn aggregates(&self) -> usize {
        self.naggs
    }

    /// The slot of aggregate `agg` in group `group`: (accumulator, count).
    #[inline(always)]
    pub fn slot(&mut self, group: usize, agg: usize) -> KernelResult<(&mut [u8; 16], &mut i64)> {
        if group >= self.groups || agg >= self.naggs {
            return Err(status::BAD_INPUT);
        }
        let at = (group * self.naggs + agg) * abi::agg::SLOT_BYTES;
        let (acc, rest) = self.bytes[at..at + abi::agg::SLOT_BYTES].split_at_mut(16);
        let acc: &mut [u8; 16] = acc.try_into().map_err(|_| status::BAD_INPUT)?;
        let count = bytemuck_i64(&mut rest[..8]);
        Ok((acc, count))
    }
}

impl AggState<'_> {
    /// Folds `v` into the accumulator of aggregate `agg` of `group` with `f(acc, count, v)`
    /// (`count`: values folded so far) and counts it: the fast path for row-at-a-time grouped
    /// accumulation (one bounds check, no copies of the slot).
    #[inline(always)]
    pub fn fold<V>(
        &mut self,
        group: usize,
        agg: usize,
        v: V,
        f: impl FnOnce(i128, i64, V) -> KernelResult<i128>,
    ) -> KernelResult {
        if group >= self.groups || agg >= self.naggs {
            return Err(status::BAD_INPUT);
        }
        let at = (group * self.naggs + agg) * abi::agg::SLOT_BYTES;
        let slot = &mut self.bytes[at..at + abi::agg::SLOT_BYTES];
        let p = slot.as_mut_ptr();
        // SAFETY: `slot` is SLOT_BYTES (32) long: the i128 at 0 and the i64 at 16 lie inside
        // it; unaligned accesses are valid for any bit pattern of these integer types.
        unsafe {
            let acc = p.cast::<i128>().read_unaligned();
            let count = p.add(16).cast::<i64>().read_unaligned();
            p.cast::<i128>().write_unaligned(f(acc, count, v)?);
            p.add(16).cast::<i64>().write_unaligned(count + 1);
        }
        Ok(())
    }
}

fn bytemuck_i64(b: &mut [u8]) -> &mut i64 {
    assert!(
        b.len() >= 8 && (b.as_ptr() as usize).is_multiple_of(8),
        "slot layout"
    );
    // SAFETY: 8 bytes, 8-byte aligned (slots are 32-byte multiples from a 16-aligned base),
    // and every bit pattern is a valid i64.
    unsafe { &mut *b.as_mut_ptr().cast::<i64>() }
}

/// The output of a map kernel: one value per row, valid unless set to NULL.
#[derive(Debug)]
pub struct MapOutput<'a> {
    values: &'a mut [u64],
    validity: &'a mut [u64],
    rows: usize,
}

impl<'a> MapOutput<'a> {
    /// An output of `rows` values over `values` (at least `rows`) and `validity` (at least
    /// `ceil(rows / 64)` words), every row valid and zero. For host-side tests.
    pub fn from_parts(values: &'a mut [u64], validity: &'a mut [u64], rows: usize) -> Self {
        let words = rows.div_ceil(64);
        assert!(
            values.len() >= rows && validity.len() >= words,
            "output too small"
        );
        values[..rows].fill(0);
        for (w, v) in validity[..words].iter_mut().enumerate() {
            *v = lanes(rows - w * 64);
        }
        MapOutput {
            values,
            validity,
            rows,
        }
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Sets row `i` to `v` (an `output=int64` kernel).
    #[inline(always)]
    pub fn set_i64(&mut self, i: usize, v: i64) {
        if i < self.rows {
            self.values[i] = v as u64;
        }
    }

    /// Sets row `i` to `v` (an `output=float64` kernel).
    #[inline(always)]
    pub fn set_f64(&mut self, i: usize, v: f64) {
        if i < self.rows {
            self.values[i] = v.to_bits();
        }
    }

    /// Makes row `i` NULL.
    #[inline(always)]
    pub fn set_null(&mut self, i: usize) {
        if i < self.rows {
            self.validity[i / 64] &= !(1 << (i % 64));
        }
    }

    /// Makes NULL every row of the 64-row block at `base` whose bit in `valid` is clear (pass
    /// the arguments' [`Column::validity_block`]s ANDed together).
    #[inline(always)]
    pub fn keep_valid(&mut self, base: usize, valid: u64) {
        if base < self.rows {
            self.validity[base / 64] &= valid;
        }
    }

    /// The value of row `i` as last set (raw bits).
    pub fn raw(&self, i: usize) -> u64 {
        self.values[i]
    }

    /// Whether row `i` is valid.
    pub fn is_valid(&self, i: usize) -> bool {
        self.validity[i / 64] >> (i % 64) & 1 == 1
    }
}

/// Runs a map function for the generated export. Not for direct use.
///
/// # Safety
/// As [`batch_from_memory`]; `out` must address `rows` writable `u64`s followed by
/// `ceil(rows / 64)` more, 8-byte aligned.
#[doc(hidden)]
pub unsafe fn __run_map(
    desc: u32,
    out: u32,
    rows: u32,
    f: fn(&Batch, &mut MapOutput) -> KernelResult,
) -> i32 {
    let result = with_scratch(|| -> KernelResult<i32> {
        // SAFETY: forwarded contract.
        let batch = unsafe { batch_from_memory(desc) }?;
        if batch.rows() != rows as usize || !out.is_multiple_of(8) {
            return Err(status::BAD_INPUT);
        }
        let n = rows as usize;
        // SAFETY: the host reserved n + ceil(n / 64) u64s at `out` (contract), aligned
        // (checked).
        let all = unsafe {
            core::slice::from_raw_parts_mut(out as usize as *mut u64, n + n.div_ceil(64))
        };
        let (values, validity) = all.split_at_mut(n);
        let mut o = MapOutput::from_parts(values, validity, n);
        f(&batch, &mut o)?;
        Ok(rows as i32)
    });
    result.unwrap_or_else(|e| e)
}

/// Runs an expression-program function for the generated `nearstore_project` export (the
/// built-in kernel's computed columns). Not for direct use.
///
/// # Safety
/// As [`batch_from_memory`]; `out` must address `ceil(rows / 64)` writable `u64`s followed by
/// `rows` values of the width in the first parameter byte (8 or 16), 8-byte aligned.
#[doc(hidden)]
pub unsafe fn __run_project(
    desc: u32,
    out: u32,
    rows: u32,
    f: fn(&Batch, &mut [u8], &mut [u64]) -> KernelResult,
) -> i32 {
    let result = with_scratch(|| -> KernelResult<i32> {
        // SAFETY: forwarded contract.
        let batch = unsafe { batch_from_memory(desc) }?;
        let width = match batch.params().first() {
            Some(&w @ (8 | 16)) => w as usize,
            _ => return Err(status::BAD_INPUT),
        };
        if batch.rows() != rows as usize || !out.is_multiple_of(8) {
            return Err(status::BAD_INPUT);
        }
        let n = rows as usize;
        let words = n.div_ceil(64);
        // SAFETY: the host reserved the words then n values of `width` bytes at `out`
        // (contract), aligned (checked).
        let (validity, values) = unsafe {
            (
                core::slice::from_raw_parts_mut(out as usize as *mut u64, words),
                core::slice::from_raw_parts_mut((out as usize + 8 * words) as *mut u8, width * n),
            )
        };
        f(&batch, values, validity)?;
        Ok(rows as i32)
    });
    result.unwrap_or_else(|e| e)
}

/// Generates the `nearstore_project` export around `fn(&Batch, &mut [u8], &mut [u64]) ->
/// KernelResult` (value bytes, validity words). Used by the built-in kernel.
#[macro_export]
macro_rules! export_project {
    ($f:path) => {
        /// Expression-program entry point (Nearstore kernel ABI).
        #[unsafe(no_mangle)]
        pub extern "C" fn nearstore_project(desc: u32, out: u32, rows: u32) -> i32 {
            // SAFETY: the device calls this export with addresses it wrote per the ABI.
            unsafe { $crate::__run_project(desc, out, rows, $f) }
        }
    };
}

/// Generates the exports of a map kernel around `fn(&Batch, &mut MapOutput) -> KernelResult`.
#[macro_export]
macro_rules! export_map {
    ($f:path) => {
        /// Map entry point (Nearstore kernel ABI).
        #[unsafe(no_mangle)]
        pub extern "C" fn nearstore_map(desc: u32, out: u32, rows: u32) -> i32 {
            // SAFETY: the device calls this export with addresses it wrote per the ABI.
            unsafe { $crate::__run_map(desc, out, rows, $f) }
        }
        $crate::export_common!();
    };
}

/// The group of each row of a custom aggregate's batch.
#[derive(Debug, Clone, Copy)]
pub struct Groups<'a> {
    ids: Option<&'a [i32]>,
}

impl<'a> Groups<'a> {
    /// Groups from a column of `INT32` ids, or every row in group 0 when `ids` is `None`.
    pub fn from_parts(ids: Option<&'a [i32]>) -> Self {
        Groups { ids }
    }

    /// The group of row `i`.
    #[inline(always)]
    pub fn of(&self, i: usize) -> usize {
        match self.ids {
            Some(ids) => ids.get(i).map_or(usize::MAX, |g| *g as u32 as usize),
            None => 0,
        }
    }
}

/// The per-group states of a custom aggregate: `groups` regions of `state_size` bytes, zero
/// until the kernel first writes them.
#[derive(Debug)]
pub struct GroupStates<'a> {
    bytes: &'a mut [u8],
    size: usize,
}

impl<'a> GroupStates<'a> {
    /// States over `bytes` (a whole number of `size`-byte states). For host-side tests.
    pub fn from_parts(bytes: &'a mut [u8], size: usize) -> Self {
        GroupStates { bytes, size }
    }

    /// Groups.
    pub fn groups(&self) -> usize {
        self.bytes.len().checked_div(self.size).unwrap_or(0)
    }

    /// The state of `group`.
    #[inline(always)]
    pub fn get(&mut self, group: usize) -> KernelResult<&mut [u8]> {
        let at = group.checked_mul(self.size).ok_or(status::BAD_INPUT)?;
        self.bytes
            .get_mut(at..at + self.size)
            .ok_or(status::BAD_INPUT)
    }
}

/// The output of one group of a custom aggregate: 8-byte values (one, none for NULL, or a
/// list).
#[derive(Debug)]
pub struct AggOutput<'a> {
    out: &'a mut [u64],
    len: usize,
}

impl<'a> AggOutput<'a> {
    /// An output over `out`. For host-side tests.
    pub fn from_parts(out: &'a mut [u64]) -> Self {
        AggOutput { out, len: 0 }
    }

    /// Appends an `i64`.
    pub fn push_i64(&mut self, v: i64) -> KernelResult {
        self.push(v as u64)
    }

    /// Appends an `f64`.
    pub fn push_f64(&mut self, v: f64) -> KernelResult {
        self.push(v.to_bits())
    }

    fn push(&mut self, v: u64) -> KernelResult {
        let slot = self.out.get_mut(self.len).ok_or(status::OUTPUT_TOO_SMALL)?;
        *slot = v;
        self.len += 1;
        Ok(())
    }

    /// Values written.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was written (NULL for a scalar output).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The values written (raw bits).
    pub fn values(&self) -> &[u64] {
        &self.out[..self.len]
    }
}

/// Reads the little-endian `i64` at byte `at` of a state.
#[inline(always)]
pub fn get_i64(state: &[u8], at: usize) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&state[at..at + 8]);
    i64::from_le_bytes(b)
}

/// Writes `v` as a little-endian `i64` at byte `at` of a state.
#[inline(always)]
pub fn put_i64(state: &mut [u8], at: usize, v: i64) {
    state[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Reads the little-endian `f64` at byte `at` of a state.
#[inline(always)]
pub fn get_f64(state: &[u8], at: usize) -> f64 {
    f64::from_bits(get_i64(state, at) as u64)
}

/// Writes `v` as a little-endian `f64` at byte `at` of a state.
#[inline(always)]
pub fn put_f64(state: &mut [u8], at: usize, v: f64) {
    put_i64(state, at, v.to_bits() as i64);
}

/// Runs a custom aggregate's update for the generated export. Not for direct use.
///
/// # Safety
/// As [`batch_from_memory`]; `state` must address `groups × size` writable bytes.
#[doc(hidden)]
pub unsafe fn __run_group_update(
    desc: u32,
    state: u32,
    groups: u32,
    size: usize,
    f: fn(&Batch, Groups, &mut GroupStates) -> KernelResult,
) -> i32 {
    let result = with_scratch(|| -> KernelResult {
        // SAFETY: forwarded contract.
        let mut batch = unsafe { batch_from_memory(desc) }?;
        if batch.columns.is_empty() {
            return Err(status::BAD_INPUT);
        }
        let g = batch.columns.remove(0);
        let ids = match g.type_code {
            0 => None,
            types::INT32 => Some(g.i32s()?),
            _ => return Err(status::BAD_INPUT),
        };
        if let Some(ids) = ids
            && ids.iter().any(|&i| i < 0 || i as u32 >= groups)
        {
            return Err(status::BAD_INPUT);
        }
        let len = (groups as usize)
            .checked_mul(size)
            .ok_or(status::BAD_INPUT)?;
        // SAFETY: the host reserved `len` bytes at `state` (contract).
        let bytes = unsafe { core::slice::from_raw_parts_mut(state as usize as *mut u8, len) };
        f(
            &batch,
            Groups::from_parts(ids),
            &mut GroupStates::from_parts(bytes, size),
        )
    });
    match result {
        Ok(()) => 0,
        Err(e) => e,
    }
}

/// Runs a custom aggregate's finish for the generated export. Not for direct use.
///
/// # Safety
/// `state` must address `size` readable bytes and `out` `out_cap` writable `u64`s, 8-byte
/// aligned.
#[doc(hidden)]
pub unsafe fn __run_group_finish(
    state: u32,
    out: u32,
    out_cap: u32,
    size: usize,
    f: fn(&[u8], &mut AggOutput) -> KernelResult,
) -> i32 {
    with_scratch(|| {
        if !out.is_multiple_of(8) {
            return status::BAD_INPUT;
        }
        // SAFETY: per the contract.
        let st = unsafe { core::slice::from_raw_parts(state as usize as *const u8, size) };
        // SAFETY: per the contract (alignment checked).
        let o =
            unsafe { core::slice::from_raw_parts_mut(out as usize as *mut u64, out_cap as usize) };
        let mut o = AggOutput::from_parts(o);
        match f(st, &mut o) {
            Ok(()) => o.len() as i32,
            Err(e) => e,
        }
    })
}

/// Generates the exports of a custom aggregate kernel (manifest `kind=aggregate`) around
/// `update: fn(&Batch, Groups, &mut GroupStates) -> KernelResult` (the batch holds the
/// arguments; each row goes to `groups.of(row)`'s state) and `finish: fn(&[u8], &mut
/// AggOutput) -> KernelResult` (one group's state to its value), with `STATE_SIZE` bytes of
/// state per group — the manifest's `state_size` must say the same.
#[macro_export]
macro_rules! export_aggregate_kernel {
    ($update:path, $finish:path, $size:expr) => {
        /// Aggregate update entry point (Nearstore kernel ABI).
        #[unsafe(no_mangle)]
        pub extern "C" fn nearstore_agg_update(desc: u32, state: u32, groups: u32) -> i32 {
            // SAFETY: the device calls this export with addresses it wrote per the ABI.
            unsafe { $crate::__run_group_update(desc, state, groups, $size, $update) }
        }

        /// Aggregate finish entry point (Nearstore kernel ABI).
        #[unsafe(no_mangle)]
        pub extern "C" fn nearstore_agg_finish(state: u32, out: u32, out_cap: u32) -> i32 {
            // SAFETY: the device calls this export with addresses it wrote per the ABI.
            unsafe { $crate::__run_group_finish(state, out, out_cap, $size, $finish) }
        }
        $crate::export_common!();
    };
}

/// Generates the aggregate export around `fn(&Batch, &mut AggState) -> KernelResult`.
#[macro_export]
macro_rules! export_aggregate {
    ($f:path) => {
        /// Aggregate entry point (Nearstore kernel ABI).
        #[unsafe(no_mangle)]
        pub extern "C" fn nearstore_agg_update(desc: u32, state: u32, groups: u32) -> i32 {
            // SAFETY: the device calls this export with addresses it wrote per the ABI.
            unsafe { $crate::__run_aggregate(desc, state, groups, $f) }
        }
    };
}

/// Generates the exports of a filter kernel around `fn(&Batch, &mut Selection) -> KernelResult`.
#[macro_export]
macro_rules! export_filter {
    ($f:path) => {
        /// Filter entry point (Nearstore kernel ABI).
        #[unsafe(no_mangle)]
        pub extern "C" fn nearstore_filter(desc: u32, out: u32, out_cap: u32) -> i32 {
            // SAFETY: the device calls this export with addresses it wrote per the ABI.
            unsafe { $crate::__run_filter(desc, out, out_cap, false, $f) }
        }

        /// Filter entry point writing a bitmap (Nearstore kernel ABI).
        #[unsafe(no_mangle)]
        pub extern "C" fn nearstore_filter_bitmap(desc: u32, out: u32, out_words: u32) -> i32 {
            // SAFETY: the device calls this export with addresses it wrote per the ABI.
            unsafe { $crate::__run_filter(desc, out, out_words, true, $f) }
        }
        $crate::export_common!();
    };
}

/// Generates the exports every kernel has: ABI version and allocator.
#[macro_export]
macro_rules! export_common {
    () => {
        /// ABI version (Nearstore kernel ABI).
        #[unsafe(no_mangle)]
        pub extern "C" fn nearstore_abi_version() -> u32 {
            $crate::abi::ABI_VERSION
        }

        /// Allocation for the host's arena (Nearstore kernel ABI); 0 on failure.
        #[unsafe(no_mangle)]
        pub extern "C" fn nearstore_alloc(size: u32, align: u32) -> u32 {
            $crate::alloc_for_host(size, align)
        }
    };
}

/// Embeds the kernel manifest (`key=value` lines) as the `nearstore.manifest` custom section.
#[macro_export]
macro_rules! manifest {
    ($text:literal) => {
        #[unsafe(link_section = "nearstore.manifest")]
        #[used]
        static __NEARSTORE_MANIFEST: [u8; $text.len()] = *$text;
    };
}

/// Allocates `size` bytes aligned to `align` for the host; 0 on failure.
pub fn alloc_for_host(size: u32, align: u32) -> u32 {
    let Ok(layout) =
        core::alloc::Layout::from_size_align(size.max(1) as usize, align.max(1) as usize)
    else {
        return 0;
    };
    // SAFETY: layout has non-zero size.
    let p = unsafe { alloc::alloc::alloc(layout) };
    p as usize as u32
}

/// The allocator's current position (wasm32; 0 elsewhere).
fn scratch_mark() -> usize {
    #[cfg(target_arch = "wasm32")]
    return wasm::mark();
    #[cfg(not(target_arch = "wasm32"))]
    0
}

/// Releases everything allocated since `mark` (wasm32; nothing elsewhere).
///
/// # Safety
/// No allocation made after `mark` may be used afterwards.
unsafe fn scratch_reset(mark: usize) {
    #[cfg(target_arch = "wasm32")]
    wasm::reset(mark);
    #[cfg(not(target_arch = "wasm32"))]
    let _ = mark;
}

#[cfg(target_arch = "wasm32")]
mod wasm {
    //! A bump allocator over `memory.grow`. A kernel instance lives for one query; memory a call
    //! allocates is released when the call returns (see `__run_filter`), the rest when the
    //! instance is dropped. `dealloc` reuses nothing by itself.
    use core::alloc::{GlobalAlloc, Layout};
    use core::cell::Cell;

    struct Bump {
        next: Cell<usize>,
        end: Cell<usize>,
    }

    // SAFETY: wasm32-unknown-unknown kernels are single-threaded (threads are disabled in the
    // sandbox), so the Cells are never shared across threads.
    unsafe impl Sync for Bump {}

    const PAGE: usize = 65536;

    unsafe impl GlobalAlloc for Bump {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let start = (self.next.get() + layout.align() - 1) & !(layout.align() - 1);
            let Some(end) = start.checked_add(layout.size()) else {
                return core::ptr::null_mut();
            };
            if end > self.end.get() {
                let need = end - self.end.get();
                let pages = need.div_ceil(PAGE);
                let prev = core::arch::wasm32::memory_grow(0, pages);
                if prev == usize::MAX {
                    return core::ptr::null_mut();
                }
                if self.end.get() == 0 {
                    // First growth: start at the new region.
                    let base = prev * PAGE;
                    self.next.set(base);
                    self.end.set(base + pages * PAGE);
                    // SAFETY: retry with the region now set up.
                    return unsafe { self.alloc(layout) };
                }
                self.end.set(self.end.get() + pages * PAGE);
            }
            self.next.set(end);
            start as *mut u8
        }

        unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
    }

    #[global_allocator]
    static ALLOC: Bump = Bump {
        next: Cell::new(0),
        end: Cell::new(0),
    };

    pub(super) fn mark() -> usize {
        ALLOC.next.get()
    }

    pub(super) fn reset(mark: usize) {
        if mark != 0 && mark <= ALLOC.next.get() {
            ALLOC.next.set(mark);
        }
    }

    #[link(wasm_import_module = "nearstore")]
    unsafe extern "C" {
        fn abort(code: u32) -> !;
    }

    #[panic_handler]
    fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
        // SAFETY: the host's abort import never returns.
        unsafe { abort(0xDEAD) }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn masks_and_selection() {
        let v: Vec<i64> = (0..130).collect();
        assert_eq!(mask_block(&v, 0, |x| x < 3), 0b111);
        assert_eq!(mask_block(&v, 128, |_| true), 0b11);
        let mut out = [0u32; 4];
        let mut sel = Selection::new(&mut out);
        sel.push_mask(64, 0b1010).unwrap();
        assert_eq!(sel.len(), 2);
        assert_eq!(sel.push_mask(128, 0b111), Err(status::OUTPUT_TOO_SMALL));
        assert_eq!(&out[..2], &[65, 67]);
        let mut words = [u64::MAX; 3];
        let mut sel = Selection::bitmap(&mut words);
        sel.push_mask(0, 0b101).unwrap();
        sel.push_mask(96, 0xFFFF_0000_0000_0001).unwrap();
        assert_eq!(sel.len(), 19);
        assert_eq!(words, [0b101, 1 << 32, 0xFFFF_0000]);
        let validity = [0b0000_0101u8, 0, 0, 0, 0, 0, 0, 0, 0xFF];
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let c = Column::from_parts(types::INT64, 0, &bytes, Some(&validity), None, 70);
        assert_eq!(c.validity_block(0), 0b101);
        assert_eq!(c.validity_block(64), 0b11_1111);
        assert!(c.f64s().is_err());
    }

    /// Consecutive blocks pushed at once select what one push per block selects: into a
    /// bitmap from a word's first row, from any other row, and as indices.
    #[test]
    fn masks_pushed_at_once_select_as_one_at_a_time() {
        let masks = [0xF0F0_0000_0000_0001u64, 0, u64::MAX, 1 << 63];
        for base in [0, 64, 5] {
            let (mut a, mut b) = ([u64::MAX; 6], [u64::MAX; 6]);
            let (mut x, mut y) = (Selection::bitmap(&mut a), Selection::bitmap(&mut b));
            x.push_masks(base, &masks).unwrap();
            for (i, m) in masks.iter().enumerate() {
                y.push_mask(base + i * BLOCK, *m).unwrap();
            }
            assert_eq!((x.len(), a), (y.len(), b), "from row {base}");
            let (mut a, mut b) = ([0u32; 200], [0u32; 200]);
            let (mut x, mut y) = (Selection::new(&mut a), Selection::new(&mut b));
            x.push_masks(base, &masks).unwrap();
            for (i, m) in masks.iter().enumerate() {
                y.push_mask(base + i * BLOCK, *m).unwrap();
            }
            assert_eq!((x.len(), a), (y.len(), b), "from row {base}");
        }
        let mut words = [0u64; 2];
        let mut sel = Selection::bitmap(&mut words);
        assert_eq!(sel.push_masks(64, &[1, 1]), Err(status::OUTPUT_TOO_SMALL));
    }

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
