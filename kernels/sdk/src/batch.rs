//! A batch handed to a kernel, and how the exports read one from the host's descriptors in
//! the kernel's memory ([`batch_from_memory`]).

use alloc::vec::Vec;

use crate::KernelResult;
use crate::abi::{self, BatchDesc, COLUMN_DESC_BYTES, ColumnDesc, status};
use crate::column::Column;

/// A batch handed to a kernel.
#[derive(Debug)]
pub struct Batch<'a> {
    pub(crate) rows: usize,
    pub(crate) columns: Vec<Column<'a>>,
    pub(crate) params: &'a [u8],
}

impl<'a> Batch<'a> {
    /// A batch from its parts (for tests of kernels on the host).
    pub fn from_parts(rows: usize, columns: Vec<Column<'a>>, params: &'a [u8]) -> Self {
        Batch {
            rows,
            columns,
            params,
        }
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns.
    pub fn num_columns(&self) -> usize {
        self.columns.len()
    }

    /// Column `i`.
    pub fn column(&self, i: usize) -> KernelResult<&Column<'a>> {
        self.columns.get(i).ok_or(status::BAD_INPUT)
    }

    /// The query's parameter bytes.
    pub fn params(&self) -> &'a [u8] {
        self.params
    }
}

/// Reads a batch descriptor and its columns from the kernel's memory.
///
/// # Safety
/// `desc` must be the address of a [`BatchDesc`] written by the host, whose column descriptors
/// and buffers lie inside this module's linear memory and stay unchanged during the call.
/// (In the sandbox any address is at worst a trap, never an escape.)
pub unsafe fn batch_from_memory<'a>(desc: u32) -> KernelResult<Batch<'a>> {
    // SAFETY: per the function contract, desc points at BATCH_DESC_BYTES readable bytes.
    let d = BatchDesc::read(unsafe {
        core::slice::from_raw_parts(desc as usize as *const u8, abi::BATCH_DESC_BYTES)
    });
    if d.abi != abi::ABI_VERSION {
        return Err(status::BAD_INPUT);
    }
    let mut columns = Vec::with_capacity(d.ncols as usize);
    for i in 0..d.ncols as usize {
        let at = d.cols_ptr as usize + i * COLUMN_DESC_BYTES;
        // SAFETY: column descriptors lie in memory per the contract.
        let c = ColumnDesc::read(unsafe {
            core::slice::from_raw_parts(at as *const u8, COLUMN_DESC_BYTES)
        });
        let slice = |ptr: u32, len: u32| -> &'a [u8] {
            if ptr == 0 || len == 0 {
                &[]
            } else {
                // SAFETY: buffers lie in memory per the contract.
                unsafe { core::slice::from_raw_parts(ptr as usize as *const u8, len as usize) }
            }
        };
        let bitmap_len = (d.rows as usize).div_ceil(8) as u32;
        columns.push(Column {
            type_code: c.type_code,
            scale: c.scale as i32,
            values: slice(c.values_ptr, c.values_len),
            validity: (c.validity_ptr != 0).then(|| slice(c.validity_ptr, bitmap_len)),
            offsets: (c.offsets_ptr != 0).then(|| slice(c.offsets_ptr, c.offsets_len)),
            rows: d.rows as usize,
            stored_width: c.stored_width,
        });
    }
    Ok(Batch {
        rows: d.rows as usize,
        columns,
        params: if d.params_len == 0 {
            &[]
        } else {
            // SAFETY: the host wrote `params_len` parameter bytes at `params_ptr` in this
            // memory (the batch descriptor's contract), and they stay for the call.
            unsafe {
                core::slice::from_raw_parts(
                    d.params_ptr as usize as *const u8,
                    d.params_len as usize,
                )
            }
        },
    })
}
