//! The built-in kernels, one Wasm module: the filter program (`filter`, exported as
//! `nearstore_filter` and `nearstore_filter_bitmap`), the aggregate program (`aggregate`,
//! `nearstore_agg_update`), the expression program (`expr`, evaluated for computed columns by
//! `project`, `nearstore_project`) and top-k pre-selection (`topk`, `nearstore_topk`). The
//! manifest names the module `builtin.filter`.
#![no_std]

extern crate alloc;

mod aggregate;
mod expr;
mod filter;
mod project;
mod reader;
mod topk;

nearstore_kernel::export_filter!(filter::filter);
nearstore_kernel::export_aggregate!(aggregate::aggregate);
nearstore_kernel::export_project!(project::project);
nearstore_kernel::manifest!(
    b"abi=1\nkind=filter\nname=builtin.filter\nsignature=program\nstate_size=0\n"
);
