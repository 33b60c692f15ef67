//! `nearstore bench compare`: the same SQL in offload and in full-transfer mode, side by side.
//!
//! For each query: the rows must be equal between the modes; the report gives bytes moved
//! over the link, wall time (median of `runs`) and the reduction. `--check` turns it into a CI
//! gate: any mismatch, or a reduction below its threshold, fails.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type};
use clap::Args;
use nearstore_runtime::{Device, DeviceConfig};
use nearstore_sdk::{ClientOptions, Mode, SqlResult, SqlSession};
use serde::{Deserialize, Serialize};

/// `bench compare` arguments.
#[derive(Debug, Args, Clone)]
pub struct CompareArgs {
    /// Device URL; without it an embedded device with generated TPC-H data is started.
    #[arg(long)]
    pub device: Option<String>,
    /// TPC-H scale factor of the embedded device's data.
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Runs per query and mode (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Directory for report.json and report.md.
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
}

/// One mode's figures for one query.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ModeFigures {
    /// Bytes the device sent.
    pub bytes_moved: u64,
    /// Bytes the device read from its media.
    pub bytes_read: u64,
    /// Median wall time, milliseconds.
    pub wall_ms: f64,
    /// Device time summed over scans (median run), milliseconds.
    pub device_ms: f64,
}

/// One query of the report.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct QueryReport {
    /// Name.
    pub name: String,
    /// Fraction of rows the filter keeps, for the sweep.
    pub selectivity: Option<f64>,
    /// The SQL.
    pub sql: String,
    /// Result rows.
    pub rows: usize,
    /// Whether both modes returned the same rows.
    pub equal: bool,
    /// Offload figures.
    pub offload: ModeFigures,
    /// Full-transfer figures.
    pub transfer: ModeFigures,
    /// transfer bytes / offload bytes.
    pub reduction: f64,
}

/// The report (`report.json`, schema version 1).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// Schema version.
    pub version: u32,
    /// TPC-H scale factor (embedded device) or 0 for an external device.
    pub scale: f64,
    /// Queries.
    pub queries: Vec<QueryReport>,
    /// Problems found by --check.
    pub failures: Vec<String>,
}

/// A test hook: may alter an offload result before it is compared (tests use it to prove the
/// gate fails on a wrong result; production passes `None`).
pub type ResultHook<'a> = &'a (dyn Fn(&str, &mut SqlResult) + Sync);

fn suite(max_orderkey: i64) -> Vec<(String, Option<f64>, String)> {
    let mut out = vec![
        (
            "tpch_q6".to_string(),
            None,
            "select sum(l_extendedprice * l_discount) as revenue from lineitem where l_shipdate >= date '1994-01-01' \
             and l_shipdate < date '1995-01-01' and l_discount between 0.05 and 0.07 and l_quantity < 24"
                .to_string(),
        ),
        (
            "tpch_q1".to_string(),
            None,
            "select l_returnflag, l_linestatus, sum(l_quantity) as sum_qty, sum(l_extendedprice) as sum_base_price, \
             sum(l_extendedprice * (1 - l_discount)) as sum_disc_price, avg(l_quantity) as avg_qty, count(*) as count_order \
             from lineitem where l_shipdate <= date '1998-09-02' group by l_returnflag, l_linestatus order by l_returnflag, l_linestatus"
                .to_string(),
        ),
        (
            "top_k".to_string(),
            None,
            "select l_orderkey, l_extendedprice from lineitem where l_discount = 0.10 order by l_extendedprice desc, l_orderkey limit 10"
                .to_string(),
        ),
        (
            "group_by_many".to_string(),
            None,
            "select l_partkey, count(*) as n, sum(l_quantity) as q from lineitem where l_shipmode = 'AIR' group by l_partkey order by l_partkey limit 20"
                .to_string(),
        ),
    ];
    for sel in [0.0001, 0.001, 0.01, 0.1, 0.5, 1.0] {
        let k = ((max_orderkey as f64) * sel).ceil() as i64;
        out.push((
            format!("sweep_narrow_{sel}"),
            Some(sel),
            format!("select l_orderkey, l_quantity from lineitem where l_orderkey <= {k}"),
        ));
        out.push((
            format!("sweep_wide_{sel}"),
            Some(sel),
            format!("select * from lineitem where l_orderkey <= {k}"),
        ));
    }
    out
}

/// Result rows as sorted text, floats to 9 significant digits.
fn canonical(r: &SqlResult) -> Vec<String> {
    let mut rows = Vec::new();
    for b in &r.batches {
        rows.extend(batch_rows(b));
    }
    rows.sort();
    rows
}

