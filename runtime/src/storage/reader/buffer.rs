//! Read buffers: heap blocks aligned to [`BLOCK_BYTES`] (as `O_DIRECT` wants), handed to the
//! kernel to fill and then frozen into [`Bytes`] without a copy; freed ones are pooled for reuse.

use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::BLOCK_BYTES;

/// A heap buffer aligned to [`BLOCK_BYTES`], as `O_DIRECT` requires.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads through `as_ref`, like &Vec<u8>.
unsafe impl Sync for AlignedBuf {}

/// Bytes of freed read buffers kept for reuse. Reused buffers are already faulted in; fresh
/// ones cost a page fault per 4 KiB on first write, which at NVMe speeds is a large share of
/// the read path's time.
const POOL_BYTES_MAX: usize = 64 << 20;

/// Freed buffers by capacity (a power of two of at least one block).
struct Pool {
    free: std::sync::Mutex<HashMap<usize, Vec<PooledPtr>>>,
    bytes: std::sync::atomic::AtomicUsize,
}

/// A pooled buffer's allocation, of the capacity it is filed under.
struct PooledPtr(NonNull<u8>);

// SAFETY: a pooled pointer is an allocation nobody else references; ownership moves with it.
unsafe impl Send for PooledPtr {}

static POOL: std::sync::LazyLock<Pool> = std::sync::LazyLock::new(|| Pool {
    free: std::sync::Mutex::new(HashMap::new()),
    bytes: std::sync::atomic::AtomicUsize::new(0),
});

impl AlignedBuf {
    /// A buffer of at least `cap` bytes (rounded up to a power of two of whole blocks),
    /// initialised: zeroed when fresh, holding old read data when reused. Only the first
    /// `len()` bytes are ever exposed as read data.
    pub fn zeroed(cap: usize) -> Self {
        let cap = cap.max(BLOCK_BYTES).next_power_of_two();
        let reused = POOL
            .free
            .lock()
            .expect("buffer pool lock")
            .get_mut(&cap)
            .and_then(Vec::pop);
        if let Some(p) = reused {
            POOL.bytes.fetch_sub(cap, Ordering::Relaxed);
            return AlignedBuf {
                ptr: p.0,
                cap,
                len: 0,
            };
        }
        let layout = Self::layout(cap);
        // SAFETY: layout has non-zero size (cap is at least one block).
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, cap, len: 0 }
    }

    fn layout(cap: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(cap, BLOCK_BYTES).expect("valid aligned layout")
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Valid bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no byte is valid.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole capacity, writable.
    pub fn spare_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for cap bytes, all initialised (zeroed when allocated, or old
        // read data when reused from the pool), and uniquely borrowed
        // through &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }

    /// Marks the first `len` bytes as the valid read data.
    pub(super) fn set_len(&mut self, len: usize) {
        assert!(len <= self.cap, "length beyond capacity");
        self.len = len;
    }

    /// Freezes the valid bytes into a [`Bytes`] without copying.
    pub fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: ptr is valid for cap bytes, all initialised (zeroed when allocated, or old
        // read data when reused from the pool); `set_len` keeps len <= cap; the slice borrows
        // self, so the buffer cannot be freed or written through `spare_mut` meanwhile.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if POOL.bytes.fetch_add(self.cap, Ordering::Relaxed) + self.cap <= POOL_BYTES_MAX {
            POOL.free
                .lock()
                .expect("buffer pool lock")
                .entry(self.cap)
                .or_default()
                .push(PooledPtr(self.ptr));
            return;
        }
        POOL.bytes.fetch_sub(self.cap, Ordering::Relaxed);
        // SAFETY: allocated in `zeroed` with exactly this layout (pooled buffers keep theirs).
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) }
    }
}
