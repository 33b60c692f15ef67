//! [`Mode::Auto`]'s cost model: the predicted wall time of a query in each of the three modes,
//! from each device's footprint estimate of the plans (rows the filter may and likely keeps,
//! compressed bytes read, metadata bytes, Arrow bytes per output row) and rates learnt from
//! work already done — the device's own (scan, aggregate and projection compute, link, round
//! trip: its telemetry) and the host's (its remote-scan rate and its full-transfer ingest
//! rate, learnt by this process from the queries it ran).
//!
//! Per device, with `busy` the time factor of the query's work — (running queries + 1) /
//! cores when the device has more queries than cores, else 1 / the workers it spreads over
//! (the cores it finds idle, at most one per row group it reads; one for a LIMIT without
//! ORDER BY or an aggregate kernel, which run on one) — `rtt` the device's learnt round trip,
//! and `link` its link rate when the link is shaped (an unshaped transport's pace is part of
//! the host's learnt rates):
//! - offload: `rtt + max(busy · (bytes read / scan rate + compute), output bytes / link,
//!   output bytes / host's ingest rate)`, compute being rows likely kept × (group keys +
//!   aggregates) / aggregate rate, or rows likely kept / projection rate — the device works
//!   while its results leave, and the host takes in offload's Arrow as it takes in full
//!   transfer's (a wide scan that keeps half the rows is paced by the host's decoding, not
//!   the device's);
//! - remote scan: `calls · rtt + bytes / link + bytes / host's remote rate`, the bytes being
//!   those read plus the files' footers and page indexes, calls = 2 + 2 per row group read
//!   (footer and metadata, then the filter's columns and the rest, as DataFusion's reader
//!   asks); the host's remote rate is end to end (its fetches, the device serving them, its
//!   decoding and computing), learnt as bytes / (wall − round trips − link time), and learnt
//!   apart for the two kinds of work a host does with what it reads ([`Work`]): aggregating
//!   it, which costs per row kept beside the decoding, or returning rows — a plain scan
//!   decodes several times more compressed bytes per second than Q1 does, and one rate for
//!   both priced wide scans at the aggregates' pace;
//! - full transfer: `rtt + max(busy · all bytes / scan rate, Arrow bytes / link, Arrow bytes /
//!   host's ingest rate)` — a pipeline, as fast as its slowest stage.
//!
//! A query's time is the sum over its scans of the slowest device of each. Known blind spots:
//! the statistics do not tell how many groups an aggregate has (an unlimited grouped
//! aggregate is assumed to return [`GROUPS_ASSUMED`]), and an aggregate's cost per cell grows
//! with its number of groups, which one learnt rate averages over.

use std::sync::Mutex;
use std::time::Duration;

use nearstore_proto::rate::Rate;
use nearstore_proto::{AggFunc, DeviceRates, Estimate, Plan};

use super::{Mode, SqlResult};

/// Groups assumed for a grouped aggregate without a limit.
pub const GROUPS_ASSUMED: u64 = 1000;

/// Rates assumed before any has been learnt (a device that has run nothing yet).
mod prior {
    /// Compressed Parquet bytes decoded per second, one core.
    pub const SCAN: f64 = 200e6;
    /// Aggregate cells per second, one core: what TPC-H Q1 teaches a device on these
    /// machines (714 M at SF 1, one worker, since the device decodes dictionary pages itself
    /// and groups by dictionary keys; 100–130 M before, which made Auto price Q1's offload
    /// at 2.6 times its time and choose remote scan on a 10 Gb/s link), rounded down; a
    /// device learns its own from such queries (see the runtime's telemetry for which ones
    /// teach it).
    pub const AGGREGATE: f64 = 600e6;
    /// Rows projected per second, one core.
    pub const PROJECT: f64 = 500e6;
    /// Link bytes per second (10 Gb/s).
    pub const LINK: f64 = 1.25e9;
    /// Round trip, seconds.
    pub const RTT: f64 = 100e-6;
    /// Arrow bytes per second the host ingests in a full transfer.
    pub const INGEST: f64 = 1e9;
}

/// Remote scans and full transfers smaller than this teach the host nothing (fixed costs
/// dominate them).
const LEARN_MIN_BYTES: u64 = 1 << 20;

