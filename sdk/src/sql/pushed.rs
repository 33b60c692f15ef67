//! [`DeviceAggregate`]: the table provider that stands in for a plan node pushed to the
//! devices (an aggregate, or a projection calling a kernel); its scan runs the pushed device
//! plan and lays out the result.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::Expr as DfExpr;
use nearstore_proto::Plan;

use super::layout::OutCol;
use super::{DeviceScanExec, ScanLog};
use crate::ClientOptions;

/// A pushed aggregate: the device plan and the aggregate's output schema.
#[derive(Debug, Clone)]
pub(super) struct DeviceAggregate {
    pub(super) urls: Vec<String>,
    pub(super) options: ClientOptions,
    pub(super) layout: Arc<Vec<OutCol>>,
    pub(super) plan: Plan,
    pub(super) schema: SchemaRef,
    pub(super) log: ScanLog,
    /// Whether its scans are driven (see [`DeviceScanExec::driven`]).
    pub(super) driven: bool,
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
        let scan = DeviceScanExec::new(
            self.urls.clone(),
            self.options.clone(),
            self.plan.clone(),
            schema,
            projection.cloned(),
            Some(self.layout.clone()),
            self.log.clone(),
        );
        Ok(Arc::new(if self.driven { scan.driven()? } else { scan }))
    }
}
