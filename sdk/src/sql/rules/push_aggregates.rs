//! [`PushAggregates`]: an aggregate over a device table scan whose filters were all pushed
//! becomes one device plan (filter + group by + aggregates).

use datafusion::prelude::Expr as DfExpr;
use nearstore_proto::{Expr, Plan};

use super::rewrite::{filtered_plan, offload_table, pushed_plan, transformed, unalias};
use crate::sql::layout::OutCol;
use crate::sql::translate::kernel_args;
use crate::sql::{KernelUdaf, to_plan_expr};

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
        transformed(plan, push_aggregate)
    }
}

/// The device plan that replaces `plan` when it is an aggregate [`PushAggregates`] pushes;
/// `None` when it is not.
fn push_aggregate(
    plan: &datafusion::logical_expr::LogicalPlan,
) -> datafusion::common::Result<Option<datafusion::logical_expr::LogicalPlan>> {
    use datafusion::logical_expr::LogicalPlan;
    use nearstore_proto::{AggFunc, Aggregate};
    let LogicalPlan::Aggregate(agg) = plan else {
        return Ok(None);
    };
    // The input is the scan, or projections over it, whose columns are inlined: common
    // subexpressions such as `l_extendedprice * (1 - l_discount)` are computed in one, and in
    // one over another where a common subexpression contains another (TPC-H Q1's charge
    // contains its discounted price).
    let mut projections = Vec::new();
    let mut input = agg.input.as_ref();
    let scan = loop {
        match input {
            LogicalPlan::TableScan(scan) => break scan,
            LogicalPlan::Projection(p) => {
                projections.push(p);
                input = p.input.as_ref();
            }
            _ => return Ok(None),
        }
    };
    let Some(dev) = offload_table(scan) else {
        return Ok(None);
    };
    if scan.fetch.is_some() {
        return Ok(None);
    }
    // From the projection over the scan up, each projection's outputs as expressions over
    // the scan's columns.
    let mut inline: std::collections::HashMap<String, Expr> = std::collections::HashMap::new();
    for (level, p) in projections.iter().rev().enumerate() {
        let stripped;
        let schema = match level {
            0 => dev.df_schema.as_ref(),
            _ => {
                stripped = p.input.schema().as_ref().clone().strip_qualifiers();
                &stripped
            }
        };
        let mut outputs = std::collections::HashMap::new();
        for (e, (_, field)) in p.expr.iter().zip(p.schema.iter()) {
            let Some(x) = to_plan_expr(unalias(e), schema).and_then(|x| substitute(x, &inline))
            else {
                return Ok(None);
            };
            outputs.insert(field.name().clone(), x);
        }
        inline = outputs;
    }
    // Aggregate arguments read the aggregate's input (the scan or the top projection).
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
        let DfExpr::AggregateFunction(f) = unalias(e) else {
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
    let Some(layout) = output_layout(agg, &mut device, dev.urls.len()) else {
        return Ok(None);
    };
    pushed_plan(&dev, device, layout, &agg.schema).map(Some)
}

/// How the pushed aggregate's output columns come from the device's result, with the
/// averages the device cannot finish itself pushed as a sum and a count (added to `device`);
/// `None` when an average cannot be pushed.
fn output_layout(
    agg: &datafusion::logical_expr::Aggregate,
    device: &mut Plan,
    n_devices: usize,
) -> Option<Vec<OutCol>> {
    use nearstore_proto::{AggFunc, Aggregate};
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
            (AggFunc::Avg, arrow::datatypes::DataType::Float64) if n_devices > 1 => {
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
            (AggFunc::Avg, _) => return None,
            _ => layout.push(OutCol::Direct(i)),
        }
    }
    device.aggregates.extend(extra);
    Some(layout)
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
