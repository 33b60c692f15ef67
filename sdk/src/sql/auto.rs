//! [`Mode::Auto`]'s choice: per query, offload, remote scan or full transfer, whichever the
//! cost model ([`super::cost`]) predicts to be fastest from each device's estimate of the
//! plans and the rates learnt from work already done.

use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use nearstore_proto::{DeviceRates, Estimate, Plan};

use super::cost::{self, Costs, Footprint};
use super::{DeviceScanExec, Mode, SqlSession, sdk_err};
use crate::{Client, Result};

impl SqlSession {
    /// [`Mode::Auto`]'s choice for a query, and why: the predicted time of each mode, the
    /// filter's estimated share of the rows, and the rates the prediction used (each marked
    /// learnt or assumed). A mode that cannot plan the query (remote scan has no kernel
    /// functions) is left out. Estimates come from each device's `estimate` action: Parquet
    /// statistics and a sample of the filter's columns, no query slot.
    ///
    /// In any other mode the session's mode is the answer.
    pub async fn decide(&self, query: &str) -> Result<(Mode, String)> {
        let (Some(transfer_ctx), Some(remote_ctx)) = (&self.transfer, &self.remote_ctx) else {
            return Ok((self.mode(), "set by the session".into()));
        };
        // The three plans, then every device's estimate of each, at once: the decision is
        // paid for by every query Auto runs. Of the remote-scan plan, its kind of work (`None`:
        // remote scan cannot plan the query).
        let started = std::time::Instant::now();
        let (offload_scans, transfer_scans, remote_work) = futures::join!(
            scans_of(&self.ctx, query),
            scans_of(transfer_ctx, query),
            async {
                remote_ctx
                    .sql(query)
                    .await
                    .ok()
                    .map(|df| cost::Work::of(df.logical_plan()))
            }
        );
        let planned = started.elapsed();
        let offload_scans = offload_scans?;
        // A query full transfer cannot plan is not its (nothing to price, not free).
        let transfer_ok = transfer_scans.is_ok();
        let transfer_scans = transfer_scans.unwrap_or_default();
        let (offload_est, transfer_est) = futures::join!(
            self.estimates(&offload_scans),
            self.estimates(&transfer_scans)
        );
        let estimated = started.elapsed() - planned;
        let host = cost::host_rates();
        let work = remote_work.unwrap_or(cost::Work::Rows);
        let host_remote = host.remote(work);
        // Per scan the slowest device, summed over scans.
        let (mut offload, mut remote, mut transfer) = (
            vec![0.0f64; offload_scans.len()],
            vec![0.0f64; offload_scans.len()],
            vec![0.0f64; transfer_scans.len()],
        );
        let (mut likely, mut may, mut total, mut sampled) = (0u64, 0u64, 0u64, 0u64);
        let mut seen: Option<DeviceRates> = None;
        for (i, plan, e) in offload_est? {
            likely += e.rows_likely;
            may += e.rows_may_match;
            total += e.rows_total;
            sampled += e.rows_sampled;
            if seen.is_none() {
                cost::note_link(&e.rates);
                seen = Some(e.rates.clone());
            }
            let f = Footprint { plan, offload: e };
            offload[i] = offload[i].max(cost::offload(&f, host.ingest));
            remote[i] = remote[i].max(cost::remote(&f, host_remote));
        }
        let mut costs = Costs {
            offload: Some(offload.iter().sum()),
            ..Default::default()
        };
        // Remote scan cannot call kernel functions: a query it cannot plan is not its.
        if remote_work.is_some() {
            costs.remote = Some(remote.iter().sum());
        }
        if let (true, Ok(est)) = (transfer_ok, transfer_est) {
            for (i, _, e) in est {
                transfer[i] = transfer[i].max(cost::transfer(&e, host.ingest));
            }
            costs.transfer = Some(transfer.iter().sum());
        }
        let mode = costs.best();
        let pct = |n: u64| 100.0 * n as f64 / total.max(1) as f64;
        let learnt = |v: Option<f64>, scale: f64, unit: &str| {
            v.map_or("assumed".to_string(), |v| {
                format!("{:.0} {unit}", v / scale)
            })
        };
        let r = seen.unwrap_or_default();
        let why = format!(
            "predicted {}; the filters likely keep {:.2} % of the rows ({} sampled; at most \
             {:.2} % by the statistics); device: scan {}, compute {} and {}, link {}{}, round \
             trip {}, range reads {}; host: remote scan {} aggregating, {} returning rows ({}), \
             full-transfer ingest {}; decided \
             in {:.1} ms (planning {:.1} ms, the devices' estimates {:.1} ms)",
            costs.describe(),
            pct(likely),
            sampled,
            pct(may),
            learnt(r.scan_bytes_per_s, 1e6, "MB/s"),
            learnt(r.aggregate_cells_per_s, 1e6, "M aggregate cells/s"),
            learnt(r.project_rows_per_s, 1e6, "M projected rows/s"),
            learnt(r.link_bytes_per_s, 1e6, "MB/s"),
            if r.link_shaped {
                " shaped"
            } else {
                " (transport)"
            },
            learnt(r.rtt_us, 1.0, "µs"),
            learnt(r.range_bytes_per_s, 1e6, "MB/s"),
            learnt(host.remote_aggregate, 1e6, "MB/s"),
            learnt(host.remote_rows, 1e6, "MB/s"),
            match remote_work {
                Some(cost::Work::Aggregate) => "this query aggregates",
                Some(cost::Work::Rows) => "this query returns rows",
                None => "remote scan cannot plan this query",
            },
            learnt(host.ingest, 1e6, "MB/s"),
            started.elapsed().as_secs_f64() * 1e3,
            planned.as_secs_f64() * 1e3,
            estimated.as_secs_f64() * 1e3,
        );
        Ok((mode, why))
    }

    /// Every device's estimate of each scan's plan, asked all at once: (scan index, plan,
    /// estimate).
    async fn estimates(
        &self,
        scans: &[(Vec<String>, Plan)],
    ) -> Result<Vec<(usize, Plan, Estimate)>> {
        let calls = scans
            .iter()
            .enumerate()
            .flat_map(|(i, (urls, plan))| urls.iter().map(move |url| (i, url, plan)))
            .map(|(i, url, plan)| async move {
                let e = self.client(url).await?.estimate(plan).await?;
                Ok::<_, crate::Error>((i, plan.clone(), e))
            });
        futures::future::try_join_all(calls).await
    }

    /// The session's client of the device at `url` (a fresh connection for a device it was
    /// not opened with).
    async fn client(&self, url: &str) -> Result<Client> {
        match self.clients.get(url) {
            Some(c) => Ok(c.clone()),
            None => Client::connect_with(url, self.options.clone()).await,
        }
    }
}

/// The physical plan of `query` in `ctx`.
async fn plans(ctx: &SessionContext, query: &str) -> Result<std::sync::Arc<dyn ExecutionPlan>> {
    ctx.sql(query)
        .await
        .map_err(sdk_err)?
        .create_physical_plan()
        .await
        .map_err(sdk_err)
}

/// The device scans `query` makes in `ctx`: their devices and plans.
async fn scans_of(ctx: &SessionContext, query: &str) -> Result<Vec<(Vec<String>, Plan)>> {
    let plan = plans(ctx, query).await?;
    let mut scans = Vec::new();
    collect_scans(plan.as_ref(), &mut scans);
    Ok(scans)
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
