//! SQL over device tables with DataFusion.
//!
//! Every table of the device becomes a [`DeviceTable`] provider. In [`Mode::Offload`] the
//! provider answers `Exact` for each filter it can translate into the plan IR with the device
//! computing exactly what DataFusion would (comparisons, AND/OR/NOT, BETWEEN, IN, IS [NOT]
//! NULL, LIKE, finite literals, and the arithmetic whose results agree: floats, decimal
//! `+ - *`, integer division) and `Unsupported` for the rest, and pushes the projection, the
//! translated filters and — when DataFusion offers it — the limit into one device plan;
//! DataFusion finishes everything else on the host. In [`Mode::FullTransfer`] nothing but the
//! column projection is pushed: the device sends the referenced columns in full and the host
//! computes the whole query, which is the comparison CI needs. `EXPLAIN` shows the device
//! plan of each scan.
//!
//! In offload mode the [`PushAggregates`] optimizer rule also hands the device whole aggregates
//! over a single table scan; aggregates above joins stay on the host.

use std::fmt;
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, DataFusionError, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Operator, TableProviderFilterPushDown};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use datafusion::prelude::{Expr as DfExpr, SessionContext};
use nearstore_proto::{ArithOp, CmpOp, Expr, Literal, Plan, Projection, QueryStats, TypedLiteral};

use crate::{Client, ClientOptions, Error, Result};

/// What a SQL session pushes to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Push projections, filters and limits.
    Offload,
    /// Push only the column projection; compute everything on the host.
    FullTransfer,
    /// Choose offload or full transfer per query, from what would be pushed, the Parquet
    /// statistics of the pushed filters (see [`SqlSession::decide`]) and the devices' load.
    Auto,
}

impl Mode {
    /// The spelling the CLI takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Offload => "offload",
            Mode::FullTransfer => "transfer",
            Mode::Auto => "auto",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "offload" => Ok(Mode::Offload),
            "transfer" | "full-transfer" | "full_transfer" => Ok(Mode::FullTransfer),
            "auto" => Ok(Mode::Auto),
            o => Err(Error::InvalidArgument(format!(
                "unknown mode '{o}' (expected offload, transfer or auto)"
            ))),
        }
    }
}

/// Statistics of the device scans one SQL query ran.
pub type ScanLog = Arc<Mutex<Vec<(Plan, QueryStats)>>>;

/// The result of a SQL query.
#[derive(Debug, Clone)]
pub struct SqlResult {
    /// Result schema.
    pub schema: SchemaRef,
    /// Result batches.
    pub batches: Vec<RecordBatch>,
    /// Each device scan: the plan sent and the device's statistics.
    pub scans: Vec<(Plan, QueryStats)>,
    /// The mode the query ran in ([`Mode::Offload`] or [`Mode::FullTransfer`]).
    pub mode: Mode,
    /// Why that mode (for [`Mode::Auto`]; otherwise "set by the session").
    pub reason: String,
}

impl SqlResult {
    /// Bytes the device sent for this query.
    pub fn bytes_moved(&self) -> u64 {
        self.scans.iter().map(|(_, s)| s.bytes_sent).sum()
    }

    /// Rows in the result.
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
}

/// A DataFusion session over one device's tables.
pub struct SqlSession {
    ctx: SessionContext,
    log: ScanLog,
    mode: Mode,
    /// For [`Mode::Auto`]: the same tables in full-transfer mode (`ctx` has them in offload
    /// mode).
    transfer: Option<SessionContext>,
    options: ClientOptions,
}

/// [`Mode::Auto`] sends full transfer rather than a non-selective filter to a device running
/// at least this many queries.
pub const AUTO_BUSY_QUERIES: u64 = 4;
/// [`Mode::Auto`] offloads filters whose statistics bound the rows they keep below this share.
pub const AUTO_SELECTIVE: f64 = 0.5;

impl fmt::Debug for SqlSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlSession")
            .field("mode", &self.mode)
            .finish()
    }
}

