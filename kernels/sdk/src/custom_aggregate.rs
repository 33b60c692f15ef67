//! Custom aggregate kernels (manifest `kind=aggregate`): each row's group ([`Groups`]), the
//! per-group states of the kernel's own layout ([`GroupStates`], read and written with
//! [`get_i64`], [`put_f64`], …), a group's output ([`AggOutput`]), the update and finish
//! runners and [`export_aggregate_kernel!`](crate::export_aggregate_kernel).

use crate::KernelResult;
use crate::abi::{status, types};
use crate::arena::with_scratch;
use crate::batch::{Batch, batch_from_memory};

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
