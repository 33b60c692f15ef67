//! One compute worker of a query: its share of the table's row groups scanned (the filter
//! inside the decoder), then projected (with top-k pre-selection) or aggregated, in compute
//! sessions of its own. A query runs on one worker, or on several that [`run`](super::run)
//! deals row groups to (runs of consecutive ones, or a queue they take from as they free up)
//! and merges.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use futures::StreamExt;
use futures::stream::{self, BoxStream};
use nearstore_proto::QueryStats;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, RowSelection, RowSelector};
use tokio::sync::mpsc;

use super::BATCH_ROWS;
use super::aggregate::HashAggregator;
use super::placement::{Placement, Session, decoder_predicate};
use super::prepare::{FilterSplit, Output, PreparedQuery};
use super::project::{compact_views, project};
use super::sort::TopKBound;
use crate::error::{Error, Result};
use crate::plan::PhysExpr;
use crate::scan::{self, Batches, ErrorSlot, ObjectScan, ScanCounters, prune::Pruned};
use crate::storage::Object;

/// What one query's scans share: its counters, the first error a read recorded, and the
/// columns decoded as dictionaries ([`PreparedQuery::dictionary_columns`]).
#[derive(Clone)]
pub(super) struct ScanContext {
    pub counters: Arc<ScanCounters>,
    pub errors: ErrorSlot,
    pub dictionary: Arc<[String]>,
}

impl ScanContext {
    /// A fresh context for `q`'s scans (its tenant's media limit applies to their reads).
    pub fn new(q: &PreparedQuery) -> Self {
        ScanContext {
            counters: Arc::new(ScanCounters {
                media_limit: q.limits.media.clone(),
                ..Default::default()
            }),
            errors: ErrorSlot::default(),
            dictionary: q.dictionary_columns().into(),
        }
    }
}

/// Row groups of one object that one worker reads, pruned already.
pub(super) struct Slice {
    object: Arc<Object>,
    metadata: ArrowReaderMetadata,
    /// The object's columns as the table types them (its statistics are read so).
    schema: SchemaRef,
    pruned: Pruned,
}

/// The row groups a worker reads.
pub(super) enum Share {
    /// Whole objects, pruned as the worker reaches them (a single worker: a LIMIT may stop it
    /// before the later objects' metadata is needed).
    Objects(Vec<Arc<Object>>),
    /// Row groups dealt by [`deal`].
    Slices(Vec<Slice>),
    /// Row groups taken from a queue the query's workers share, one at a time.
    Queue(Arc<Queue>),
}

/// What a worker sends the coordinator.
pub(super) enum Piece {
    /// Projected rows.
    Rows(RecordBatch),
    /// The end of one of its slices (or objects).
    End,
}

/// What a worker hands back when its share is done.
pub(super) struct Done {
    /// Its partial aggregate, for an aggregate plan.
    pub aggregate: Option<HashAggregator>,
    /// Its sessions (the first worker's finish the merged aggregate's top-k).
    pub placement: Placement,
    /// Its statistics: pruning (of `Share::Objects`), times, top-k counts.
    pub stats: QueryStats,
    /// For a worker on a [`Queue`]: the row groups it took, in its order, each with the
    /// number of groups its partial aggregate had before that row group's rows (where its
    /// groups first appeared, see [`Queue`]).
    pub took: Vec<(usize, usize)>,
}