fn df_err(e: Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Unwraps a DataFusion error back into the SDK error it carries, if any.
fn sdk_err(e: DataFusionError) -> Error {
    match e {
        DataFusionError::External(inner) => match inner.downcast::<Error>() {
            Ok(e) => *e,
            Err(other) => Error::InvalidArgument(other.to_string()),
        },
        DataFusionError::Context(_, inner) => sdk_err(*inner),
        DataFusionError::Shared(shared) => Error::InvalidArgument(shared.to_string()),
        other => Error::InvalidArgument(other.to_string()),
    }
}

impl SqlSession {
    /// Connects to the device at `url` and registers its tables.
    pub async fn connect(url: &str, options: ClientOptions, mode: Mode) -> Result<Self> {
        Self::connect_many(&[url.to_string()], options, mode).await
    }

    /// Connects to several devices and registers their tables. A table held by more than one
    /// device (with the same schema) is one table spread across them: scans fan out to every
    /// device that holds it, and pushed aggregates come back as partial aggregates that the
    /// host merges.
    pub async fn connect_many(urls: &[String], options: ClientOptions, mode: Mode) -> Result<Self> {
        if urls.is_empty() {
            return Err(Error::InvalidArgument("no device URL given".into()));
        }
        let log: ScanLog = Arc::default();
        // table -> (schema, devices holding it), in the order first seen.
        let mut tables: Vec<(String, SchemaRef, Vec<String>)> = Vec::new();
        for url in urls {
            let mut client = Client::connect_with(url, options.clone()).await?;
            for t in client.tables().await? {
                let schema = client.schema(&Plan::scan(&t.name)).await?;
                match tables.iter_mut().find(|(n, _, _)| *n == t.name) {
                    Some((_, s, devices)) => {
                        if s.fields() != schema.fields() {
                            return Err(Error::InvalidArgument(format!(
                                "table '{}' has a different schema on {url} than on {}",
                                t.name, devices[0]
                            )));
                        }
                        devices.push(url.clone());
                    }
                    None => tables.push((t.name.clone(), schema, vec![url.clone()])),
                }
            }
        }
        // Kernels registered on any of the devices become SQL functions.
        let mut kernels: Vec<nearstore_proto::KernelInfo> = Vec::new();
        for url in urls {
            let mut client = Client::connect_with(url, options.clone()).await?;
            for k in client.kernels().await? {
                if !kernels.iter().any(|have| have.name == k.name) {
                    kernels.push(k);
                }
            }
        }
        let context = |mode: Mode| -> Result<SessionContext> {
            let ctx = SessionContext::new();
            for k in &kernels {
                if k.kind == "aggregate" {
                    ctx.register_udaf(datafusion::logical_expr::AggregateUDF::new_from_impl(
                        KernelUdaf::new(k),
                    ));
                } else {
                    ctx.register_udf(datafusion::logical_expr::ScalarUDF::new_from_impl(
                        KernelUdf::new(k),
                    ));
                }
            }
            if mode == Mode::Offload {
                ctx.add_optimizer_rule(Arc::new(PushAggregates));
                ctx.add_optimizer_rule(Arc::new(PushKernelProjections));
                ctx.add_optimizer_rule(Arc::new(PushTopK));
            }
            for (name, schema, devices) in &tables {
                let df_schema = Arc::new(
                    DFSchema::try_from(schema.clone())
                        .map_err(|e| Error::InvalidArgument(e.to_string()))?,
                );
                let table = DeviceTable {
                    urls: devices.clone(),
                    options: options.clone(),
                    table: name.clone(),
                    schema: schema.clone(),
                    df_schema,
                    mode,
                    log: log.clone(),
                    top: None,
                };
                ctx.register_table(name.as_str(), Arc::new(table))
                    .map_err(|e| Error::InvalidArgument(e.to_string()))?;
            }
            Ok(ctx)
        };
        let (ctx, transfer) = match mode {
            Mode::Auto => (context(Mode::Offload)?, Some(context(Mode::FullTransfer)?)),
            m => (context(m)?, None),
        };
        Ok(SqlSession {
            ctx,
            log,
            mode,
            transfer,
            options,
        })
    }

    /// The session's mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Runs a query.
    pub async fn sql(&self, query: &str) -> Result<SqlResult> {
        let (mode, reason, ctx) = self.choose(query).await?;
        self.run(ctx, query, mode, reason).await
    }

    /// The mode for `query`, why, and the context that runs it.
    async fn choose(&self, query: &str) -> Result<(Mode, String, &SessionContext)> {
        Ok(match (self.mode, &self.transfer) {
            (Mode::Auto, Some(transfer)) => {
                let (m, reason) = self.decide(query).await?;
                let ctx = if m == Mode::FullTransfer {
                    transfer
                } else {
                    &self.ctx
                };
                (m, reason, ctx)
            }
            (m, _) => (m, "set by the session".to_string(), &self.ctx),
        })
    }

    async fn run(
        &self,
        ctx: &SessionContext,
        query: &str,
        mode: Mode,
        reason: String,
    ) -> Result<SqlResult> {
        self.log.lock().expect("scan log").clear();
        let df = ctx.sql(query).await.map_err(sdk_err)?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await.map_err(sdk_err)?;
        let scans = std::mem::take(&mut *self.log.lock().expect("scan log"));
        Ok(SqlResult {
            schema,
            batches,
            scans,
            mode,
            reason,
        })
    }

    /// [`Mode::Auto`]'s choice for a query, and why. The policy, in order:
    /// 1. a pushed aggregate: offload (only groups cross the link);
    /// 2. nothing pushed (no filter, aggregate or limit): full transfer (the same bytes either
    ///    way; the host does the work and the device stays free);
    /// 3. a device running [`AUTO_BUSY_QUERIES`] or more queries while the statistics say the
    ///    pushed filters may keep [`AUTO_SELECTIVE`] of the rows or more: full transfer (little
    ///    to save, and a busy device would be slower than the host);
    /// 4. otherwise offload: filters the statistics bound below that share save their share of
    ///    the bytes for certain, and a filter the statistics cannot bound still moves no more
    ///    than full transfer.
    ///
    /// Statistics come from each device's `estimate` action: min/max of row groups and the page
    /// index, an upper bound of the rows a filter keeps; no data is read.
    pub async fn decide(&self, query: &str) -> Result<(Mode, String)> {
        let plan = self
            .ctx
            .sql(query)
            .await
            .map_err(sdk_err)?
            .create_physical_plan()
            .await
            .map_err(sdk_err)?;
        let mut scans: Vec<(Vec<String>, Plan)> = Vec::new();
        collect_scans(plan.as_ref(), &mut scans);
        if let Some((_, p)) = scans.iter().find(|(_, p)| !p.aggregates.is_empty()) {
            return Ok((
                Mode::Offload,
                format!(
                    "the aggregate over {} runs on the device: only its groups cross the link",
                    p.table
                ),
            ));
        }
        let filtered: Vec<&(Vec<String>, Plan)> =
            scans.iter().filter(|(_, p)| p.filter.is_some()).collect();
        if filtered.is_empty() {
            if let Some((_, p)) = scans.iter().find(|(_, p)| p.limit.is_some()) {
                return Ok((
                    Mode::Offload,
                    format!("the limit on {} stops the device early", p.table),
                ));
            }
            return Ok((
                Mode::FullTransfer,
                "nothing to push (no filter, aggregate or limit on a device table): the same \
                 bytes either way, so the host computes and the device stays free"
                    .into(),
            ));
        }
        let (mut total, mut may, mut busiest) = (0u64, 0u64, (0u64, String::new()));
        for (urls, p) in &filtered {
            for url in urls {
                let mut c = Client::connect_with(url, self.options.clone()).await?;
                let e = c.estimate(p).await?;
                total += e.rows_total;
                may += e.rows_may_match;
                if e.active_queries >= busiest.0 {
                    busiest = (e.active_queries, url.clone());
                }
            }
        }
        let share = may as f64 / total.max(1) as f64;
        let pct = share * 100.0;
        if busiest.0 >= AUTO_BUSY_QUERIES && share >= AUTO_SELECTIVE {
            return Ok((
                Mode::FullTransfer,
                format!(
                    "{} is running {} queries and the statistics say the filters may keep {pct:.0} % \
                     of the rows: little to save, so the host filters",
                    busiest.1, busiest.0
                ),
            ));
        }
        Ok((
            Mode::Offload,
            if share < AUTO_SELECTIVE {
                format!(
                    "the statistics say the filters keep at most {pct:.1} % of the rows: at least \
                     {:.1} % of the bytes stay on the device",
                    100.0 - pct
                )
            } else {
                format!(
                    "the statistics cannot narrow the filters ({pct:.0} % of the rows may match), \
                     and the device is not busy: filtering there moves no more than full transfer"
                )
            },
        ))
    }

    /// The physical plan of a query, with each device scan's plan.
    pub async fn explain(&self, query: &str) -> Result<String> {
        let (mode, reason, ctx) = self.choose(query).await?;
        let r = self
            .run(ctx, &format!("EXPLAIN {query}"), mode, reason)
            .await?;
        let b = arrow::compute::concat_batches(&r.schema, &r.batches)
            .map_err(|e| Error::Protocol(e.to_string()))?;
        Ok(arrow::util::pretty::pretty_format_batches(&[b])
            .map_err(|e| Error::Protocol(e.to_string()))?
            .to_string())
    }
}

/// The device scans of a physical plan: their devices and plans.
fn collect_scans(plan: &dyn ExecutionPlan, out: &mut Vec<(Vec<String>, Plan)>) {
    if let Some(scan) = plan.downcast_ref::<DeviceScanExec>() {
        out.push((scan.urls.clone(), scan.plan.clone()));
    }
    for child in plan.children() {
        collect_scans(child.as_ref(), out);
    }
}

/// A device table as a DataFusion table provider.
#[derive(Debug, Clone)]
pub struct DeviceTable {
    /// Devices holding a part of the table (one scan partition each).
    urls: Vec<String>,
    options: ClientOptions,
    table: String,
    schema: SchemaRef,
    /// The same schema, unqualified, for typing filter expressions.
    df_schema: Arc<DFSchema>,
    mode: Mode,
    log: ScanLog,
    /// ORDER BY … LIMIT k pushed by [`PushTopK`]: each device returns its top k rows.
    top: Option<(Vec<nearstore_proto::SortKey>, u64)>,
}

#[async_trait]
impl TableProvider for DeviceTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&DfExpr],
    ) -> datafusion::common::Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| match (self.mode, to_plan_expr(f, &self.df_schema)) {
                (Mode::Offload, Some(_)) => TableProviderFilterPushDown::Exact,
                _ => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[DfExpr],
        limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let output = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        let mut plan = Plan::scan(&self.table);
        // A scan that needs no column (count(*)) still needs rows: ask for the first column and
        // drop it on arrival.
        let cols: Vec<String> = if output.fields().is_empty() {
            self.schema
                .fields()
                .iter()
                .take(1)
                .map(|f| f.name().clone())
                .collect()
        } else {
            output.fields().iter().map(|f| f.name().clone()).collect()
        };
        plan.projection = cols.into_iter().map(Projection::Column).collect();
        if self.mode == Mode::Offload {
            let exprs: Vec<Expr> = filters
                .iter()
                .map(|f| {
                    to_plan_expr(f, &self.df_schema).ok_or_else(|| {
                        DataFusionError::Internal(format!("filter {f} was not pushable"))
                    })
                })
                .collect::<datafusion::common::Result<_>>()?;
            plan.filter = match exprs.len() {
                0 => None,
                1 => exprs.into_iter().next(),
                _ => Some(Expr::And(exprs)),
            };
            plan.limit = limit.map(|l| l as u64);
            if let Some((keys, k)) = &self.top {
                plan.order_by = keys.clone();
                plan.limit = Some(plan.limit.map_or(*k, |l| l.min(*k)));
            }
        }
        let props = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(output.clone()),
            Partitioning::UnknownPartitioning(self.urls.len()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Arc::new(DeviceScanExec {
            urls: self.urls.clone(),
            options: self.options.clone(),
            plan,
            schema: output,
            pick: None,
            layout: None,
            props,
            log: self.log.clone(),
        }))
    }
}

