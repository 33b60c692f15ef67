//! The expression-program export `nearstore_project` (the built-in kernel's computed
//! columns): its runner and [`export_project!`](crate::export_project).

use crate::KernelResult;
use crate::abi::status;
use crate::arena::with_scratch;
use crate::batch::{Batch, batch_from_memory};

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