/// Runs one worker over `share`: projected batches go to `out` (the coordinator's sink), each
/// slice closed by [`Piece::End`]; aggregates accumulate in the returned [`Done`]. `limit` (a
/// LIMIT without ORDER BY, one worker only) stops the scan once that many rows were sent.
/// `bound` is the query's top-k bound ([`topk_bound`]), which its workers share: each adds
/// the rows it keeps and skips what the others' rows already beat.
pub(super) async fn run(
    q: Arc<PreparedQuery>,
    placement: Placement,
    share: Share,
    ctx: ScanContext,
    mut limit: Option<usize>,
    bound: Option<(String, Arc<TopKBound>)>,
    out: mpsc::Sender<Piece>,
) -> Result<Done> {
    let stopped = || Error::Internal("query stopped".into());
    let mut stats = QueryStats::default();
    let mut aggregate = match &q.output {
        Output::Aggregate(g, a) => {
            let mut h = HashAggregator::new(g.clone(), a.clone())?;
            if placement.aggregates_on_backend {
                h.offload_to(placement.query.clone());
            }
            Some(h)
        }
        Output::Project(_) => None,
    };
    // What takes the scan's batches. A top k's bound reads an aggregate's batches' keys,
    // which must be kept rows.
    let consumer = match &aggregate {
        Some(a) => scan::Consumer::Aggregate {
            skips_rows: bound.is_none() && a.skips_rows(),
        },
        None => scan::Consumer::Link,
    };
    let slices: Box<dyn Iterator<Item = ScanSource> + Send> = match share {
        Share::Objects(objects) => Box::new(objects.into_iter().map(ScanSource::Object)),
        Share::Slices(slices) => Box::new(slices.into_iter().map(ScanSource::Slice)),
        Share::Queue(queue) => {
            let Some(a) = aggregate.as_mut() else {
                return Err(Error::Internal("a projection's row groups queued".into()));
            };
            let filter = placement.filter_session();
            let mut batches = queued(q.clone(), queue, filter, consumer, ctx.clone());
            let mut took = Vec::new();
            loop {
                let t_scan = Instant::now();
                let next = batches.next().await;
                stats.scan_us += t_scan.elapsed().as_micros() as u64;
                let Some(next) = next else {
                    break;
                };
                let (unit, scan::Scanned { batch, keep }) = next?;
                if took.last().is_none_or(|&(u, _)| u != unit) {
                    took.push((unit, a.n_groups()));
                }
                count_unfiltered(&q, &ctx, &batch);
                let t_compute = Instant::now();
                a.update(&batch, keep.as_ref(), &|e, b| placement.eval(e, b))?;
                stats.compute_us += t_compute.elapsed().as_micros() as u64;
            }
            out.send(Piece::End).await.map_err(|_| stopped())?;
            return Ok(Done {
                aggregate,
                placement,
                stats,
                took,
            });
        }
    };
    for source in slices {
        if limit == Some(0) {
            break;
        }
        let slice = match source {
            ScanSource::Slice(s) => s,
            ScanSource::Object(object) => match prune(&q, &object, &ctx, &mut stats).await? {
                Some(s) => s,
                None => continue,
            },
        };
        // Under a top k's bound, a row group at a time: each opens without the pages the
        // bound excludes by then.
        let parts = match &bound {
            Some(_) => row_groups(slice),
            None => vec![slice],
        };
        for part in parts {
            let part = match &bound {
                Some((key, b)) => match skip_pages(part, key, b, &q, &ctx, &mut stats) {
                    Some(p) => p,
                    None => continue,
                },
                None => part,
            };
            let filter = placement.filter_session();
            let scan = scan_of(&q, part, filter, consumer, limit, bound.as_ref());
            let mut stream = open(scan, &ctx)?;
            loop {
                // Decoding time, the end of the stream included (a row group whose rows the
                // filters all drop ends without a batch).
                let t_scan = Instant::now();
                let next = stream.next().await;
                stats.scan_us += t_scan.elapsed().as_micros() as u64;
                let Some(batch) = next else {
                    break;
                };
                let scan::Scanned { batch, keep } = batch?;
                count_unfiltered(&q, &ctx, &batch);
                let t_compute = Instant::now();
                let ready = match (&q.output, aggregate.as_mut()) {
                    (_, Some(a)) => {
                        a.update(&batch, keep.as_ref(), &|e, b| placement.eval(e, b))?;
                        if let Some((key, b)) = &bound
                            && let Some(keys) = batch.column_by_name(key)
                        {
                            b.update(keys)?;
                        }
                        None
                    }
                    (Output::Project(items), None) => {
                        debug_assert!(keep.is_none(), "a projection's rows come filtered");
                        let mut rows = project(items, &q.schema, &batch, &placement)?;
                        if let Some(key) = placement.topk {
                            rows = placement.preselect_topk(&rows, key, &mut stats)?;
                            if let Some((_, b)) = &bound {
                                b.update(rows.column(key.column))?;
                            }
                        }
                        rows = compact_views(rows)?;
                        if let Some(r) = limit.as_mut() {
                            if rows.num_rows() > *r {
                                rows = rows.slice(0, *r);
                            }
                            *r -= rows.num_rows();
                        }
                        Some(rows)
                    }
                    (Output::Aggregate(..), None) => {
                        unreachable!("aggregator exists for aggregate plans")
                    }
                };
                stats.compute_us += t_compute.elapsed().as_micros() as u64;
                if let Some(rows) = ready.filter(|r| r.num_rows() > 0)
                    && out.send(Piece::Rows(rows)).await.is_err()
                {
                    // The coordinator stopped (the client went away, or another worker failed).
                    return Err(stopped());
                }
                if limit == Some(0) {
                    break;
                }
            }
        }
        out.send(Piece::End).await.map_err(|_| stopped())?;
    }
    Ok(Done {
        aggregate,
        placement,
        stats,
        took: Vec::new(),
    })
}