/// Runs one plan on the devices holding a table: one partition per device, or, for a pushed
/// aggregate over several devices, one partition that merges the devices' partial aggregates.
#[derive(Debug)]
pub struct DeviceScanExec {
    urls: Vec<String>,
    options: ClientOptions,
    plan: Plan,
    schema: SchemaRef,
    /// Device result columns to keep, in order (all when `None`).
    pick: Option<Vec<usize>>,
    /// For a pushed aggregate: how output columns derive from the device's result.
    layout: Option<Arc<Vec<OutCol>>>,
    props: Arc<PlanProperties>,
    log: ScanLog,
}

impl DisplayAs for DeviceScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let p = &self.plan;
        write!(f, "DeviceScanExec: table={}", p.table)?;
        if self.urls.len() > 1 {
            write!(f, ", devices={}", self.urls.len())?;
        }
        let cols: Vec<&str> = p.projection.iter().map(Projection::name).collect();
        write!(f, ", projection=[{}]", cols.join(", "))?;
        if let Some(filter) = &p.filter {
            write!(f, ", filter={filter}")?;
        }
        if !p.group_by.is_empty() {
            write!(f, ", group_by=[{}]", p.group_by.join(", "))?;
        }
        if !p.aggregates.is_empty() {
            let aggs: Vec<String> = p
                .aggregates
                .iter()
                .map(|a| match &a.expr {
                    Some(e) => format!("{}({e})", a.func.as_str()),
                    None => a.func.as_str().to_string(),
                })
                .collect();
            write!(f, ", aggregates=[{}]", aggs.join(", "))?;
        }
        if !p.order_by.is_empty() {
            let keys: Vec<String> = p
                .order_by
                .iter()
                .map(|k| format!("{}{}", k.column, if k.descending { " desc" } else { "" }))
                .collect();
            write!(f, ", order_by=[{}]", keys.join(", "))?;
        }
        if let Some(l) = p.limit {
            write!(f, ", limit={l}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for DeviceScanExec {
    fn name(&self) -> &str {
        "DeviceScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::common::Result<TreeNodeRecursion>,
    ) -> datafusion::common::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> datafusion::common::Result<SendableRecordBatchStream> {
        // A plain scan runs on its partition's device; an aggregate runs on every device and
        // the partial results are merged here.
        let urls: Vec<String> = match &self.layout {
            Some(_) => self.urls.clone(),
            None => vec![self.urls.get(partition).cloned().ok_or_else(|| {
                DataFusionError::Internal(format!("no device for partition {partition}"))
            })?],
        };
        let (options, plan, schema, log, pick, layout) = (
            self.options.clone(),
            self.plan.clone(),
            self.schema.clone(),
            self.log.clone(),
            self.pick.clone(),
            self.layout.clone(),
        );
        let out_schema = schema.clone();
        let fut = async move {
            let runs = urls.iter().map(|url| {
                let (options, plan, log) = (options.clone(), plan.clone(), log.clone());
                async move {
                    let mut client = Client::connect_with(url, options).await.map_err(df_err)?;
                    let r = client.query(&plan).await.map_err(df_err)?;
                    log.lock().expect("scan log").push((plan, r.stats.clone()));
                    Ok::<_, DataFusionError>(r.batches)
                }
            });
            let parts = futures::future::try_join_all(runs).await?;
            let device_batches = if parts.len() > 1 {
                merge_partials(&plan, parts.into_iter().flatten().collect()).await?
            } else {
                parts.into_iter().flatten().collect()
            };
            let batches = device_batches
                .into_iter()
                .map(|b| {
                    if schema.fields().is_empty() {
                        return RecordBatch::try_new_with_options(
                            schema.clone(),
                            vec![],
                            &RecordBatchOptions::new().with_row_count(Some(b.num_rows())),
                        )
                        .map_err(DataFusionError::from);
                    }
                    // Device types can be wider than DataFusion's (decimal precision of a
                    // pushed aggregate); convert, refusing any conversion that loses a value.
                    let opts = arrow::compute::CastOptions {
                        safe: false,
                        ..Default::default()
                    };
                    let b = match &layout {
                        Some(l) => apply_layout(b, l)?,
                        None => b,
                    };
                    let b = match &pick {
                        Some(p) => b.project(p)?,
                        None => b,
                    };
                    let cols = b
                        .columns()
                        .iter()
                        .zip(schema.fields())
                        .map(|(c, f)| arrow::compute::cast_with_options(c, f.data_type(), &opts))
                        .collect::<std::result::Result<Vec<_>, _>>()?;
                    RecordBatch::try_new(schema.clone(), cols).map_err(DataFusionError::from)
                })
                .collect::<Vec<_>>();
            Ok::<_, DataFusionError>(futures::stream::iter(batches))
        };
        let stream = futures::stream::once(fut).try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(out_schema, stream)))
    }
}

/// Merges the partial aggregates of several devices (the rows of one device plan's result,
/// from each device) into the rows one device holding all the data would have returned:
/// counts and sums add up, minima and maxima combine, per group. The plan carries no `avg`
/// here (an aggregate over several devices pushes sum and count instead).
async fn merge_partials(
    plan: &Plan,
    batches: Vec<RecordBatch>,
) -> datafusion::common::Result<Vec<RecordBatch>> {
    use nearstore_proto::AggFunc;
    let Some(first) = batches.first() else {
        return Ok(batches);
    };
    if plan.aggregates.is_empty() && plan.group_by.is_empty() {
        // Rows (a pushed projection): each device's rows are part of the answer, up to the
        // plan's limit.
        let mut left = plan.limit.map_or(usize::MAX, |l| l as usize);
        let mut out = Vec::new();
        for b in batches {
            if left == 0 {
                break;
            }
            let take = b.num_rows().min(left);
            left -= take;
            out.push(b.slice(0, take));
        }
        return Ok(out);
    }
    let schema = first.schema();
    let quote = |n: &str| format!("\"{}\"", n.replace('"', "\"\""));
    let mut select: Vec<String> = plan.group_by.iter().map(|g| quote(g)).collect();
    for (a, field) in plan
        .aggregates
        .iter()
        .zip(schema.fields().iter().skip(plan.group_by.len()))
    {
        let f = match a.func {
            AggFunc::CountStar | AggFunc::Count | AggFunc::Sum => "sum",
            AggFunc::Min => "min",
            AggFunc::Max => "max",
            AggFunc::Avg => {
                return Err(DataFusionError::Internal(
                    "an average cannot be merged across devices; push sum and count".into(),
                ));
            }
            AggFunc::Kernel => {
                return Err(DataFusionError::Internal(
                    "an aggregate kernel's results cannot be merged across devices".into(),
                ));
            }
        };
        select.push(format!("{f}({0}) as {0}", quote(field.name())));
    }
    let mut sql = format!("select {} from partials", select.join(", "));
    if !plan.group_by.is_empty() {
        let g: Vec<String> = plan.group_by.iter().map(|g| quote(g)).collect();
        sql.push_str(&format!(" group by {}", g.join(", ")));
    }
    let ctx = SessionContext::new();
    ctx.register_batch(
        "partials",
        arrow::compute::concat_batches(&schema, &batches)?,
    )?;
    ctx.sql(&sql).await?.collect().await
}

use futures::TryStreamExt;

/// The provider behind a logical table scan, when it is a `T` (one of ours).
fn provider_of<T: Clone + 'static>(scan: &datafusion::logical_expr::TableScan) -> Option<T> {
    let provider =
        datafusion::catalog::default_table_source::source_as_provider(&scan.source).ok()?;
    let any: &dyn std::any::Any = provider.as_ref();
    any.downcast_ref::<T>().cloned()
}

