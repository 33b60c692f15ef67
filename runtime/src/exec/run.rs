//! One query's pipeline: for each object, a pruned scan with the filter inside the decoder,
//! then projection (with top-k pre-selection) or aggregation, into the row sink; then the
//! aggregate's finish, the sort and the statistics.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use futures::StreamExt;
use nearstore_proto::{BackendKind, QueryStats};
use parquet::arrow::async_reader::ParquetRecordBatchStream;
use tokio::sync::mpsc;

use super::aggregate::HashAggregator;
use super::placement::{Placement, decoder_predicate};
use super::prepare::{Output, PreparedQuery};
use super::project::{compact_views, project};
use super::sort::RowSink;
use super::{BATCH_ROWS, Executor};
use crate::error::{Error, Result};
use crate::scan::{self, ErrorSlot, ObjectReader, ObjectScan, ScanCounters};
use crate::storage::Object;

/// What one query's scans share: its counters and the first error a read recorded.
struct ScanContext {
    counters: Arc<ScanCounters>,
    errors: ErrorSlot,
}

impl Executor {
    pub(super) async fn run(
        &self,
        q: &PreparedQuery,
        tx: &mpsc::Sender<Result<RecordBatch>>,
        stats: &mut QueryStats,
    ) -> Result<()> {
        let ctx = ScanContext {
            counters: Arc::new(ScanCounters {
                media_limit: q.limits.media.clone(),
                ..Default::default()
            }),
            errors: ErrorSlot::default(),
        };
        let plan = &q.plan;
        let placement = Placement::new(q, &self.backends.get(BackendKind::Native))?;
        stats.placement = placement.rendered().to_string();
        let needed = q.output.columns();
        // A LIMIT without ORDER BY stops the scan once enough rows were sent.
        let mut remaining = match (&q.output, plan.order_by.is_empty()) {
            (Output::Project(_), true) => plan.limit.map(|l| l as usize),
            _ => None,
        };
        let mut agg = match &q.output {
            Output::Aggregate(g, a) => {
                let mut h = HashAggregator::new(g.clone(), a.clone())?;
                if placement.aggregates_on_backend {
                    h.offload_to(placement.query.clone());
                }
                Some(h)
            }
            Output::Project(_) => None,
        };
        let mut sink = RowSink::new(plan, q.schema.clone(), agg.is_some());

        stats.objects = q.table.objects.len() as u64;
        for object in &q.table.objects {
            if remaining == Some(0) {
                break;
            }
            let stream = open_object(q, object, &placement, &needed, remaining, &ctx, stats);
            let Some(mut stream) = stream.await? else {
                continue;
            };
            let mut t_scan = Instant::now();
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(|e| ctx.errors.take_or(Error::Parquet(e)))?;
                stats.scan_us += t_scan.elapsed().as_micros() as u64;
                if q.predicate.is_none() {
                    let rows = batch.num_rows() as u64;
                    ctx.counters.rows_scanned.fetch_add(rows, Ordering::Relaxed);
                    ctx.counters
                        .rows_selected
                        .fetch_add(rows, Ordering::Relaxed);
                }
                let t_compute = Instant::now();
                let ready = match (&q.output, agg.as_mut()) {
                    (_, Some(a)) => {
                        a.update(&batch, &|e, b| placement.eval(e, b))?;
                        None
                    }
                    (Output::Project(items), None) => {
                        let mut out = project(items, &q.schema, &batch, &placement)?;
                        if let Some(key) = placement.topk {
                            out = placement.preselect_topk(&out, key, stats)?;
                        }
                        out = compact_views(out)?;
                        if let Some(r) = remaining.as_mut() {
                            if out.num_rows() > *r {
                                out = out.slice(0, *r);
                            }
                            *r -= out.num_rows();
                        }
                        sink.push(out)?
                    }
                    (Output::Aggregate(..), None) => {
                        unreachable!("aggregator exists for aggregate plans")
                    }
                };
                stats.compute_us += t_compute.elapsed().as_micros() as u64;
                if let Some(out) = ready.filter(|o| o.num_rows() > 0) {
                    stats.rows_returned += out.num_rows() as u64;
                    if tx.send(Ok(out)).await.is_err() {
                        return Ok(()); // the client went away
                    }
                }
                if remaining == Some(0) {
                    break;
                }
                t_scan = Instant::now();
            }
        }

