//! The SQL session: connecting to the devices, registering their tables and kernels in a
//! DataFusion context, and running or explaining a query in the session's mode.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::DFSchema;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::SessionContext;
use nearstore_proto::Plan;

use super::remote::{STORE_URL, table_dir};
use super::{
    DeviceStore, DeviceTable, KernelUdaf, KernelUdf, Mode, PushAggregates, PushKernelProjections,
    PushTopK, ScanLog, SqlResult, cost, sdk_err,
};
use crate::{Client, ClientOptions, Error, Result};

/// A DataFusion session over one device's tables.
pub struct SqlSession {
    pub(super) ctx: SessionContext,
    log: ScanLog,
    mode: Mode,
    /// For [`Mode::Auto`]: the same tables in full-transfer mode (`ctx` has them in offload
    /// mode).
    pub(super) transfer: Option<SessionContext>,
    /// For [`Mode::Auto`]: the same tables in remote-scan mode.
    pub(super) remote_ctx: Option<SessionContext>,
    /// For [`Mode::RemoteScan`] and [`Mode::Auto`]: the devices' objects, as the Parquet
    /// reader sees them.
    remote: Option<DeviceStore>,
    /// For [`Mode::Auto`]: a client per device, for its estimates.
    pub(super) clients: std::collections::HashMap<String, Client>,
    pub(super) options: ClientOptions,
    /// The tables and their schemas, in the order first seen.
    tables: Vec<(String, SchemaRef)>,
    /// For [`Mode::Auto`]: recent decisions by query text (see [`DECISION_TTL`]).
    decisions: std::sync::Mutex<std::collections::HashMap<String, Decision>>,
}

/// How long [`Mode::Auto`] reuses a decision for the same query text. Every mode returns the
/// same answer, so a stale decision can only cost time, never correctness; the bound keeps
/// what the rates learnt since then, and data appended since, from being ignored for long.
pub const DECISION_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// Decisions kept at most (the oldest half is dropped past it).
const DECISIONS_KEPT: usize = 256;

/// A decision of [`Mode::Auto`]'s: when, which mode, why.
#[derive(Clone)]
struct Decision {
    at: std::time::Instant,
    mode: Mode,
    reason: String,
}

