//! The end of the pipeline: result rows streamed to the client as they come, or held — for
//! ORDER BY (a running top k under LIMIT) and for an aggregate's groups — then sorted, cut to
//! the LIMIT and sent a batch at a time.

use arrow::compute::{SortColumn, SortOptions, lexsort_to_indices, take};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use nearstore_proto::Plan;

use super::{BATCH_ROWS, SORT_ROWS_MAX};
use crate::error::{Error, Result};

/// Where result rows go.
#[derive(Debug)]
pub(super) struct RowSink<'a> {
    plan: &'a Plan,
    schema: SchemaRef,
    /// Rows are held until the end (ORDER BY, aggregates), not streamed.
    hold: bool,
    held: Vec<RecordBatch>,
    held_rows: usize,
}

impl<'a> RowSink<'a> {
    /// A sink for `plan`'s rows of `schema`; `hold` keeps them to the end even without ORDER BY.
    pub fn new(plan: &'a Plan, schema: SchemaRef, hold: bool) -> Self {
        RowSink {
            plan,
            schema,
            hold: hold || !plan.order_by.is_empty(),
            held: Vec::new(),
            held_rows: 0,
        }
    }

    /// Takes a batch of result rows; returns it when it is to be sent now (streaming).
    pub fn push(&mut self, batch: RecordBatch) -> Result<Option<RecordBatch>> {
        if !self.hold {
            return Ok(Some(batch));
        }
        let sorted = !self.plan.order_by.is_empty();
        self.held_rows += batch.num_rows();
        self.held.push(batch);
        // ORDER BY … LIMIT k keeps a running top k: whenever the rows held grow well past k,
        // they are sorted and cut back to k.
        if let Some(k) = self.plan.limit
            && sorted
            && self.held_rows > (4 * k as usize).max(BATCH_ROWS)
        {
            let all = arrow::compute::concat_batches(&self.schema, &self.held)?;
            let top = sort_batch(&all, self.plan)?;
            self.held_rows = top.num_rows();
            self.held = vec![top];
        } else if sorted && self.plan.limit.is_none() && self.held_rows > SORT_ROWS_MAX {
            return Err(Error::Unsupported(format!(
                "ORDER BY over more than {SORT_ROWS_MAX} rows without LIMIT"
            )));
        }
        Ok(None)
    }

    /// The rows held, sorted by ORDER BY and cut to the LIMIT, as batches of at most
    /// [`BATCH_ROWS`] rows (nothing when the rows were streamed).
    pub fn finish(self) -> Result<Vec<RecordBatch>> {
        if !self.hold {
            return Ok(Vec::new());
        }
        let mut out = arrow::compute::concat_batches(&self.schema, &self.held)?;
        if !self.plan.order_by.is_empty() {
            out = sort_batch(&out, self.plan)?;
        }
        if let Some(l) = self.plan.limit {
            out = out.slice(0, out.num_rows().min(l as usize));
        }
        Ok((0..out.num_rows())
            .step_by(BATCH_ROWS)
            .map(|start| out.slice(start, BATCH_ROWS.min(out.num_rows() - start)))
            .collect())
    }
}

/// `batch` sorted by the plan's ORDER BY keys (the first LIMIT rows only, when it has one).
fn sort_batch(batch: &RecordBatch, plan: &Plan) -> Result<RecordBatch> {
    let keys = plan
        .order_by
        .iter()
        .map(|k| {
            let idx = batch.schema().index_of(&k.column)?;
            Ok(SortColumn {
                values: batch.column(idx).clone(),
                options: Some(SortOptions {
                    descending: k.descending,
                    nulls_first: k.nulls_first.unwrap_or(k.descending),
                }),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let idx = lexsort_to_indices(&keys, plan.limit.map(|l| l as usize))?;
    let cols = batch
        .columns()
        .iter()
        .map(|c| take(c, &idx, None))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(batch.schema(), cols)?)
}
