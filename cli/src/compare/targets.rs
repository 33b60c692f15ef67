//! The performance targets of the issues the comparison measures, each evaluated on a run's
//! report: met, missed, or not measured in it.

use super::{Report, Target, auto, plural};

/// The performance targets, evaluated on this run.
pub(super) fn targets(r: &Report) -> Vec<Target> {
    let mut out = Vec::new();
    let find = |n: &str| r.queries.iter().find(|q| q.name == n);

    let over: Vec<String> = r
        .queries
        .iter()
        .filter(|q| q.offload.bytes_moved as f64 > 1.1 * q.result_ipc_bytes as f64 + 16384.0)
        .map(|q| {
            format!(
                "{} ({} B for a {} B result)",
                q.name, q.offload.bytes_moved, q.result_ipc_bytes
            )
        })
        .collect();
    out.push(Target {
        target: "offload moves at most 1.1x the Arrow IPC size of the exact result + 16 KiB".into(),
        measured: if over.is_empty() {
            format!("all {} queries within", r.queries.len())
        } else {
            format!("over: {}", over.join(", "))
        },
        met: Some(over.is_empty()),
    });
    if let Some((w, at)) = auto::worst(r) {
        out.push(Target {
            target: format!(
                "Auto's regret at most {} on every query and link",
                auto::REGRET_TARGET
            ),
            measured: format!("worst {w:.2}: {at}"),
            met: Some(w <= auto::REGRET_TARGET),
        });
    }
    if let Some(q6) = find("tpch_q6") {
        out.push(Target {
            target: "Q6 moves at least 1000x fewer bytes than full transfer".into(),
            measured: format!("{:.0}x at scale factor {}", q6.reduction, r.scale),
            met: Some(q6.reduction >= 1000.0),
        });
    }
    let pairs = [
        (
            &r.warm,
            "served from the hot-column tier at least 3x faster than cold",
            3.0,
        ),
        (
            &r.worker_pair,
            "at least 1.7x faster on 2 workers than on 1 (side by side)",
            1.7,
        ),
    ];
    for (pair, promise, at_least) in pairs {
        let Some(p) = pair else { continue };
        for name in ["tpch_q6", "tpch_q1"] {
            let Some(w) = p.queries.iter().find(|w| w.name == name) else {
                continue;
            };
            out.push(Target {
                target: format!("{name}: {promise}"),
                measured: format!(
                    "device {:.1} ms ({}), {:.1} ms ({}): {:.2}x",
                    w.a_ms, p.a, w.b_ms, p.b, w.speedup
                ),
                met: Some(w.speedup >= at_least),
            });
        }
    }
    // The device, its tier off, against DuckDB on the same Parquet file with as many threads
    // as the device has workers, and with 1 when it has more, side by side (`versus.rs`).
    let mut sides = vec![(r.workers, &r.versus)];
    if r.workers > 1 {
        sides.push((1, &r.versus_single));
    }
    for (threads, section) in sides {
        for name in ["tpch_q6", "tpch_q1", "top_k", "group_by_many"] {
            if find(name).is_none() {
                continue;
            }
            let side = section
                .as_ref()
                .and_then(|p| p.queries.iter().find(|w| w.name == name));
            out.push(Target {
                target: format!(
                    "{name}: device time at most DuckDB's on the same Parquet file, {threads} \
                     thread{}, tier off, side by side",
                    plural(threads)
                ),
                measured: match side {
                    Some(w) => format!(
                        "device {:.1} ms vs DuckDB {:.1} ms: {:.2}x",
                        w.b_ms,
                        w.a_ms,
                        w.b_ms / w.a_ms.max(1e-3)
                    ),
                    None => "DuckDB did not run side by side".into(),
                },
                met: side.map(|w| w.b_ms <= w.a_ms),
            });
        }
    }
    for projection in ["narrow", "wide"] {
        let Some(q) = find(&format!("sweep_{projection}_0.01")) else {
            continue;
        };
        out.push(Target {
            target: format!(
                "1 % selectivity ({projection}): offload at least 3x faster on loopback"
            ),
            measured: format!("{:.1}x", q.speedup),
            met: Some(q.speedup >= 3.0),
        });
        let one = q.shaped.iter().find(|s| (s.link_gbps - 1.0).abs() < 1e-9);
        out.push(Target {
            target: format!(
                "1 % selectivity ({projection}): offload at least 10x faster on a 1 Gb/s link"
            ),
            measured: match one {
                Some(s) => format!("{:.1}x", s.speedup),
                None => "no 1 Gb/s run".into(),
            },
            met: one.map(|s| s.speedup >= 10.0),
        });
    }
    out
}
