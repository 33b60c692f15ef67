//! [`Mode::Auto`]'s cost model: the predicted wall time of a query in each of the three modes,
//! from each device's footprint estimate of the plans (rows the filter may and likely keeps,
//! compressed bytes read, Arrow bytes per output row) and rates learnt from work already done
//! — the device's own (scan, compute, link, round trip, range reads: its telemetry) and the
//! host's (its Parquet reader's rate in remote scans, its ingest rate in full transfers,
//! learnt by this process from the queries it ran).
//!
//! Per device, with `busy` = max(1, (running queries + 1) / cores) for a device whose cores
//! are shared, and `rtt` the device's learnt round trip:
//! - offload: `rtt + max(busy · (bytes read / scan rate + rows likely kept / compute rate),
//!   output bytes / link rate)` — the device works while its results leave;
//! - remote scan: `calls · rtt + bytes · (1 / link + 1 / range rate + 1 / host's remote
//!   rate)`, the bytes being those read plus the files' footers and page indexes, calls = 2 + 2 per row group read (footer and metadata, then the
//!   filter's columns and the rest, as DataFusion's reader asks) — fetches and decoding take
//!   turns;
//! - full transfer: `rtt + max(busy · all bytes / scan rate, Arrow bytes / link, Arrow bytes /
//!   host's ingest rate)` — a pipeline, as fast as its slowest stage.
//!
//! A query's time is the sum over its scans of the slowest device of each. The model's known
//! blind spot: the statistics do not tell how many groups an aggregate has, so an unlimited
//! grouped aggregate is assumed to return [`GROUPS_ASSUMED`] of them.

use std::sync::Mutex;
use std::time::Duration;

use nearstore_proto::rate::Rate;
use nearstore_proto::{DeviceRates, Estimate, Plan};

use super::{Mode, SqlResult};

/// Groups assumed for a grouped aggregate without a limit.
pub const GROUPS_ASSUMED: u64 = 1000;

/// Rates assumed before any has been learnt (a device that has run nothing yet).
mod prior {
    /// Compressed Parquet bytes decoded per second, one core.
    pub const SCAN: f64 = 200e6;
    /// Rows projected or aggregated per second, one core.
    pub const COMPUTE: f64 = 20e6;
    /// Link bytes per second (10 Gb/s).
    pub const LINK: f64 = 1.25e9;
    /// Round trip, seconds.
    pub const RTT: f64 = 100e-6;
    /// Range-read bytes per second from the media.
    pub const RANGE: f64 = 1e9;
    /// Arrow bytes per second the host ingests in a full transfer.
    pub const INGEST: f64 = 1e9;
}

/// Remote scans and full transfers smaller than this teach the host nothing (fixed costs
/// dominate them).
const LEARN_MIN_BYTES: u64 = 1 << 20;

/// What this host has learnt about itself.
struct HostRates {
    /// Compressed bytes its Parquet reader reads, decodes and computes per second of the
    /// time a remote scan was not waiting on a fetch.
    remote: Rate,
    /// Arrow bytes per second of a full transfer's wall time.
    ingest: Rate,
}

static HOST: Mutex<HostRates> = Mutex::new(HostRates {
    remote: Rate::new(1024.0 * 1024.0 * 1024.0),
    ingest: Rate::new(4.0 * 1024.0 * 1024.0 * 1024.0),
});

/// Learns the host's rates from a query that ran in remote-scan or full-transfer mode.
pub(super) fn learn(r: &SqlResult, wall: Duration) {
    let mut host = HOST.lock().expect("host rates");
    match r.mode {
        Mode::RemoteScan if r.remote.bytes >= LEARN_MIN_BYTES => {
            let busy = wall.saturating_sub(Duration::from_micros(r.remote.fetch_us));
            host.remote.add(r.remote.bytes as f64, busy);
        }
        Mode::FullTransfer if r.bytes_moved() >= LEARN_MIN_BYTES => {
            host.ingest.add(r.bytes_moved() as f64, wall);
        }
        _ => {}
    }
}

/// The host's learnt rates: remote scan and ingest, bytes per second.
pub fn host_rates() -> (Option<f64>, Option<f64>) {
    let host = HOST.lock().expect("host rates");
    (host.remote.per_sec(), host.ingest.per_sec())
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
    compute: f64,
    link: f64,
    rtt: f64,
    range: f64,
    busy: f64,
}