/// Counts a batch of a scan without a filter as scanned and selected (a filter's scan counts
/// its rows as it tests them).
fn count_unfiltered(q: &PreparedQuery, ctx: &ScanContext, batch: &RecordBatch) {
    if q.predicate.is_none() {
        let rows = batch.num_rows() as u64;
        ctx.counters.rows_scanned.fetch_add(rows, Ordering::Relaxed);
        ctx.counters
            .rows_selected
            .fetch_add(rows, Ordering::Relaxed);
    }
}

/// The batches of the row groups a worker takes from `queue`, each with the row group's place
/// in the queue. The next row group is taken, read and begun (its first batch decoded) while
/// this one's batches are used, as a run's next row group is.
fn queued(
    q: Arc<PreparedQuery>,
    queue: Arc<Queue>,
    filter: Session,
    consumer: scan::Consumer,
    ctx: ScanContext,
) -> BoxStream<'static, Result<(usize, scan::Scanned)>> {
    // One object's scans differ only in their row groups.
    let mut last: Option<ObjectScan> = None;
    stream::iter(std::iter::from_fn(move || queue.take()))
        .map(move |(unit, slice)| {
            let scan = match last.take() {
                Some(s) if Arc::ptr_eq(&s.object, &slice.object) => ObjectScan {
                    pruned: slice.pruned,
                    ..s
                },
                _ => scan_of(&q, slice, filter.clone(), consumer, None, None),
            };
            last = Some(scan.clone());
            let opened = open(scan, &ctx);
            async move {
                let mut batches = opened?;
                let first = batches.next().await;
                Ok((unit, first, batches))
            }
        })
        .buffered(2)
        .flat_map(|begun: Result<_>| match begun {
            Ok((unit, first, rest)) => stream::iter(first)
                .chain(rest)
                .map(move |b| b.map(|b| (unit, b)))
                .boxed(),
            Err(e) => stream::once(async { Err(e) }).boxed(),
        })
        .boxed()
}

enum ScanSource {
    Object(Arc<Object>),
    Slice(Slice),
}

/// Prunes one object, adding what pruning found to `stats`; `None` when it left nothing.
pub(super) async fn prune(
    q: &PreparedQuery,
    object: &Arc<Object>,
    ctx: &ScanContext,
    stats: &mut QueryStats,
) -> Result<Option<Slice>> {
    let t_plan = Instant::now();
    let pred = q.predicate.as_ref();
    let p = scan::prune_object(object, pred, &ctx.dictionary, &ctx.counters, &ctx.errors).await?;
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
    Ok(Some(Slice {
        object: object.clone(),
        metadata: p.arrow,
        schema: p.schema,
        pruned: p.pruned,
    }))
}