/// Optimizer rule: ORDER BY … LIMIT k directly over a device table scan whose filters were all
/// pushed sends the order and k to the device, which keeps a running top k; the host's sort
/// stays above to merge the devices' top rows (and to re-check the order).
#[derive(Debug, Default)]
pub struct PushTopK;

impl datafusion::optimizer::OptimizerRule for PushTopK {
    fn name(&self) -> &str {
        "nearstore_push_top_k"
    }

    fn apply_order(&self) -> Option<datafusion::optimizer::ApplyOrder> {
        Some(datafusion::optimizer::ApplyOrder::BottomUp)
    }

    fn rewrite(
        &self,
        plan: datafusion::logical_expr::LogicalPlan,
        _config: &dyn datafusion::optimizer::OptimizerConfig,
    ) -> datafusion::common::Result<
        datafusion::common::tree_node::Transformed<datafusion::logical_expr::LogicalPlan>,
    > {
        use datafusion::common::tree_node::Transformed;
        use datafusion::logical_expr::LogicalPlan;
        let LogicalPlan::Sort(sort) = &plan else {
            return Ok(Transformed::no(plan));
        };
        if let (Some(k), LogicalPlan::Projection(p)) = (sort.fetch, sort.input.as_ref())
            && let Some(new) = top_of_aggregate(sort, p, k)
        {
            return Ok(Transformed::yes(new));
        }
        let (Some(k), LogicalPlan::TableScan(scan)) = (sort.fetch, sort.input.as_ref()) else {
            return Ok(Transformed::no(plan));
        };
        let Some(dev) = provider_of::<DeviceTable>(scan) else {
            return Ok(Transformed::no(plan));
        };
        if dev.mode != Mode::Offload || dev.top.is_some() {
            return Ok(Transformed::no(plan));
        }
        let mut keys = Vec::new();
        for e in &sort.expr {
            let DfExpr::Column(c) = &e.expr else {
                return Ok(Transformed::no(plan));
            };
            if scan
                .projected_schema
                .field_with_unqualified_name(&c.name)
                .is_err()
            {
                return Ok(Transformed::no(plan));
            }
            keys.push(nearstore_proto::SortKey {
                column: c.name.clone(),
                descending: !e.asc,
                nulls_first: Some(e.nulls_first),
            });
        }
        let mut top = dev.clone();
        top.top = Some((keys, k as u64));
        let mut new_scan = scan.clone();
        new_scan.source =
            datafusion::catalog::default_table_source::provider_as_source(Arc::new(top));
        let mut new_sort = sort.clone();
        new_sort.input = Arc::new(LogicalPlan::TableScan(new_scan));
        Ok(Transformed::yes(LogicalPlan::Sort(new_sort)))
    }
}

/// ORDER BY … LIMIT k over a pushed aggregate on one device: the device sorts its groups and
/// returns k. (Over several devices the partial groups must all come back to be merged.)
fn top_of_aggregate(
    sort: &datafusion::logical_expr::Sort,
    proj: &datafusion::logical_expr::Projection,
    k: usize,
) -> Option<datafusion::logical_expr::LogicalPlan> {
    use datafusion::logical_expr::LogicalPlan;
    let LogicalPlan::TableScan(scan) = proj.input.as_ref() else {
        return None;
    };
    let agg = provider_of::<DeviceAggregate>(scan)?;
    if agg.urls.len() != 1 || !agg.plan.order_by.is_empty() {
        return None;
    }
    let n_groups = agg.plan.group_by.len();
    let mut keys = Vec::new();
    for e in &sort.expr {
        let DfExpr::Column(c) = &e.expr else {
            return None;
        };
        let i = proj.schema.index_of_column(c).ok()?;
        let inner = match &proj.expr[i] {
            DfExpr::Alias(a) => a.expr.as_ref(),
            other => other,
        };
        let DfExpr::Column(src) = inner else {
            return None;
        };
        let idx: usize = src.name.strip_prefix('c')?.parse().ok()?;
        // Only columns the device returns as they are (not averages finished on the host).
        let OutCol::Direct(d) = *agg.layout.get(idx)? else {
            return None;
        };
        let column = if d < n_groups {
            agg.plan.group_by[d].clone()
        } else {
            agg.plan.aggregates.get(d - n_groups)?.output_name()
        };
        keys.push(nearstore_proto::SortKey {
            column,
            descending: !e.asc,
            nulls_first: Some(e.nulls_first),
        });
    }
    let mut top = agg.clone();
    top.plan.order_by = keys;
    top.plan.limit = Some(k as u64);
    let mut new_scan = scan.clone();
    new_scan.source = datafusion::catalog::default_table_source::provider_as_source(Arc::new(top));
    let mut new_proj = proj.clone();
    new_proj.input = Arc::new(LogicalPlan::TableScan(new_scan));
    let mut new_sort = sort.clone();
    new_sort.input = Arc::new(LogicalPlan::Projection(new_proj));
    Some(LogicalPlan::Sort(new_sort))
}

/// Name of the scans that stand for pushed aggregates.
const AGG_SCAN: &str = "__nearstore_aggregate";

/// Optimizer rule: an aggregate directly over a device table scan whose filters were all
/// pushed becomes one device plan (filter + group by + aggregates); the device returns the
/// final rows of a single table, so the host only relabels columns. Runs after DataFusion's
/// own rules (filters and projections are pushed by then).
#[derive(Debug, Default)]
pub struct PushAggregates;

impl datafusion::optimizer::OptimizerRule for PushAggregates {
    fn name(&self) -> &str {
        "nearstore_push_aggregates"
    }

    fn apply_order(&self) -> Option<datafusion::optimizer::ApplyOrder> {
        Some(datafusion::optimizer::ApplyOrder::BottomUp)
    }

    fn rewrite(
        &self,
        plan: datafusion::logical_expr::LogicalPlan,
        _config: &dyn datafusion::optimizer::OptimizerConfig,
    ) -> datafusion::common::Result<
        datafusion::common::tree_node::Transformed<datafusion::logical_expr::LogicalPlan>,
    > {
        use datafusion::common::tree_node::Transformed;
        match push_aggregate(&plan)? {
            Some(p) => Ok(Transformed::yes(p)),
            None => Ok(Transformed::no(plan)),
        }
    }
}