fn rates(e: &Estimate) -> Rates {
    let r: &DeviceRates = &e.rates;
    let cores = e.cores.max(1) as f64;
    Rates {
        scan: r.scan_bytes_per_s.unwrap_or(prior::SCAN),
        compute: r.compute_rows_per_s.unwrap_or(prior::COMPUTE),
        link: r.link_bytes_per_s.unwrap_or(prior::LINK),
        rtt: r.rtt_us.map_or(prior::RTT, |us| us / 1e6),
        range: r.range_bytes_per_s.unwrap_or(prior::RANGE),
        busy: ((e.active_queries as f64 + 1.0) / cores).max(1.0),
    }
}

/// Offload's seconds on one device.
pub(super) fn offload(f: &Footprint) -> f64 {
    let (e, p) = (&f.offload, &f.plan);
    let r = rates(e);
    let mut rows_out = if p.aggregates.is_empty() {
        e.rows_likely
    } else if p.group_by.is_empty() {
        1
    } else {
        e.rows_likely.min(GROUPS_ASSUMED)
    };
    if let Some(l) = p.limit {
        rows_out = rows_out.min(l);
    }
    let out = rows_out as f64 * e.out_bytes_per_row as f64;
    let device = r.busy * (e.bytes_may_read as f64 / r.scan + e.rows_likely as f64 / r.compute);
    r.rtt + device.max(out / r.link)
}

/// Remote scan's seconds on one device (the host reading what offload's plan would read).
pub(super) fn remote(f: &Footprint, host_remote: Option<f64>) -> f64 {
    let e = &f.offload;
    let r = rates(e);
    let host = host_remote.unwrap_or(r.scan * host_cores());
    let calls = 2.0 + 2.0 * e.row_groups_may_match as f64;
    let bytes = (e.bytes_may_read + e.bytes_metadata) as f64;
    calls * r.rtt + bytes * (1.0 / r.link + 1.0 / r.range + 1.0 / host)
}

/// Full transfer's seconds on one device, from the estimate of the plan it would send.
pub(super) fn transfer(e: &Estimate, host_ingest: Option<f64>) -> f64 {
    let r = rates(e);
    let out = e.rows_total as f64 * e.out_bytes_per_row as f64;
    let device = r.busy * e.bytes_all as f64 / r.scan;
    let host = out / host_ingest.unwrap_or(prior::INGEST);
    r.rtt + device.max(out / r.link).max(host)
}

fn host_cores() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
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
                compute_rows_per_s: Some(50e6),
                link_bytes_per_s: Some(link),
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
            offload: Some(offload(&f)),
            remote: Some(remote(&f, Some(400e6))),
            transfer: Some(transfer(&f.offload, Some(1e9))),
        };
        // offload: 0.1 ms + max(20 ms + 0.2 ms, 1.3 ms); remote: 2.2 ms + 8 MB over 125 MB/s
        // + range + host ≈ 90 ms; transfer: 16 MB over 125 MB/s = 128 ms.
        assert!((c.offload.unwrap() - 0.0203).abs() < 1e-4, "{c:?}");
        assert!(c.remote.unwrap() > 0.08 && c.remote.unwrap() < 0.1, "{c:?}");
        assert!((c.transfer.unwrap() - 0.1281).abs() < 1e-3, "{c:?}");
        assert_eq!(c.best(), Mode::Offload);
        // Every row kept on a fast link: remote reads the compressed bytes once with the
        // host's cores; offload computes every row on one device core.
        let f = Footprint {
            plan,
            offload: estimate(1_000_000, 8_000_000, 3e9),
        };
        let c = Costs {
            offload: Some(offload(&f)),
            remote: Some(remote(&f, Some(800e6))),
            transfer: Some(transfer(&f.offload, Some(1e9))),
        };
        assert_eq!(c.best(), Mode::RemoteScan, "{c:?}");
        assert!(
            c.describe().starts_with("offload 40.1 ms, remote scan"),
            "{}",
            c.describe()
        );
    }

    #[test]
    fn a_busy_device_is_priced_by_its_share_of_cores() {
        let mut e = estimate(10_000, 8_000_000, 125e6);
        let f = |e: &Estimate| Footprint {
            plan: Plan::scan("t"),
            offload: e.clone(),
        };
        let idle = offload(&f(&e));
        e.active_queries = 5; // six queries on two cores: three times as long
        let busy = offload(&f(&e));
        assert!(((busy - 1e-4) / (idle - 1e-4) - 3.0).abs() < 1e-9);
    }
}
