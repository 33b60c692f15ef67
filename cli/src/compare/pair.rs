//! Two devices side by side on copies of the same data, differing in one setting, each query
//! run on both alternately (offload, loopback): the executor time (`total_us`, from
//! preparation to the last batch) and the host's wall time of each, medians, with the peak
//! memory of each device process. Two comparisons use it:
//! - the hot-column tier (`--cache-mb N`): tier off against `N` MiB of it, the warm device
//!   having seen each query twice first (a chunk is admitted on its second touch);
//! - compute workers: 1 against the started devices' count (`--workers`, default one per
//!   core), both with the tier off — the speedup measured in one run, alternating, instead
//!   of from two runs whose host-side work differs.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use nearstore_sdk::{ClientOptions, Mode, SqlSession};
use serde::{Deserialize, Serialize};

use super::measure::{canonical, executor_ms, median};
use super::{Case, CompareArgs, DeviceChild, Report};

/// One query on both devices.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PairRun {
    /// Query name.
    pub name: String,
    /// Device executor time on the first device (the baseline), median ms.
    pub a_ms: f64,
    /// Device executor time on the second, median ms.
    pub b_ms: f64,
    /// `a_ms / b_ms`.
    pub speedup: f64,
    /// Host wall time of the SQL call on each, median ms.
    pub a_wall_ms: f64,
    /// See `a_wall_ms`.
    pub b_wall_ms: f64,
    /// Media bytes the second device's last run took from its hot-column tier, and read.
    pub hit_bytes: u64,
    /// See `hit_bytes`.
    pub miss_bytes: u64,
    /// Same rows on both.
    pub equal: bool,
}

/// One comparison's figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PairSection {
    /// What the first device is, e.g. `tier off`.
    pub a: String,
    /// What the second is, e.g. `1024 MiB tier, warm`.
    pub b: String,
    /// Per query.
    pub queries: Vec<PairRun>,
    /// Peak resident memory of each device process, MiB.
    pub a_peak_mib: Option<f64>,
    /// See `a_peak_mib`.
    pub b_peak_mib: Option<f64>,
}

/// A device of a pair: its label, compute workers and tier budget (MiB).
pub struct Side {
    pub label: String,
    pub workers: Option<usize>,
    pub cache_mb: u64,
}

/// Runs the suite on two devices started on copies of `data`, `a` and `b` alternately, after
/// `b` ran each query `b_first` times (and `a` once).
pub async fn run(
    bin: &Path,
    data: &Path,
    args: &CompareArgs,
    cases: &[Case],
    (a, b): (Side, Side),
    b_first: usize,
    runs: usize,
) -> Result<PairSection> {
    let copy = tempfile::tempdir()?;
    copy_dir(data, copy.path()).context("copying the device's data for a second device")?;
    let scale = args.scale;
    let da = DeviceChild::start_part(bin, data, scale, None, None, a.workers, a.cache_mb).await?;
    let db =
        DeviceChild::start_part(bin, copy.path(), scale, None, None, b.workers, b.cache_mb).await?;
    let options = ClientOptions::default;
    let sa = SqlSession::connect(&da.url, options(), Mode::Offload).await?;
    let sb = SqlSession::connect(&db.url, options(), Mode::Offload).await?;
    eprintln!(
        "side by side: {} against {}, {} queries, {runs} runs each",
        a.label,
        b.label,
        cases.len()
    );
    let mut section = PairSection {
        a: a.label,
        b: b.label,
        ..Default::default()
    };
    for case in cases {
        sa.sql(&case.sql).await?;
        for _ in 0..b_first {
            sb.sql(&case.sql).await?;
        }
        let mut x: [(Vec<f64>, Vec<f64>); 2] = Default::default();
        let mut last = [None, None];
        for round in 0..runs {
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let t = Instant::now();
                let r = [&sa, &sb][i].sql(&case.sql).await?;
                x[i].1.push(t.elapsed().as_secs_f64() * 1e3);
                x[i].0.push(executor_ms(&r));
                last[i] = Some(r);
            }
        }
        let [Some(ra), Some(rb)] = last else {
            bail!("no runs");
        };
        let [(a_ms, a_wall), (b_ms, b_wall)] = x.map(|(e, w)| (median(e), median(w)));
        let run = PairRun {
            name: case.name.clone(),
            a_ms,
            b_ms,
            speedup: a_ms / b_ms.max(1e-3),
            a_wall_ms: a_wall,
            b_wall_ms: b_wall,
            hit_bytes: rb.scans.iter().map(|(_, s)| s.cache_hit_bytes).sum(),
            miss_bytes: rb.scans.iter().map(|(_, s)| s.cache_miss_bytes).sum(),
            equal: canonical(&ra) == canonical(&rb),
        };
        eprintln!(
            "{:<22} {:>8.1} ms | {:>8.1} ms | {:>5.2}x | hit {} B, miss {} B{}",
            run.name,
            run.a_ms,
            run.b_ms,
            run.speedup,
            run.hit_bytes,
            run.miss_bytes,
            if run.equal { "" } else { "  MISMATCH" }
        );
        section.queries.push(run);
    }
    section.a_peak_mib = da.peak_rss_mib();
    section.b_peak_mib = db.peak_rss_mib();
    da.stop().await?;
    db.stop().await?;
    Ok(section)
}

