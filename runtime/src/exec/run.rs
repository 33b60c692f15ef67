//! One query's run: its row groups dealt to compute workers ([`worker`](super::worker)), as many
//! as the device's pool has idle (a query alone gets every core, one among others gets what
//! is left, at least one), their projected rows into the row sink as they come, their partial
//! aggregates merged in table order; then the aggregate's finish, the sort and the statistics.
//!
//! One worker runs when the plan needs one (a LIMIT without ORDER BY stops at the first rows
//! found; aggregate kernels' states cannot be merged), when the pool has no core idle, or when
//! the table has one row group after pruning.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use nearstore_proto::{BackendKind, QueryStats};
use tokio::sync::mpsc;

use super::aggregate::HashAggregator;
use super::placement::Placement;
use super::prepare::{Output, PreparedQuery};
use super::sort::RowSink;
use super::worker::{self, Dealing, Piece, ScanContext, Share};
use super::{BATCH_ROWS, Executor};
use crate::error::{Error, Result};

impl Executor {
    pub(super) async fn run(
        &self,
        q: &Arc<PreparedQuery>,
        tx: &mpsc::Sender<Result<RecordBatch>>,
        stats: &mut QueryStats,
    ) -> Result<()> {
        let ctx = ScanContext::new(q);
        let native = self.backends.get(BackendKind::Native);
        let placement = Placement::new(q, &native)?;
        stats.placement = placement.rendered().to_string();
        stats.objects = q.table.objects.len() as u64;
        // A LIMIT without ORDER BY stops the scan once enough rows were sent.
        let limit = match (&q.output, q.plan.order_by.is_empty()) {
            (Output::Project(_), true) => q.plan.limit.map(|l| l as usize),
            _ => None,
        };
        let mergeable = match &q.output {
            Output::Aggregate(_, aggs) => HashAggregator::mergeable(aggs),
            Output::Project(_) => true,
        };
        let mut permits = if limit.is_none() && mergeable {
            self.pool.take(self.pool.size)
        } else {
            self.pool.take(1)
        };
        let shares = if permits.count() > 1 {
            let mut slices = Vec::new();
            for object in &q.table.objects {
                slices.extend(worker::prune(q, object, &ctx, stats).await?);
            }
            let how = match q.output {
                Output::Aggregate(..) => Dealing::Runs,
                Output::Project(_) => Dealing::Turns,
            };
            let mut shares: Vec<Share> = worker::deal(slices, permits.count(), how)
                .into_iter()
                .map(Share::Slices)
                .collect();
            if shares.is_empty() {
                // Pruning left nothing: one worker still answers (a global aggregate's row).
                shares.push(Share::Slices(Vec::new()));
            }
            shares
        } else {
            vec![Share::Objects(q.table.objects.clone())]
        };
        // Workers the shares do not need go back to the pool at once.
        permits.keep(shares.len());
        stats.workers = shares.len() as u64;

        let mut workers = tokio::task::JoinSet::new();
        let mut pieces = Vec::new();
        let bound = worker::topk_bound(q, &placement, limit);
        let mut placement = Some(placement);
        for (i, share) in shares.into_iter().enumerate() {
            let placement = match placement.take() {
                Some(p) => p,
                None => Placement::new(q, &native)?,
            };
            let (out, rx) = mpsc::channel(PIECES_AHEAD);
            pieces.push(Some(rx));
            let run = worker::run(
                q.clone(),
                placement,
                share,
                ctx.clone(),
                limit,
                bound.clone(),
                out,
            );
            workers.spawn(async move { (i, run.await) });
        }

        let aggregating = matches!(q.output, Output::Aggregate(..));
        let mut sink = RowSink::new(&q.plan, q.schema.clone(), aggregating);
        let mut t_sink = std::time::Duration::ZERO;
        let mut done = Vec::new();
        // The workers' slices in turn (so rows leave in the table's order), and each worker
        // as it ends: a worker's error ends the query at once (dropping `workers` stops the
        // others).
        let mut turn = 0;
        while pieces.iter().any(Option::is_some) || !workers.is_empty() {
            let from = pieces.iter().position(Option::is_some).map(|_| {
                while pieces[turn].is_none() {
                    turn = (turn + 1) % pieces.len();
                }
                turn
            });
            tokio::select! {
                piece = next_piece(&mut pieces, from), if from.is_some() => match piece {
                    Some(Piece::Rows(rows)) => {
                        let t = Instant::now();
                        let ready = sink.push(rows)?;
                        t_sink += t.elapsed();
                        if let Some(rows) = ready.filter(|r| r.num_rows() > 0) {
                            stats.rows_returned += rows.num_rows() as u64;
                            if tx.send(Ok(rows)).await.is_err() {
                                return Ok(()); // the client went away
                            }
                        }
                    }
                    Some(Piece::End) => turn = (turn + 1) % pieces.len(),
                    None => pieces[turn] = None,
                },
                Some(joined) = workers.join_next(), if !workers.is_empty() => {
                    let (i, result) = joined.map_err(worker_failed)?;
                    done.push((i, result?));
                }
            }
        }
        done.sort_by_key(|(i, _)| *i);
        let mut done = done.into_iter().map(|(_, d)| d);
        let Some(mut first) = done.next() else {
            return Err(Error::Internal("a query ran on no worker".into()));
        };
        let mut aggregate = first.aggregate.take();
        let mut report = first.placement.session_report();
        add_worker_stats(stats, &first.stats);
        for d in done {
            add_worker_stats(stats, &d.stats);
            report.add(&d.placement.session_report());
            if let (Some(a), Some(b)) = (aggregate.as_mut(), d.aggregate) {
                let t = Instant::now();
                a.merge(b)?;
                stats.compute_us += t.elapsed().as_micros() as u64;
            }
        }

        if let Some(a) = aggregate {
            let t = Instant::now();
            let groups = a.finish()?;
            sink.push(finish_topk(groups, &first.placement, stats)?)?;
            stats.compute_us += t.elapsed().as_micros() as u64;
        }
        let t = Instant::now();
        let rest = sink.finish()?;
        stats.compute_us += (t_sink + t.elapsed()).as_micros() as u64;
        for out in rest {
            stats.rows_returned += out.num_rows() as u64;
            if tx.send(Ok(out)).await.is_err() {
                break;
            }
        }
        first.placement.report(stats, report);
        let c = &ctx.counters;
        stats.bytes_read_media = c.bytes_read.load(Ordering::Relaxed);
        stats.rows_scanned = c.rows_scanned.load(Ordering::Relaxed);
        stats.row_groups_by_dictionary = c.row_groups_by_dictionary.load(Ordering::Relaxed);
        stats.rows_left_out = c.rows_left_out.load(Ordering::Relaxed);
        stats.rows_selected = c.rows_selected.load(Ordering::Relaxed);
        stats.filter_us = c.filter_us.load(Ordering::Relaxed);
        stats.cache_hit_bytes = c.cache_hit_bytes.load(Ordering::Relaxed);
        stats.cache_miss_bytes = c.cache_miss_bytes.load(Ordering::Relaxed);
        Ok(())
    }
}

