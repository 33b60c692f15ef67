//! Map kernels (one value per row): [`MapOutput`], the runner behind `nearstore_map` and
//! [`export_map!`](crate::export_map).

use crate::KernelResult;
use crate::abi::status;
use crate::arena::with_scratch;
use crate::batch::{Batch, batch_from_memory};
use crate::compare::lanes;

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
    /// the arguments' [`Column::validity_block`](crate::Column::validity_block)s ANDed together).
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
