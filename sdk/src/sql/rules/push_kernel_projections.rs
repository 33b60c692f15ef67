//! [`PushKernelProjections`]: a projection that calls a map kernel over a device table scan
//! runs on the device, with the scan's filters and limit.

use datafusion::prelude::Expr as DfExpr;
use nearstore_proto::Projection;

use super::rewrite::{filtered_plan, offload_table, pushed_plan, transformed, unalias};
use crate::sql::layout::OutCol;
use crate::sql::to_plan_expr;
use crate::sql::udf::kernel_udf;

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
        transformed(plan, push_kernel_projection)
    }
}

/// Whether `e` calls a registered filter or map kernel.
fn calls_kernel(e: &DfExpr) -> bool {
    use datafusion::common::tree_node::TreeNode;
    e.exists(|x| {
        Ok(match x {
            DfExpr::ScalarFunction(f) => kernel_udf(f).is_some(),
            _ => false,
        })
    })
    .unwrap_or(false)
}

/// The device plan that replaces `plan` when it is a projection [`PushKernelProjections`]
/// pushes; `None` when it is not.
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
    let Some(dev) = offload_table(scan) else {
        return Ok(None);
    };
    if !p.expr.iter().any(calls_kernel) {
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
        let Some(x) = to_plan_expr(unalias(e), &dev.df_schema) else {
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
