//! The SQL session: connecting to the devices, registering their tables and kernels in a
//! DataFusion context, and running or explaining a query in the session's mode.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::DFSchema;
use datafusion::prelude::SessionContext;
use nearstore_proto::Plan;

use super::{
    DeviceTable, KernelUdaf, KernelUdf, Mode, PushAggregates, PushKernelProjections, PushTopK,
    ScanLog, SqlResult, sdk_err,
};
use crate::{Client, ClientOptions, Error, Result};

/// A DataFusion session over one device's tables.
pub struct SqlSession {
    pub(super) ctx: SessionContext,
    log: ScanLog,
    mode: Mode,
    /// For [`Mode::Auto`]: the same tables in full-transfer mode (`ctx` has them in offload
    /// mode).
    transfer: Option<SessionContext>,
    pub(super) options: ClientOptions,
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
