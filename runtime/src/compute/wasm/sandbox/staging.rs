//! Staging a batch in the kernel's memory: the arena (params, column descriptors, Arrow
//! buffers 16-byte aligned, batch descriptor, output), grown through the kernel's allocator,
//! and the persistent allocations (aggregate and top-k state) made the same way.

use nearstore_kernel_abi as abi;

use super::{ColumnBuffers, KernelError, KernelSession, Stage};

pub(super) const ALIGN: usize = 16;

pub(super) fn align_up(x: usize) -> usize {
    x.div_ceil(ALIGN) * ALIGN
}

impl KernelSession {
    /// Makes sure the arena holds `bytes`, asking the kernel for a larger one if not.
    pub(super) fn reserve(&mut self, bytes: usize) -> Result<(), KernelError> {
        if bytes <= self.arena_cap as usize {
            return Ok(());
        }
        let want = u32::try_from(bytes + bytes / 2).map_err(|_| {
            KernelError::Host(format!(
                "a batch of {bytes} bytes does not fit a 32-bit kernel"
            ))
        })?;
        self.arena = self.kernel_alloc(want)?;
        self.arena_cap = want;
        Ok(())
    }

    /// Asks the kernel for `bytes` of persistent memory (outside any call, so it survives the
    /// per-call scratch release) and zeroes it.
    pub(super) fn alloc_zeroed(&mut self, bytes: usize) -> Result<u32, KernelError> {
        let want = u32::try_from(bytes.max(1))
            .map_err(|_| KernelError::Host(format!("{bytes} bytes do not fit a 32-bit kernel")))?;
        let p = self.kernel_alloc(want)?;
        let memory = self.memory.expect("memory resolved");
        memory.data_mut(&mut self.store)[p as usize..p as usize + want as usize].fill(0);
        Ok(p)
    }

    /// Calls the kernel's allocator for `want` bytes, 16-byte aligned, and checks what it
    /// returned lies inside the kernel's memory (a memory limit hit on the way is reported as
    /// such); the address.
    fn kernel_alloc(&mut self, want: u32) -> Result<u32, KernelError> {
        self.arm()?;
        let alloc = self.alloc.clone().expect("alloc resolved at instantiation");
        let p = alloc
            .call(&mut self.store, (want, ALIGN as u32))
            .map_err(|e| self.classify(e))?;
        let mem_len = self.memory.expect("memory resolved").data_size(&self.store);
        if p == 0
            || !(p as usize).is_multiple_of(ALIGN)
            || (p as usize).saturating_add(want as usize) > mem_len
        {
            if self.store.data().memory_limit_hit {
                return Err(self.memory_limit_error());
            }
            return Err(self.bad_output(format!(
                "allocation of {want} bytes returned address {p:#x} (memory is {mem_len} bytes)"
            )));
        }
        self.last_alloc_end = p as usize + want as usize;
        Ok(p)
    }

    /// Writes a batch into the arena: params | column descriptors | buffers | batch descriptor |
    /// `out_bytes` of output (8-byte aligned). Returns the descriptor and output addresses.
    pub(super) fn stage(
        &mut self,
        rows: usize,
        columns: &[ColumnBuffers<'_>],
        params: &[u8],
        out_bytes: usize,
    ) -> Result<(u32, u32), KernelError> {
        let mut off = align_up(params.len());
        let cols_off = off;
        off = align_up(off + columns.len() * abi::COLUMN_DESC_BYTES);
        let mut placed = Vec::with_capacity(columns.len());
        for c in columns {
            let v = off;
            off = align_up(off + c.staged_len());
            let val = c.validity.map(|b| {
                let at = off;
                off = align_up(off + b.len());
                at
            });
            let ofs = c.offsets.map(|b| {
                let at = off;
                off = align_up(off + b.len());
                at
            });
            placed.push((v, val, ofs));
        }
        let desc_off = off;
        off = align_up(off + abi::BATCH_DESC_BYTES);
        let out_off = off;
        off += out_bytes;
        self.reserve(off)?;

        let base = self.arena as usize;
        let memory = self.memory.expect("memory resolved");
        let data = memory.data_mut(&mut self.store);
        let region = data
            .get_mut(base..base + off)
            .ok_or_else(|| KernelError::Host("arena outside kernel memory".into()))?;
        region[..params.len()].copy_from_slice(params);
        self.value_widths.clear();
        for (i, (c, (v, val, ofs))) in columns.iter().zip(&placed).enumerate() {
            let (width, need) = c.stage_values(&mut region[*v..*v + c.staged_len()])?;
            self.value_widths.push(need);
            let values_len = match c.stage {
                Stage::Guess { from, .. } => c.values.len() / from as usize * width as usize,
                _ => c.staged_len(),
            };
            if let (Some(b), Some(at)) = (c.validity, val) {
                region[*at..*at + b.len()].copy_from_slice(b);
            }
            if let (Some(b), Some(at)) = (c.offsets, ofs) {
                region[*at..*at + b.len()].copy_from_slice(b);
            }
            let d = abi::ColumnDesc {
                type_code: c.type_code,
                scale: c.scale as u32,
                values_ptr: (base + v) as u32,
                values_len: values_len as u32,
                validity_ptr: val.map(|a| (base + a) as u32).unwrap_or(0),
                offsets_ptr: ofs.map(|a| (base + a) as u32).unwrap_or(0),
                offsets_len: c.offsets.map(|b| b.len() as u32).unwrap_or(0),
                // Narrower than the type's own width: the kernel reads them so.
                stored_width: if width as usize == abi::types::width(c.type_code) {
                    0
                } else {
                    u32::from(width)
                },
            };
            let at = cols_off + i * abi::COLUMN_DESC_BYTES;
            d.write(&mut region[at..at + abi::COLUMN_DESC_BYTES]);
        }
        abi::BatchDesc {
            abi: abi::ABI_VERSION,
            rows: rows as u32,
            ncols: columns.len() as u32,
            cols_ptr: (base + cols_off) as u32,
            params_ptr: base as u32,
            params_len: params.len() as u32,
        }
        .write(&mut region[desc_off..desc_off + abi::BATCH_DESC_BYTES]);
        Ok(((base + desc_off) as u32, (base + out_off) as u32))
    }
}
