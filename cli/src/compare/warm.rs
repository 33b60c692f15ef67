//! The hot-column tier, cold against warm (`bench compare --cache-mb N`): two devices on
//! copies of the same data, one with the tier off and one with `N` MiB of it, each query run
//! on both alternately (offload, loopback) after the warm device has seen it twice (a chunk is
//! admitted on its second touch). Both devices' executor time (`total_us`, from preparation
//! to the last batch) and the host's wall time are reported, with the peak memory of each
//! device process.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use nearstore_sdk::{ClientOptions, Mode, SqlSession};
use serde::{Deserialize, Serialize};

use super::measure::{canonical, median};
use super::{Case, CompareArgs, DeviceChild, Report};

/// One query cold and warm.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct WarmRun {
    /// Query name.
    pub name: String,
    /// Device executor time with the tier off, median ms.
    pub cold_ms: f64,
    /// Device executor time served from the tier, median ms.
    pub warm_ms: f64,
    /// `cold_ms / warm_ms`.
    pub speedup: f64,
    /// Host wall time of the SQL call, tier off and on, median ms.
    pub cold_wall_ms: f64,
    /// See `cold_wall_ms`.
    pub warm_wall_ms: f64,
    /// Media bytes the warm run took from the tier, and read from the media.
    pub hit_bytes: u64,
    /// See `hit_bytes`.
    pub miss_bytes: u64,
    /// Same rows cold and warm.
    pub equal: bool,
}

/// The section's figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct WarmSection {
    /// The tier's budget, MiB.
    pub cache_mb: u64,
    /// Per query.
    pub queries: Vec<WarmRun>,
    /// Peak resident memory of the device without the tier and with it, MiB.
    pub cold_peak_mib: Option<f64>,
    /// See `cold_peak_mib`.
    pub warm_peak_mib: Option<f64>,
}

/// Runs the suite cold and warm on two devices started on copies of `data`.
pub async fn run(
    bin: &Path,
    data: &Path,
    args: &CompareArgs,
    cases: &[Case],
    report: &mut Report,
) -> Result<()> {
    let copy = tempfile::tempdir()?;
    copy_dir(data, copy.path()).context("copying the device's data for the warm device")?;
    let (scale, workers) = (args.scale, args.workers);
    let cold = DeviceChild::start_part(bin, data, scale, None, None, workers, 0).await?;
    let warm = DeviceChild::start_part(bin, copy.path(), scale, None, None, workers, args.cache_mb)
        .await?;
    let options = ClientOptions::default;
    let c = SqlSession::connect(&cold.url, options(), Mode::Offload).await?;
    let w = SqlSession::connect(&warm.url, options(), Mode::Offload).await?;
    eprintln!(
        "hot-column tier: {} queries, cold and warm ({} MiB), {} runs each",
        cases.len(),
        args.cache_mb,
        report.runs
    );
    let mut section = WarmSection {
        cache_mb: args.cache_mb,
        ..Default::default()
    };
    for case in cases {
        // First touch and admission on the warm device; the cold one runs once too (the
        // page cache).
        for s in [&w, &w, &c] {
            s.sql(&case.sql).await?;
        }
        let mut x: [(Vec<f64>, Vec<f64>); 2] = Default::default();
        let mut last = [None, None];
        for round in 0..report.runs {
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let t = Instant::now();
                let r = [&c, &w][i].sql(&case.sql).await?;
                x[i].1.push(t.elapsed().as_secs_f64() * 1e3);
                x[i].0
                    .push(r.scans.iter().map(|(_, st)| st.total_us as f64 / 1e3).sum());
                last[i] = Some(r);
            }
        }
        let [Some(rc), Some(rw)] = last else {
            bail!("no runs");
        };
        let [(cold_ms, cold_wall), (warm_ms, warm_wall)] = x.map(|(e, w)| (median(e), median(w)));
        let run = WarmRun {
            name: case.name.clone(),
            cold_ms,
            warm_ms,
            speedup: cold_ms / warm_ms.max(1e-3),
            cold_wall_ms: cold_wall,
            warm_wall_ms: warm_wall,
            hit_bytes: rw.scans.iter().map(|(_, s)| s.cache_hit_bytes).sum(),
            miss_bytes: rw.scans.iter().map(|(_, s)| s.cache_miss_bytes).sum(),
            equal: canonical(&rc) == canonical(&rw),
        };
        eprintln!(
            "{:<22} cold {:>8.1} ms | warm {:>8.1} ms | {:>5.2}x | hit {} B, miss {} B{}",
            run.name,
            run.cold_ms,
            run.warm_ms,
            run.speedup,
            run.hit_bytes,
            run.miss_bytes,
            if run.equal { "" } else { "  MISMATCH" }
        );
        section.queries.push(run);
    }
    section.cold_peak_mib = cold.peak_rss_mib();
    section.warm_peak_mib = warm.peak_rss_mib();
    cold.stop().await?;
    warm.stop().await?;
    report.warm = Some(section);
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

/// The report's section, empty when it did not run.
pub fn section(r: &Report) -> String {
    let Some(w) = &r.warm else {
        return String::new();
    };
    let mut s = format!(
        "## Hot-column tier: cold against warm\n\nTwo devices on copies of the same data, \
         the tier off and {} MiB of it, each query alternately on both after the warm one saw \
         it twice; device executor time (`total_us`) and host wall time, medians of {}. Peak \
         device memory: {} without the tier, {} with it.\n\n\
         | query | cold ms | warm ms | speedup | cold wall ms | warm wall ms | hit bytes | miss bytes | equal |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---|\n",
        w.cache_mb,
        r.runs,
        mib(w.cold_peak_mib),
        mib(w.warm_peak_mib),
    );
    for q in &w.queries {
        let _ = writeln!(
            s,
            "| {} | {:.1} | {:.1} | {:.2}x | {:.1} | {:.1} | {} | {} | {} |",
            q.name,
            q.cold_ms,
            q.warm_ms,
            q.speedup,
            q.cold_wall_ms,
            q.warm_wall_ms,
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