fn push_aggregate(
    plan: &datafusion::logical_expr::LogicalPlan,
) -> datafusion::common::Result<Option<datafusion::logical_expr::LogicalPlan>> {
    use datafusion::logical_expr::LogicalPlan;
    use nearstore_proto::{AggFunc, Aggregate};
    let LogicalPlan::Aggregate(agg) = plan else {
        return Ok(None);
    };
    // The input is the scan, or a projection over it (common subexpressions such as
    // `l_extendedprice * (1 - l_discount)` are computed in one), whose columns are inlined.
    let (scan, projection) = match agg.input.as_ref() {
        LogicalPlan::TableScan(scan) => (scan, None),
        LogicalPlan::Projection(p) => {
            let LogicalPlan::TableScan(scan) = p.input.as_ref() else {
                return Ok(None);
            };
            (scan, Some(p))
        }
        _ => return Ok(None),
    };
    let Some(dev) = provider_of::<DeviceTable>(scan) else {
        return Ok(None);
    };
    if dev.mode != Mode::Offload || scan.fetch.is_some() {
        return Ok(None);
    }
    let mut inline: std::collections::HashMap<String, Expr> = std::collections::HashMap::new();
    if let Some(p) = projection {
        for (e, (_, field)) in p.expr.iter().zip(p.schema.iter()) {
            let inner = match e {
                DfExpr::Alias(a) => a.expr.as_ref(),
                other => other,
            };
            let Some(x) = to_plan_expr(inner, &dev.df_schema) else {
                return Ok(None);
            };
            inline.insert(field.name().clone(), x);
        }
    }
    // Aggregate arguments read the aggregate's input (the scan or the projection).
    let input_schema = agg.input.schema().as_ref().clone().strip_qualifiers();
    let resolve = |e: &DfExpr| to_plan_expr(e, &input_schema).and_then(|x| substitute(x, &inline));
    let Some(mut device) = filtered_plan(&dev, scan) else {
        return Ok(None);
    };
    for g in &agg.group_expr {
        let DfExpr::Column(c) = g else {
            return Ok(None);
        };
        match inline.get(&c.name) {
            None => device.group_by.push(c.name.clone()),
            Some(Expr::Col(base)) => device.group_by.push(base.clone()),
            Some(_) => return Ok(None),
        }
    }
    for (i, e) in agg.aggr_expr.iter().enumerate() {
        let e = match e {
            DfExpr::Alias(a) => a.expr.as_ref(),
            other => other,
        };
        let DfExpr::AggregateFunction(f) = e else {
            return Ok(None);
        };
        let p = &f.params;
        if p.distinct || p.filter.is_some() || !p.order_by.is_empty() {
            return Ok(None);
        }
        let udaf: &dyn std::any::Any = f.func.inner().as_ref();
        if let Some(k) = udaf.downcast_ref::<KernelUdaf>() {
            // Kernel states merge only inside the device: one device answers the whole query.
            if dev.urls.len() != 1 {
                return Ok(None);
            }
            let Some((args, params)) = kernel_args(&p.args) else {
                return Ok(None);
            };
            let Some(call) = substitute(
                Expr::Kernel {
                    name: k.name.clone(),
                    args,
                    params,
                },
                &inline,
            ) else {
                return Ok(None);
            };
            device.aggregates.push(Aggregate {
                func: AggFunc::Kernel,
                expr: Some(call),
                name: Some(format!("a{i}")),
            });
            continue;
        }
        if p.args.len() > 1 {
            return Ok(None);
        }
        let arg = p.args.first();
        let (func, expr) = match (f.func.name(), arg) {
            ("count", None) => (AggFunc::CountStar, None),
            ("count", Some(DfExpr::Literal(v, _))) if !v.is_null() => (AggFunc::CountStar, None),
            ("count", Some(a)) => (AggFunc::Count, Some(a)),
            ("sum", Some(a)) => (AggFunc::Sum, Some(a)),
            ("min", Some(a)) => (AggFunc::Min, Some(a)),
            ("max", Some(a)) => (AggFunc::Max, Some(a)),
            ("avg", Some(a)) => (AggFunc::Avg, Some(a)),
            _ => return Ok(None),
        };
        let expr = match expr {
            Some(a) => match resolve(a) {
                Some(x) => Some(x),
                None => return Ok(None),
            },
            None => None,
        };
        device.aggregates.push(Aggregate {
            func,
            expr,
            name: Some(format!("a{i}")),
        });
    }
    // The device's avg is a float. Where DataFusion's avg is a decimal, push sum and count
    // instead and finish the average on the host with DataFusion's own formula.
    let n_groups = agg.group_expr.len();
    let mut layout: Vec<OutCol> = (0..n_groups).map(OutCol::Direct).collect();
    let mut extra = Vec::new();
    for (i, (_, field)) in agg.schema.iter().enumerate().skip(n_groups) {
        let j = i - n_groups;
        let a = &mut device.aggregates[j];
        match (a.func, field.data_type()) {
            (AggFunc::Avg, arrow::datatypes::DataType::Decimal128(p, scale)) => {
                a.func = AggFunc::Sum;
                extra.push(Aggregate {
                    func: AggFunc::Count,
                    expr: a.expr.clone(),
                    name: Some(format!("a{j}_count")),
                });
                layout.push(OutCol::DecimalAvg {
                    sum: i,
                    count: n_groups + agg.aggr_expr.len() + extra.len() - 1,
                    precision: *p,
                    scale: *scale,
                });
            }
            (AggFunc::Avg, arrow::datatypes::DataType::Float64) if dev.urls.len() > 1 => {
                // Averages do not merge; sums and counts do.
                a.func = AggFunc::Sum;
                extra.push(Aggregate {
                    func: AggFunc::Count,
                    expr: a.expr.clone(),
                    name: Some(format!("a{j}_count")),
                });
                layout.push(OutCol::FloatAvg {
                    sum: i,
                    count: n_groups + agg.aggr_expr.len() + extra.len() - 1,
                });
            }
            (AggFunc::Avg, arrow::datatypes::DataType::Float64) => layout.push(OutCol::Direct(i)),
            (AggFunc::Avg, _) => return Ok(None),
            _ => layout.push(OutCol::Direct(i)),
        }
    }
    device.aggregates.extend(extra);
    pushed_plan(&dev, device, layout, &agg.schema).map(Some)
}

/// The device plan of `scan`'s table with its (pushed) filters; `None` when a filter does not
/// translate into the plan IR.
fn filtered_plan(dev: &DeviceTable, scan: &datafusion::logical_expr::TableScan) -> Option<Plan> {
    let mut filters = scan
        .filters
        .iter()
        .map(|f| to_plan_expr(f, &dev.df_schema))
        .collect::<Option<Vec<_>>>()?;
    let mut device = Plan::scan(&dev.table);
    device.filter = match filters.len() {
        0 => None,
        1 => filters.pop(),
        _ => Some(Expr::And(filters)),
    };
    Some(device)
}

/// A device plan that replaces a logical plan node whose output schema is `out`: a scan of the
/// plan's result (columns `c0`, `c1`, … built by `layout`) renamed to `out`'s columns.
fn pushed_plan(
    dev: &DeviceTable,
    device: Plan,
    layout: Vec<OutCol>,
    out: &DFSchema,
) -> datafusion::common::Result<datafusion::logical_expr::LogicalPlan> {
    let fields: Vec<arrow::datatypes::Field> = out
        .iter()
        .enumerate()
        .map(|(i, (_, f))| {
            arrow::datatypes::Field::new(format!("c{i}"), f.data_type().clone(), true)
        })
        .collect();
    let table = DeviceAggregate {
        urls: dev.urls.clone(),
        options: dev.options.clone(),
        layout: Arc::new(layout),
        plan: device,
        schema: Arc::new(arrow::datatypes::Schema::new(fields)),
        log: dev.log.clone(),
    };
    let source = datafusion::catalog::default_table_source::provider_as_source(Arc::new(table));
    let exprs: Vec<DfExpr> = out
        .iter()
        .enumerate()
        .map(|(i, (q, f))| {
            DfExpr::Column(datafusion::common::Column::new(
                Some(AGG_SCAN),
                format!("c{i}"),
            ))
            .alias_qualified(q.cloned(), f.name())
        })
        .collect();
    datafusion::logical_expr::LogicalPlanBuilder::scan(AGG_SCAN, source, None)?
        .project(exprs)?
        .build()
}

/// Pushes a projection that calls a map kernel (`select id, score(x, y) from t where …`) over
/// a device table to the device, with the scan's filters and limit: the kernel runs next to
/// the data and only its results cross the link.
#[derive(Debug)]
pub struct PushKernelProjections;

impl datafusion::optimizer::OptimizerRule for PushKernelProjections {
    fn name(&self) -> &str {
        "nearstore_push_kernel_projections"
    }

    fn apply_order(&self) -> Option<datafusion::optimizer::ApplyOrder> {
        Some(datafusion::optimizer::ApplyOrder::BottomUp)
    }

    fn rewrite(
        &self,
        plan: datafusion::logical_expr::LogicalPlan,
        _config: &dyn datafusion::optimizer::OptimizerConfig,
    ) -> datafusion::common::Result<
        datafusion::common::tree_node::Transformed<datafusion::logical_expr::LogicalPlan>,
    > {
        use datafusion::common::tree_node::Transformed;
        match push_kernel_projection(&plan)? {
            Some(p) => Ok(Transformed::yes(p)),
            None => Ok(Transformed::no(plan)),
        }
    }
}

