//! [`DeviceScanExec`]: the physical operator that runs one device plan on the devices holding
//! a table, converts the device's columns to DataFusion's types and, for a pushed plan, builds
//! the output columns (and merges several devices' partial results).

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::common::DataFusionError;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::TryStreamExt;
use nearstore_proto::{Plan, Projection};

use super::layout::{OutCol, apply_layout};
use super::merge::merge_partials;
use super::{ScanLog, df_err};
use crate::{Client, ClientOptions};

/// Runs one plan on the devices holding a table: one partition per device, or, for a pushed
/// aggregate over several devices, one partition that merges the devices' partial aggregates.
#[derive(Debug)]
pub struct DeviceScanExec {
    pub(super) urls: Vec<String>,
    options: ClientOptions,
    pub(super) plan: Plan,
    schema: SchemaRef,
    /// Device result columns to keep, in order (all when `None`).
    pick: Option<Vec<usize>>,
    /// For a pushed aggregate: how output columns derive from the device's result.
    layout: Option<Arc<Vec<OutCol>>>,
    props: Arc<PlanProperties>,
    log: ScanLog,
}

impl DeviceScanExec {
    /// A scan of `plan` on `urls` with output `schema`. A plain scan (no `layout`) has one
    /// partition per device and streams each device's batches; a pushed plan (with its
    /// `layout`) has one partition that answers once every device has.
    pub(super) fn new(
        urls: Vec<String>,
        options: ClientOptions,
        plan: Plan,
        schema: SchemaRef,
        pick: Option<Vec<usize>>,
        layout: Option<Arc<Vec<OutCol>>>,
        log: ScanLog,
    ) -> Self {
        let (partitions, emission) = match layout {
            Some(_) => (1, EmissionType::Final),
            None => (urls.len(), EmissionType::Incremental),
        };
        let props = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(partitions),
            emission,
            Boundedness::Bounded,
        ));
        DeviceScanExec {
            urls,
            options,
            plan,
            schema,
            pick,
            layout,
            props,
            log,
        }
    }
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
