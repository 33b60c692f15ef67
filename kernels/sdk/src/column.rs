//! A column of a batch as the kernel sees it: typed views of its values ([`Column::i64s`],
//! [`Column::ints`] for narrowed integers, …), validity and boolean bits a block at a time,
//! and string values.

use crate::abi::{status, types};
use crate::compare::lanes;
use crate::{BLOCK, KernelResult};

/// One column of a batch, borrowed from the kernel's memory.
#[derive(Debug, Clone, Copy)]
pub struct Column<'a> {
    pub(crate) type_code: u32,
    pub(crate) scale: i32,
    pub(crate) values: &'a [u8],
    pub(crate) validity: Option<&'a [u8]>,
    pub(crate) offsets: Option<&'a [u8]>,
    pub(crate) rows: usize,
    /// Bytes per stored value when the host narrowed the column, else 0.
    pub(crate) stored_width: u32,
}

/// Integer values of an `INT32`, `DATE32` or `INT64` column as held in memory: in the type's
/// own width, or narrowed by the host to a smaller signed width that every value fits (see
/// [`abi::ColumnDesc::stored_width`](crate::abi::ColumnDesc::stored_width)).
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

    /// The [`abi::types`](crate::abi::types) code.
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
