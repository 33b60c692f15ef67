//! Plan execution: bind → prune → scan (filter inside the decoder) → project or aggregate →
//! order → limit → result stream, with per-query statistics.

pub mod aggregate;
pub mod expr;
pub mod kernel_call;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use arrow::array::ArrayRef;
use arrow::compute::{SortColumn, SortOptions, lexsort_to_indices, take};
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use futures::{FutureExt, StreamExt};
use nearstore_proto::{AggFunc, BackendKind, Plan, QueryStats};
use tokio::sync::mpsc;

use crate::compute::fpga::{FpgaBackend, TimingModel};
use crate::compute::native::NativeBackend;
use crate::compute::wasm::sandbox::KernelKind;
use crate::compute::wasm::{SandboxConfig, WasmBackend};
use crate::compute::{ComputeBackend, ComputeSession, Support};
use crate::error::{Error, Result};
use crate::scan::{self, ErrorSlot, ObjectScan, ScanCounters};
use crate::storage::{Storage, TableHandle};
use aggregate::{AggSpec, HashAggregator};
use expr::{Binder, PhysExpr};

/// Rows per decoded batch.
pub const BATCH_ROWS: usize = 8192;

/// Rows an ORDER BY without LIMIT may sort on the device.
pub const SORT_ROWS_MAX: usize = 50_000_000;

/// Largest LIMIT whose top-k pre-selection runs in the backend (its state holds k keys).
pub const TOPK_KERNEL_MAX: u64 = 1 << 20;

/// A plan bound to a table: everything checked, ready to run.
#[derive(Debug, Clone)]
pub struct PreparedQuery {
    /// The plan.
    pub plan: Plan,
    table: TableHandle,
    predicate: Option<PhysExpr>,
    output: Output,
    schema: SchemaRef,
    backend: Arc<dyn ComputeBackend>,
    media_limit: Option<Arc<crate::server::qos::MediaBucket>>,
    kernel_limits: Option<crate::compute::wasm::KernelLimits>,
}

#[derive(Debug, Clone)]
enum Output {
    Project(Vec<(String, PhysExpr)>),
    Aggregate(Vec<PhysExpr>, Vec<AggSpec>),
}

impl PreparedQuery {
    /// Schema of the result.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Kernels of this query (built-in and registered) run under `limits` (the tenant's).
    pub fn with_kernel_limits(
        mut self,
        limits: Option<crate::compute::wasm::KernelLimits>,
    ) -> Self {
        self.kernel_limits = limits;
        if let Some(p) = &self.predicate {
            for k in p.kernel_calls() {
                k.set_limits(limits);
            }
        }
        self
    }

    /// Reads of this query wait for `bucket` (the tenant's media bandwidth).
    pub fn with_media_limit(
        mut self,
        bucket: Option<Arc<crate::server::qos::MediaBucket>>,
    ) -> Self {
        self.media_limit = bucket;
        self
    }
}

/// Runs plans against the device's storage.
#[derive(Debug)]
pub struct Executor {
    storage: Arc<Storage>,
    default_backend: BackendKind,
    native: Arc<NativeBackend>,
    wasm: Arc<WasmBackend>,
    fpga: Arc<FpgaBackend>,
}

impl Executor {
    /// An executor over `storage`, using `default_backend` when a plan names none.
    pub fn new(
        storage: Arc<Storage>,
        default_backend: BackendKind,
        sandbox: SandboxConfig,
    ) -> Result<Self> {
        let wasm = WasmBackend::new(sandbox)?;
        let ex = Executor {
            storage,
            default_backend,
            native: Arc::new(NativeBackend),
            fpga: Arc::new(FpgaBackend::new(TimingModel::default(), wasm.clone())?),
            wasm: Arc::new(wasm),
        };
        ex.backend(default_backend)?;
        Ok(ex)
    }

    /// The storage.
    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// The Wasm backend (its sandbox loads and runs kernels).
    pub fn wasm(&self) -> &Arc<WasmBackend> {
        &self.wasm
    }

    /// The FPGA backend (its emulated device takes fault injection).
    pub fn fpga(&self) -> &Arc<FpgaBackend> {
        &self.fpga
    }

    /// The default backend.
    pub fn default_backend(&self) -> BackendKind {
        self.default_backend
    }

