//! Memory for the host and for a call: [`alloc_for_host`] behind the `nearstore_alloc` export,
//! and [`with_scratch`], which releases what an export's call allocated when it returns.

#[cfg(target_arch = "wasm32")]
mod wasm;

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

/// Runs `call` and then releases everything it allocated, so a kernel instance runs any
/// number of batches in bounded memory. Only for export bodies, whose allocations never
/// outlive the call.
pub(crate) fn with_scratch<R>(call: impl FnOnce() -> R) -> R {
    let mark = scratch_mark();
    let result = call();
    // SAFETY: every allocation made since `mark` belonged to `call`, which has returned and
    // whose result holds no allocation (export results are plain integers).
    unsafe { scratch_reset(mark) };
    result
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
