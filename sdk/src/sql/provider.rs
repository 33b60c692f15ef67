//! [`DeviceTable`]: a table of the devices as a DataFusion `TableProvider`. It answers which
//! filters it takes (those that translate into the plan IR, in offload mode) and turns a scan
//! into one device plan run by [`DeviceScanExec`].

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DFSchema, DataFusionError};
use datafusion::datasource::TableType;
use datafusion::logical_expr::TableProviderFilterPushDown;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::Expr as DfExpr;
use nearstore_proto::{Expr, Plan, Projection};

use super::translate::conjunction;
use super::{DeviceScanExec, Mode, ScanLog, to_plan_expr};
use crate::ClientOptions;

/// A device table as a DataFusion table provider.
#[derive(Debug, Clone)]
pub struct DeviceTable {
    /// Devices holding a part of the table (one scan partition each).
    pub(super) urls: Vec<String>,
    pub(super) options: ClientOptions,
    pub(super) table: String,
    pub(super) schema: SchemaRef,
    /// The same schema, unqualified, for typing filter expressions.
    pub(super) df_schema: Arc<DFSchema>,
    pub(super) mode: Mode,
    pub(super) log: ScanLog,
    /// ORDER BY … LIMIT k pushed by [`PushTopK`](super::PushTopK): each device returns its top
    /// k rows.
    pub(super) top: Option<(Vec<nearstore_proto::SortKey>, u64)>,
    /// Whether its scans are driven (see [`DeviceScanExec::driven`]): as decoded by an engine
    /// that ships plans between processes.
    pub(super) driven: bool,
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
            plan.filter = conjunction(exprs);
            plan.limit = limit.map(|l| l as u64);
            if let Some((keys, k)) = &self.top {
                plan.order_by = keys.clone();
                plan.limit = Some(plan.limit.map_or(*k, |l| l.min(*k)));
            }
        }
        let scan = DeviceScanExec::new(
            self.urls.clone(),
            self.options.clone(),
            plan,
            output,
            None,
            None,
            self.log.clone(),
        );
        Ok(Arc::new(if self.driven { scan.driven()? } else { scan }))
    }
}
