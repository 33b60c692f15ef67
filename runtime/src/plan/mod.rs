//! The bound plan: plan expressions resolved against a table's schema ([`PhysExpr`], bound by
//! [`Binder`]), bound aggregates ([`AggSpec`]), and their native evaluation with Arrow kernels
//! under SQL three-valued logic. The layer above the error type and below storage, scan,
//! compute and exec: everything that runs a query reads the plan in this form.
//!
//! A kernel call inside an expression reaches its sandbox through [`KernelFn`], which the
//! compute layer implements.

pub mod agg;
pub mod bind;
pub mod expr;
pub mod kernel;

pub use agg::{AggSpec, avg_exact};
pub use bind::{Binder, literal_array};
pub use expr::{PhysExpr, Value};
pub use kernel::{KernelFn, KernelKind, KernelOutput, KernelResolver, arg_type};