        if let Some(a) = agg {
            let t = Instant::now();
            let groups = a.finish()?;
            sink.push(finish_topk(groups, &placement, stats)?)?;
            stats.compute_us += t.elapsed().as_micros() as u64;
        }
        for out in sink.finish()? {
            stats.rows_returned += out.num_rows() as u64;
            if tx.send(Ok(out)).await.is_err() {
                break;
            }
        }
        placement.report(stats);
        let c = &ctx.counters;
        stats.bytes_read_media = c.bytes_read.load(Ordering::Relaxed);
        stats.rows_scanned = c.rows_scanned.load(Ordering::Relaxed);
        stats.rows_selected = c.rows_selected.load(Ordering::Relaxed);
        stats.filter_us = c.filter_us.load(Ordering::Relaxed);
        Ok(())
    }
}

/// Prunes one object and opens its decode stream (the filter inside the decoder, in the
/// session it is placed on), adding what pruning found to `stats`; `None` when pruning left
/// nothing to read.
async fn open_object(
    q: &PreparedQuery,
    object: &Arc<Object>,
    placement: &Placement,
    needed: &[String],
    limit: Option<usize>,
    ctx: &ScanContext,
    stats: &mut QueryStats,
) -> Result<Option<ParquetRecordBatchStream<ObjectReader>>> {
    let t_plan = Instant::now();
    let p = scan::prune_object(object, q.predicate.as_ref(), &ctx.counters, &ctx.errors).await?;
    stats.row_groups_total += p.metadata.num_row_groups() as u64;
    stats.row_groups_pruned += p.pruned.row_groups_pruned;
    stats.pages_total += p.pruned.pages_total;
    stats.pages_pruned += p.pruned.pages_pruned;
    stats.rows_total += p.pruned.rows_total;
    stats.plan_us += t_plan.elapsed().as_micros() as u64;
    tracing::debug!(
        object = %object.id,
        row_groups = p.metadata.num_row_groups(),
        row_groups_kept = p.pruned.row_groups.len(),
        pages_pruned = p.pruned.pages_pruned,
        plan_us = t_plan.elapsed().as_micros() as u64,
        "object pruned"
    );
    if p.pruned.row_groups.is_empty() {
        return Ok(None);
    }
    let predicate = q.predicate.as_ref().map(|pred| {
        (
            pred.columns(),
            decoder_predicate(pred, placement.filter_session()),
        )
    });
    let scan = ObjectScan {
        object: object.clone(),
        metadata: p.arrow,
        pruned: p.pruned,
        columns: needed.to_vec(),
        predicate,
        batch_size: BATCH_ROWS,
        limit,
    };
    scan::open_stream(scan, ctx.counters.clone(), ctx.errors.clone()).map(Some)
}

/// An aggregate's groups after the backend's top-k pre-selection, when the query has one: a
/// batch of groups at a time (the kernel's running top k carries over).
fn finish_topk(
    groups: RecordBatch,
    placement: &Placement,
    stats: &mut QueryStats,
) -> Result<RecordBatch> {
    let Some(key) = placement.topk else {
        return Ok(groups);
    };
    let kept = (0..groups.num_rows())
        .step_by(BATCH_ROWS)
        .map(|start| {
            let part = groups.slice(start, BATCH_ROWS.min(groups.num_rows() - start));
            placement.preselect_topk(&part, key, stats)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(arrow::compute::concat_batches(&groups.schema(), &kept)?)
}
