//! What the device learns about its own speed from the work it does: moving estimates of its
//! scan (read + decode) rate, its compute rate, the link's throughput and round-trip time, and
//! its range-read rate. `device_info`, `estimate` and the Prometheus metrics show them; the
//! host's Auto mode builds its cost model on them instead of on rates set by hand.
//!
//! A rate is decayed sums of work and seconds, each sample weighted by its amount of work, so
//! it reflects about the last `window` units (a GiB scanned, a hundred million rows): a long
//! query counts for more than a tiny one, and a change in the device's conditions (a slower
//! link, a busier core) shows within a window.

use std::sync::Mutex;
use std::time::Duration;

use nearstore_proto::rate::Rate;
use nearstore_proto::{DeviceRates, QueryStats};

use super::Link;

/// Work below this many microseconds is not sampled: timer resolution would dominate it.
const MIN_SAMPLE_US: u64 = 200;

/// The device's learnt rates (the link keeps its own; see [`Link::carried`]).
#[derive(Debug)]
pub struct Telemetry {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    scan: Rate,
    aggregate: Rate,
    project: Rate,
    ranges: Rate,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            inner: Mutex::new(Inner {
                scan: Rate::new(1024.0 * 1024.0 * 1024.0),
                aggregate: Rate::new(1e9),
                project: Rate::new(1e8),
                ranges: Rate::new(1024.0 * 1024.0 * 1024.0),
            }),
        }
    }
}

impl Telemetry {
    /// Learns from a finished query's statistics; `cells_per_row` is its group keys plus
    /// aggregates (0 for a projection).
    pub fn query(&self, s: &QueryStats, cells_per_row: usize) {
        let mut t = self.inner.lock().expect("telemetry");
        if s.scan_us >= MIN_SAMPLE_US {
            t.scan
                .add(s.bytes_read_media as f64, Duration::from_micros(s.scan_us));
        }
        if s.compute_us >= MIN_SAMPLE_US {
            let took = Duration::from_micros(s.compute_us);
            if cells_per_row > 0 {
                // An aggregate whose filter keeps few of the rows it scans is timed by its
                // calls per batch, not by its cells (TPC-H Q6 keeps 2 %: it would teach a
                // rate three times too slow for Q1, which keeps them all). Only one with at
                // least a cell per row scanned teaches the per-cell rate.
                let cells = s.rows_selected as f64 * cells_per_row as f64;
                if cells >= s.rows_scanned as f64 {
                    t.aggregate.add(cells, took);
                }
            } else {
                t.project.add(s.rows_selected as f64, took);
            }
        }
    }

    /// Learns from a range read of `bytes` that took `took` from the media.
    pub fn range_read(&self, bytes: u64, took: Duration) {
        if took >= Duration::from_micros(MIN_SAMPLE_US) {
            let mut t = self.inner.lock().expect("telemetry");
            t.ranges.add(bytes as f64, took);
        }
    }

    /// The rates now, the link's included.
    pub fn rates(&self, link: &Link) -> DeviceRates {
        let t = self.inner.lock().expect("telemetry");
        let (link_bytes_per_s, rtt_us) = link.carried();
        DeviceRates {
            scan_bytes_per_s: t.scan.per_sec(),
            aggregate_cells_per_s: t.aggregate.per_sec(),
            project_rows_per_s: t.project.per_sec(),
            link_bytes_per_s,
            link_shaped: link.gbps().is_some(),
            rtt_us,
            range_bytes_per_s: t.ranges.per_sec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_queries_are_not_sampled() {
        let t = Telemetry::default();
        t.query(
            &QueryStats {
                bytes_read_media: 1 << 20,
                scan_us: 50,
                ..Default::default()
            },
            0,
        );
        let link = Link::new(None);
        assert_eq!(t.rates(&link).scan_bytes_per_s, None);
        let q = QueryStats {
            bytes_read_media: 1 << 20,
            scan_us: 1000,
            rows_selected: 10_000,
            compute_us: 500,
            ..Default::default()
        };
        t.query(&q, 0);
        let r = t.rates(&link);
        assert_eq!(r.scan_bytes_per_s, Some((1u64 << 20) as f64 / 1e-3));
        assert_eq!(r.project_rows_per_s, Some(2e7));
        assert_eq!(r.aggregate_cells_per_s, None);
        // An aggregate with two keys and three aggregates: five cells a row.
        t.query(&q, 5);
        assert_eq!(t.rates(&link).aggregate_cells_per_s, Some(1e8));
        // One whose filter kept one row in a hundred of those it scanned teaches nothing: its
        // time is its batches', not its cells'.
        let sparse = QueryStats {
            rows_scanned: 1_000_000,
            compute_us: 100_000,
            ..q.clone()
        };
        t.query(&sparse, 1);
        assert_eq!(t.rates(&link).aggregate_cells_per_s, Some(1e8));
        assert!(!r.link_shaped);
    }
}