    fn backend(&self, kind: BackendKind) -> Result<Arc<dyn ComputeBackend>> {
        match kind {
            BackendKind::Native => Ok(self.native.clone()),
            BackendKind::Wasm => Ok(self.wasm.clone()),
            BackendKind::Fpga => Ok(self.fpga.clone()),
        }
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

    /// Binds and checks a plan.
    pub async fn prepare(&self, plan: &Plan) -> Result<PreparedQuery> {
        plan.validate()?;
        let table = self.storage.table(&plan.table)?;
        let counters = Arc::new(ScanCounters::default());
        let table_schema = self.table_schema(&table, &counters).await?;
        // The plan's kernels are read and compiled on the blocking pool (a module the compile
        // cache dropped is compiled again), and binding takes them from here; a kernel that
        // failed to load is looked up again by the binder, which reports its error.
        let kernels = plan.kernels();
        let mut loaded = std::collections::HashMap::new();
        if !kernels.is_empty() {
            let (storage, sandbox) = (self.storage.clone(), self.wasm.sandbox().clone());
            loaded = tokio::task::spawn_blocking(move || {
                kernels
                    .into_iter()
                    .filter_map(|name| {
                        let program = load_kernel(&storage, &sandbox, &name).ok()?;
                        Some((name, program))
                    })
                    .collect()
            })
            .await
            .map_err(|e| Error::Internal(format!("loading the plan's kernels panicked: {e}")))?;
        }
        let resolve = |name: &str| match loaded.get(name) {
            Some(program) => Ok((program.clone(), self.wasm.sandbox().clone())),
            None => self.kernel(name),
        };
        let binder = Binder::new(&plan.table, &table_schema).with_kernels(&resolve);
        let predicate = plan
            .filter
            .as_ref()
            .map(|f| binder.bind_bool(f))
            .transpose()?;
        let backend = self.backend(plan.backend.unwrap_or(self.default_backend))?;

        let (output, schema) = if plan.is_aggregate() {
            let group_by = plan
                .group_by
                .iter()
                .map(|g| binder.column(g))
                .collect::<Result<Vec<_>>>()?;
            let aggs = plan
                .aggregates
                .iter()
                .map(|a| {
                    let input = match (a.func, &a.expr) {
                        (AggFunc::Kernel, Some(e)) => {
                            let k = binder.bind_kernel(e)?;
                            if let PhysExpr::Kernel { call, .. } = &k
                                && call.kind() != KernelKind::Aggregate
                            {
                                return Err(Error::TypeMismatch(format!(
                                    "kernel '{}' is a {} kernel, not an aggregate kernel",
                                    call.name,
                                    call.kind().as_str()
                                )));
                            }
                            Some(k)
                        }
                        (_, e) => e.as_ref().map(|e| binder.bind(e)).transpose()?,
                    };
                    Ok(AggSpec {
                        func: a.func,
                        input,
                        name: a.output_name(),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let schema = HashAggregator::new(group_by.clone(), aggs.clone())?.schema();
            (Output::Aggregate(group_by, aggs), schema)
        } else {
            let items: Vec<(String, PhysExpr)> = if plan.projection.is_empty() {
                table_schema
                    .fields()
                    .iter()
                    .map(|f| Ok((f.name().clone(), binder.column(f.name())?)))
                    .collect::<Result<_>>()?
            } else {
                plan.projection
                    .iter()
                    .map(|p| Ok((p.name().to_string(), binder.bind(&p.expr())?)))
                    .collect::<Result<_>>()?
            };
            let fields: Vec<Field> = items
                .iter()
                .map(|(n, e)| {
                    let nullable = match e {
                        PhysExpr::Column { name, .. } => table_schema
                            .field_with_name(name)
                            .map(|f| f.is_nullable())
                            .unwrap_or(true),
                        _ => true,
                    };
                    Field::new(n, e.data_type(), nullable)
                })
                .collect();
            (Output::Project(items), Arc::new(Schema::new(fields)))
        };
        for k in &plan.order_by {
            if schema.index_of(&k.column).is_err() {
                return Err(Error::UnknownColumn {
                    table: format!("{} (output)", plan.table),
                    column: k.column.clone(),
                    available: schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        Ok(PreparedQuery {
            plan: plan.clone(),
            table,
            predicate,
            output,
            schema,
            backend,
            media_limit: None,
            kernel_limits: None,
        })
    }

    /// The registered kernel `name` (a storage name), compiled, and its sandbox.
    pub fn kernel(
        &self,
        name: &str,
    ) -> Result<(
        Arc<crate::compute::wasm::Program>,
        Arc<crate::compute::wasm::Sandbox>,
    )> {
        let sandbox = self.wasm.sandbox().clone();
        let program = load_kernel(&self.storage, &sandbox, name)?;
        Ok((program, sandbox))
    }

    /// Validates and compiles a kernel module for `tenant` ("" on a device without tenants)
    /// without registering it.
    pub fn check_kernel(
        &self,
        module: &[u8],
        tenant: &str,
    ) -> Result<Arc<crate::compute::wasm::Program>> {
        self.wasm
            .sandbox()
            .load_for(module, tenant)
            .map_err(|e| Error::InvalidKernel(e.to_string()))
    }

    /// What the plan's filter may match by the statistics alone (no data is read).
    pub async fn estimate(&self, plan: &Plan) -> Result<nearstore_proto::Estimate> {
        let q = self.prepare(plan).await?;
        let counters = Arc::new(ScanCounters::default());
        let errors = ErrorSlot::default();
        let mut e = nearstore_proto::Estimate::default();
        for object in &q.table.objects {
            let md = scan::metadata(object, &counters, &errors).await?;
            let arrow_md = scan::arrow_metadata(md.clone(), object)?;
            let pruned = scan::prune::prune(&md, arrow_md.schema(), q.predicate.as_ref());
            e.row_groups_total += md.num_row_groups() as u64;
            e.row_groups_may_match += pruned.row_groups.len() as u64;
            e.rows_total += md
                .row_groups()
                .iter()
                .map(|r| r.num_rows() as u64)
                .sum::<u64>();
            e.rows_may_match += pruned.rows_selected;
        }
        Ok(e)
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
                let result = std::panic::AssertUnwindSafe(this.run(&q, &tx, &mut stats))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|p| {
                        let msg = p
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| p.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "unknown panic".into());
                        Err(Error::Internal(format!("query execution panicked: {msg}")))
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

    async fn run(
        &self,
        q: &PreparedQuery,
        tx: &mpsc::Sender<Result<RecordBatch>>,
        stats: &mut QueryStats,
    ) -> Result<()> {
        let counters = Arc::new(ScanCounters {
            media_limit: q.media_limit.clone(),
            ..Default::default()
        });
        let errors = ErrorSlot::default();
        let plan = &q.plan;
        let backend = q.backend.clone();
        let native: Arc<dyn ComputeBackend> = self.native.clone();

        // Operator placement (documented policy): each operator runs on the query's backend
        // when that backend answers Exact for it, and on the native backend otherwise. Each
        // backend gets one session per query (for Wasm: a fresh sandboxed instance).
        type Session = Arc<std::sync::Mutex<Box<dyn ComputeSession>>>;
        let open = |b: &Arc<dyn ComputeBackend>| -> Result<Session> {
            Ok(Arc::new(std::sync::Mutex::new(
                b.open_with(q.kernel_limits)?,
            )))
        };
        let query_session = open(&backend)?;
        let native_session = if backend.kind() == BackendKind::Native {
            query_session.clone()
        } else {
            open(&native)?
        };
        let mut placement = Vec::new();
        let predicate = q.predicate.clone().map(|p| {
            let on_backend = backend.supports_filter(&p) == Support::Exact;
            let (session, kind) = if on_backend {
                (query_session.clone(), backend.kind())
            } else {
                (native_session.clone(), BackendKind::Native)
            };
            placement.push(format!("filter={}", kind.as_str()));
            for k in p.kernel_calls() {
                placement.push(format!("kernel:{}=wasm", k.name));
            }
            (p, session)
        });
        let place = |e: &PhysExpr| -> &Session {
            if backend.supports_expr(e) == Support::Exact {
                &query_session
            } else {
                &native_session
            }
        };
        let eval = |e: &PhysExpr, b: &RecordBatch| -> Result<ArrayRef> {
            place(e).lock().expect("compute session").evaluate(e, b)
        };
        let exprs: Vec<&PhysExpr> = match &q.output {
            Output::Project(items) => items.iter().map(|(_, e)| e).collect(),
            Output::Aggregate(g, a) => g
                .iter()
                .chain(a.iter().filter_map(|a| a.input.as_ref()))
                .collect(),
        };
        // Where the computed expressions run (plain columns and literals need no operator).
        let computed: Vec<&&PhysExpr> = exprs
            .iter()
            .filter(|e| !matches!(e, PhysExpr::Column { .. } | PhysExpr::Literal(_)))
            .collect();
        let exprs_on_backend = !computed.is_empty()
            && computed
                .iter()
                .all(|e| backend.supports_expr(e) == Support::Exact);
        let offload_aggs = match &q.output {
            Output::Aggregate(_, aggs) => backend.supports_aggregates(aggs) == Support::Exact,
            Output::Project(_) => false,
        };
        match &q.output {
            Output::Aggregate(..) => {
                let on = if offload_aggs {
                    backend.kind()
                } else {
                    BackendKind::Native
                };
                placement.push(format!("aggregate={}", on.as_str()));
                if let Output::Aggregate(_, aggs) = &q.output {
                    for a in aggs {
                        if let Some(PhysExpr::Kernel { call, .. }) = &a.input {
                            placement.push(format!("kernel:{}=wasm", call.name));
                        }
                    }
                }
                // Aggregate inputs that are expressions, not plain columns, are computed first.
                let computed = exprs.iter().any(|e| !matches!(e, PhysExpr::Column { .. }));
                if computed {
                    let at = if exprs_on_backend {
                        backend.kind()
                    } else {
                        BackendKind::Native
                    };
                    placement.push(format!("exprs={}", at.as_str()));
                }
            }
            Output::Project(_) => {
                let at = if exprs_on_backend {
                    backend.kind()
                } else {
                    BackendKind::Native
                };
                placement.push(format!("project={}", at.as_str()));
            }
        }
        stats.placement = placement.join(" ");

        // Columns decoded after the filter.
        let mut needed: Vec<String> = Vec::new();
        let mut need = |cols: Vec<String>| {
            for c in cols {
                if !needed.contains(&c) {
                    needed.push(c);
                }
            }
        };
        match &q.output {
            Output::Project(items) => items.iter().for_each(|(_, e)| need(e.columns())),
            Output::Aggregate(g, aggs) => {
                g.iter().for_each(|e| need(e.columns()));
                aggs.iter()
                    .filter_map(|a| a.input.as_ref())
                    .for_each(|e| need(e.columns()));
            }
        }

        let streaming_limit = match (&q.output, plan.order_by.is_empty()) {
            (Output::Project(_), true) => plan.limit.map(|l| l as usize),
            _ => None,
        };
        let mut remaining = streaming_limit;
        let mut agg = match &q.output {
            Output::Aggregate(g, a) => {
                let mut h = HashAggregator::new(g.clone(), a.clone())?;
                if offload_aggs {
                    h.offload_to(query_session.clone());
                }
                Some(h)
            }
            Output::Project(_) => None,
        };
        let mut collected: Vec<RecordBatch> = Vec::new();
        let must_collect = !plan.order_by.is_empty();
        // ORDER BY … LIMIT k: the backend may pre-select the rows that can still be in the top
        // k by the first sort key — of each batch of rows, or of the aggregate's result — and
        // the sort below settles the rest.
        let topk = match (plan.order_by.first(), plan.limit) {
            (Some(first), Some(k)) if k > 0 && k <= TOPK_KERNEL_MAX => q
                .schema
                .index_of(&first.column)
                .ok()
                .filter(|&i| backend.supports_topk(q.schema.field(i).data_type()) == Support::Exact)
                .map(|i| {
                    (
                        i,
                        first.descending,
                        first.nulls_first.unwrap_or(first.descending),
                        k,
                    )
                }),
            _ => None,
        };
        if topk.is_some() {
            stats
                .placement
                .push_str(&format!(" topk={}", backend.kind().as_str()));
        }
        let mut collected_rows = 0usize;

        stats.objects = q.table.objects.len() as u64;
        for object in &q.table.objects {
            if remaining == Some(0) {
                break;
            }
            let t_plan = Instant::now();
            let md = scan::metadata(object, &counters, &errors).await?;
            let arrow_md = scan::arrow_metadata(md.clone(), object)?;
            let pruned = scan::prune::prune(&md, arrow_md.schema(), q.predicate.as_ref());
            stats.row_groups_total += md.num_row_groups() as u64;
            stats.row_groups_pruned += pruned.row_groups_pruned;
            stats.pages_total += pruned.pages_total;
            stats.pages_pruned += pruned.pages_pruned;
            stats.rows_total += pruned.rows_total;
            stats.plan_us += t_plan.elapsed().as_micros() as u64;
            tracing::debug!(
                object = %object.id,
                row_groups = md.num_row_groups(),
                row_groups_kept = pruned.row_groups.len(),
                pages_pruned = pruned.pages_pruned,
                plan_us = t_plan.elapsed().as_micros() as u64,
                "object pruned"
            );
            if pruned.row_groups.is_empty() {
                continue;
            }
            let pred = predicate.as_ref().map(|(p, session)| {
                let p = p.clone();
                let session = session.clone();
                let f: scan::Predicate = Arc::new(move |batch| {
                    session.lock().expect("compute session").filter(&p, batch)
                });
                (
                    q.predicate
                        .as_ref()
                        .map(|p| p.columns())
                        .unwrap_or_default(),
                    f,
                )
            });
            let has_pred = pred.is_some();
            let mut stream = scan::open_stream(
                ObjectScan {
                    object: object.clone(),
                    metadata: arrow_md,
                    pruned,
                    columns: needed.clone(),
                    predicate: pred,
                    batch_size: BATCH_ROWS,
                    limit: remaining,
                },
                counters.clone(),
                errors.clone(),
            )?;
            let mut t_scan = Instant::now();
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(|e| errors.take_or(Error::Parquet(e)))?;
                stats.scan_us += t_scan.elapsed().as_micros() as u64;
                if !has_pred {
                    counters
                        .rows_scanned
                        .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                    counters
                        .rows_selected
                        .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                }
                let t_compute = Instant::now();
                match (&q.output, agg.as_mut()) {
                    (_, Some(a)) => {
                        a.update(&batch, &eval)?;
                    }
                    (Output::Project(items), None) => {
                        let cols = items
                            .iter()
                            .map(|(_, e)| eval(e, &batch))
                            .collect::<Result<Vec<ArrayRef>>>()?;
                        let mut out = RecordBatch::try_new_with_options(
                            q.schema.clone(),
                            cols,
                            &arrow::record_batch::RecordBatchOptions::new()
                                .with_row_count(Some(batch.num_rows())),
                        )?;
                        if let Some(topk) = topk {
                            let mut session = query_session.lock().expect("compute session");
                            out = preselect_topk(&mut **session, &out, topk, stats)?;
                        }
                        out = compact_views(out)?;
                        if let Some(r) = remaining.as_mut() {
                            if out.num_rows() > *r {
                                out = out.slice(0, *r);
                            }
                            *r -= out.num_rows();
                        }
                        stats.compute_us += t_compute.elapsed().as_micros() as u64;
                        if must_collect {
                            collected_rows += out.num_rows();
                            // ORDER BY … LIMIT k keeps a running top k: whenever the rows held
                            // grow well past k, they are sorted and cut back to k.
                            if let Some(k) = plan.limit
                                && collected_rows > (4 * k as usize).max(BATCH_ROWS)
                            {
                                collected.push(out);
                                let all = arrow::compute::concat_batches(&q.schema, &collected)?;
                                let top = sort_batch(&all, plan)?;
                                collected_rows = top.num_rows();
                                collected = vec![top];
                                stats.compute_us += t_compute.elapsed().as_micros() as u64;
                                t_scan = Instant::now();
                                continue;
                            }
                            if plan.limit.is_none() && collected_rows > SORT_ROWS_MAX {
                                return Err(Error::Unsupported(format!(
                                    "ORDER BY over more than {SORT_ROWS_MAX} rows without LIMIT"
                                )));
                            }
                            collected.push(out);
                        } else if out.num_rows() > 0 {
                            stats.rows_returned += out.num_rows() as u64;
                            if tx.send(Ok(out)).await.is_err() {
                                return Ok(()); // the client went away
                            }
                        }
                        if remaining == Some(0) {
                            break;
                        }
                        t_scan = Instant::now();
                        continue;
                    }
                    (Output::Aggregate(..), None) => {
                        unreachable!("aggregator exists for aggregate plans")
                    }
                }
                stats.compute_us += t_compute.elapsed().as_micros() as u64;
                t_scan = Instant::now();
            }
        }

        if let Some(a) = agg {
            let t = Instant::now();
            let mut out = a.finish()?;
            if let Some(topk) = topk {
                // The groups, a batch at a time (the kernel's running top k carries over).
                let mut session = query_session.lock().expect("compute session");
                let kept = (0..out.num_rows())
                    .step_by(BATCH_ROWS)
                    .map(|start| {
                        let part = out.slice(start, BATCH_ROWS.min(out.num_rows() - start));
                        preselect_topk(&mut **session, &part, topk, stats)
                    })
                    .collect::<Result<Vec<_>>>()?;
                out = arrow::compute::concat_batches(&q.schema, &kept)?;
            }
            collected.push(out);
            stats.compute_us += t.elapsed().as_micros() as u64;
        }
        if agg_or_sorted(&q.output, must_collect) {
            let mut out = arrow::compute::concat_batches(&q.schema, &collected)?;
            if must_collect {
                out = sort_batch(&out, plan)?;
            }
            if let Some(l) = plan.limit {
                out = out.slice(0, out.num_rows().min(l as usize));
            }
            stats.rows_returned += out.num_rows() as u64;
            for start in (0..out.num_rows()).step_by(BATCH_ROWS) {
                let len = BATCH_ROWS.min(out.num_rows() - start);
                if tx.send(Ok(out.slice(start, len))).await.is_err() {
                    break;
                }
            }
        }
        let report = query_session.lock().expect("compute session").report();
        stats.fpga_modelled_us = report.modelled_us.round() as u64;
        stats.fallbacks = report.fallbacks;
        if report.fallbacks > 0 {
            stats
                .placement
                .push_str(" (device fault: fell back to wasm)");
        }
        if report.native_reruns > 0 {
            stats.placement.push_str(&format!(
                " ({} batches re-run natively after an arithmetic error)",
                report.native_reruns
            ));
        }
        stats.bytes_read_media = counters.bytes_read.load(Ordering::Relaxed);
        stats.rows_scanned = counters.rows_scanned.load(Ordering::Relaxed);
        stats.rows_selected = counters.rows_selected.load(Ordering::Relaxed);
        stats.filter_us = counters.filter_us.load(Ordering::Relaxed);
        Ok(())
    }
}

/// The registered kernel `name` (a storage name), read and compiled (or found in the compile
/// cache) for the tenant it belongs to.
fn load_kernel(
    storage: &Storage,
    sandbox: &crate::compute::wasm::Sandbox,
    name: &str,
) -> Result<Arc<crate::compute::wasm::Program>> {
    let bytes = storage.kernels().module(name)?;
    Ok(sandbox.load_for(&bytes, kernel_owner(name))?)
}

/// The tenant a stored kernel name (`tenant/name`, or `name` on a device without tenants)
/// belongs to: its owner in the compile cache.
fn kernel_owner(stored: &str) -> &str {
    stored.split_once('/').map_or("", |(tenant, _)| tenant)
}

/// The rows of `batch` the backend's running top k keeps: by column `i`, descending or not,
/// nulls first or not, k rows. Counted in `stats` (`topk_rows_in`, `topk_rows_kept`).
fn preselect_topk(
    session: &mut dyn crate::compute::ComputeSession,
    batch: &RecordBatch,
    (i, descending, nulls_first, k): (usize, bool, bool, u64),
    stats: &mut QueryStats,
) -> Result<RecordBatch> {
    let keep = session.topk(batch.column(i), descending, nulls_first, k as usize)?;
    let kept = arrow::compute::filter_record_batch(batch, &keep)?;
    stats.topk_rows_in += batch.num_rows() as u64;
    stats.topk_rows_kept += kept.num_rows() as u64;
    Ok(kept)
}

/// Copies the strings of view columns (Utf8View, BinaryView) that reference much larger
/// buffers: after a filter, a view array still points into the whole decoded page, and Arrow
/// IPC would send all of it over the link.
fn compact_views(batch: RecordBatch) -> Result<RecordBatch> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::DataType;
    fn compact<T: arrow::datatypes::ByteViewType>(
        v: &arrow::array::GenericByteViewArray<T>,
    ) -> Option<ArrayRef> {
        let held: usize = v.data_buffers().iter().map(|b| b.len()).sum();
        let used: usize = (0..v.len())
            .map(|i| AsRef::<[u8]>::as_ref(v.value(i)).len())
            .sum();
        (held > 2 * used + 4096).then(|| Arc::new(v.gc()) as ArrayRef)
    }
    let mut changed = false;
    let cols = batch
        .columns()
        .iter()
        .map(|c| {
            let compacted = match c.data_type() {
                DataType::Utf8View => compact(c.as_string_view()),
                DataType::BinaryView => compact(c.as_binary_view()),
                _ => None,
            };
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
        &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )?)
}

fn agg_or_sorted(output: &Output, sorted: bool) -> bool {
    matches!(output, Output::Aggregate(..)) || sorted
}

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