impl fmt::Debug for SqlSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlSession")
            .field("mode", &self.mode)
            .finish()
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
        let tables = list_tables(urls, &options).await?;
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
                    driven: false,
                };
                ctx.register_table(name.as_str(), Arc::new(table))
                    .map_err(|e| Error::InvalidArgument(e.to_string()))?;
            }
            Ok(ctx)
        };
        // Auto runs a query in the offload context unless it chooses another; it also holds
        // the full-transfer and remote-scan contexts, and a client per device.
        let (ctx, remote_ctx, remote) = match mode {
            Mode::RemoteScan => {
                let (ctx, store) = remote_context(urls, &options, &tables).await?;
                (ctx, None, Some(store))
            }
            Mode::Auto => {
                let (remote_ctx, store) = remote_context(urls, &options, &tables).await?;
                (context(Mode::Offload)?, Some(remote_ctx), Some(store))
            }
            m => (context(m)?, None, None),
        };
        let auto = mode == Mode::Auto;
        let transfer = auto.then(|| context(Mode::FullTransfer)).transpose()?;
        let mut clients = std::collections::HashMap::new();
        if auto {
            for url in urls {
                let c = Client::connect_with(url, options.clone()).await?;
                clients.insert(url.clone(), c);
            }
        }
        Ok(SqlSession {
            ctx,
            log: log.clone(),
            mode,
            transfer,
            remote_ctx,
            remote,
            clients,
            options: options.clone(),
            tables: tables.into_iter().map(|(n, s, _)| (n, s)).collect(),
            decisions: Default::default(),
        })
    }

    /// The session's mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Runs a query.
    pub async fn sql(&self, query: &str) -> Result<SqlResult> {
        self.sql_with_params(query, None).await
    }

    /// Runs a query whose placeholders (`$1`, `$2`, … or `?`) take `params`, in order.
    pub async fn sql_with_params(
        &self,
        query: &str,
        params: Option<Vec<datafusion::scalar::ScalarValue>>,
    ) -> Result<SqlResult> {
        let (mode, reason, ctx) = match &params {
            // Auto's estimate plans the query as text, without the parameters' values.
            Some(_) if self.mode == Mode::Auto => (
                Mode::Offload,
                "offload: a query with parameters is not estimated".to_string(),
                &self.ctx,
            ),
            _ => self.choose(query).await?,
        };
        self.run(ctx, query, params, mode, reason).await
    }

    /// The tables this session sees, with their schemas.
    pub fn tables(&self) -> &[(String, SchemaRef)] {
        &self.tables
    }

    /// What `query` would return and the types of its parameters, by planning it (nothing
    /// runs): the result schema and one field per placeholder (`$1`, `$2`, … in order; a type
    /// the plan cannot infer is `Null`).
    pub async fn describe(&self, query: &str) -> Result<(SchemaRef, SchemaRef)> {
        let df = self.ctx.sql(query).await.map_err(sdk_err)?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let types = df.logical_plan().get_parameter_types().map_err(sdk_err)?;
        let mut names: Vec<&String> = types.keys().collect();
        names.sort_by_key(|n| {
            n.trim_start_matches('$')
                .parse::<usize>()
                .unwrap_or(usize::MAX)
        });
        let fields: Vec<arrow::datatypes::Field> = names
            .into_iter()
            .map(|n| {
                let t = types[n].clone().unwrap_or(arrow::datatypes::DataType::Null);
                arrow::datatypes::Field::new(n.as_str(), t, true)
            })
            .collect();
        Ok((schema, Arc::new(arrow::datatypes::Schema::new(fields))))
    }

    /// The mode for `query`, why, and the context that runs it.
    async fn choose(&self, query: &str) -> Result<(Mode, String, &SessionContext)> {
        if self.mode != Mode::Auto {
            return Ok((self.mode, "set by the session".to_string(), &self.ctx));
        }
        let (m, reason) = self.decide_or_reuse(query).await?;
        let ctx = match m {
            Mode::FullTransfer => self.transfer.as_ref(),
            Mode::RemoteScan => self.remote_ctx.as_ref(),
            _ => None,
        };
        Ok((m, reason, ctx.unwrap_or(&self.ctx)))
    }

    /// Auto's decision for `query`: the one made for the same text within [`DECISION_TTL`],
    /// else a new one (kept for later).
    async fn decide_or_reuse(&self, query: &str) -> Result<(Mode, String)> {
        let now = std::time::Instant::now();
        let recent = {
            let kept = self.decisions.lock().expect("decisions");
            kept.get(query)
                .filter(|d| now.duration_since(d.at) < DECISION_TTL)
                .cloned()
        };
        if let Some(d) = recent {
            let age = now.duration_since(d.at).as_secs_f64();
            return Ok((
                d.mode,
                format!(
                    "the decision of {age:.1} s ago for this query: {}",
                    d.reason
                ),
            ));
        }
        let (mode, reason) = self.decide(query).await?;
        let mut kept = self.decisions.lock().expect("decisions");
        if kept.len() >= DECISIONS_KEPT {
            let mut ages: Vec<std::time::Instant> = kept.values().map(|d| d.at).collect();
            ages.sort();
            let cut = ages[ages.len() / 2];
            kept.retain(|_, d| d.at > cut);
        }
        let d = Decision {
            at: now,
            mode,
            reason: reason.clone(),
        };
        kept.insert(query.to_string(), d);
        Ok((mode, reason))
    }

    async fn run(
        &self,
        ctx: &SessionContext,
        query: &str,
        params: Option<Vec<datafusion::scalar::ScalarValue>>,
        mode: Mode,
        reason: String,
    ) -> Result<SqlResult> {
        let started = std::time::Instant::now();
        self.log.lock().expect("scan log").clear();
        if let Some(store) = &self.remote {
            store.take_reads();
        }
        let mut df = ctx.sql(query).await.map_err(sdk_err)?;
        if let Some(p) = params {
            df = df.with_param_values(p).map_err(sdk_err)?;
        }
        let schema = Arc::new(df.schema().as_arrow().clone());
        let work = cost::Work::of(df.logical_plan());
        let batches = df.collect().await.map_err(sdk_err)?;
        let scans = std::mem::take(&mut *self.log.lock().expect("scan log"));
        let remote = self
            .remote
            .as_ref()
            .map(DeviceStore::take_reads)
            .unwrap_or_default();
        let r = SqlResult {
            schema,
            batches,
            scans,
            remote,
            mode,
            reason,
        };
        cost::learn(&r, started.elapsed(), work);
        Ok(r)
    }

    /// The physical plan of a query, with each device scan's plan.
    pub async fn explain(&self, query: &str) -> Result<String> {
        let (mode, reason, ctx) = self.choose(query).await?;
        let r = self
            .run(ctx, &format!("EXPLAIN {query}"), None, mode, reason)
            .await?;
        let b = arrow::compute::concat_batches(&r.schema, &r.batches)
            .map_err(|e| Error::Protocol(e.to_string()))?;
        Ok(arrow::util::pretty::pretty_format_batches(&[b])
            .map_err(|e| Error::Protocol(e.to_string()))?
            .to_string())
    }
}

