//! Aggregate-program kernels (the built-in kernel's `nearstore_agg_update`): the state of
//! `groups × aggregates` fixed slots ([`AggState`]) and its runner and export macro.

use crate::KernelResult;
use crate::abi::{self, status};
use crate::arena::with_scratch;
use crate::batch::{Batch, batch_from_memory};

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
        let naggs = abi::agg::count(batch.params()).ok_or(status::BAD_INPUT)?;
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
