//! A column as the kernel ABI lays it out ([`ColumnBuffers`]) and how its values are written
//! into a device's memory ([`Stage`]): copied, or narrowed on the way to a smaller stored
//! width (`ColumnDesc.stored_width`), with the range found in the same pass by
//! `compute/lanes.rs` (compiled for AVX-512/AVX2 and chosen at run time).

use nearstore_kernel_abi::types;

/// A column handed to a kernel: type, scale and Arrow buffers.
#[derive(Debug, Clone, Copy)]
pub struct ColumnBuffers<'a> {
    /// [`nearstore_kernel_abi::types`] code.
    pub type_code: u32,
    /// Decimal scale.
    pub scale: i32,
    /// Values (Arrow layout).
    pub values: &'a [u8],
    /// Validity bitmap, starting at bit 0 for row 0.
    pub validity: Option<&'a [u8]>,
    /// Offsets (UTF8).
    pub offsets: Option<&'a [u8]>,
    /// How the values are written into the kernel's memory.
    pub stage: Stage,
}

/// How a column's values are written into the kernel's memory: copied, or narrowed on the way
/// (no pass of its own) to a smaller signed width that every value fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stage {
    /// As they are.
    #[default]
    Copy,
    /// `values` holds signed integers of `from` bytes (4, 8 or 16) that all fit signed
    /// integers of `to` bytes (1, 2, 4 or 8, less than `from`); the kernel gets the latter.
    /// Decimals of precision ≤ 18 (type INT64) travel so as `i64`s.
    Narrow {
        /// Bytes per value in `values`.
        from: u8,
        /// Bytes per value in the kernel's memory.
        to: u8,
    },
    /// `values` holds signed integers of `from` bytes (4, 8 or 16) of an INT32, DATE32 or
    /// INT64 column, narrowed for the built-in filter kernel to the fewest bytes that hold
    /// them all: tried at `to` bytes in the one pass that finds their range, and only when
    /// they do not fit once more at the width they need. The sandbox's
    /// `KernelSession::value_widths` tells the width they needed.
    Guess {
        /// Bytes per value in `values`.
        from: u8,
        /// Bytes per value tried first.
        to: u8,
    },
}

impl<'a> ColumnBuffers<'a> {
    /// Column 0 of an aggregate call: each row's group as an INT32 (`ids`, little-endian), or
    /// type code 0 when there are none (every row in group 0).
    pub fn groups(ids: Option<&'a [u8]>) -> Self {
        ColumnBuffers {
            type_code: if ids.is_some() { types::INT32 } else { 0 },
            scale: 0,
            values: ids.unwrap_or(&[]),
            validity: None,
            offsets: None,
            stage: Stage::Copy,
        }
    }

    /// Bytes of the values as the kernel sees them (at most, for [`Stage::Guess`]).
    pub fn staged_len(&self) -> usize {
        match self.stage {
            Stage::Copy | Stage::Guess { .. } => self.values.len(),
            Stage::Narrow { from, to } => self.values.len() / from as usize * to as usize,
        }
    }

    /// Writes the values as the kernel sees them into `out` (`staged_len` bytes); returns the
    /// bytes per value written and the fewest that would hold them (as written, unless
    /// staging found their range), or an error when a 16-byte value does not fit 8.
    pub fn stage_values(&self, out: &mut [u8]) -> Result<(u8, u8), BeyondPrecision> {
        use crate::compute::lanes;
        match self.stage {
            Stage::Copy => {
                out.copy_from_slice(self.values);
                let w = types::width(self.type_code) as u8;
                Ok((w, w))
            }
            Stage::Narrow { from: 16, to: 8 } => {
                // Decimals of precision <= 18: the range check rides along with the narrowing,
                // so data beyond its declared precision is an error, not a truncated value.
                let n = self.values.len() / 16;
                if n > 0 && lanes::narrow_range(self.values, 16, out, 8).is_none() {
                    return Err(BeyondPrecision);
                }
                Ok((8, 8))
            }
            Stage::Narrow { from, to } => {
                lanes::narrow(self.values, from, out, to);
                Ok((to, to))
            }
            Stage::Guess { from, to } => {
                let n = self.values.len() / from as usize;
                let need = lanes::narrow_range(self.values, from, &mut out[..n * to as usize], to)
                    .map(|(lo, hi)| lanes::width_for(lo, hi));
                match need {
                    Some(w) if w <= to => Ok((to, w)),
                    Some(w) if w < from => {
                        lanes::narrow(self.values, from, &mut out[..n * w as usize], w);
                        Ok((w, w))
                    }
                    Some(_) => {
                        out.copy_from_slice(self.values);
                        Ok((from, from))
                    }
                    None if n == 0 => Ok((to, to)),
                    None => Err(BeyondPrecision),
                }
            }
        }
    }
}

/// A decimal of precision <= 18 whose value does not fit an `i64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BeyondPrecision;

impl std::fmt::Display for BeyondPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "a decimal of precision 18 or less holds a value beyond 18 digits (the data does not \
             match its declared type)",
        )
    }
}

impl std::error::Error for BeyondPrecision {}
