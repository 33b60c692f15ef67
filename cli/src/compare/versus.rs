//! DuckDB and the device side by side: a device on the same data (its tier off, the started
//! devices' workers, and then 1 worker when they have more) and DuckDB (as many threads, the
//! same Parquet file, in its own process) run each query alternately, so both meet the machine
//! as it is at that moment. The device's
//! executor time (`total_us`) against DuckDB's wall time of the query into Arrow, medians.
//! The DuckDB targets read this section: the main table's device figures and the reference
//! engines' own runs are minutes apart, and on a shared machine minutes apart differ.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use nearstore_sdk::{ClientOptions, Mode, SqlSession};

use super::measure::{executor_ms, median};
use super::pair::{PairRun, PairSection};
use super::reference::DuckServer;
use super::{Case, CompareArgs, DeviceChild, Report, plural};

/// Runs `cases` on DuckDB with `threads` threads (`a`) and on a device with as many workers
/// started on `data` (`b`) alternately, `report.runs` times each after one untimed run each;
/// `equal` is whether DuckDB's values equalled the device's in the reference engines' run
/// (`report`) of the same query.
pub async fn run(
    bin: &Path,
    data: &Path,
    args: &CompareArgs,
    cases: &[Case],
    report: &Report,
    threads: usize,
) -> Result<PairSection> {
    let runs = report.runs;
    let mut duck = DuckServer::start(data, cases, threads, args.reference).await?;
    let workers = Some(threads);
    let dev = DeviceChild::start_part(bin, data, args.scale, None, None, workers, 0).await?;
    let session = SqlSession::connect(&dev.url, ClientOptions::default(), Mode::Offload).await?;
    eprintln!(
        "side by side: DuckDB against the device, {threads} threads and workers, tier off, \
         {} queries, {runs} runs each",
        cases.len()
    );
    let mut section = PairSection {
        a: format!("{threads} thread{}", plural(threads)),
        b: format!("{threads} worker{}, tier off", plural(threads)),
        ..Default::default()
    };
    for (i, case) in cases.iter().enumerate() {
        session.sql(&case.sql).await?;
        duck.run(i).await?;
        let (mut duck_ms, mut exec_ms, mut wall_ms) = (Vec::new(), Vec::new(), Vec::new());
        let mut last = None;
        for round in 0..runs {
            // Each goes first in every other round.
            if round % 2 == 1 {
                duck_ms.push(duck.run(i).await?);
            }
            let t = Instant::now();
            let r = session.sql(&case.sql).await?;
            wall_ms.push(t.elapsed().as_secs_f64() * 1e3);
            exec_ms.push(executor_ms(&r));
            last = Some(r);
            if round % 2 == 0 {
                duck_ms.push(duck.run(i).await?);
            }
        }
        let (a_ms, b_ms) = (median(duck_ms), median(exec_ms));
        let scans = last.map(|r| r.scans).unwrap_or_default();
        let run = PairRun {
            name: case.name.clone(),
            a_ms,
            b_ms,
            speedup: a_ms / b_ms.max(1e-3),
            a_wall_ms: a_ms,
            b_wall_ms: median(wall_ms),
            hit_bytes: scans.iter().map(|(_, s)| s.cache_hit_bytes).sum(),
            miss_bytes: scans.iter().map(|(_, s)| s.cache_miss_bytes).sum(),
            equal: report
                .queries
                .iter()
                .find(|q| q.name == case.name)
                .and_then(|q| q.reference.get("duckdb"))
                .and_then(|e| e.values_equal)
                .unwrap_or(false),
        };
        eprintln!(
            "{:<22} DuckDB {:>8.1} ms | device {:>8.1} ms | device / DuckDB {:>5.2}x",
            run.name,
            run.a_ms,
            run.b_ms,
            run.b_ms / run.a_ms.max(1e-3)
        );
        section.queries.push(run);
    }
    section.b_peak_mib = dev.peak_rss_mib();
    dev.stop().await?;
    Ok(section)
}

/// The sections of the report (at the devices' workers, then at 1), empty when none ran.
pub fn section(r: &Report) -> String {
    [&r.versus, &r.versus_single]
        .into_iter()
        .flatten()
        .map(|p| one_section(p, r.runs))
        .collect()
}

fn one_section(p: &PairSection, runs: usize) -> String {
    let mut s = format!(
        "## DuckDB against the device, side by side, {a}\n\n\
         DuckDB ({a}) on the device's Parquet file, in a process of its own, and a device \
         ({b}) on the same data; each query alternately on both, medians of {runs}. DuckDB's time is its \
         wall time of the query into Arrow; the device's is its executor time (`total_us`), \
         with the host's wall time of the SQL call beside it. Values equal: DuckDB's result \
         against the device's in the reference engines' run of the same query.\n\n\
         | query | DuckDB ms | device ms | device / DuckDB | device wall ms | values equal |\n\
         |---|---:|---:|---:|---:|---|\n",
        a = p.a,
        b = p.b,
    );
    for q in &p.queries {
        let _ = writeln!(
            s,
            "| {} | {:.1} | {:.1} | {:.2}x | {:.1} | {} |",
            q.name,
            q.a_ms,
            q.b_ms,
            q.b_ms / q.a_ms.max(1e-3),
            q.b_wall_ms,
            if q.equal { "yes" } else { "NO" }
        );
    }
    s.push('\n');
    s
}