/// The running bound of a top k whose first sort key is a plain output column, or a group
/// key that is a column of an integer, decimal or date type (the k best distinct keys bound
/// the groups: a row with a worse key joins a group that cannot be among the first k), with
/// that column's name; `None` for other queries (and under a plain LIMIT).
pub(super) fn topk_bound(
    q: &PreparedQuery,
    placement: &Placement,
    limit: Option<usize>,
) -> Option<(String, Arc<TopKBound>)> {
    let key = placement.topk?;
    if limit.is_some() {
        return None;
    }
    let (name, distinct) = match &q.output {
        Output::Project(items) => match items.get(key.column)? {
            (_, PhysExpr::Column { name, .. }) => (name, false),
            _ => return None,
        },
        Output::Aggregate(groups, _) => match groups.get(key.column)? {
            PhysExpr::Column { name, data_type } if bounds_groups(data_type) => (name, true),
            _ => return None,
        },
    };
    let b = TopKBound::new(key.descending, key.nulls_first, key.k as usize, distinct);
    Some((name.clone(), Arc::new(b)))
}

/// Group key types a top-k bound takes: ordered alike by the device, its page statistics and
/// SQL (no collation, no NaN).
fn bounds_groups(t: &DataType) -> bool {
    t.is_integer()
        || matches!(
            t,
            DataType::Date32
                | DataType::Date64
                | DataType::Decimal64(..)
                | DataType::Decimal128(..)
        )
}

/// `slice` (one row group) without the pages where the top k's `bound` on column `key`
/// shows no row as good as its k-th best kept so far (the page index's statistics); `None`
/// when that is every page. The rows left out are counted in `topk_rows_skipped` and, for a
/// query without a filter, as scanned and selected (as the bound's filter counts the rows it
/// drops after decoding).
fn skip_pages(
    mut slice: Slice,
    key: &str,
    bound: &TopKBound,
    q: &PreparedQuery,
    ctx: &ScanContext,
    stats: &mut QueryStats,
) -> Option<Slice> {
    let Ok(field) = slice.schema.field_with_name(key) else {
        return Some(slice);
    };
    let Some(test) = bound.page_test(key, field.data_type()) else {
        return Some(slice);
    };
    let md = slice.metadata.metadata();
    let &[rg] = slice.pruned.row_groups.as_slice() else {
        return Some(slice);
    };
    let Some(keep) = scan::prune::row_group_selection(md, &slice.schema, rg, &test) else {
        return Some(slice);
    };
    let rows = md.row_group(rg).num_rows() as usize;
    let before = slice
        .pruned
        .selection
        .take()
        .unwrap_or_else(|| RowSelection::from(vec![RowSelector::select(rows)]));
    let after = before.intersection(&keep);
    let skipped = (before.row_count() - after.row_count()) as u64;
    stats.topk_rows_skipped += skipped;
    if q.predicate.is_none() {
        ctx.counters
            .rows_scanned
            .fetch_add(skipped, Ordering::Relaxed);
        ctx.counters
            .rows_selected
            .fetch_add(skipped, Ordering::Relaxed);
    }
    if !after.selects_any() {
        return None;
    }
    slice.pruned.rows_selected = after.row_count() as u64;
    slice.pruned.selection = Some(after);
    Some(slice)
}

/// Opens the decode stream of a scan.
fn open(scan: ObjectScan, ctx: &ScanContext) -> Result<Batches> {
    scan::open_batches(scan, ctx.counters.clone(), ctx.errors.clone())
}

