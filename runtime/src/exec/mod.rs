//! Plan execution: a query is prepared (bound, kernels compiled: [`prepare`]), its operators
//! placed on backends ([`placement`]), and run ([`run`]) on one or more compute workers
//! ([`worker`]), each a pipeline over its share of the row groups: pruned scan with the filter
//! inside the decoder → projection ([`project`]) or aggregation ([`aggregate`]); then the
//! workers' partial aggregates merged, the row sink (ORDER BY, top-k, LIMIT: [`sort`]) →
//! result stream, with per-query statistics.
//! [`estimate`] answers what a plan would read and return, by the Parquet statistics alone.

pub mod aggregate;
mod estimate;
mod groups;
mod placement;
mod prepare;
mod project;
mod run;
mod sort;
mod worker;

use std::sync::Arc;
use std::time::Instant;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use futures::FutureExt;
use nearstore_proto::{BackendKind, QueryStats};
use tokio::sync::mpsc;

pub use prepare::{PreparedQuery, QueryLimits};

use crate::compute::{Backends, SandboxConfig};
use crate::error::{Error, Result};
use crate::scan::{self, ErrorSlot, ScanCounters};
use crate::storage::{Storage, TableHandle};

/// Rows per decoded batch.
pub const BATCH_ROWS: usize = 8192;

/// Rows an ORDER BY without LIMIT may sort on the device.
pub const SORT_ROWS_MAX: usize = 50_000_000;

/// Largest LIMIT whose top-k pre-selection runs in the backend (its state holds k keys).
pub const TOPK_KERNEL_MAX: u64 = 1 << 20;

/// Runs plans against the device's storage.
#[derive(Debug)]
pub struct Executor {
    storage: Arc<Storage>,
    default_backend: BackendKind,
    backends: Arc<Backends>,
    pool: Pool,
}

/// The device's compute workers. A query takes as many as are idle without waiting (admission
/// has queued it already), and always runs on at least one: alone it gets every core, beside
/// other queries what they left.
#[derive(Debug)]
struct Pool {
    size: usize,
    idle: Arc<tokio::sync::Semaphore>,
}

/// The workers one query took; they return to the pool when it ends.
struct Workers {
    held: Vec<tokio::sync::OwnedSemaphorePermit>,
    count: usize,
}

impl Workers {
    /// How many workers the query may run (at least one).
    fn count(&self) -> usize {
        self.count
    }

    /// Returns all but `n` of the workers to the pool.
    fn keep(&mut self, n: usize) {
        self.held.truncate(n);
        self.count = self.count.min(n.max(1));
    }
}

impl Pool {
    fn new(size: usize) -> Self {
        let size = size.max(1);
        Pool {
            size,
            idle: Arc::new(tokio::sync::Semaphore::new(size)),
        }
    }

    /// Up to `want` idle workers, at least one counted even when none is idle.
    fn take(&self, want: usize) -> Workers {
        let held: Vec<_> = (0..want)
            .map_while(|_| self.idle.clone().try_acquire_owned().ok())
            .collect();
        Workers {
            count: held.len().max(1),
            held,
        }
    }
}

/// The text of a caught panic.
fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

impl Executor {
    /// An executor over `storage`, using `default_backend` when a plan names none, with
    /// `workers` compute workers (one query may use them all).
    pub fn new(
        storage: Arc<Storage>,
        default_backend: BackendKind,
        sandbox: SandboxConfig,
        workers: usize,
    ) -> Result<Self> {
        Ok(Executor {
            storage,
            default_backend,
            backends: Arc::new(Backends::new(sandbox)?),
            pool: Pool::new(workers),
        })
    }

    /// Compute workers in the pool.
    pub fn workers(&self) -> usize {
        self.pool.size
    }

    /// The storage.
    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// The device's backends.
    pub fn backends(&self) -> &Arc<Backends> {
        &self.backends
    }

    /// The default backend.
    pub fn default_backend(&self) -> BackendKind {
        self.default_backend
    }

    /// The table's Arrow schema, from its first object's footer.
    pub async fn table_schema(
        &self,
        table: &TableHandle,
        counters: &Arc<ScanCounters>,
    ) -> Result<SchemaRef> {
        let first = table
            .objects
            .first()
            .ok_or_else(|| Error::Internal(format!("table '{}' has no objects", table.name)))?;
        let md = scan::metadata(first, counters, &ErrorSlot::default()).await?;
        Ok(scan::arrow_metadata(md, first)?.schema().clone())
    }

    /// Runs a prepared query on a task of its own. Batches arrive on the returned channel; the
    /// statistics arrive when the stream ends (or fails).
    pub fn execute(
        self: &Arc<Self>,
        q: PreparedQuery,
    ) -> (
        mpsc::Receiver<Result<RecordBatch>>,
        tokio::sync::oneshot::Receiver<QueryStats>,
    ) {
        let (tx, rx) = mpsc::channel(4);
        let (stats_tx, stats_rx) = tokio::sync::oneshot::channel();
        let this = self.clone();
        // One span per query; its stages (metadata and pruning, then the scan of each object)
        // are spans inside it.
        let span = tracing::info_span!(
            "query",
            table = %q.plan.table,
            backend = %q.backend.kind().as_str()
        );
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let started = Instant::now();
                let mut stats = QueryStats {
                    backend: q.backend.kind().as_str().to_string(),
                    reader: this.storage.reader().kind().as_str().to_string(),
                    ..Default::default()
                };
                // A panic in an operator is a bug, but it must fail only this query.
                let q = Arc::new(q);
                let result = std::panic::AssertUnwindSafe(this.run(&q, &tx, &mut stats))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|p| {
                        Err(Error::Internal(format!(
                            "query execution panicked: {}",
                            panic_message(p)
                        )))
                    });
                stats.total_us = started.elapsed().as_micros() as u64;
                if let Err(e) = result {
                    tracing::warn!(table = %q.plan.table, error = %e, "query failed");
                    let _ = tx.send(Err(e)).await;
                }
                let _ = stats_tx.send(stats);
            },
            span,
        ));
        (rx, stats_rx)
    }
}
