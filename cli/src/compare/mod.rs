//! `nearstore bench compare`: the same SQL offloaded, as a remote scan (the host's own Parquet
//! reader on the device's file: what a host does without offload) and fully transferred, side
//! by side.
//!
//! For each query: the rows must be equal between the modes; the report gives bytes moved
//! over the link (everything the device sent for the call), bytes read on the device, wall
//! time (median, min and max of `runs`, the mode order changing per round), device time,
//! host and device CPU time, and the reduction. The suite runs once over loopback and once
//! per emulated link rate (`--link-gbps`, each with its round-trip time), and the crossover —
//! the link rate above which remote scan beats offload — is interpolated per query. Where the
//! Python packages can be had, DuckDB and DataFusion run the same SQL on the device's Parquet
//! file as reference columns. `--check` turns it into a CI gate: any mismatch, or a reduction
//! below its threshold, fails.
//!
//! Without `--device` the harness starts its own device as a child process (`nearstore serve`
//! with generated TPC-H lineitem), so that the host's CPU time is this process's alone.

mod auto;
mod crossover;
mod device;
mod drives;
mod measure;
mod pair;
mod reference;
pub mod render;
mod report;
mod targets;
mod versus;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use arrow::array::AsArray;
use clap::{Args, ValueEnum};
use nearstore_sdk::SqlResult;

use measure::{Sessions, ipc_bytes, measure, values_of};

pub use device::DeviceChild;
pub use report::{
    AutoChoice, DriveRun, EngineRun, ModeFigures, QueryReport, REPORT_VERSION, Report, ShapedRun,
    Target,
};

/// Whether to run the reference engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReferenceChoice {
    /// Install DuckDB and DataFusion with pip into a local virtual environment if missing.
    Install,
    /// Use them only if the virtual environment already has them.
    Auto,
    /// Do not run them.
    Off,
}