/// The scan of a slice: the filter inside the decoder, in the session it is placed on (by
/// column too, for the dictionary decoder), and a top k's bound, when it has one, as a
/// second filter.
fn scan_of(
    q: &PreparedQuery,
    slice: Slice,
    filter: Session,
    consumer: scan::Consumer,
    limit: Option<usize>,
    bound: Option<&(String, Arc<TopKBound>)>,
) -> ObjectScan {
    let narrowing = bound.map(|(name, b)| {
        let (key, b) = (name.clone(), b.clone());
        let test: crate::scan::Predicate = Arc::new(move |batch: &RecordBatch| {
            let values = batch.column_by_name(&key).ok_or_else(|| {
                Error::Internal(format!(
                    "column '{key}' missing from the top-k bound's batch"
                ))
            })?;
            b.keep(values)
        });
        (vec![name.clone()], test)
    });
    let predicate = q
        .predicate
        .as_ref()
        .zip(q.split_filter())
        .map(|(pred, split)| (pred.columns(), decoder_predicate(split, filter.clone())));
    // The same predicate by column, for the dictionary decoder: a string column the scan
    // decodes as an Arrow dictionary answered per entry as `decoder_predicate` answers it.
    let by_column = q.filter_by_column().map(|groups| {
        groups
            .into_iter()
            .map(|(name, expr)| {
                let dictionary = slice
                    .metadata
                    .schema()
                    .field_with_name(&name)
                    .is_ok_and(|f| matches!(f.data_type(), DataType::Dictionary(..)));
                let split = match dictionary {
                    true => FilterSplit {
                        dictionary: vec![(name.clone(), expr)],
                        rest: None,
                    },
                    false => FilterSplit {
                        dictionary: Vec::new(),
                        rest: Some(expr),
                    },
                };
                (name, decoder_predicate(split, filter.clone()))
            })
            .collect()
    });
    ObjectScan {
        object: slice.object,
        metadata: slice.metadata,
        pruned: slice.pruned,
        columns: q.output.columns(),
        predicate,
        narrowing,
        by_column,
        batch_size: BATCH_ROWS,
        limit,
        consumer,
    }
}

/// One row group of a slice, with its part of the row selection.
#[derive(Clone)]
struct Unit {
    object: usize,
    row_group: usize,
    selection: Option<RowSelection>,
    rows: usize,
}

/// How row groups are dealt to workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dealing {
    /// Each worker a run of consecutive row groups with about equal numbers of rows to
    /// decode: partial aggregates merged in worker order see the table's order.
    Runs,
    /// Row group i to worker i mod n, one slice each: the coordinator takes the workers'
    /// slices in turn, so projected rows leave in the table's order while every worker runs.
    Turns,
    /// One [`Queue`] that every worker takes the next row group from as it frees up: no
    /// worker waits on a slower one at the end. For aggregates whose values do not depend on
    /// the order rows are added in ([`HashAggregator::order_free`]).
    Queue,
}

/// The row groups of a query in the table's order, which its workers take one at a time as
/// they free up. Each worker takes row groups in the queue's order, so its partial aggregate
/// meets its groups in the table's order too: a group's first appearance in the table is
/// its first appearance in the worker that took the earliest row group holding it, and
/// ordering the merged groups by (that row group, their place in that worker's groups)
/// gives the order one worker would have found them in (`run`'s `Appearance`).
pub(super) struct Queue {
    slices: Vec<Slice>,
    units: Vec<Unit>,
    next: AtomicUsize,
}

impl Queue {
    fn new(slices: Vec<Slice>) -> Self {
        Queue {
            units: units(&slices),
            slices,
            next: AtomicUsize::new(0),
        }
    }

    /// The next row group, as a slice of its own, with its place in the queue.
    fn take(&self) -> Option<(usize, Slice)> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let unit = self.units.get(i)?.clone();
        let slice = regroup(&self.slices, vec![unit]).pop()?;
        Some((i, slice))
    }
}

