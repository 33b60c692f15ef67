//! Scaling with drives (`bench compare --devices N`): lineitem dealt over N device processes
//! (TPC-H's own partitioning: device `i` generates part `i` of N), each behind an emulated
//! link, and the suite run in offload and remote scan for 1, 2, 4 … N drives.
//!
//! On a machine with fewer cores than drives the device processes share the CPU, so besides
//! the measured wall times the report gives a projection, labelled as one: offload with each
//! drive's device time measured alone (its own cores, as a real drive has), against remote
//! scan as one host runs it (its cores and its one link: the remote-scan time measured with
//! one drive at that link rate). From the two, per query and link, the number of drives from
//! which offload beats remote scan.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::{Result, bail};
use nearstore_sdk::{ClientOptions, Mode, SqlResult, SqlSession};

use super::measure::{call_ms, median};
use super::{Case, CompareArgs, DeviceChild, DriveRun, QueryReport, Report};

/// Link rates of the drive-scaling runs, Gb/s.
pub const DRIVE_LINKS: [f64; 2] = [10.0, 25.0];

/// Drive counts run: powers of two up to `max` (and `max` itself).
pub fn counts(max: usize) -> Vec<usize> {
    let mut out: Vec<usize> = std::iter::successors(Some(1usize), |n| Some(n * 2))
        .take_while(|n| *n <= max)
        .collect();
    if max > 0 && out.last() != Some(&max) {
        out.push(max);
    }
    out
}

/// The slowest device scan's call time of a result, ms (the suite's queries scan lineitem
/// once, so one scan per drive).
fn slowest_device_ms(r: &SqlResult) -> f64 {
    r.scans.iter().map(|(_, s)| call_ms(s)).fold(0.0, f64::max)
}

/// Runs the suite over 1, 2, 4 … `args.devices` drives at each of [`DRIVE_LINKS`].
pub async fn run(
    bin: &Path,
    args: &CompareArgs,
    cases: &[Case],
    report: &mut Report,
) -> Result<()> {
    let root = tempfile::tempdir()?;
    for n in counts(args.devices) {
        for gbps in DRIVE_LINKS {
            eprintln!(
                "{n} drive(s), {gbps} Gb/s links: lineitem at scale factor {} dealt over them",
                args.scale
            );
            let starts = (0..n).map(|i| {
                let dir = root.path().join(format!("n{n}-d{i}"));
                async move {
                    std::fs::create_dir_all(&dir)?;
                    DeviceChild::start_part(
                        bin,
                        &dir,
                        args.scale,
                        Some(gbps),
                        Some((i + 1, n)),
                        args.workers,
                        0,
                    )
                    .await
                }
            });
            let devices = futures::future::try_join_all(starts).await?;
            let urls: Vec<String> = devices.iter().map(|d| d.url.clone()).collect();
            let connect = |m| SqlSession::connect_many(&urls, ClientOptions::default(), m);
            let (offload, remote) = (
                connect(Mode::Offload).await?,
                connect(Mode::RemoteScan).await?,
            );
            let mut alone = Vec::with_capacity(n);
            for u in &urls {
                alone.push(SqlSession::connect(u, ClientOptions::default(), Mode::Offload).await?);
            }
            for (case, q) in cases.iter().zip(report.queries.iter_mut()) {
                let run = one(&offload, &remote, &alone, &case.sql, args.runs, n, gbps).await?;
                eprintln!(
                    "{:<22} {n} drive(s) @{gbps} Gb/s: offload {:>8.1} ms (devices {:.1} ms together, {:.1} ms alone) | remote {:>8.1} ms",
                    case.name, run.offload_ms, run.device_ms, run.device_alone_ms, run.remote_ms
                );
                q.drives.push(run);
            }
            for d in devices {
                d.stop().await?;
            }
        }
    }
    for q in &mut report.queries {
        project(q);
    }
    Ok(())
}

/// One query over `n` drives: offload and remote scan in alternating rounds, then each drive's
/// offload alone.
async fn one(
    offload: &SqlSession,
    remote: &SqlSession,
    alone: &[SqlSession],
    sql: &str,
    runs: usize,
    n: usize,
    gbps: f64,
) -> Result<DriveRun> {
    let (mut o, mut r, mut dev, mut dev_alone) = (vec![], vec![], vec![], vec![]);
    let mut rows = None;
    for round in 0..runs.max(1) {
        for first in [round % 2 == 0, round % 2 == 1] {
            let t = Instant::now();
            if first {
                let res = offload.sql(sql).await?;
                o.push(t.elapsed().as_secs_f64() * 1e3);
                dev.push(slowest_device_ms(&res));
                rows = Some(res.num_rows());
            } else {
                let res = remote.sql(sql).await?;
                r.push(t.elapsed().as_secs_f64() * 1e3);
                if rows.is_some_and(|k| k != res.num_rows()) {
                    bail!("{sql}: remote scan over {n} drives returned a different row count");
                }
            }
        }
        let mut slowest = 0.0f64;
        for s in alone {
            slowest = slowest.max(slowest_device_ms(&s.sql(sql).await?));
        }
        dev_alone.push(slowest);
    }
    Ok(DriveRun {
        devices: n,
        link_gbps: gbps,
        offload_ms: median(o),
        remote_ms: median(r),
        device_ms: median(dev),
        device_alone_ms: median(dev_alone),
        ..Default::default()
    })
}