fn batch_rows(b: &RecordBatch) -> Vec<String> {
    (0..b.num_rows())
        .map(|i| {
            b.columns()
                .iter()
                .map(|c| match c.data_type() {
                    DataType::Float64 if c.is_valid(i) => {
                        format!("{:.8e}", c.as_primitive::<Float64Type>().value(i))
                    }
                    _ => arrow::util::display::array_value_to_string(c, i).unwrap_or_default(),
                })
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

async fn measure(s: &SqlSession, sql: &str, runs: usize) -> Result<(SqlResult, ModeFigures)> {
    let mut walls = Vec::new();
    let mut devs = Vec::new();
    let mut last = None;
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        let r = s.sql(sql).await?;
        walls.push(t.elapsed().as_secs_f64() * 1e3);
        devs.push(r.scans.iter().map(|(_, st)| st.total_us as f64 / 1e3).sum());
        last = Some(r);
    }
    let r = last.expect("at least one run");
    let fig = ModeFigures {
        bytes_moved: r.bytes_moved(),
        bytes_read: r.scans.iter().map(|(_, st)| st.bytes_read_media).sum(),
        wall_ms: median(walls),
        device_ms: median(devs),
    };
    Ok((r, fig))
}

/// Runs the comparison; `hook` is for tests only.
pub async fn run(args: &CompareArgs, hook: Option<ResultHook<'_>>) -> Result<Report> {
    // The embedded device and its data directory live until the end of the run.
    let mut embedded = None;
    let url = match &args.device {
        Some(u) => u.clone(),
        None => {
            let dir = tempfile::tempdir().context("temporary data directory")?;
            let device = {
                let cfg = DeviceConfig::new(dir.path());
                tokio::task::spawn_blocking(move || Device::open(&cfg)).await??
            };
            let d = device.clone();
            let scale = args.scale;
            eprintln!("generating TPC-H lineitem at scale factor {scale} for the comparison");
            tokio::task::spawn_blocking(move || d.load_tpch("lineitem", scale, &|_, _| {}))
                .await??;
            let server = device.serve_local().await?;
            let url = server.url.clone();
            embedded = Some((server, dir));
            url
        }
    };
    let offload = SqlSession::connect(&url, ClientOptions::default(), Mode::Offload).await?;
    let transfer = SqlSession::connect(&url, ClientOptions::default(), Mode::FullTransfer).await?;
    let max_key = offload
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
        version: 1,
        scale: if args.device.is_some() {
            0.0
        } else {
            args.scale
        },
        ..Default::default()
    };
    for (name, selectivity, sql) in suite(max_key) {
        let (mut a, fa) = measure(&offload, &sql, args.runs).await?;
        let (b, fb) = measure(&transfer, &sql, args.runs).await?;
        if let Some(h) = hook {
            h(&name, &mut a);
        }
        let equal = canonical(&a) == canonical(&b);
        let reduction = fb.bytes_moved as f64 / fa.bytes_moved.max(1) as f64;
        eprintln!(
            "{name:<22} rows {:>8}  offload {:>12} B {:>8.1} ms | transfer {:>12} B {:>8.1} ms | {reduction:>8.1}x{}",
            b.num_rows(),
            fa.bytes_moved,
            fa.wall_ms,
            fb.bytes_moved,
            fb.wall_ms,
            if equal { "" } else { "  MISMATCH" }
        );
        report.queries.push(QueryReport {
            name,
            selectivity,
            sql,
            rows: b.num_rows(),
            equal,
            offload: fa,
            transfer: fb,
            reduction,
        });
    }
    if let Some((server, _dir)) = embedded {
        server.stop().await?;
    }

    for q in &report.queries {
        if !q.equal {
            report.failures.push(format!(
                "{}: results differ between offload and transfer",
                q.name
            ));
        }
        if q.name == "tpch_q6" && q.reduction < args.min_q6_reduction {
            report.failures.push(format!(
                "tpch_q6: bytes-moved reduction {:.1}x is below the threshold {:.1}x",
                q.reduction, args.min_q6_reduction
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
                report.failures.push(format!(
                    "{}: reduction {:.1}x regressed below half of the baseline {:.1}x",
                    q.name, q.reduction, b.reduction
                ));
            }
        }
    }
    Ok(report)
}

/// The Markdown table of a report.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    s.push_str("# Offload vs full transfer\n\n");
    if r.scale > 0.0 {
        s.push_str(&format!("TPC-H lineitem at scale factor {}.\n\n", r.scale));
    }
    s.push_str("| query | rows | equal | offload bytes | transfer bytes | reduction | offload ms | transfer ms |\n");
    s.push_str("|---|---:|---|---:|---:|---:|---:|---:|\n");
    for q in &r.queries {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.1}x | {:.1} | {:.1} |\n",
            q.name,
            q.rows,
            if q.equal { "yes" } else { "**NO**" },
            q.offload.bytes_moved,
            q.transfer.bytes_moved,
            q.reduction,
            q.offload.wall_ms,
            q.transfer.wall_ms
        ));
    }
    if !r.failures.is_empty() {
        s.push_str("\n## Failures\n\n");
        for f in &r.failures {
            s.push_str(&format!("- {f}\n"));
        }
    }
    s
}

/// `nearstore bench compare`.
pub async fn compare(args: CompareArgs) -> Result<()> {
    let report = run(&args, None).await?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    std::fs::write(
        args.out.join("report.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    std::fs::write(args.out.join("report.md"), markdown(&report))?;
    println!("{}", markdown(&report));
    eprintln!("wrote {}/report.json and report.md", args.out.display());
    if args.check && !report.failures.is_empty() {
        bail!("comparison gate failed: {}", report.failures.join("; "));
    }
    Ok(())
}