/// Whether `e` calls a registered filter or map kernel.
fn calls_kernel(e: &DfExpr) -> bool {
    use datafusion::common::tree_node::TreeNode;
    e.exists(|x| {
        Ok(match x {
            DfExpr::ScalarFunction(f) => {
                let inner: &dyn std::any::Any = f.func.inner().as_ref();
                inner.downcast_ref::<KernelUdf>().is_some()
            }
            _ => false,
        })
    })
    .unwrap_or(false)
}

fn push_kernel_projection(
    plan: &datafusion::logical_expr::LogicalPlan,
) -> datafusion::common::Result<Option<datafusion::logical_expr::LogicalPlan>> {
    use datafusion::logical_expr::LogicalPlan;
    let LogicalPlan::Projection(p) = plan else {
        return Ok(None);
    };
    // The scan, or a LIMIT (without OFFSET) that the optimizer moved below the projection.
    let (scan, limit) = match p.input.as_ref() {
        LogicalPlan::TableScan(scan) => (scan, None),
        LogicalPlan::Limit(l) => {
            let LogicalPlan::TableScan(scan) = l.input.as_ref() else {
                return Ok(None);
            };
            match l.get_fetch_type()? {
                datafusion::logical_expr::FetchType::Literal(Some(n))
                    if matches!(
                        l.get_skip_type()?,
                        datafusion::logical_expr::SkipType::Literal(0)
                    ) =>
                {
                    (scan, Some(n as u64))
                }
                _ => return Ok(None),
            }
        }
        _ => return Ok(None),
    };
    let Some(dev) = provider_of::<DeviceTable>(scan) else {
        return Ok(None);
    };
    if dev.mode != Mode::Offload || !p.expr.iter().any(calls_kernel) {
        return Ok(None);
    }
    let Some(mut device) = filtered_plan(&dev, scan) else {
        return Ok(None);
    };
    device.limit = match (scan.fetch.map(|f| f as u64), limit) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    for (i, e) in p.expr.iter().enumerate() {
        let inner = match e {
            DfExpr::Alias(a) => a.expr.as_ref(),
            other => other,
        };
        let Some(x) = to_plan_expr(inner, &dev.df_schema) else {
            return Ok(None);
        };
        device.projection.push(Projection::Named {
            name: format!("c{i}"),
            expr: x,
        });
    }
    let layout = (0..p.expr.len()).map(OutCol::Direct).collect();
    pushed_plan(&dev, device, layout, &p.schema).map(Some)
}

/// How one output column of a pushed aggregate comes from the device's result.
#[derive(Debug, Clone, Copy)]
enum OutCol {
    /// Device column i as it is.
    Direct(usize),
    /// A float average from a device sum (of any numeric type) and count.
    FloatAvg { sum: usize, count: usize },
    /// DataFusion's decimal average from a device sum and count: `sum * 10^(scale - sum
    /// scale) / count`, truncated, as DataFusion's `DecimalAverager` computes it (with the
    /// sum scaled down instead when its scale exceeds the average's).
    DecimalAvg {
        sum: usize,
        count: usize,
        precision: u8,
        scale: i8,
    },
}

/// Builds the output columns of a pushed aggregate from the device's result.
fn apply_layout(b: RecordBatch, layout: &[OutCol]) -> datafusion::common::Result<RecordBatch> {
    use arrow::array::{Array, ArrayRef, AsArray, Decimal128Array};
    use arrow::datatypes::{DataType, Decimal128Type, Int64Type};
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(layout.len());
    for l in layout {
        match *l {
            OutCol::Direct(i) => cols.push(b.column(i).clone()),
            OutCol::FloatAvg { sum, count } => {
                let s = arrow::compute::cast(b.column(sum), &DataType::Float64)?;
                let s = s.as_primitive::<arrow::datatypes::Float64Type>();
                let c = b.column(count).as_primitive::<Int64Type>();
                let out: arrow::array::Float64Array = (0..b.num_rows())
                    .map(|r| {
                        (s.is_valid(r) && c.value(r) != 0).then(|| s.value(r) / c.value(r) as f64)
                    })
                    .collect();
                cols.push(Arc::new(out));
            }
            OutCol::DecimalAvg {
                sum,
                count,
                precision,
                scale,
            } => {
                let DataType::Decimal128(_, sum_scale) = b.column(sum).data_type() else {
                    return Err(DataFusionError::Internal(
                        "decimal avg over a non-decimal sum".into(),
                    ));
                };
                // The device's sum can have a larger scale than DataFusion's (it may widen
                // decimal operands), even larger than the average's: then the sum is scaled
                // down instead of up. Truncating twice, by 10^k and then by the count, is the
                // same as truncating once by their product, so the result is DataFusion's.
                let pow = |k: i8| {
                    10i128
                        .checked_pow(k as u32)
                        .ok_or_else(|| DataFusionError::Execution("avg scale out of range".into()))
                };
                let (up, down) = if scale >= *sum_scale {
                    (pow(scale - sum_scale)?, 1)
                } else {
                    (1, pow(sum_scale - scale)?)
                };
                let s = b.column(sum).as_primitive::<Decimal128Type>();
                let c = b.column(count).as_primitive::<Int64Type>();
                let out = (0..b.num_rows())
                    .map(|r| {
                        if s.is_null(r) || c.value(r) == 0 {
                            return Ok(None);
                        }
                        let v = s.value(r).checked_mul(up).ok_or_else(|| {
                            DataFusionError::Execution(
                                "Arithmetic Overflow in AvgAccumulator".into(),
                            )
                        })? / down;
                        Ok(Some(v / c.value(r) as i128))
                    })
                    .collect::<datafusion::common::Result<Decimal128Array>>()?
                    .with_precision_and_scale(precision, scale)?;
                cols.push(Arc::new(out));
            }
        }
    }
    let schema = Arc::new(arrow::datatypes::Schema::new(
        cols.iter()
            .enumerate()
            .map(|(i, c)| {
                arrow::datatypes::Field::new(format!("c{i}"), c.data_type().clone(), true)
            })
            .collect::<Vec<_>>(),
    ));
    Ok(RecordBatch::try_new(schema, cols)?)
}

/// Replaces the columns of `e` that name projection outputs by their expressions (`map`);
/// `None` when a kernel argument names a computed output (a kernel reads stored columns).
fn substitute(e: Expr, map: &std::collections::HashMap<String, Expr>) -> Option<Expr> {
    let sub = |b: Box<Expr>| substitute(*b, map).map(Box::new);
    let all = |v: Vec<Expr>| {
        v.into_iter()
            .map(|x| substitute(x, map))
            .collect::<Option<Vec<_>>>()
    };
    Some(match e {
        Expr::Col(c) => map.get(&c).cloned().unwrap_or(Expr::Col(c)),
        Expr::Lit(l) => Expr::Lit(l),
        Expr::Cmp { op, left, right } => Expr::Cmp {
            op,
            left: sub(left)?,
            right: sub(right)?,
        },
        Expr::Arith { op, left, right } => Expr::Arith {
            op,
            left: sub(left)?,
            right: sub(right)?,
        },
        Expr::And(v) => Expr::And(all(v)?),
        Expr::Or(v) => Expr::Or(all(v)?),
        Expr::Not(x) => Expr::Not(sub(x)?),
        Expr::IsNull(x) => Expr::IsNull(sub(x)?),
        Expr::IsNotNull(x) => Expr::IsNotNull(sub(x)?),
        Expr::Between {
            expr,
            low,
            high,
            negated,
        } => Expr::Between {
            expr: sub(expr)?,
            low: sub(low)?,
            high: sub(high)?,
            negated,
        },
        Expr::In {
            expr,
            list,
            negated,
        } => Expr::In {
            expr: sub(expr)?,
            list,
            negated,
        },
        Expr::Like {
            expr,
            pattern,
            negated,
        } => Expr::Like {
            expr: sub(expr)?,
            pattern,
            negated,
        },
        // Kernel arguments are columns: a projection output that is a renamed column maps back
        // to it; one that is computed cannot be an argument.
        Expr::Kernel { name, args, params } => Expr::Kernel {
            name,
            args: args
                .into_iter()
                .map(|a| match map.get(&a) {
                    None => Some(a),
                    Some(Expr::Col(base)) => Some(base.clone()),
                    Some(_) => None,
                })
                .collect::<Option<Vec<_>>>()?,
            params,
        },
    })
}

