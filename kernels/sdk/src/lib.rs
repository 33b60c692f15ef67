//! `nearstore-kernel`: the guest-side SDK for writing Nearstore kernels in plain Rust.
//!
//! A filter kernel is a function from a [`Batch`] to a [`Selection`]; [`export_filter!`]
//! generates the exports the device calls, [`manifest!`] embeds the manifest. Column data is
//! reached through typed views ([`Column::i64s`], [`Column::f64s`], …) and processed in blocks
//! of [`BLOCK`] rows: the helpers take a whole block and return a 64-bit mask, so the loops the
//! compiler sees are short, branch-free and vectorisable, and the sandbox's interruption checks
//! (one per loop back-edge) are paid once per block rather than once per row.
//!
//! ```
//! use nearstore_kernel::{Batch, Selection, BLOCK, KernelResult};
//! // Keep rows whose first column (i64) is even.
//! fn even(batch: &Batch, sel: &mut Selection) -> KernelResult {
//!     let col = batch.column(0)?;
//!     let v = col.i64s()?;
//!     for base in (0..batch.rows()).step_by(BLOCK) {
//!         let m = nearstore_kernel::mask_block(v, base, |x| x % 2 == 0) & col.validity_block(base);
//!         sel.push_mask(base, m)?;
//!     }
//!     Ok(())
//! }
//! // In the kernel crate: nearstore_kernel::export_filter!(even);
//! # let data: Vec<i64> = (0..100).collect();
//! # let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
//! # let col = nearstore_kernel::Column::from_parts(nearstore_kernel::abi::types::INT64, 0, &bytes, None, None, 100);
//! # let batch = Batch::from_parts(100, vec![col], &[]);
//! # let mut out = vec![0u32; 100];
//! # let mut sel = Selection::new(&mut out);
//! # even(&batch, &mut sel).unwrap();
//! # assert_eq!(sel.len(), 50);
//! ```
#![no_std]

extern crate alloc;

pub use nearstore_kernel_abi as abi;

/// Rows per block: the unit of every helper loop.
pub const BLOCK: usize = 64;

/// A kernel's result: `Err` carries a negative [`abi::status`] code.
pub type KernelResult<T = ()> = Result<T, i32>;

mod aggregate;
mod arena;
mod batch;
mod column;
mod compare;
mod custom_aggregate;
mod exports;
mod filter;
mod map;
mod project;
mod selection;

pub use aggregate::{__run_aggregate, AggState};
pub use arena::alloc_for_host;
pub use batch::{Batch, batch_from_memory};
pub use column::{Column, Ints};
pub use compare::pred;
pub use compare::{
    Cmp, Lane, cmp_block_f64, cmp_block_i32, cmp_block_i64, cmp_blocks, f64_order_key, lanes,
    mask_block,
};
pub use custom_aggregate::{
    __run_group_finish, __run_group_update, AggOutput, GroupStates, Groups, get_f64, get_i64,
    put_f64, put_i64,
};
pub use filter::__run_filter;
pub use map::{__run_map, MapOutput};
pub use project::__run_project;
pub use selection::Selection;