/// `bench compare` arguments.
#[derive(Debug, Args, Clone)]
pub struct CompareArgs {
    /// Device URL; without it a device with generated TPC-H data is started as a child process.
    #[arg(long)]
    pub device: Option<String>,
    /// TPC-H scale factor of the started device's data.
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Runs per query and mode (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Directory for report.json, report.md, the SVG charts and index.html.
    #[arg(long, default_value = "nearstore-compare")]
    pub out: PathBuf,
    /// Fail (exit non-zero) on any result mismatch or missed threshold.
    #[arg(long)]
    pub check: bool,
    /// Minimum bytes-moved reduction for Q6 under --check.
    #[arg(long, default_value_t = 100.0)]
    pub min_q6_reduction: f64,
    /// A previous report.json: under --check, fail when a query's reduction falls below
    /// half of its baseline value.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Emulated link rates in Gb/s to run the suite over besides loopback, comma separated
    /// [default: 1,10,25 for a started device; not available with --device, whose link is its
    /// own].
    #[arg(long, value_delimiter = ',')]
    pub link_gbps: Option<Vec<f64>>,
    /// Reference engines (DuckDB, DataFusion) on the device's Parquet file.
    #[arg(long, value_enum, default_value_t = ReferenceChoice::Install)]
    pub reference: ReferenceChoice,
    /// Also run offload and remote scan with lineitem dealt over 1, 2, 4 … N device
    /// processes, each behind a 10 and a 25 Gb/s link [default: 0, not run].
    #[arg(long, default_value_t = 0)]
    pub devices: usize,
    /// Compute workers of the started devices, and the reference engines' threads (DuckDB's
    /// `threads`, DataFusion's partitions) [default: one per core].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Full transfer receives its rows as Arrow IPC compressed with lz4 or zstd (Auto's own
    /// full transfer stays uncompressed) [default: uncompressed].
    #[arg(long)]
    pub compression: Option<nearstore_proto::IpcCompression>,
    /// Budget in MiB of the hot-column tier for the cold-against-warm section: two more devices
    /// on copies of the data, the tier off and on (every other section runs with it off);
    /// 0 skips the section.
    #[arg(long, default_value_t = 1024)]
    pub cache_mb: u64,
    /// Run only these queries of the suite (names as the report gives them, comma
    /// separated; a name ending in `*` selects every query it begins) [default: all].
    #[arg(long, value_delimiter = ',')]
    pub query: Option<Vec<String>>,
    /// The `nearstore` binary that serves the started device [default: this executable].
    #[arg(long, hide = true, env = "NEARSTORE_DEVICE_BIN")]
    pub device_bin: Option<PathBuf>,
}

impl CompareArgs {
    /// Defaults as the command line has them, for `scale` and `out`.
    pub fn new(scale: f64, out: impl Into<PathBuf>) -> Self {
        CompareArgs {
            device: None,
            scale,
            runs: 3,
            out: out.into(),
            check: false,
            min_q6_reduction: 100.0,
            baseline: None,
            link_gbps: None,
            reference: ReferenceChoice::Install,
            devices: 0,
            workers: None,
            compression: None,
            cache_mb: 1024,
            query: None,
            device_bin: None,
        }
    }
}

/// A test hook: may alter an offload result before it is compared (tests use it to prove the
/// gate fails on a wrong result; production passes `None`).
pub type ResultHook<'a> = &'a (dyn Fn(&str, &mut SqlResult) + Sync);

struct Case {
    name: String,
    selectivity: Option<f64>,
    projection: Option<&'static str>,
    sql: String,
}

fn suite(max_orderkey: i64) -> Vec<Case> {
    let fixed = |name: &str, sql: &str| Case {
        name: name.into(),
        selectivity: None,
        projection: None,
        sql: sql.into(),
    };
    let mut out = vec![
        fixed(
            "tpch_q6",
            "select sum(l_extendedprice * l_discount) as revenue from lineitem where l_shipdate >= date '1994-01-01' \
             and l_shipdate < date '1995-01-01' and l_discount between 0.05 and 0.07 and l_quantity < 24",
        ),
        fixed(
            "tpch_q1",
            "select l_returnflag, l_linestatus, sum(l_quantity) as sum_qty, sum(l_extendedprice) as sum_base_price, \
             sum(l_extendedprice * (1 - l_discount)) as sum_disc_price, avg(l_quantity) as avg_qty, count(*) as count_order \
             from lineitem where l_shipdate <= date '1998-09-02' group by l_returnflag, l_linestatus order by l_returnflag, l_linestatus",
        ),
        fixed(
            "top_k",
            "select l_orderkey, l_extendedprice from lineitem where l_discount = 0.10 order by l_extendedprice desc, l_orderkey limit 10",
        ),
        fixed(
            "group_by_many",
            "select l_partkey, count(*) as n, sum(l_quantity) as q from lineitem where l_shipmode = 'AIR' group by l_partkey order by l_partkey limit 20",
        ),
    ];
    for sel in [0.0001, 0.001, 0.01, 0.1, 0.5, 1.0] {
        let k = ((max_orderkey as f64) * sel).ceil() as i64;
        for (projection, cols) in [("narrow", "l_orderkey, l_quantity"), ("wide", "*")] {
            out.push(Case {
                name: format!("sweep_{projection}_{sel}"),
                selectivity: Some(sel),
                projection: Some(projection),
                sql: format!("select {cols} from lineitem where l_orderkey <= {k}"),
            });
        }
    }
    out
}

/// The cases `names` select (all without names); a name that selects none is an error that
/// lists the suite.
fn selected(cases: Vec<Case>, names: Option<&[String]>) -> Result<Vec<Case>> {
    let Some(names) = names else {
        return Ok(cases);
    };
    let picks = |name: &str, case: &Case| match name.strip_suffix('*') {
        Some(prefix) => case.name.starts_with(prefix),
        None => case.name == name,
    };
    if let Some(unknown) = names.iter().find(|n| !cases.iter().any(|c| picks(n, c))) {
        let all: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
        bail!(
            "--query {unknown} selects no query of the suite: {}",
            all.join(", ")
        );
    }
    Ok(cases
        .into_iter()
        .filter(|c| names.iter().any(|n| picks(n, c)))
        .collect())
}

/// Runs the comparison; `hook` is for tests only.
pub async fn run(args: &CompareArgs, hook: Option<ResultHook<'_>>) -> Result<Report> {
    if !(args.scale.is_finite() && args.scale > 0.0) {
        bail!("--scale must be a positive number, got {}", args.scale);
    }
    let links = links(args)?;

    // The started device and its data directory live until the end of the run.
    let data = tempfile::tempdir().context("temporary data directory")?;
    let mut started = None;
    let url = match &args.device {
        Some(u) => u.clone(),
        None => {
            let bin = match &args.device_bin {
                Some(b) => b.clone(),
                None => std::env::current_exe().context("locating the nearstore binary")?,
            };
            eprintln!(
                "starting a device with TPC-H lineitem at scale factor {}",
                args.scale
            );
            let d = DeviceChild::start(&bin, data.path(), args.scale, None, args.workers).await?;
            let url = d.url.clone();
            started = Some((bin, d));
            url
        }
    };
    let sessions = Sessions::connect(&url, args.compression).await?;
    let mut client = nearstore_sdk::Client::connect(&url).await?;
    let table_rows = client
        .describe("lineitem")
        .await
        .context("the device has no lineitem table")?
        .rows;
    let max_key = sessions
        .offload
        .sql("select max(l_orderkey) as m from lineitem")
        .await?
        .batches
        .first()
        .and_then(|b| {
            b.column(0)
                .as_primitive_opt::<arrow::datatypes::Int64Type>()
                .map(|a| a.value(0))
        })
        .context("lineitem has no l_orderkey")?;

    let mut report = Report {
        version: REPORT_VERSION,
        scale: if args.device.is_some() {
            0.0
        } else {
            args.scale
        },
        runs: args.runs.max(1),
        workers: match args.device {
            Some(_) => 0,
            None => args.workers.unwrap_or_else(default_workers),
        },
        table_rows,
        transfer_compression: args.compression.map(|c| c.as_str().to_string()),
        links: links.clone(),
        ..Default::default()
    };
    let cases = selected(suite(max_key), args.query.as_deref())?;
    let child = started.as_ref().map(|(_, d)| d);
    eprintln!(
        "loopback: {} queries x (3 modes and Auto) x {} runs",
        cases.len(),
        report.runs
    );
    // Each query's offload values, for the reference engines' results to be compared with
    // (the hook has had its say: a tampered value must be caught).
    let mut digests = std::collections::BTreeMap::new();
    for case in &cases {
        let mut m = measure(&sessions, &case.sql, args.runs, child).await?;
        if let Some(h) = hook {
            h(&case.name, &mut m.offload.0);
        }
        if args.reference != ReferenceChoice::Off {
            digests.insert(case.name.clone(), values_of(&m.offload.0.batches)?);
        }
        let equal = m.equal();
        let (auto, auto_line) = (m.auto_choice(), auto_cell(&m));
        let (fa, fr, fb) = (m.offload.1, m.remote.1, m.transfer.1);
        let b = &m.transfer.0;
        let reduction = fb.bytes_moved as f64 / fa.bytes_moved.max(1) as f64;
        let speedup = fb.wall_ms / fa.wall_ms.max(1e-3);
        eprintln!(
            "{:<22} rows {:>8}  offload {:>12} B {:>8.1} ms | remote {:>12} B {:>8.1} ms | transfer {:>12} B {:>8.1} ms | auto {}{}",
            case.name,
            b.num_rows(),
            fa.bytes_moved,
            fa.wall_ms,
            fr.bytes_moved,
            fr.wall_ms,
            fb.bytes_moved,
            fb.wall_ms,
            auto_line,
            if equal { "" } else { "  MISMATCH" }
        );
        report.queries.push(QueryReport {
            name: case.name.clone(),
            selectivity: case.selectivity,
            projection: case.projection.map(str::to_string),
            sql: case.sql.clone(),
            rows: b.num_rows(),
            result_ipc_bytes: ipc_bytes(b)?,
            equal,
            offload: fa,
            remote: fr,
            transfer: fb,
            reduction,
            speedup,
            auto: Some(auto),
            ..Default::default()
        });
    }

    // The same suite over each emulated link: the device restarts with the link shaped.
    let bin = started.as_ref().map(|(bin, _)| bin.clone());
    if let Some((bin, device)) = started.take() {
        shaped_runs(
            &bin,
            data.path(),
            device,
            args,
            &links,
            &cases,
            &mut report,
            hook,
        )
        .await?;
        if args.devices > 0 {
            drives::run(&bin, args, &cases, &mut report).await?;
        }
        pair::sections(&bin, data.path(), args, &cases, &mut report).await?;
    } else if args.devices > 0 {
        bail!("--devices needs the devices the harness starts itself (no --device)");
    }

    add_references(&mut report, args, data.path(), &cases, &digests);
    if let Some(bin) = bin.filter(|_| report.engines.contains_key("duckdb")) {
        // At the devices' workers, then at 1 when they have more: the targets ask for both.
        let counts = match report.workers {
            0 | 1 => vec![report.workers],
            n => vec![n, 1],
        };
        for threads in counts {
            match versus::run(&bin, data.path(), args, &cases, &report, threads).await {
                Ok(p) if threads == report.workers => report.versus = Some(p),
                Ok(p) => report.versus_single = Some(p),
                Err(e) => {
                    let note = format!("DuckDB side by side with the device, {threads}: {e:#}");
                    eprintln!("{note}");
                    report.reference_note = Some(match report.reference_note.take() {
                        Some(n) => format!("{n}; {note}"),
                        None => note,
                    });
                    break;
                }
            }
        }
    }

    report.targets = targets::targets(&report);
    report.failures = check(&report, args)?;
    Ok(report)
}

/// Auto's choice and regret for the progress line, e.g. `offload (1.02)`.
fn auto_cell(m: &measure::Measured) -> String {
    let a = m.auto_choice();
    format!("{} ({:.2})", a.mode, a.regret)
}

/// The emulated link rates to run the suite over: none for an external device.
fn links(args: &CompareArgs) -> Result<Vec<f64>> {
    let links = match (&args.device, &args.link_gbps) {
        (Some(_), Some(l)) if !l.is_empty() => bail!(
            "--link-gbps needs the device the harness starts itself; an external device's link is \
             its own (start it with `nearstore serve --link-gbps N`)"
        ),
        (Some(_), _) => Vec::new(),
        (None, Some(l)) => l.clone(),
        (None, None) => vec![1.0, 10.0, 25.0],
    };
    if let Some(bad) = links.iter().find(|g| !(g.is_finite() && **g > 0.0)) {
        bail!("--link-gbps takes positive rates in Gb/s, got {bad}");
    }
    Ok(links)
}

/// The suite over each emulated link in `links`: the started device restarts with the link
/// shaped, and each query's runs join its report.
async fn shaped_runs(
    bin: &Path,
    data: &Path,
    mut device: DeviceChild,
    args: &CompareArgs,
    links: &[f64],
    cases: &[Case],
    report: &mut Report,
    hook: Option<ResultHook<'_>>,
) -> Result<()> {
    for &gbps in links {
        device.stop().await?;
        device = DeviceChild::start(bin, data, args.scale, Some(gbps), args.workers).await?;
        let s = Sessions::connect(&device.url, args.compression).await?;
        eprintln!(
            "emulated {gbps} Gb/s link: {} queries x (3 modes and Auto)",
            cases.len()
        );
        for (case, q) in cases.iter().zip(report.queries.iter_mut()) {
            let mut m = measure(&s, &case.sql, args.runs, None).await?;
            if let Some(h) = hook {
                h(&case.name, &mut m.offload.0);
            }
            let (fa, fr, fb) = (&m.offload.1, &m.remote.1, &m.transfer.1);
            let run = ShapedRun {
                link_gbps: gbps,
                equal: m.equal(),
                offload_ms: fa.wall_ms,
                remote_ms: fr.wall_ms,
                transfer_ms: fb.wall_ms,
                speedup: fb.wall_ms / fa.wall_ms.max(1e-3),
                auto: Some(m.auto_choice()),
            };
            eprintln!(
                "{:<22} offload {:>8.1} ms | remote {:>8.1} ms | transfer {:>8.1} ms | auto {}",
                case.name,
                run.offload_ms,
                run.remote_ms,
                run.transfer_ms,
                auto_cell(&m)
            );
            q.shaped.push(run);
        }
    }
    device.stop().await?;
    for q in &mut report.queries {
        (q.crossover_gbps, q.crossover) = crossover::crossover(&q.shaped);
    }
    Ok(())
}

/// The reference engines' runs of the suite on the started device's Parquet file, or a note
/// saying why there are none.
fn add_references(
    report: &mut Report,
    args: &CompareArgs,
    data: &Path,
    cases: &[Case],
    ours: &std::collections::BTreeMap<String, measure::Values>,
) {
    if args.device.is_none() && args.reference != ReferenceChoice::Off {
        let threads = args.workers.unwrap_or_else(default_workers);
        match reference::run(data, cases, args.runs, threads, args.reference, ours) {
            Ok(r) => {
                for (name, results) in r.results {
                    if let Some(q) = report.queries.iter_mut().find(|q| q.name == name) {
                        q.reference = results;
                    }
                }
                report.engines = r.engines;
                report.reference_note = r.note;
            }
            Err(e) => report.reference_note = Some(format!("{e:#}")),
        }
        if let Some(n) = &report.reference_note {
            eprintln!("reference engines: {n}");
        }
    } else if args.device.is_some() {
        report.reference_note =
            Some("reference engines need the Parquet file of a device the harness started".into());
    }
}

/// The plural ending of a count's noun: "s" but for 1.
fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// A started device's compute workers when `--workers` is not given: one per core.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// The gate's verdicts.
fn check(report: &Report, args: &CompareArgs) -> Result<Vec<String>> {
    let mut failures = Vec::new();
    for q in &report.queries {
        if !q.equal {
            failures.push(format!(
                "{}: results differ between offload, remote scan and transfer",
                q.name
            ));
        }
        for s in q.shaped.iter().filter(|s| !s.equal) {
            failures.push(format!(
                "{}: results differ between the modes over the {} Gb/s link",
                q.name, s.link_gbps
            ));
        }
        for (engine, e) in &q.reference {
            if e.rows != q.rows {
                failures.push(format!(
                    "{}: {engine} returned {} rows, the device {}",
                    q.name, e.rows, q.rows
                ));
            } else if e.values_equal == Some(false) {
                failures.push(format!(
                    "{}: {engine}'s values differ from the device's (numbers to 9 significant \
                     digits or 6 decimals, rows in any order)",
                    q.name
                ));
            }
        }
        if q.name == "tpch_q6" && q.reduction < args.min_q6_reduction {
            failures.push(format!(
                "tpch_q6: bytes-moved reduction {:.1}x is below the threshold {:.1}x",
                q.reduction, args.min_q6_reduction
            ));
        }
    }
    for p in report.warm.iter().chain(&report.worker_pair) {
        for q in p.queries.iter().filter(|q| !q.equal) {
            failures.push(format!(
                "{}: results differ between {} and {}",
                q.name, p.a, p.b
            ));
        }
    }
    if let Some(path) = &args.baseline {
        let base: Report = serde_json::from_slice(
            &std::fs::read(path).with_context(|| format!("reading baseline {}", path.display()))?,
        )
        .with_context(|| format!("parsing baseline {}", path.display()))?;
        for q in &report.queries {
            if let Some(b) = base.queries.iter().find(|b| b.name == q.name)
                && q.reduction < b.reduction / 2.0
            {
                failures.push(format!(
                    "{}: reduction {:.1}x regressed below half of the baseline {:.1}x",
                    q.name, q.reduction, b.reduction
                ));
            }
        }
    }
    Ok(failures)
}

/// `nearstore bench compare`.
pub async fn compare(args: CompareArgs) -> Result<()> {
    let report = run(&args, None).await?;
    render::write_all(&report, &args.out)?;
    println!("{}", render::markdown(&report));
    eprintln!(
        "wrote {0}/report.json, report.md, the SVG charts and {0}/index.html",
        args.out.display()
    );
    if args.check && !report.failures.is_empty() {
        bail!("comparison gate failed: {}", report.failures.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names_select_cases_and_an_unknown_one_lists_the_suite() {
        let names = |picked: Vec<Case>| picked.into_iter().map(|c| c.name).collect::<Vec<_>>();
        let pick = |n: &[&str]| {
            selected(
                suite(100),
                Some(&n.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
            )
        };
        assert_eq!(names(selected(suite(100), None).unwrap()).len(), 16);
        assert_eq!(
            names(pick(&["tpch_q6", "top_k"]).unwrap()),
            ["tpch_q6", "top_k"]
        );
        let wide = names(pick(&["sweep_wide_*"]).unwrap());
        assert_eq!(wide.len(), 6);
        assert!(
            wide.iter().all(|n| n.starts_with("sweep_wide_")),
            "{wide:?}"
        );
        let e = pick(&["tpch_q6", "q99"]).err().unwrap().to_string();
        assert!(
            e.starts_with("--query q99 selects no query of the suite: tpch_q6, tpch_q1"),
            "{e}"
        );
    }
}