/// A pushed aggregate: the device plan and the aggregate's output schema.
#[derive(Debug, Clone)]
struct DeviceAggregate {
    urls: Vec<String>,
    options: ClientOptions,
    layout: Arc<Vec<OutCol>>,
    plan: Plan,
    schema: SchemaRef,
    log: ScanLog,
}

#[async_trait]
impl TableProvider for DeviceAggregate {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[DfExpr],
        _limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        let props = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Ok(Arc::new(DeviceScanExec {
            urls: self.urls.clone(),
            options: self.options.clone(),
            plan: self.plan.clone(),
            schema,
            pick: projection.cloned(),
            layout: Some(self.layout.clone()),
            props,
            log: self.log.clone(),
        }))
    }
}

/// A call of a registered kernel (`grep(l_comment, 'special')`): columns, then optionally one
/// string literal, the parameters.
fn kernel_call(f: &datafusion::logical_expr::expr::ScalarFunction) -> Option<Expr> {
    let inner: &dyn std::any::Any = f.func.inner().as_ref();
    let k = inner.downcast_ref::<KernelUdf>()?;
    let (args, params) = kernel_args(&f.args)?;
    Some(Expr::Kernel {
        name: k.name.clone(),
        args,
        params,
    })
}

/// A kernel call's arguments: columns, then optionally one string literal (the parameters).
fn kernel_args(call_args: &[DfExpr]) -> Option<(Vec<String>, String)> {
    let mut args = Vec::new();
    let mut params = None;
    for (i, a) in call_args.iter().enumerate() {
        match a {
            DfExpr::Column(c) if params.is_none() => args.push(c.name.clone()),
            DfExpr::Literal(
                ScalarValue::Utf8(Some(p))
                | ScalarValue::Utf8View(Some(p))
                | ScalarValue::LargeUtf8(Some(p)),
                _,
            ) if i + 1 == call_args.len() => params = Some(p.clone()),
            _ => return None,
        }
    }
    Some((args, params.unwrap_or_default()))
}

/// The SQL type of a map or aggregate kernel's output (`KernelInfo::output`).
fn kernel_output_type(k: &nearstore_proto::KernelInfo) -> arrow::datatypes::DataType {
    use arrow::datatypes::{DataType, Field};
    match k.output.as_deref() {
        Some("int64") => DataType::Int64,
        Some("float64") => DataType::Float64,
        Some("list_int64") => DataType::List(Arc::new(Field::new("item", DataType::Int64, true))),
        _ => DataType::Boolean,
    }
}

/// A filter or map kernel registered on the devices, as a SQL scalar function (a filter is
/// Boolean, a map kernel has its manifest's output type). It runs only on a device: over a
/// device table in offload mode the provider pushes a filter kernel in WHERE and a map kernel
/// in WHERE or SELECT (or in an aggregate's argument) down; anywhere else calling it is an
/// error that says so.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct KernelUdf {
    name: String,
    output: arrow::datatypes::DataType,
    signature: datafusion::logical_expr::Signature,
}

impl KernelUdf {
    /// The function for the kernel `k`.
    pub fn new(k: &nearstore_proto::KernelInfo) -> Self {
        KernelUdf {
            name: k.name.clone(),
            output: kernel_output_type(k),
            signature: datafusion::logical_expr::Signature::variadic_any(
                datafusion::logical_expr::Volatility::Immutable,
            ),
        }
    }
}

/// An aggregate kernel registered on the devices, as a SQL aggregate function with its
/// manifest's output type. It runs only on a device: an aggregation over one device's table
/// in offload mode pushes it down (with GROUP BY); anywhere else it is an error that says so.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct KernelUdaf {
    name: String,
    output: arrow::datatypes::DataType,
    signature: datafusion::logical_expr::Signature,
}

impl KernelUdaf {
    /// The function for the aggregate kernel `k`.
    pub fn new(k: &nearstore_proto::KernelInfo) -> Self {
        KernelUdaf {
            name: k.name.clone(),
            output: kernel_output_type(k),
            signature: datafusion::logical_expr::Signature::variadic_any(
                datafusion::logical_expr::Volatility::Immutable,
            ),
        }
    }
}

impl datafusion::logical_expr::AggregateUDFImpl for KernelUdaf {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(
        &self,
        _arg_types: &[arrow::datatypes::DataType],
    ) -> datafusion::common::Result<arrow::datatypes::DataType> {
        Ok(self.output.clone())
    }

    fn accumulator(
        &self,
        _args: datafusion::logical_expr::function::AccumulatorArgs,
    ) -> datafusion::common::Result<Box<dyn datafusion::logical_expr::Accumulator>> {
        Err(DataFusionError::Execution(format!(
            "aggregate kernel '{}' runs on the device: call it over one device's table in \
             offload mode, with columns then an optional parameter string, grouped by columns",
            self.name
        )))
    }
}

impl datafusion::logical_expr::ScalarUDFImpl for KernelUdf {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(
        &self,
        _arg_types: &[arrow::datatypes::DataType],
    ) -> datafusion::common::Result<arrow::datatypes::DataType> {
        Ok(self.output.clone())
    }

    fn invoke_with_args(
        &self,
        _args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::common::Result<datafusion::logical_expr::ColumnarValue> {
        Err(DataFusionError::Execution(format!(
            "kernel '{}' runs on the device: call it in the WHERE clause (or, a map kernel, in \
             SELECT) of a query over device tables in offload mode, with columns then an \
             optional parameter string",
            self.name
        )))
    }
}

/// Translates a DataFusion expression into the plan IR; `None` when the device cannot
/// evaluate it with DataFusion's semantics. `schema` types the columns the expression reads;
/// column qualifiers are ignored (the expression reads one table).
pub fn to_plan_expr(e: &DfExpr, schema: &DFSchema) -> Option<Expr> {
    let e = datafusion::logical_expr::expr_rewriter::unnormalize_col(e.clone());
    translate(&e, schema)
}

fn translate(e: &DfExpr, schema: &DFSchema) -> Option<Expr> {
    use datafusion::logical_expr::expr::InList;
    use datafusion::logical_expr::{Between, BinaryExpr, Like};
    let tr = |e: &DfExpr| translate(e, schema);
    Some(match e {
        DfExpr::Column(c) => Expr::Col(c.name.clone()),
        DfExpr::Literal(v, _) => Expr::Lit(to_literal(v)?),
        DfExpr::ScalarFunction(f) => kernel_call(f)?,
        DfExpr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (l, r) = (tr(left)?, tr(right)?);
            let cmp = |op| Expr::cmp(op, l.clone(), r.clone());
            let arith = |op| {
                arithmetic_is_faithful(op, left, right, schema)
                    .then(|| Expr::arith(op, l.clone(), r.clone()))
            };
            match op {
                Operator::Eq => cmp(CmpOp::Eq),
                Operator::NotEq => cmp(CmpOp::NotEq),
                Operator::Lt => cmp(CmpOp::Lt),
                Operator::LtEq => cmp(CmpOp::LtEq),
                Operator::Gt => cmp(CmpOp::Gt),
                Operator::GtEq => cmp(CmpOp::GtEq),
                Operator::And => Expr::And(vec![l, r]),
                Operator::Or => Expr::Or(vec![l, r]),
                Operator::Plus => arith(ArithOp::Add)?,
                Operator::Minus => arith(ArithOp::Sub)?,
                Operator::Multiply => arith(ArithOp::Mul)?,
                Operator::Divide => arith(ArithOp::Div)?,
                _ => return None,
            }
        }
        DfExpr::Not(inner) => Expr::Not(Box::new(tr(inner)?)),
        DfExpr::IsNull(inner) => Expr::IsNull(Box::new(tr(inner)?)),
        DfExpr::IsNotNull(inner) => Expr::IsNotNull(Box::new(tr(inner)?)),
        DfExpr::Between(Between {
            expr,
            negated,
            low,
            high,
        }) => Expr::Between {
            expr: Box::new(tr(expr)?),
            low: Box::new(tr(low)?),
            high: Box::new(tr(high)?),
            negated: *negated,
        },
        DfExpr::InList(InList {
            expr,
            list,
            negated,
        }) => Expr::In {
            expr: Box::new(tr(expr)?),
            list: list
                .iter()
                .map(|l| match l {
                    DfExpr::Literal(v, _) => to_literal(v),
                    _ => None,
                })
                .collect::<Option<_>>()?,
            negated: *negated,
        },
        DfExpr::Like(Like {
            negated,
            expr,
            pattern,
            escape_char: None,
            case_insensitive: false,
        }) => match &**pattern {
            DfExpr::Literal(ScalarValue::Utf8(Some(p)) | ScalarValue::Utf8View(Some(p)), _) => {
                Expr::Like {
                    expr: Box::new(tr(expr)?),
                    pattern: p.clone(),
                    negated: *negated,
                }
            }
            _ => return None,
        },
        _ => return None,
    })
}

