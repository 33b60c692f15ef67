//! The per-batch calls of a kernel — filter (indices or bitmap), map, the built-in expression
//! program, top-k — and the checks on their outputs before the host uses them: counts, every
//! index in range and strictly increasing, no bit past the last row.

use nearstore_kernel_abi as abi;

use super::session::BatchFunc;
use super::{ColumnBuffers, KernelError, KernelSession};

impl KernelSession {
    /// Runs a map kernel over `rows` rows: one 8-byte value per row and a validity bitmap
    /// (`u64` words), checked: the count, and no validity bit past the last row.
    pub fn map(
        &mut self,
        rows: usize,
        columns: &[ColumnBuffers<'_>],
        params: &[u8],
    ) -> Result<(Vec<u64>, Vec<u64>), KernelError> {
        let f = self.map.clone().ok_or_else(|| self.not_a("a map"))?;
        let (bytes, validity) = self.values_out(&f, rows, columns, params, 8)?;
        let values = bytes
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
            .collect();
        Ok((values, validity))
    }

    /// Runs the built-in kernel's expression program (`nearstore_project`; `params` starts
    /// with the output width, 8 or 16): the validity words and `rows` values of that width,
    /// checked: the count, and no validity bit past the last row.
    pub fn project(
        &mut self,
        rows: usize,
        columns: &[ColumnBuffers<'_>],
        params: &[u8],
    ) -> Result<(arrow::buffer::Buffer, Vec<u64>), KernelError> {
        let f = self
            .project
            .clone()
            .ok_or_else(|| Self::no_export(abi::EXPORT_PROJECT))?;
        let width = match params.first() {
            Some(&w @ (8 | 16)) => w as usize,
            _ => {
                return Err(KernelError::Host(
                    "expression program without its width".into(),
                ));
            }
        };
        let words = rows.div_ceil(64);
        let (desc, out) = self.stage(rows, columns, params, words * 8 + rows * width)?;
        let n = self.call_batch(&f, (desc, out, rows as u32))? as usize;
        if n != rows {
            return Err(self.bad_output(format!("computed {n} values for a {rows}-row batch")));
        }
        let bytes = self.output(out, words * 8 + rows * width)?;
        let (head, values) = bytes.split_at(words * 8);
        let validity = self.validity(head, rows)?;
        // One copy, into an aligned buffer the result array can own.
        Ok((arrow::buffer::Buffer::from_slice_ref(values), validity))
    }

    /// Whether the kernel offers the top-k pre-selection.
    pub fn has_topk(&self) -> bool {
        self.topk.is_some()
    }

    /// The top-k pre-selection over one batch (`columns[0]` the first sort key, `params` its
    /// direction and null placement): a bitmap of the rows that may be in the query's top `k`,
    /// checked (tail bits, count). The kernel keeps the best keys across calls.
    pub fn topk(
        &mut self,
        rows: usize,
        columns: &[ColumnBuffers<'_>],
        params: &[u8],
        k: usize,
    ) -> Result<Vec<u8>, KernelError> {
        let f = self
            .topk
            .clone()
            .ok_or_else(|| Self::no_export(abi::EXPORT_TOPK))?;
        if self.topk_state.0 == 0 {
            let k32 = u32::try_from(k)
                .map_err(|_| KernelError::Host(format!("top {k} is too many for a kernel")))?;
            let p = self.alloc_zeroed(16 + 16 * k)?;
            let memory = self.memory.expect("memory resolved");
            memory.data_mut(&mut self.store)[p as usize..p as usize + 4]
                .copy_from_slice(&k32.to_le_bytes());
            self.topk_state = (p, k);
        } else if self.topk_state.1 != k {
            return Err(KernelError::Host("top-k changed within a query".into()));
        }
        let words = rows.div_ceil(64);
        let (desc, out) = self.stage(rows, columns, params, words * 8)?;
        let n = self.call_batch(&f, (desc, out, self.topk_state.0))?;
        self.selection(out, rows, n, "top-k")
    }

    /// Calls a `(batch, out, rows)` export that writes `rows` values of `width` bytes and then
    /// validity words; returns the value bytes and the words after checking the count and the
    /// tail bits.
    pub(super) fn values_out(
        &mut self,
        f: &BatchFunc,
        rows: usize,
        columns: &[ColumnBuffers<'_>],
        params: &[u8],
        width: usize,
    ) -> Result<(Vec<u8>, Vec<u64>), KernelError> {
        let words = rows.div_ceil(64);
        let (desc, out) = self.stage(rows, columns, params, rows * width + words * 8)?;
        let n = self.call_batch(f, (desc, out, rows as u32))? as usize;
        if n != rows {
            return Err(self.bad_output(format!("mapped {n} values for a {rows}-row batch")));
        }
        let bytes = self.output(out, rows * width + words * 8)?;
        let (values, tail_words) = bytes.split_at(rows * width);
        Ok((values.to_vec(), self.validity(tail_words, rows)?))
    }

    /// The selection bitmap (`rows` bits) the kernel wrote at `out`, checked: no bit past the
    /// last row, and `n` (what the kernel returned) bits set. `what` names it in errors.
    pub(super) fn selection(
        &self,
        out: u32,
        rows: usize,
        n: u32,
        what: &str,
    ) -> Result<Vec<u8>, KernelError> {
        let bytes = self.output(out, rows.div_ceil(8))?.to_vec();
        let tail = rows % 8;
        if tail != 0 && bytes.last().is_some_and(|b| b >> tail != 0) {
            return Err(self.bad_output(format!(
                "{what} selects rows past the end of a {rows}-row batch"
            )));
        }
        let set = crate::compute::lanes::count_ones(&bytes);
        if set != n as usize {
            return Err(self.bad_output(format!(
                "returned count {n} but the {what} selects {set} rows"
            )));
        }
        Ok(bytes)
    }

    /// Validity words the kernel wrote (`bytes`, little-endian `u64`s), checked: no bit past
    /// the last of `rows` rows.
    pub(super) fn validity(&self, bytes: &[u8], rows: usize) -> Result<Vec<u64>, KernelError> {
        let words: Vec<u64> = bytes
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
            .collect();
        let tail = rows % 64;
        if tail != 0 && words.last().is_some_and(|w| w >> tail != 0) {
            return Err(self.bad_output(format!(
                "validity marks rows past the end of a {rows}-row batch"
            )));
        }
        Ok(words)
    }

    /// Whether the kernel offers the bitmap form of the filter.
    pub fn has_bitmap_filter(&self) -> bool {
        self.filter_bitmap.is_some()
    }

    /// Runs the bitmap filter export; returns the selection bitmap (`rows` bits, LSB first)
    /// after checking it: no bit past the last row, and the returned count equal to the bits
    /// set.
    pub fn filter_bitmap(
        &mut self,
        rows: usize,
        columns: &[ColumnBuffers<'_>],
        params: &[u8],
    ) -> Result<Vec<u8>, KernelError> {
        let words = rows.div_ceil(64);
        let (desc, out) = self.stage(rows, columns, params, words * 8)?;
        let f = self
            .filter_bitmap
            .clone()
            .ok_or_else(|| Self::no_export(abi::EXPORT_FILTER_BITMAP))?;
        let n = self.call_batch(&f, (desc, out, words as u32))?;
        self.selection(out, rows, n, "bitmap")
    }

    /// Runs the filter export over `rows` rows of `columns` with `params`; returns the selected
    /// row indices after checking them (count, range, strict order).
    pub fn filter(
        &mut self,
        rows: usize,
        columns: &[ColumnBuffers<'_>],
        params: &[u8],
    ) -> Result<Vec<u32>, KernelError> {
        let (desc, out) = self.stage(rows, columns, params, rows * 4)?;
        let f = self.filter.clone().ok_or_else(|| {
            KernelError::AbiMismatch(format!(
                "kernel {} is a {} kernel, not a filter",
                self.program.name,
                self.program.kind.as_str()
            ))
        })?;
        let n = self.call_batch(&f, (desc, out, rows as u32))? as usize;
        if n > rows {
            return Err(self.bad_output(format!("selected {n} rows of a {rows}-row batch")));
        }
        let out = self.output(out, n * 4)?;
        let mut idx = Vec::with_capacity(n);
        let mut prev: Option<u32> = None;
        for w in out.chunks_exact(4) {
            let i = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            if i as usize >= rows {
                return Err(
                    self.bad_output(format!("row index {i} is out of range for {rows} rows"))
                );
            }
            if prev.is_some_and(|p| p >= i) {
                return Err(self.bad_output(format!(
                    "row indices are not strictly increasing ({} then {i})",
                    prev.unwrap_or(0)
                )));
            }
            prev = Some(i);
            idx.push(i);
        }
        Ok(idx)
    }
}
