//! The native backend: trusted Rust operators over Arrow compute kernels.

use arrow::array::{ArrayRef, BooleanArray};
use arrow::record_batch::RecordBatch;
use nearstore_proto::BackendKind;

use super::{ComputeBackend, ComputeSession, KernelLimits, Support};
use crate::error::Result;
use crate::plan::PhysExpr;

/// Built-in operators; runs every expression the binder accepts.
#[derive(Debug, Default, Clone, Copy)]
pub struct NativeBackend;

impl ComputeBackend for NativeBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Native
    }

    fn supports_filter(&self, _predicate: &PhysExpr) -> Support {
        Support::Exact
    }

    fn supports_expr(&self, _expr: &PhysExpr) -> Support {
        Support::Exact
    }

    fn open_with(&self, _limits: Option<KernelLimits>) -> Result<Box<dyn ComputeSession>> {
        Ok(Box::new(NativeBackend))
    }
}

impl ComputeSession for NativeBackend {
    fn filter(&mut self, predicate: &PhysExpr, batch: &RecordBatch) -> Result<BooleanArray> {
        predicate.eval_predicate(batch)
    }

    fn evaluate(&mut self, expr: &PhysExpr, batch: &RecordBatch) -> Result<ArrayRef> {
        expr.eval(batch)?.into_array(batch.num_rows())
    }
}
