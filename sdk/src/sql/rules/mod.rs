//! The logical optimizer rules that push whole plan nodes to the devices in offload mode, one
//! rule per file; `rewrite` holds what they share.

mod push_aggregates;
mod push_kernel_projections;
mod push_topk;
mod rewrite;

pub use push_aggregates::PushAggregates;
pub use push_kernel_projections::PushKernelProjections;
pub use push_topk::PushTopK;