/// Pieces a worker may send ahead of the coordinator taking them (two row groups of batches).
const PIECES_AHEAD: usize = 2 * 131_072 / BATCH_ROWS;

/// The next piece from worker `from`'s channel.
async fn next_piece(
    pieces: &mut [Option<mpsc::Receiver<Piece>>],
    from: Option<usize>,
) -> Option<Piece> {
    match from.and_then(|i| pieces[i].as_mut()) {
        Some(rx) => rx.recv().await,
        None => None,
    }
}

/// A worker's task that panicked or was cancelled: the query fails, the device serves on.
fn worker_failed(e: tokio::task::JoinError) -> Error {
    match e.try_into_panic() {
        Ok(p) => Error::Internal(format!(
            "query execution panicked: {}",
            super::panic_message(p)
        )),
        Err(e) => Error::Internal(format!("a query worker stopped: {e}")),
    }
}

/// Adds one worker's statistics (its pruning, times and top-k counts) to the query's.
fn add_worker_stats(stats: &mut QueryStats, w: &QueryStats) {
    stats.row_groups_total += w.row_groups_total;
    stats.row_groups_pruned += w.row_groups_pruned;
    stats.pages_total += w.pages_total;
    stats.pages_pruned += w.pages_pruned;
    stats.rows_total += w.rows_total;
    stats.plan_us += w.plan_us;
    stats.scan_us += w.scan_us;
    stats.compute_us += w.compute_us;
    stats.topk_rows_in += w.topk_rows_in;
    stats.topk_rows_kept += w.topk_rows_kept;
    stats.topk_rows_skipped += w.topk_rows_skipped;
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