/// Whether the device computes `left op right` with DataFusion's result. The operands carry
/// DataFusion's coerced types, and the device's arithmetic agrees with it for
/// - floats: the same IEEE operations;
/// - decimals, `+ - *`: exact in both (the device may widen the scale; the value is the same);
///
/// and disagrees for
/// - decimal division, whose result scale follows the dividend's scale: DataFusion keeps
///   each operand's own type (`100 / l_quantity` divides a scale-0 value), the device first
///   converts a literal or a narrower operand to the other side's type (scale 2), so the
///   quotients are truncated at different scales;
/// - integer `+ - *`: DataFusion wraps on overflow, the device fails the query;
/// - dates, intervals and anything else that is not a number: the device's arithmetic is
///   numeric only.
///
/// Integer division agrees (truncating; both fail on division by zero).
fn arithmetic_is_faithful(op: ArithOp, left: &DfExpr, right: &DfExpr, schema: &DFSchema) -> bool {
    use arrow::datatypes::DataType;
    use datafusion::logical_expr::ExprSchemable;
    let (Ok(l), Ok(r)) = (left.get_type(schema), right.get_type(schema)) else {
        return false;
    };
    let decimal = |t: &DataType| matches!(t, DataType::Decimal128(..));
    if l.is_floating() && r.is_floating() {
        true
    } else if decimal(&l) && decimal(&r) {
        op != ArithOp::Div
    } else if l.is_integer() && r.is_integer() {
        op == ArithOp::Div
    } else {
        false
    }
}

fn to_literal(v: &ScalarValue) -> Option<Literal> {
    if v.is_null() {
        return Some(Literal::Null);
    }
    Some(match v {
        ScalarValue::Boolean(Some(b)) => Literal::Bool(*b),
        ScalarValue::Int8(Some(i)) => Literal::Int(*i as i64),
        ScalarValue::Int16(Some(i)) => Literal::Int(*i as i64),
        ScalarValue::Int32(Some(i)) => Literal::Int(*i as i64),
        ScalarValue::Int64(Some(i)) => Literal::Int(*i),
        ScalarValue::UInt8(Some(i)) => Literal::Int(*i as i64),
        ScalarValue::UInt16(Some(i)) => Literal::Int(*i as i64),
        ScalarValue::UInt32(Some(i)) => Literal::Int(*i as i64),
        // The plan travels as JSON, which has no NaN or infinity (they would arrive as NULL).
        ScalarValue::Float64(Some(f)) if f.is_finite() => Literal::Float(*f),
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Literal::Str(s.clone()),
        ScalarValue::Date32(Some(_)) => Literal::Typed(TypedLiteral::Date(v.to_string())),
        ScalarValue::Decimal128(Some(x), _, s) => {
            Literal::Typed(TypedLiteral::Decimal(decimal_text(*x, *s)?))
        }
        _ => return None,
    })
}

fn decimal_text(v: i128, scale: i8) -> Option<String> {
    if scale < 0 {
        return None;
    }
    let s = scale as u32;
    let neg = v < 0;
    let a = v.unsigned_abs();
    let p = 10u128.pow(s);
    let text = if s == 0 {
        format!("{a}")
    } else {
        format!("{}.{:0width$}", a / p, a % p, width = s as usize)
    };
    Some(if neg { format!("-{text}") } else { text })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::{col, lit};

    fn schema() -> DFSchema {
        DFSchema::try_from(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Int32, true),
            Field::new("q", DataType::Decimal128(15, 2), true),
            Field::new("f", DataType::Float64, true),
            Field::new("d", DataType::Date32, true),
        ]))
        .unwrap()
    }

    fn dec(v: i128, p: u8, s: i8) -> DfExpr {
        DfExpr::Literal(ScalarValue::Decimal128(Some(v), p, s), None)
    }

    #[test]
    fn translates_what_the_device_runs() {
        let s = schema();
        let e = col("a")
            .lt(lit(24i64))
            .and(col("b").between(lit(1i32), lit(5i32)));
        let p = to_plan_expr(&e, &s).unwrap();
        assert_eq!(p.to_string(), "((a < 24) AND (b BETWEEN 1 AND 5))");
        let d = dec(-5, 15, 2);
        assert_eq!(
            to_plan_expr(&d, &s).unwrap(),
            Expr::Lit(Literal::Typed(TypedLiteral::Decimal("-0.05".into())))
        );
        let date = DfExpr::Literal(ScalarValue::Date32(Some(8766)), None);
        assert_eq!(
            to_plan_expr(&date, &s).unwrap().to_string(),
            "DATE '1994-01-01'"
        );
        // Qualified columns (as DataFusion pushes them) read the same table.
        let q = DfExpr::Column(datafusion::common::Column::new(Some("t"), "a")).gt(lit(1i64));
        assert_eq!(to_plan_expr(&q, &s).unwrap().to_string(), "(a > 1)");
        // A cast of a column is not something the device evaluates.
        let cast = datafusion::logical_expr::cast(col("a"), DataType::Float64);
        assert!(to_plan_expr(&cast.gt(lit(1.0)), &s).is_none());
    }

    #[test]
    fn arithmetic_is_pushed_only_where_the_device_agrees() {
        let s = schema();
        let pushed = |e: DfExpr| to_plan_expr(&e.gt(lit(1i64)), &s).is_some();
        // Floats: the same IEEE operations.
        for e in [
            col("f") + lit(1.0),
            col("f") - lit(1.0),
            col("f") * lit(2.0),
            col("f") / lit(3.0),
        ] {
            assert!(pushed(e.clone()), "{e}");
        }
        // Decimal + - * are exact on both sides.
        assert!(pushed(dec(100, 20, 0) - col("q")));
        assert!(pushed(col("q") * col("q")));
        // Decimal division truncates at the dividend's scale, which the device changes.
        assert!(!pushed(dec(100, 20, 0) / col("q")));
        assert!(!pushed(col("q") / dec(3, 20, 0)));
        // Integer division agrees; + - * overflow differently (wrap on the host, error on
        // the device).
        assert!(pushed(col("a") / lit(7i64)));
        assert!(!pushed(col("a") * lit(4_611_686_018_427_387_904i64)));
        assert!(!pushed(col("a") + lit(1i64)));
        assert!(!pushed(col("a") - lit(1i64)));
        // Date arithmetic is not numeric: the device would reject it.
        let days = DfExpr::Literal(ScalarValue::Date32(Some(9131)), None);
        assert!(!pushed(col("d") - days));
    }

    #[test]
    fn non_finite_floats_stay_on_the_host() {
        // JSON carries no NaN or infinity: pushed, they would arrive as NULL.
        let s = schema();
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(to_plan_expr(&col("f").lt(lit(v)), &s).is_none(), "{v}");
        }
        assert!(to_plan_expr(&col("f").lt(lit(-0.0)), &s).is_some());
    }
}