/// What the host does with the rows a query reads, as far as its remote-scan rate goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// The query aggregates (its plan has an aggregate anywhere): compute per row read.
    Aggregate,
    /// The query returns rows (a scan, a filter, a sort, a top-k): decoding is most of it.
    Rows,
}

impl Work {
    /// The work of a planned query (its subqueries' included).
    pub(super) fn of(plan: &datafusion::logical_expr::LogicalPlan) -> Work {
        use datafusion::common::tree_node::TreeNodeRecursion;
        use datafusion::logical_expr::LogicalPlan;
        let mut work = Work::Rows;
        let _ = plan.apply_with_subqueries(|p| {
            Ok(if matches!(p, LogicalPlan::Aggregate(_)) {
                work = Work::Aggregate;
                TreeNodeRecursion::Stop
            } else {
                TreeNodeRecursion::Continue
            })
        });
        work
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What this host has learnt about itself.
struct HostRates {
    /// Compressed bytes per second of a remote scan, end to end, its link time and round
    /// trips taken out, per [`Work`].
    remote: [Rate; 2],
    /// Arrow bytes per second of a full transfer's wall time (learnt only where the link was
    /// not the bottleneck).
    ingest: Rate,
    /// The link of the devices Auto last asked: shaped rate (bytes/s), round trip (s).
    link: (Option<f64>, f64),
}

static HOST: Mutex<HostRates> = Mutex::new(HostRates {
    remote: [
        Rate::new(1024.0 * 1024.0 * 1024.0),
        Rate::new(1024.0 * 1024.0 * 1024.0),
    ],
    ingest: Rate::new(4.0 * 1024.0 * 1024.0 * 1024.0),
    link: (None, 0.0),
});

/// Learns the host's rates from a query that ran in remote-scan or full-transfer mode and did
/// `work`.
pub(super) fn learn(r: &SqlResult, wall: Duration, work: Work) {
    let mut host = HOST.lock().expect("host rates");
    let (link, rtt) = host.link;
    let on_link = |bytes: u64| link.map_or(0.0, |l| bytes as f64 / l);
    match r.mode {
        Mode::RemoteScan if r.remote.bytes >= LEARN_MIN_BYTES => {
            let fixed = r.remote.calls as f64 * rtt + on_link(r.remote.bytes);
            let busy = (wall.as_secs_f64() - fixed).max(wall.as_secs_f64() / 10.0);
            host.remote[work.index()].add(r.remote.bytes as f64, Duration::from_secs_f64(busy));
        }
        Mode::FullTransfer
            if r.bytes_moved() >= LEARN_MIN_BYTES
                && on_link(r.bytes_moved()) < wall.as_secs_f64() / 2.0 =>
        {
            host.ingest.add(r.bytes_moved() as f64, wall);
        }
        _ => {}
    }
}

/// Remembers the link of the devices Auto asks (from their telemetry), for [`learn`].
pub(super) fn note_link(rates: &DeviceRates) {
    let mut host = HOST.lock().expect("host rates");
    host.link = if rates.link_shaped {
        (
            rates.link_bytes_per_s,
            rates.rtt_us.unwrap_or_default() / 1e6,
        )
    } else {
        (None, 0.0)
    };
}

/// The host's learnt rates, bytes per second (`None`: nothing learnt yet).
#[derive(Debug, Clone, Copy, Default)]
pub struct HostSpeeds {
    /// Remote scans of queries that aggregate.
    pub remote_aggregate: Option<f64>,
    /// Remote scans of queries that return rows.
    pub remote_rows: Option<f64>,
    /// Full transfer's ingest.
    pub ingest: Option<f64>,
}

impl HostSpeeds {
    /// The remote-scan rate for `work`: the one learnt on that kind of work, else the other
    /// kind's (a host that has only aggregated is priced at its aggregating pace, not at a
    /// device's).
    pub fn remote(&self, work: Work) -> Option<f64> {
        match work {
            Work::Aggregate => self.remote_aggregate.or(self.remote_rows),
            Work::Rows => self.remote_rows.or(self.remote_aggregate),
        }
    }
}

/// The host's learnt rates.
pub fn host_rates() -> HostSpeeds {
    let host = HOST.lock().expect("host rates");
    HostSpeeds {
        remote_aggregate: host.remote[Work::Aggregate.index()].per_sec(),
        remote_rows: host.remote[Work::Rows.index()].per_sec(),
        ingest: host.ingest.per_sec(),
    }
}

/// One device's estimates for one scan of a query: of the plan offload would send, and of
/// the plan full transfer would send.
#[derive(Debug, Clone)]
pub(super) struct Footprint {
    pub plan: Plan,
    pub offload: Estimate,
}

/// Predicted seconds per mode (`None`: the mode cannot run the query).
#[derive(Debug, Clone, Copy, Default)]
pub struct Costs {
    /// Offload.
    pub offload: Option<f64>,
    /// Remote scan.
    pub remote: Option<f64>,
    /// Full transfer.
    pub transfer: Option<f64>,
}

impl Costs {
    /// The cheapest mode.
    pub fn best(&self) -> Mode {
        [
            (Mode::Offload, self.offload),
            (Mode::RemoteScan, self.remote),
            (Mode::FullTransfer, self.transfer),
        ]
        .into_iter()
        .filter_map(|(m, c)| c.map(|c| (m, c)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(Mode::Offload, |(m, _)| m)
    }

    /// `offload 12 ms, remote scan 30 ms, full transfer 400 ms`.
    pub fn describe(&self) -> String {
        let ms = |c: Option<f64>| c.map_or("cannot run".into(), |c| format!("{:.1} ms", c * 1e3));
        format!(
            "offload {}, remote scan {}, full transfer {}",
            ms(self.offload),
            ms(self.remote),
            ms(self.transfer)
        )
    }
}

/// A device's rates with the priors filled in, seconds-based.
struct Rates {
    scan: f64,
    aggregate: f64,
    project: f64,
    /// What output crosses: the shaped link, or the transport's learnt pace.
    link: f64,
    /// The shaped link alone (an unshaped one's pace is in the host's rates).
    shaped: Option<f64>,
    rtt: f64,
    busy: f64,
}

/// Whether the device may spread `plan` over its workers (see the runtime's `exec::run`).
fn spreads(plan: &Plan) -> bool {
    let limit_only = plan.limit.is_some() && plan.order_by.is_empty() && plan.aggregates.is_empty();
    let kernel_aggregate = plan.aggregates.iter().any(|a| a.func == AggFunc::Kernel);
    !limit_only && !kernel_aggregate
}

/// `e`'s rates; `spreads`: whether its plan may run on several workers.
fn rates(e: &Estimate, spreads: bool) -> Rates {
    let r: &DeviceRates = &e.rates;
    let cores = e.cores.max(1) as f64;
    let share = cores / (e.active_queries as f64 + 1.0);
    let workers = if spreads {
        share
            .floor()
            .clamp(1.0, e.row_groups_may_match.max(1) as f64)
    } else {
        1.0
    };
    let link = r.link_bytes_per_s.unwrap_or(prior::LINK);
    Rates {
        scan: r.scan_bytes_per_s.unwrap_or(prior::SCAN),
        aggregate: r.aggregate_cells_per_s.unwrap_or(prior::AGGREGATE),
        project: r.project_rows_per_s.unwrap_or(prior::PROJECT),
        link,
        shaped: r.link_shaped.then_some(link),
        rtt: if r.link_shaped {
            r.rtt_us.map_or(prior::RTT, |us| us / 1e6)
        } else {
            0.0
        },
        busy: if share < 1.0 {
            1.0 / share
        } else {
            1.0 / workers
        },
    }
}

/// Offload's seconds on one device, the host taking in its output at `host_ingest`.
pub(super) fn offload(f: &Footprint, host_ingest: Option<f64>) -> f64 {
    let (e, p) = (&f.offload, &f.plan);
    let r = rates(e, spreads(p));
    let rows = e.rows_likely as f64;
    let cells = (p.group_by.len() + p.aggregates.len()) as f64;
    let (compute, mut rows_out) = if p.aggregates.is_empty() {
        (rows / r.project, e.rows_likely)
    } else if p.group_by.is_empty() {
        (rows * cells / r.aggregate, 1)
    } else {
        (
            rows * cells / r.aggregate,
            e.rows_likely.min(GROUPS_ASSUMED),
        )
    };
    if let Some(l) = p.limit {
        rows_out = rows_out.min(l);
    }
    let out = rows_out as f64 * e.out_bytes_per_row as f64;
    let device = r.busy * (e.bytes_may_read as f64 / r.scan + compute);
    let host = out / host_ingest.unwrap_or(prior::INGEST);
    r.rtt + device.max(out / r.link).max(host)
}

/// Remote scan's seconds on one device (the host reading what offload's plan would read).
pub(super) fn remote(f: &Footprint, host_remote: Option<f64>) -> f64 {
    let e = &f.offload;
    let r = rates(e, true);
    let host = host_remote.unwrap_or(r.scan);
    let calls = 2.0 + 2.0 * e.row_groups_may_match as f64;
    let bytes = (e.bytes_may_read + e.bytes_metadata) as f64;
    calls * r.rtt + r.shaped.map_or(0.0, |l| bytes / l) + bytes / host
}

/// Full transfer's seconds on one device, from the estimate of the plan it would send.
pub(super) fn transfer(e: &Estimate, host_ingest: Option<f64>) -> f64 {
    let r = rates(e, true);
    let out = e.rows_total as f64 * e.out_bytes_per_row as f64;
    let device = r.busy * e.bytes_all as f64 / r.scan;
    let host = out / host_ingest.unwrap_or(prior::INGEST);
    r.rtt + device.max(out / r.link).max(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn estimate(rows_likely: u64, bytes_may_read: u64, link: f64) -> Estimate {
        Estimate {
            rows_total: 1_000_000,
            rows_may_match: 1_000_000,
            rows_likely,
            row_groups_total: 10,
            row_groups_may_match: 10,
            bytes_may_read,
            bytes_all: 8_000_000,
            out_bytes_per_row: 16,
            cores: 2,
            rates: DeviceRates {
                scan_bytes_per_s: Some(400e6),
                aggregate_cells_per_s: Some(50e6),
                project_rows_per_s: Some(50e6),
                link_bytes_per_s: Some(link),
                link_shaped: true,
                rtt_us: Some(100.0),
                range_bytes_per_s: Some(2e9),
            },
            ..Default::default()
        }
    }

    #[test]
    fn the_model_prices_what_each_mode_moves_and_computes() {
        let plan = Plan::scan("t");
        // A selective filter on a slow link: offload sends 1 % of the rows.
        let f = Footprint {
            plan: plan.clone(),
            offload: estimate(10_000, 8_000_000, 125e6),
        };
        let c = Costs {
            offload: Some(offload(&f, Some(1e9))),
            remote: Some(remote(&f, Some(400e6))),
            transfer: Some(transfer(&f.offload, Some(1e9))),
        };
        // offload: 0.1 ms + max((20 ms + 0.2 ms) on two cores, 1.3 ms); remote: 22 round trips
        // + 8 MB over 125 MB/s + 8 MB at the host's 400 MB/s ≈ 86 ms; transfer: 16 MB over
        // 125 MB/s.
        assert!((c.offload.unwrap() - 0.0102).abs() < 1e-4, "{c:?}");
        assert!(c.remote.unwrap() > 0.08 && c.remote.unwrap() < 0.1, "{c:?}");
        assert!((c.transfer.unwrap() - 0.1281).abs() < 1e-3, "{c:?}");
        assert_eq!(c.best(), Mode::Offload);
        // Every row kept on a fast link: remote reads the compressed bytes once with the
        // host's cores; offload computes every row on the device's two.
        let f = Footprint {
            plan,
            offload: estimate(1_000_000, 8_000_000, 3e9),
        };
        let c = Costs {
            offload: Some(offload(&f, Some(1e9))),
            remote: Some(remote(&f, Some(800e6))),
            transfer: Some(transfer(&f.offload, Some(1e9))),
        };
        assert_eq!(c.best(), Mode::RemoteScan, "{c:?}");
        assert!(
            c.describe().starts_with("offload 20.1 ms, remote scan"),
            "{}",
            c.describe()
        );
    }

    #[tokio::test]
    async fn the_host_is_priced_by_what_it_learnt_on_the_same_kind_of_work() {
        let ctx = datafusion::prelude::SessionContext::new();
        let work = |sql: &'static str| {
            let ctx = ctx.clone();
            async move { Work::of(ctx.sql(sql).await.unwrap().logical_plan()) }
        };
        ctx.sql("create table t (a int, b int) as values (1, 2), (3, 4)")
            .await
            .unwrap();
        assert_eq!(work("select a from t where b > 2").await, Work::Rows);
        assert_eq!(work("select a from t order by b limit 1").await, Work::Rows);
        assert_eq!(work("select sum(a) from t").await, Work::Aggregate);
        assert_eq!(
            work("select * from t where a in (select max(b) from t)").await,
            Work::Aggregate
        );
        let learnt = HostSpeeds {
            remote_aggregate: Some(80e6),
            remote_rows: Some(200e6),
            ingest: None,
        };
        assert_eq!(learnt.remote(Work::Aggregate), Some(80e6));
        assert_eq!(learnt.remote(Work::Rows), Some(200e6));
        // One kind learnt: the other borrows it until it has its own.
        let only = HostSpeeds {
            remote_rows: None,
            ..learnt
        };
        assert_eq!(only.remote(Work::Rows), Some(80e6));
        assert_eq!(HostSpeeds::default().remote(Work::Aggregate), None);
    }

    #[test]
    fn an_unshaped_link_leaves_the_transport_to_the_hosts_rate() {
        let mut e = estimate(10_000, 8_000_000, 500e6);
        e.rates.link_shaped = false;
        let f = Footprint {
            plan: Plan::scan("t"),
            offload: e,
        };
        // No round trips, no link term: the host's end-to-end rate alone.
        assert!((remote(&f, Some(400e6)) - 0.02).abs() < 1e-12);
    }

    #[test]
    fn a_busy_device_is_priced_by_its_share_of_cores() {
        let mut e = estimate(10_000, 8_000_000, 125e6);
        let f = |e: &Estimate| Footprint {
            plan: Plan::scan("t"),
            offload: e.clone(),
        };
        let idle = offload(&f(&e), None);
        e.active_queries = 5; // six queries on two cores: six times as long as alone on both
        let busy = offload(&f(&e), None);
        assert!(((busy - 1e-4) / (idle - 1e-4) - 6.0).abs() < 1e-9);
        e.active_queries = 1; // two queries, a core each
        let shared = offload(&f(&e), None);
        assert!(((shared - 1e-4) / (idle - 1e-4) - 2.0).abs() < 1e-9);
    }

    #[test]
    fn a_plan_that_runs_on_one_worker_is_priced_on_one_core() {
        let e = estimate(10_000, 8_000_000, 125e6);
        let spread = offload(
            &Footprint {
                plan: Plan::scan("t"),
                offload: e.clone(),
            },
            None,
        );
        let mut limited = Plan::scan("t");
        limited.limit = Some(10);
        let one = offload(
            &Footprint {
                plan: limited,
                offload: e,
            },
            None,
        );
        assert!(((one - 1e-4) / (spread - 1e-4) - 2.0).abs() < 1e-9);
    }

    #[test]
    fn offloads_result_is_paced_by_the_hosts_ingest_as_a_transfers_is() {
        // Every row kept on a fast link: 16 MB of Arrow. The device's part takes 20 ms on its
        // two cores and the link 5 ms; a host that takes in 100 MB/s of Arrow takes 160 ms,
        // and that is offload's time, whatever the device and link could do.
        let f = Footprint {
            plan: Plan::scan("t"),
            offload: estimate(1_000_000, 8_000_000, 3.2e9),
        };
        let fast_host = offload(&f, Some(10e9));
        assert!((fast_host - 0.0201).abs() < 1e-4, "{fast_host}");
        let slow_host = offload(&f, Some(100e6));
        assert!((slow_host - 0.1601).abs() < 1e-4, "{slow_host}");
        // The host reading the 8 MB of Parquet itself at 200 MB/s is the faster way then.
        let c = Costs {
            offload: Some(slow_host),
            remote: Some(remote(&f, Some(200e6))),
            transfer: Some(transfer(&f.offload, Some(100e6))),
        };
        assert_eq!(c.best(), Mode::RemoteScan, "{c:?}");
    }
}
