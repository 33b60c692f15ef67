//! One query's run: its row groups dealt to compute workers ([`worker`](super::worker)), as many
//! as the device's pool has idle (a query alone gets every core, one among others gets what
//! is left, at least one), their projected rows into the row sink as they come, their partial
//! aggregates merged with their groups in the order of first appearance; then the
//! aggregate's finish, the sort and the statistics.
//!
//! One worker runs when the plan needs one (a LIMIT without ORDER BY stops at the first rows
//! found; aggregate kernels' states cannot be merged), when the pool has no core idle, or when
//! the table has one row group after pruning.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use arrow::array::UInt32Array;
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
        let begun = Instant::now();
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
        let bound = worker::topk_bound(q, &placement, limit);
        let how = match &q.output {
            // A top k's bound skips pages by the rows kept so far: runs, as it was tested.
            Output::Aggregate(_, aggs) if bound.is_none() && HashAggregator::order_free(aggs) => {
                Dealing::Queue
            }
            Output::Aggregate(..) => Dealing::Runs,
            Output::Project(_) => Dealing::Turns,
        };
        let shares = if permits.count() > 1 {
            let mut slices = Vec::new();
            for object in &q.table.objects {
                slices.extend(worker::prune(q, object, &ctx, stats).await?);
            }
            let mut shares = worker::deal(slices, permits.count(), how);
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
        let mut placement = Some(placement);
        for (i, share) in shares.into_iter().enumerate() {
            // The other workers' sessions open on their own tasks, side by side.
            let first = placement.take();
            let (out, rx) = mpsc::channel(PIECES_AHEAD);
            pieces.push(Some(rx));
            let (q, native, ctx, bound) = (q.clone(), native.clone(), ctx.clone(), bound.clone());
            workers.spawn(async move {
                let start = begun.elapsed();
                let placement = match first {
                    Some(p) => Ok(p),
                    None => Placement::new(&q, &native),
                };
                let done = match placement {
                    Ok(p) => worker::run(q, p, share, ctx, limit, bound, out).await,
                    Err(e) => Err(e),
                };
                (i, start, begun.elapsed(), done)
            });
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
                    let (i, start, end, result) = joined.map_err(worker_failed)?;
                    let result = result?;
                    tracing::debug!(
                        worker = i,
                        start_us = start.as_micros() as u64,
                        end_us = end.as_micros() as u64,
                        scan_us = result.stats.scan_us,
                        compute_us = result.stats.compute_us,
                        "worker done"
                    );
                    done.push((i, result));
                }
            }
        }
        done.sort_by_key(|(i, _)| *i);
        let mut done = done.into_iter().map(|(_, d)| d);
        let Some(mut first) = done.next() else {
            return Err(Error::Internal("a query ran on no worker".into()));
        };
        let mut aggregate = first.aggregate.take();
        // Workers on a queue met the groups in another order than one worker would.
        let mut appearance = aggregate
            .as_ref()
            .filter(|_| !first.took.is_empty())
            .map(|a| Appearance::new(&first.took, a.n_groups()));
        let mut report = first.placement.session_report();
        add_worker_stats(stats, &first.stats);
        for d in done {
            add_worker_stats(stats, &d.stats);
            report.add(&d.placement.session_report());
            if let (Some(a), Some(b)) = (aggregate.as_mut(), d.aggregate) {
                let t = Instant::now();
                let ids = a.merge(b)?;
                if !d.took.is_empty() {
                    appearance
                        .get_or_insert_with(|| Appearance(Vec::new()))
                        .add(&d.took, &ids, a.n_groups());
                }
                stats.compute_us += t.elapsed().as_micros() as u64;
            }
        }

        if let Some(a) = aggregate {
            let t = Instant::now();
            let mut groups = a.finish()?;
            if let Some(order) = appearance.and_then(|a| a.order()) {
                groups = arrow::compute::take_record_batch(&groups, &order)?;
            }
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
        tracing::debug!(merged_us = begun.elapsed().as_micros() as u64, "query done");
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

/// Where the merged aggregate's groups first appeared, for workers that took row groups from
/// a queue ([`Dealing::Queue`]): per group, the first row group that holds it (the queue's
/// order is the table's) and its place among the groups of the worker that took that row
/// group (which met them in the table's order).
struct Appearance(Vec<(usize, usize)>);

impl Appearance {
    /// The groups of the first worker's aggregate (`n_groups`), `took` its row groups.
    fn new(took: &[(usize, usize)], n_groups: usize) -> Self {
        Appearance(
            (0..n_groups)
                .map(|g| (first_row_group(took, g), g))
                .collect(),
        )
    }

    /// Another worker's groups, merged: `ids` their groups in the merged aggregate, which
    /// has `n_groups` now.
    fn add(&mut self, took: &[(usize, usize)], ids: &[usize], n_groups: usize) {
        self.0.resize(n_groups, (usize::MAX, usize::MAX));
        for (g, &id) in ids.iter().enumerate() {
            let seen = (first_row_group(took, g), g);
            self.0[id] = self.0[id].min(seen);
        }
    }

    /// The merged groups' positions in the order of first appearance; `None` when they are
    /// in it already.
    fn order(self) -> Option<UInt32Array> {
        if self.0.is_sorted() {
            return None;
        }
        let mut order: Vec<u32> = (0..self.0.len() as u32).collect();
        // Runs of groups in order (each worker's new ones) are found and merged.
        order.sort_by_key(|&g| self.0[g as usize]);
        Some(order.into())
    }
}

/// The row group that group `g` of a worker's aggregate first appeared in, `took` the
/// worker's row groups with its number of groups before each.
fn first_row_group(took: &[(usize, usize)], g: usize) -> usize {
    match took.partition_point(|&(_, before)| before <= g) {
        0 => usize::MAX,
        i => took[i - 1].0,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_met_by_workers_on_a_queue_take_their_order_of_first_appearance() {
        // Row groups 0..6. Worker A took 0, 1, 4 and met groups a0 a1 | a2 | a3, worker B
        // took 2, 3, 5 and met b0 b1 | (none new) | b2. B's b0 is A's a1 (first seen in row
        // group 0), b1 and b2 are new; a3 (row group 4) is also B's b2 (row group 5).
        let a_took = [(0, 0), (1, 2), (4, 3)];
        let b_took = [(2, 0), (3, 2), (5, 2)];
        assert_eq!(first_row_group(&a_took, 2), 1);
        assert_eq!(
            first_row_group(&b_took, 2),
            5,
            "row group 3 met no new group"
        );
        let mut order = Appearance::new(&a_took, 4);
        // Merged: b0 -> a1, b1 -> new group 4, b2 -> a3.
        order.add(&b_took, &[1, 4, 3], 5);
        // One worker would have met a0 a1 (row group 0), a2 (1), b1 (2), a3 (4).
        let got = order.order().expect("out of order");
        assert_eq!(got.values().to_vec(), vec![0, 1, 2, 4, 3]);
        // Groups already in order are left alone.
        let mut order = Appearance::new(&a_took, 4);
        order.add(&[(5, 0)], &[2, 4], 5);
        assert!(order.order().is_none());
    }
}
