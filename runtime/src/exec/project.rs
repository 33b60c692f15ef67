//! Projection: a decoded batch's output items computed where they are placed, with view
//! columns compacted before they are sent.

use arrow::array::ArrayRef;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::{RecordBatch, RecordBatchOptions};

use super::placement::Placement;
use crate::error::Result;
use crate::plan::PhysExpr;

/// The output items of one decoded batch, as a batch of `schema`.
pub(super) fn project(
    items: &[(String, PhysExpr)],
    schema: &SchemaRef,
    batch: &RecordBatch,
    placement: &Placement,
) -> Result<RecordBatch> {
    let cols = items
        .iter()
        .map(|(_, e)| placement.eval(e, batch))
        .collect::<Result<Vec<ArrayRef>>>()?;
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        cols,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )?)
}

/// Copies the strings of view columns (Utf8View, BinaryView) that reference larger buffers
/// than their values need: after a filter, a view array still points into the whole decoded
/// page, and Arrow IPC would send all of it over the link ([`crate::scan::compact_view`]).
pub(super) fn compact_views(batch: RecordBatch) -> Result<RecordBatch> {
    let mut changed = false;
    let cols = batch
        .columns()
        .iter()
        .map(|c| {
            let compacted = crate::scan::compact_view(c);
            changed |= compacted.is_some();
            compacted.unwrap_or_else(|| c.clone())
        })
        .collect::<Vec<_>>();
    if !changed {
        return Ok(batch);
    }
    Ok(RecordBatch::try_new_with_options(
        batch.schema(),
        cols,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )?)
}