/// The hot-column tier cold against warm, and 1 worker against the started devices' count,
/// into `report` (each skipped when it compares nothing: `--cache-mb 0`, one worker).
pub async fn sections(
    bin: &Path,
    data: &Path,
    args: &CompareArgs,
    cases: &[Case],
    report: &mut Report,
) -> Result<()> {
    let runs = report.runs;
    if args.cache_mb > 0 {
        let sides = (
            Side {
                label: "tier off".into(),
                workers: args.workers,
                cache_mb: 0,
            },
            Side {
                label: format!("{} MiB tier, warm", args.cache_mb),
                workers: args.workers,
                cache_mb: args.cache_mb,
            },
        );
        report.warm = Some(run(bin, data, args, cases, sides, 2, runs).await?);
    }
    let many = args.workers.unwrap_or_else(super::default_workers);
    if many > 1 {
        let side = |w: usize| Side {
            label: format!("{w} worker{}", super::plural(w)),
            workers: Some(w),
            cache_mb: 0,
        };
        report.worker_pair =
            Some(run(bin, data, args, cases, (side(1), side(many)), 1, runs).await?);
    }
    Ok(())
}

/// Copies a data directory (its files and subdirectories).
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dst = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &dst)?;
        } else {
            std::fs::copy(entry.path(), dst)?;
        }
    }
    Ok(())
}

/// A comparison's section of the report, empty when it did not run.
pub fn section(title: &str, p: Option<&PairSection>, runs: usize) -> String {
    let Some(p) = p else {
        return String::new();
    };
    let mut s = format!(
        "## {title}\n\nTwo devices on copies of the same data ({a}; {b}), each query \
         alternately on both; device executor time (`total_us`) and host wall time, medians of \
         {runs}. Peak device memory: {} ({a}), {} ({b}).\n\n\
         | query | {a} ms | {b} ms | speedup | {a} wall ms | {b} wall ms | hit bytes | miss bytes | equal |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---|\n",
        mib(p.a_peak_mib),
        mib(p.b_peak_mib),
        a = p.a,
        b = p.b,
    );
    for q in &p.queries {
        let _ = writeln!(
            s,
            "| {} | {:.1} | {:.1} | {:.2}x | {:.1} | {:.1} | {} | {} | {} |",
            q.name,
            q.a_ms,
            q.b_ms,
            q.speedup,
            q.a_wall_ms,
            q.b_wall_ms,
            q.hit_bytes,
            q.miss_bytes,
            if q.equal { "yes" } else { "NO" }
        );
    }
    s.push('\n');
    s
}

fn mib(v: Option<f64>) -> String {
    v.map_or("unknown".into(), |m| format!("{m:.0} MiB"))
}
