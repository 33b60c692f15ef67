//! [`Mode::Auto`]'s policy: per query, offload or full transfer, from what the plan pushes,
//! the devices' Parquet statistics for the pushed filters, and the devices' load.

use datafusion::physical_plan::ExecutionPlan;
use nearstore_proto::Plan;

use super::{DeviceScanExec, Mode, SqlSession, sdk_err};
use crate::{Client, Result};

/// [`Mode::Auto`] sends full transfer rather than a non-selective filter to a device running
/// at least this many queries.
pub const AUTO_BUSY_QUERIES: u64 = 4;
/// [`Mode::Auto`] offloads filters whose statistics bound the rows they keep below this share.
pub const AUTO_SELECTIVE: f64 = 0.5;

impl SqlSession {
    /// [`Mode::Auto`]'s choice for a query, and why. The policy, in order:
    /// 1. a pushed aggregate: offload (only groups cross the link);
    /// 2. nothing pushed (no filter, aggregate or limit): full transfer (the same bytes either
    ///    way; the host does the work and the device stays free);
    /// 3. a device running [`AUTO_BUSY_QUERIES`] or more queries while the statistics say the
    ///    pushed filters may keep [`AUTO_SELECTIVE`] of the rows or more: full transfer (little
    ///    to save, and a busy device would be slower than the host);
    /// 4. otherwise offload: filters the statistics bound below that share save their share of
    ///    the bytes for certain, and a filter the statistics cannot bound still moves no more
    ///    than full transfer.
    ///
    /// Statistics come from each device's `estimate` action: min/max of row groups and the page
    /// index, an upper bound of the rows a filter keeps; no data is read.
    pub async fn decide(&self, query: &str) -> Result<(Mode, String)> {
        let plan = self
            .ctx
            .sql(query)
            .await
            .map_err(sdk_err)?
            .create_physical_plan()
            .await
            .map_err(sdk_err)?;
        let mut scans: Vec<(Vec<String>, Plan)> = Vec::new();
        collect_scans(plan.as_ref(), &mut scans);
        if let Some((_, p)) = scans.iter().find(|(_, p)| !p.aggregates.is_empty()) {
            return Ok((
                Mode::Offload,
                format!(
                    "the aggregate over {} runs on the device: only its groups cross the link",
                    p.table
                ),
            ));
        }
        let filtered: Vec<&(Vec<String>, Plan)> =
            scans.iter().filter(|(_, p)| p.filter.is_some()).collect();
        if filtered.is_empty() {
            if let Some((_, p)) = scans.iter().find(|(_, p)| p.limit.is_some()) {
                return Ok((
                    Mode::Offload,
                    format!("the limit on {} stops the device early", p.table),
                ));
            }
            return Ok((
                Mode::FullTransfer,
                "nothing to push (no filter, aggregate or limit on a device table): the same \
                 bytes either way, so the host computes and the device stays free"
                    .into(),
            ));
        }
        let (mut total, mut may, mut busiest) = (0u64, 0u64, (0u64, String::new()));
        for (urls, p) in &filtered {
            for url in urls {
                let mut c = Client::connect_with(url, self.options.clone()).await?;
                let e = c.estimate(p).await?;
                total += e.rows_total;
                may += e.rows_may_match;
                if e.active_queries >= busiest.0 {
                    busiest = (e.active_queries, url.clone());
                }
            }
        }
        let share = may as f64 / total.max(1) as f64;
        let pct = share * 100.0;
        if busiest.0 >= AUTO_BUSY_QUERIES && share >= AUTO_SELECTIVE {
            return Ok((
                Mode::FullTransfer,
                format!(
                    "{} is running {} queries and the statistics say the filters may keep {pct:.0} % \
                     of the rows: little to save, so the host filters",
                    busiest.1, busiest.0
                ),
            ));
        }
        Ok((
            Mode::Offload,
            if share < AUTO_SELECTIVE {
                format!(
                    "the statistics say the filters keep at most {pct:.1} % of the rows: at least \
                     {:.1} % of the bytes stay on the device",
                    100.0 - pct
                )
            } else {
                format!(
                    "the statistics cannot narrow the filters ({pct:.0} % of the rows may match), \
                     and the device is not busy: filtering there moves no more than full transfer"
                )
            },
        ))
    }
}

/// The device scans of a physical plan: their devices and plans.
fn collect_scans(plan: &dyn ExecutionPlan, out: &mut Vec<(Vec<String>, Plan)>) {
    if let Some(scan) = plan.downcast_ref::<DeviceScanExec>() {
        out.push((scan.urls.clone(), scan.plan.clone()));
    }
    for child in plan.children() {
        collect_scans(child.as_ref(), out);
    }
}
