//! [`PushTopK`]: ORDER BY … LIMIT k over a device table (or over a pushed aggregate on one
//! device) sends the order and k to the device.

use std::sync::Arc;

use datafusion::prelude::Expr as DfExpr;

use super::rewrite::{offload_table, provider_of, sort_key, unalias, with_provider};
use crate::sql::layout::OutCol;
use crate::sql::pushed::DeviceAggregate;

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
        let Some(dev) = offload_table(scan) else {
            return Ok(Transformed::no(plan));
        };
        if dev.top.is_some() {
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
            keys.push(sort_key(c.name.clone(), e));
        }
        let mut top = dev.clone();
        top.top = Some((keys, k as u64));
        let new_scan = with_provider(scan, Arc::new(top));
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
        let DfExpr::Column(src) = unalias(&proj.expr[i]) else {
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
        keys.push(sort_key(column, e));
    }
    let mut top = agg.clone();
    top.plan.order_by = keys;
    top.plan.limit = Some(k as u64);
    let new_scan = with_provider(scan, Arc::new(top));
    let mut new_proj = proj.clone();
    new_proj.input = Arc::new(LogicalPlan::TableScan(new_scan));
    let mut new_sort = sort.clone();
    new_sort.input = Arc::new(LogicalPlan::Projection(new_proj));
    Some(LogicalPlan::Sort(new_sort))
}