/// The remote-scan context: each table a DataFusion `ListingTable` over its objects on every
/// device holding it, read through one [`DeviceStore`] by DataFusion's Parquet reader with its
/// own pruning (row-group statistics, page index, filters inside the decoder). Registered
/// kernels are not SQL functions here: they run only on a device.
async fn remote_context(
    urls: &[String],
    options: &ClientOptions,
    tables: &[(String, SchemaRef, Vec<String>)],
) -> Result<(SessionContext, DeviceStore)> {
    let df = |e: datafusion::error::DataFusionError| Error::InvalidArgument(e.to_string());
    let mut clients = Vec::with_capacity(urls.len());
    for url in urls {
        clients.push(Client::connect_with(url, options.clone()).await?);
    }
    let store = DeviceStore::new(clients);
    let mut config = datafusion::prelude::SessionConfig::new();
    let parquet = &mut config.options_mut().execution.parquet;
    parquet.pushdown_filters = true;
    parquet.reorder_filters = true;
    parquet.enable_page_index = true;
    parquet.pruning = true;
    let ctx = SessionContext::new_with_config(config);
    let store_url =
        datafusion::execution::object_store::ObjectStoreUrl::parse(STORE_URL).map_err(df)?;
    ctx.register_object_store(store_url.as_ref(), Arc::new(store.clone()));
    for (name, schema, devices) in tables {
        let paths = devices
            .iter()
            .map(|url| {
                let d = urls
                    .iter()
                    .position(|u| u == url)
                    .expect("a session device");
                ListingTableUrl::parse(format!("{STORE_URL}/{}", table_dir(d, name))).map_err(df)
            })
            .collect::<Result<Vec<_>>>()?;
        let format =
            ParquetFormat::default().with_options(ctx.state().table_options().parquet.clone());
        let listing = ListingOptions::new(Arc::new(format)).with_file_extension(".parquet");
        let config = ListingTableConfig::new_with_multi_paths(paths)
            .with_listing_options(listing)
            .with_schema(schema.clone());
        let table = ListingTable::try_new(config).map_err(df)?;
        ctx.register_table(name.as_str(), Arc::new(table))
            .map_err(df)?;
    }
    Ok((ctx, store))
}

/// The tables of the devices at `urls`: (name, schema, devices holding it), in the order
/// first seen; a table on several devices must have one schema.
pub(super) async fn list_tables(
    urls: &[String],
    options: &ClientOptions,
) -> Result<Vec<(String, SchemaRef, Vec<String>)>> {
    // table -> (schema, devices holding it), in the order first seen.
    let mut tables: Vec<(String, SchemaRef, Vec<String>)> = Vec::new();
    for url in urls {
        let mut client = Client::connect_with(url, options.clone()).await?;
        for t in client.tables().await? {
            let schema = match client.schema(&Plan::scan(&t.name)).await {
                Ok(s) => s,
                // Dropped since the listing: gone.
                Err(Error::Device {
                    code: nearstore_proto::ErrorCode::UnknownTable,
                    ..
                }) => continue,
                Err(e) => return Err(e),
            };
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
    Ok(tables)
}
