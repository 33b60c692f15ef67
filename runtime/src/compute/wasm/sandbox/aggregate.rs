//! Aggregation in the kernel: the built-in aggregate program's slots and a custom aggregate
//! kernel's per-group states, kept in kernel memory the host allocates and grows as groups
//! appear (in place, without a copy, when the kernel's allocator returns the memory right
//! after it), read back (untrusted) at the end.

use nearstore_kernel_abi as abi;

use super::staging::{ALIGN, align_up};
use super::{ColumnBuffers, KernelError, KernelSession};
use crate::plan::{KernelKind, KernelOutput};

impl KernelSession {
    /// Whether the kernel offers aggregation.
    pub fn has_aggregate(&self) -> bool {
        self.agg_update.is_some()
    }

    /// Accumulates one batch into the aggregate state (see `nearstore_kernel_abi::agg`).
    /// `columns[0]` holds the group of each row (type code 0: all rows in group 0).
    pub fn aggregate_update(
        &mut self,
        rows: usize,
        columns: &[ColumnBuffers<'_>],
        params: &[u8],
        groups: usize,
    ) -> Result<(), KernelError> {
        let naggs = abi::agg::count(params)
            .ok_or_else(|| KernelError::Host("malformed aggregate program".into()))?;
        let per_group = naggs * abi::agg::SLOT_BYTES;
        self.update_groups(rows, columns, params, groups, per_group)
    }

    /// Accumulates one batch into a custom aggregate kernel's states (`state_size` bytes per
    /// group, the manifest's). `columns[0]` holds the groups as for
    /// [`KernelSession::aggregate_update`]; the others are the kernel's arguments.
    pub fn group_update(
        &mut self,
        rows: usize,
        columns: &[ColumnBuffers<'_>],
        params: &[u8],
        groups: usize,
    ) -> Result<(), KernelError> {
        let per_group = self.program.state_size;
        if self.program.kind != KernelKind::Aggregate || per_group == 0 {
            return Err(self.not_a("an aggregate"));
        }
        self.update_groups(rows, columns, params, groups, per_group)
    }

    pub(super) fn update_groups(
        &mut self,
        rows: usize,
        columns: &[ColumnBuffers<'_>],
        params: &[u8],
        groups: usize,
        per_group: usize,
    ) -> Result<(), KernelError> {
        let f = self
            .agg_update
            .clone()
            .ok_or_else(|| Self::no_export(abi::EXPORT_AGG_UPDATE))?;
        let (ptr, cap, bytes) = self.state;
        if bytes != 0 && bytes != per_group {
            return Err(KernelError::Host(
                "aggregate program changed within a query".into(),
            ));
        }
        // A state the host allocated last grows in place when the kernel's allocator hands out
        // the memory right after it (a bump allocator does): no copy, and only a little more
        // than the groups need is zeroed (fresh memory costs a page fault per page touched).
        let end = ptr as usize + cap * per_group;
        if groups > cap && ptr != 0 && self.last_alloc_end == end && end.is_multiple_of(ALIGN) {
            let new_cap = groups + groups / 8;
            let more = self.alloc_zeroed((new_cap - cap) * per_group)?;
            if more as usize == end {
                self.state = (ptr, new_cap, per_group);
            }
        }
        let (ptr, cap, _) = self.state;
        if groups > cap || ptr == 0 {
            let new_cap = groups.max(cap * 2).max(16);
            let new_ptr = self.alloc_zeroed(new_cap * per_group)?;
            if ptr != 0 {
                let memory = self.memory.expect("memory resolved");
                let data = memory.data_mut(&mut self.store);
                let len = cap * per_group;
                data.copy_within(ptr as usize..ptr as usize + len, new_ptr as usize);
            }
            self.state = (new_ptr, new_cap, per_group);
        }
        let (desc, _) = self.stage(rows, columns, params, 0)?;
        let state = self.state.0;
        match self.call_batch(&f, (desc, state, groups as u32))? {
            0 => Ok(()),
            rc => Err(self.bad_output(format!(
                "aggregate update returned {rc}; the ABI allows 0 or a status"
            ))),
        }
    }

    /// The aggregate state of `groups` groups, as the kernel left it (untrusted: the caller
    /// checks it).
    pub fn aggregate_state(&self, groups: usize) -> Result<Vec<u8>, KernelError> {
        let (ptr, cap, per_group) = self.state;
        if groups > cap {
            return Err(KernelError::Host(
                "aggregate state has fewer groups than asked".into(),
            ));
        }
        let memory = self.memory.expect("memory resolved");
        memory
            .data(&self.store)
            .get(ptr as usize..ptr as usize + groups * per_group)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| KernelError::Host("aggregate state outside kernel memory".into()))
    }

    /// Finishes `groups` groups of a custom aggregate kernel: each group's 8-byte values as the
    /// kernel wrote them (one or none for a scalar output, any number for a list), checked
    /// against the output type. A group no row reached has an all-zero state.
    pub fn group_finish(&mut self, groups: usize) -> Result<Vec<Vec<u64>>, KernelError> {
        let f = self
            .agg_finish
            .clone()
            .ok_or_else(|| self.not_a("an aggregate"))?;
        let per_group = self.program.state_size;
        let list = self.program.output == Some(KernelOutput::ListInt64);
        if groups > 0 && (self.state.0 == 0 || self.state.1 < groups) {
            // No batch reached the kernel (an empty table): every group's state is zero.
            let p = self.alloc_zeroed(groups * per_group)?;
            self.state = (p, groups, per_group);
        }
        let first_cap: usize = if list { 64 } else { 1 };
        let mut cap = first_cap;
        // The values of all groups together stay within what the kernel's memory could hold:
        // a kernel cannot make the host hold more than its own limit.
        let budget = self.config.memory_bytes_max / 8;
        let mut total = 0usize;
        let mut out = Vec::with_capacity(groups);
        let mut g = 0;
        while g < groups {
            self.reserve(cap * 8 + ALIGN)?;
            let at = align_up(self.arena as usize) as u32;
            let state = self.state.0 + (g * per_group) as u32;
            let n = self.arm().and_then(|()| {
                f.call(&mut self.store, (state, at, cap as u32))
                    .map_err(|e| self.classify(e))
            })?;
            if n == abi::status::OUTPUT_TOO_SMALL && list && cap < (1 << 24) {
                cap *= 4;
                continue;
            }
            let n = usize::try_from(n).map_err(|_| KernelError::Status {
                kernel: self.program.name.clone(),
                status: n,
            })?;
            if n > cap || (!list && n > 1) {
                return Err(self.bad_output(format!(
                    "finishing group {g} returned {n} values where {} fit",
                    if list { cap } else { 1 }
                )));
            }
            total += n;
            if total > budget {
                return Err(self.bad_output(format!(
                    "its results pass {budget} values, more than its memory limit could hold"
                )));
            }
            out.push(
                self.output(at, n * 8)?
                    .chunks_exact(8)
                    .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
                    .collect(),
            );
            g += 1;
            cap = first_cap;
        }
        Ok(out)
    }
}
