//! What the optimizer rules share: finding our providers behind a logical scan, swapping a
//! scan's provider, and replacing a plan node by a scan of a pushed device plan.

use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::common::DFSchema;
use datafusion::common::tree_node::Transformed;
use datafusion::logical_expr::{LogicalPlan, SortExpr, TableScan};
use datafusion::prelude::Expr as DfExpr;
use nearstore_proto::{Plan, SortKey};

use crate::sql::layout::OutCol;
use crate::sql::pushed::DeviceAggregate;
use crate::sql::translate::conjunction;
use crate::sql::{DeviceTable, Mode, to_plan_expr};

/// A rule's answer: the plan `push` builds from `plan`, or `plan` unchanged when it builds none.
pub(super) fn transformed(
    plan: LogicalPlan,
    push: impl FnOnce(&LogicalPlan) -> datafusion::common::Result<Option<LogicalPlan>>,
) -> datafusion::common::Result<Transformed<LogicalPlan>> {
    match push(&plan)? {
        Some(p) => Ok(Transformed::yes(p)),
        None => Ok(Transformed::no(plan)),
    }
}

/// The provider behind a logical table scan, when it is a `T` (one of ours).
pub(super) fn provider_of<T: Clone + 'static>(
    scan: &datafusion::logical_expr::TableScan,
) -> Option<T> {
    let provider =
        datafusion::catalog::default_table_source::source_as_provider(&scan.source).ok()?;
    let any: &dyn std::any::Any = provider.as_ref();
    any.downcast_ref::<T>().cloned()
}

/// The device table behind a logical scan, when the session pushes to it (offload mode).
pub(super) fn offload_table(scan: &TableScan) -> Option<DeviceTable> {
    provider_of::<DeviceTable>(scan).filter(|dev| dev.mode == Mode::Offload)
}

/// The same scan reading `provider` instead.
pub(super) fn with_provider(scan: &TableScan, provider: Arc<dyn TableProvider>) -> TableScan {
    let mut new_scan = scan.clone();
    new_scan.source = datafusion::catalog::default_table_source::provider_as_source(provider);
    new_scan
}

/// An expression without its alias, if it has one.
pub(super) fn unalias(e: &DfExpr) -> &DfExpr {
    match e {
        DfExpr::Alias(a) => a.expr.as_ref(),
        other => other,
    }
}

/// The device's sort key on `column` for DataFusion's sort expression `e`.
pub(super) fn sort_key(column: String, e: &SortExpr) -> SortKey {
    SortKey {
        column,
        descending: !e.asc,
        nulls_first: Some(e.nulls_first),
    }
}

/// Name of the scans that stand for pushed aggregates.
const AGG_SCAN: &str = "__nearstore_aggregate";

/// The device plan of `scan`'s table with its (pushed) filters; `None` when a filter does not
/// translate into the plan IR.
pub(super) fn filtered_plan(
    dev: &DeviceTable,
    scan: &datafusion::logical_expr::TableScan,
) -> Option<Plan> {
    let filters = scan
        .filters
        .iter()
        .map(|f| to_plan_expr(f, &dev.df_schema))
        .collect::<Option<Vec<_>>>()?;
    let mut device = Plan::scan(&dev.table);
    device.filter = conjunction(filters);
    Some(device)
}

/// A device plan that replaces a logical plan node whose output schema is `out`: a scan of the
/// plan's result (columns `c0`, `c1`, … built by `layout`) renamed to `out`'s columns.
pub(super) fn pushed_plan(
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
        driven: dev.driven,
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
