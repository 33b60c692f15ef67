//! Merging the partial results of one device plan run on several devices into the rows one
//! device holding all the data would have returned.

use arrow::record_batch::RecordBatch;
use datafusion::common::DataFusionError;
use datafusion::prelude::SessionContext;
use nearstore_proto::Plan;

/// Merges the partial aggregates of several devices (the rows of one device plan's result,
/// from each device) into the rows one device holding all the data would have returned:
/// counts and sums add up, minima and maxima combine, per group. The plan carries no `avg`
/// here (an aggregate over several devices pushes sum and count instead).
pub(super) async fn merge_partials(
    plan: &Plan,
    batches: Vec<RecordBatch>,
) -> datafusion::common::Result<Vec<RecordBatch>> {
    use nearstore_proto::AggFunc;
    let Some(first) = batches.first() else {
        return Ok(batches);
    };
    if plan.aggregates.is_empty() && plan.group_by.is_empty() {
        // Rows (a pushed projection): each device's rows are part of the answer, up to the
        // plan's limit.
        let mut left = plan.limit.map_or(usize::MAX, |l| l as usize);
        let mut out = Vec::new();
        for b in batches {
            if left == 0 {
                break;
            }
            let take = b.num_rows().min(left);
            left -= take;
            out.push(b.slice(0, take));
        }
        return Ok(out);
    }
    let schema = first.schema();
    let quote = |n: &str| format!("\"{}\"", n.replace('"', "\"\""));
    let mut select: Vec<String> = plan.group_by.iter().map(|g| quote(g)).collect();
    for (a, field) in plan
        .aggregates
        .iter()
        .zip(schema.fields().iter().skip(plan.group_by.len()))
    {
        let f = match a.func {
            AggFunc::CountStar | AggFunc::Count | AggFunc::Sum => "sum",
            AggFunc::Min => "min",
            AggFunc::Max => "max",
            AggFunc::Avg => {
                return Err(DataFusionError::Internal(
                    "an average cannot be merged across devices; push sum and count".into(),
                ));
            }
            AggFunc::Kernel => {
                return Err(DataFusionError::Internal(
                    "an aggregate kernel's results cannot be merged across devices".into(),
                ));
            }
        };
        select.push(format!("{f}({0}) as {0}", quote(field.name())));
    }
    let mut sql = format!("select {} from partials", select.join(", "));
    if !plan.group_by.is_empty() {
        let g: Vec<String> = plan.group_by.iter().map(|g| quote(g)).collect();
        sql.push_str(&format!(" group by {}", g.join(", ")));
    }
    let ctx = SessionContext::new();
    ctx.register_batch(
        "partials",
        arrow::compute::concat_batches(&schema, &batches)?,
    )?;
    ctx.sql(&sql).await?.collect().await
}
