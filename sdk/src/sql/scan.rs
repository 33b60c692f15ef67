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
///
/// For engines that split a plan's partitions over tasks and processes (Ballista), the scan
/// can be *driven* ([`DeviceScanExec::driven`]): its one child is an in-memory source with the
/// same partitions, whose rows are the indices of the devices each partition scans, so a task
/// given some of the partitions scans exactly their devices, whatever index it runs them as.
#[derive(Debug)]
pub struct DeviceScanExec {
    pub(super) urls: Vec<String>,
    pub(super) options: ClientOptions,
    pub(super) plan: Plan,
    pub(super) schema: SchemaRef,
    /// Device result columns to keep, in order (all when `None`).
    pub(super) pick: Option<Vec<usize>>,
    /// For a pushed aggregate: how output columns derive from the device's result.
    pub(super) layout: Option<Arc<Vec<OutCol>>>,
    props: Arc<PlanProperties>,
    log: ScanLog,
    /// The driver child of a driven scan.
    driver: Option<Arc<dyn ExecutionPlan>>,
}

/// The column of a driver's rows: a device's index in the scan's URLs.
const DRIVER_COLUMN: &str = "device";

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
            driver: None,
        }
    }

    /// The same scan driven by an in-memory child: one partition per device (a plain scan) or
    /// one holding every device (a pushed plan, merged in that partition).
    pub fn driven(self) -> datafusion::common::Result<Self> {
        use arrow::array::UInt32Array;
        use arrow::datatypes::{DataType, Field, Schema};
        let schema = Arc::new(Schema::new(vec![Field::new(
            DRIVER_COLUMN,
            DataType::UInt32,
            false,
        )]));
        let batch = |ids: Vec<u32>| {
            RecordBatch::try_new(schema.clone(), vec![Arc::new(UInt32Array::from(ids))])
        };
        let n = self.urls.len() as u32;
        let partitions: Vec<Vec<RecordBatch>> = match self.layout {
            Some(_) => vec![vec![batch((0..n).collect())?]],
            None => (0..n)
                .map(|i| Ok(vec![batch(vec![i])?]))
                .collect::<Result<_, arrow::error::ArrowError>>()?,
        };
        let driver = datafusion::datasource::memory::MemorySourceConfig::try_new_exec(
            &partitions,
            schema.clone(),
            None,
        )?;
        self.with_driver(driver)
    }

    /// The scan with `driver` as its child, its partitions the driver's.
    pub(super) fn with_driver(
        mut self,
        driver: Arc<dyn ExecutionPlan>,
    ) -> datafusion::common::Result<Self> {
        let partitions = driver.properties().partitioning.partition_count();
        self.props = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(self.schema.clone()),
            Partitioning::UnknownPartitioning(partitions),
            self.props.emission_type,
            Boundedness::Bounded,
        ));
        self.driver = Some(driver);
        Ok(self)
    }

    /// The device URLs each of its partitions reaches, by partition: one device for a plain
    /// scan, every device for a pushed plan (merged in its one partition). A driven scan's are
    /// read from its in-memory driver, as [`ExecutionPlan::execute`] reads them.
    pub fn partition_devices(&self) -> Vec<Vec<&str>> {
        use arrow::array::AsArray;
        use arrow::datatypes::UInt32Type;
        use datafusion::datasource::memory::MemorySourceConfig;
        use datafusion::datasource::source::DataSourceExec;
        let memory = self
            .driver
            .as_ref()
            .and_then(|d| d.downcast_ref::<DataSourceExec>())
            .and_then(|d| d.data_source().downcast_ref::<MemorySourceConfig>());
        if let Some(m) = memory {
            let url = |id: &u32| self.urls.get(*id as usize).map(String::as_str);
            return m
                .partitions()
                .iter()
                .map(|batches| {
                    batches
                        .iter()
                        .filter_map(|b| {
                            b.column_by_name(DRIVER_COLUMN)?
                                .as_primitive_opt::<UInt32Type>()
                        })
                        .flat_map(|ids| ids.values().iter().filter_map(url))
                        .collect()
                })
                .collect();
        }
        match self.layout {
            Some(_) => vec![self.urls.iter().map(String::as_str).collect()],
            None => self.urls.iter().map(|u| vec![u.as_str()]).collect(),
        }
    }

    /// The same scan without its driver.
    pub(super) fn copy(&self) -> Self {
        DeviceScanExec::new(
            self.urls.clone(),
            self.options.clone(),
            self.plan.clone(),
            self.schema.clone(),
            self.pick.clone(),
            self.layout.clone(),
            self.log.clone(),
        )
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
        self.driver.iter().collect()
    }

    // A driver's partitions are the devices each partition scans (all of them, merged, for a
    // pushed plan): repartitioning it would split a merge.
    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false; self.children().len()]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::common::Result<TreeNodeRecursion>,
    ) -> datafusion::common::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        match (children.into_iter().next(), &self.driver) {
            (Some(driver), Some(_)) => Ok(Arc::new(self.copy().with_driver(driver)?)),
            _ => Ok(self),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> datafusion::common::Result<SendableRecordBatchStream> {
        // A plain scan runs on its partition's device; an aggregate runs on every device and
        // the partial results are merged here. A driven scan runs on the devices its driver's
        // partition names.
        let all = self.urls.clone();
        let driver = match &self.driver {
            Some(d) => Some(d.execute(partition, context)?),
            None => None,
        };
        let urls: Vec<String> = match (&self.layout, &driver) {
            (_, Some(_)) => Vec::new(),
            (Some(_), None) => self.urls.clone(),
            (None, None) => vec![self.urls.get(partition).cloned().ok_or_else(|| {
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
            let urls = match driver {
                None => urls,
                Some(d) => driver_urls(d, &all).await?,
            };
            tracing::debug!(table = %plan.table, devices = ?urls, "device scan");
            let runs = urls.iter().map(|url| {
                let (options, plan, log) = (options.clone(), plan.clone(), log.clone());
                async move {
                    let mut client = Client::connect_with(url, options).await.map_err(df_err)?;
                    let r = client
                        .query(&plan)
                        .await
                        .map_err(|e| df_err(aggregates_described(e, &plan)))?;
                    log.lock().expect("scan log").push((plan, r.stats.clone()));
                    Ok::<_, DataFusionError>(r.batches)
                }
            });
            let parts = futures::future::try_join_all(runs).await?;
            let device_batches = if parts.len() > 1 && layout.is_some() {
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

/// The devices a driver partition names: its rows' indices into `all`.
async fn driver_urls(
    driver: SendableRecordBatchStream,
    all: &[String],
) -> datafusion::common::Result<Vec<String>> {
    use arrow::array::AsArray;
    use arrow::datatypes::UInt32Type;
    let batches: Vec<RecordBatch> = driver.try_collect().await?;
    let mut urls = Vec::new();
    for b in &batches {
        let ids = b
            .column_by_name(DRIVER_COLUMN)
            .and_then(|c| c.as_primitive_opt::<UInt32Type>())
            .ok_or_else(|| DataFusionError::Internal("a scan driver without device ids".into()))?;
        for id in ids.values() {
            urls.push(all.get(*id as usize).cloned().ok_or_else(|| {
                DataFusionError::Internal(format!(
                    "a scan driver names device {id} of {}",
                    all.len()
                ))
            })?);
        }
    }
    Ok(urls)
}

/// The device's error with each aggregate of the pushed plan it names (`aggregate a1
/// overflowed`: the names the plan gave them, which a SQL user never saw) followed by what
/// that aggregate computes: `aggregate a1 (sum(((big * 2) * big))) overflowed`.
fn aggregates_described(e: crate::Error, plan: &Plan) -> crate::Error {
    let crate::Error::Device {
        code,
        status,
        message,
    } = e
    else {
        return e;
    };
    let mut out = String::with_capacity(message.len());
    let mut prev = "";
    for (i, word) in message.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(word);
        if matches!(prev, "aggregate" | "or")
            && let Some(a) = plan
                .aggregates
                .iter()
                .find(|a| a.name.as_deref() == Some(word))
        {
            let what = match (a.func, &a.expr) {
                (nearstore_proto::AggFunc::Kernel, Some(call)) => call.to_string(),
                (f, Some(x)) => format!("{}({x})", f.as_str()),
                (_, None) => "count(*)".into(),
            };
            out.push_str(&format!(" ({what})"));
        }
        prev = word;
    }
    crate::Error::Device {
        code,
        status,
        message: out,
    }
}