/// Deals the row groups of `slices` to at most `n` workers (see [`Dealing`]), the page
/// index's selection split with them; no share when there are no row groups.
pub(super) fn deal(slices: Vec<Slice>, n: usize, how: Dealing) -> Vec<Share> {
    if how == Dealing::Queue {
        let queue = Arc::new(Queue::new(slices));
        let n = n.min(queue.units.len());
        return (0..n).map(|_| Share::Queue(queue.clone())).collect();
    }
    let units = units(&slices);
    let n = n.clamp(1, units.len().max(1));
    if how == Dealing::Turns {
        let mut shares: Vec<Vec<Slice>> = (0..n).map(|_| Vec::new()).collect();
        for (i, u) in units.into_iter().enumerate() {
            shares[i % n].extend(regroup(&slices, vec![u]));
        }
        return shares
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(Share::Slices)
            .collect();
    }
    let total: usize = units.iter().map(|u| u.rows.max(1)).sum();
    let mut shares: Vec<Vec<Unit>> = (0..n).map(|_| Vec::new()).collect();
    let mut done = 0usize;
    let mut units = units.into_iter();
    for (k, share) in shares.iter_mut().enumerate() {
        // Share k ends where the running total passes (k + 1) / n of the rows, and it keeps
        // at least one row group while any remain for the shares after it.
        let target = total * (k + 1) / n;
        while !units.as_slice().is_empty() {
            let later_shares = n - k - 1;
            if !share.is_empty() && (done >= target || units.len() <= later_shares) {
                break;
            }
            let u = units.next().expect("one is left");
            done += u.rows.max(1);
            share.push(u);
        }
    }
    shares
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(|share| Share::Slices(regroup(&slices, share)))
        .collect()
}

/// A slice as slices of one row group each, in order.
fn row_groups(slice: Slice) -> Vec<Slice> {
    let slices = [slice];
    units(&slices)
        .into_iter()
        .flat_map(|u| regroup(&slices, vec![u]))
        .collect()
}

/// The row groups of `slices` in order, each with its part of the page index's selection.
fn units(slices: &[Slice]) -> Vec<Unit> {
    let mut units = Vec::new();
    for (i, s) in slices.iter().enumerate() {
        let mut selection = s.pruned.selection.clone();
        for &rg in &s.pruned.row_groups {
            let in_group = s.metadata.metadata().row_group(rg).num_rows() as usize;
            let part = selection.as_mut().map(|sel| sel.split_off(in_group));
            let rows = part.as_ref().map_or(in_group, RowSelection::row_count);
            units.push(Unit {
                object: i,
                row_group: rg,
                selection: part,
                rows,
            });
        }
    }
    units
}

/// A share's units as slices again: consecutive row groups of one object in one slice.
fn regroup(slices: &[Slice], share: Vec<Unit>) -> Vec<Slice> {
    let mut out: Vec<(usize, Vec<Unit>)> = Vec::new();
    for u in share {
        match out.last_mut() {
            Some((o, units)) if *o == u.object => units.push(u),
            _ => out.push((u.object, vec![u])),
        }
    }
    out.into_iter()
        .map(|(o, units)| {
            let s = &slices[o];
            let selection = s.pruned.selection.as_ref().map(|_| {
                units
                    .iter()
                    .flat_map(|u| u.selection.as_ref().expect("split above").iter().copied())
                    .collect::<RowSelection>()
            });
            let md = s.metadata.metadata();
            let rows_total = units
                .iter()
                .map(|u| md.row_group(u.row_group).num_rows() as u64)
                .sum();
            Slice {
                object: s.object.clone(),
                metadata: s.metadata.clone(),
                schema: s.schema.clone(),
                pruned: Pruned {
                    row_groups: units.iter().map(|u| u.row_group).collect(),
                    selection,
                    rows_total,
                    rows_selected: units.iter().map(|u| u.rows as u64).sum(),
                    ..Default::default()
                },
            }
        })
        .collect()
}