/// The projection: offload with the drives' device time measured alone in place of the
/// time measured together; remote scan as one host runs it (one drive's measured time at
/// the same link).
fn project(q: &mut QueryReport) {
    let one_drive: Vec<(f64, f64)> = q
        .drives
        .iter()
        .filter(|d| d.devices == 1)
        .map(|d| (d.link_gbps, d.remote_ms))
        .collect();
    for d in &mut q.drives {
        d.projected_offload_ms = (d.offload_ms - d.device_ms).max(0.0) + d.device_alone_ms;
        d.projected_remote_ms = one_drive
            .iter()
            .find(|(g, _)| *g == d.link_gbps)
            .map_or(d.remote_ms, |(_, ms)| *ms);
    }
}

/// The fewest drives at which offload beats remote scan at `gbps`, measured and projected.
pub fn drives_to_win(q: &QueryReport, gbps: f64) -> (Option<usize>, Option<usize>) {
    let at = |f: &dyn Fn(&DriveRun) -> bool| {
        q.drives
            .iter()
            .filter(|d| d.link_gbps == gbps && f(d))
            .map(|d| d.devices)
            .min()
    };
    (
        at(&|d| d.offload_ms < d.remote_ms),
        at(&|d| d.projected_offload_ms < d.projected_remote_ms),
    )
}

/// The Markdown section: drives-to-crossover per query, then every figure.
pub fn section(r: &Report) -> String {
    let max = r
        .queries
        .iter()
        .flat_map(|q| q.drives.iter().map(|d| d.devices))
        .max();
    let Some(max) = max else {
        return String::new();
    };
    let mut s = format!(
        "## Scaling with drives\n\nlineitem dealt over 1 to {max} device processes, each \
         behind its own emulated link. **Measured**: wall times with every device process on \
         this machine's shared cores. **Projected** (not measured as such): offload with each \
         drive's device time measured alone, as if every drive had its own cores, against \
         remote scan as one host runs it (its one link and its cores: the time measured with one \
         drive at that link rate). A cell is the fewest drives from which offload beats remote \
         scan; `> {max}` when it does not within {max}.\n\n| query |"
    );
    for g in DRIVE_LINKS {
        let _ = write!(s, " measured @{g} Gb/s | projected @{g} Gb/s |");
    }
    s.push_str("\n|---|");
    for _ in DRIVE_LINKS {
        s.push_str("---:|---:|");
    }
    s.push('\n');
    let cell = |n: Option<usize>| n.map_or(format!("> {max}"), |n| n.to_string());
    for q in &r.queries {
        let _ = write!(s, "| {} |", q.name);
        for g in DRIVE_LINKS {
            let (m, p) = drives_to_win(q, g);
            let _ = write!(s, " {} | {} |", cell(m), cell(p));
        }
        s.push('\n');
    }
    s.push_str(
        "\n| query | drives | link Gb/s | offload ms | devices ms together | devices ms alone | \
         remote ms | projected offload ms | projected remote ms |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for q in &r.queries {
        for d in &q.drives {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
                q.name,
                d.devices,
                d.link_gbps,
                d.offload_ms,
                d.device_ms,
                d.device_alone_ms,
                d.remote_ms,
                d.projected_offload_ms,
                d.projected_remote_ms
            );
        }
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drive_counts_and_the_drives_needed_to_win() {
        assert_eq!(counts(8), vec![1, 2, 4, 8]);
        assert_eq!(counts(6), vec![1, 2, 4, 6]);
        assert_eq!(counts(1), vec![1]);
        assert!(counts(0).is_empty());
        let run = |devices, offload_ms, device_ms, device_alone_ms, remote_ms| DriveRun {
            devices,
            link_gbps: 10.0,
            offload_ms,
            device_ms,
            device_alone_ms,
            remote_ms,
            ..Default::default()
        };
        let mut q = QueryReport {
            drives: vec![
                run(1, 600.0, 590.0, 590.0, 400.0),
                // Four drives on two cores: measured still slower than remote; alone each
                // drive takes a quarter of the time.
                run(4, 500.0, 480.0, 150.0, 450.0),
            ],
            ..Default::default()
        };
        project(&mut q);
        assert_eq!(q.drives[1].projected_offload_ms, 170.0);
        assert_eq!(q.drives[1].projected_remote_ms, 400.0);
        assert_eq!(drives_to_win(&q, 10.0), (None, Some(4)));
        assert_eq!(drives_to_win(&q, 25.0), (None, None));
    }
}
