//! A bump allocator over `memory.grow`. A kernel instance lives for one query; memory a call
//! allocates is released when the call returns (see `__run_filter`), the rest when the
//! instance is dropped. `dealloc` reuses nothing by itself. Also the panic handler, which
//! calls the host's `abort`.
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
