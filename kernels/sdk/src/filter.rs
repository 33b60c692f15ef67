//! Filter kernels: the runner behind the `nearstore_filter` and `nearstore_filter_bitmap`
//! exports, and [`export_filter!`](crate::export_filter) that generates them.

use crate::KernelResult;
use crate::abi::status;
use crate::arena::with_scratch;
use crate::batch::{Batch, batch_from_memory};
use crate::selection::Selection;

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
