//! `nearstore serve` and `nearstore demo`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use nearstore_proto::{AggFunc, BackendKind};
use nearstore_runtime::storage::reader::{ReaderChoice, ReaderConfig};
use nearstore_runtime::storage::{PageCodec, WriteConfig};
use nearstore_runtime::{Device, DeviceConfig};
use nearstore_sdk::{Client, Query};
use serde::Deserialize;

use crate::serve_process::SERVING;
use crate::{DemoArgs, Format, format_stats, human_bytes, print_batches, progress_bar};

/// `serve` arguments. Each falls back to the TOML file (`--config`), then to the default.
#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// Data directory [default: ./nearstore-data].
    #[arg(long, env = "NEARSTORE_DATA")]
    pub data: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:50051].
    #[arg(long, env = "NEARSTORE_LISTEN")]
    pub listen: Option<String>,
    /// TOML configuration file.
    #[arg(long, env = "NEARSTORE_CONFIG")]
    pub config: Option<PathBuf>,
    /// TPC-H scale factor of the demo lineitem table generated into an empty data directory
    /// [default: 0.1].
    #[arg(long)]
    pub demo_scale: Option<f64>,
    /// Generate only part I of N of the demo table (`I/N`, 1-based): a table dealt over N
    /// devices, each started with its own part.
    #[arg(long, value_parser = parse_part)]
    pub demo_part: Option<(usize, usize)>,
    /// Do not generate the demo table into an empty data directory.
    #[arg(long)]
    pub no_demo: bool,
    /// Read path: auto, io_uring or pread [default: auto].
    #[arg(long, env = "NEARSTORE_READER")]
    pub reader: Option<ReaderChoice>,
    /// Reads in flight at most, 1-128 [default: 64].
    #[arg(long)]
    pub queue_depth: Option<u32>,
    /// Read objects with O_DIRECT (bypass the page cache).
    #[arg(long)]
    pub direct_io: bool,
    /// Default compute backend: wasm, native [default: wasm].
    #[arg(long, env = "NEARSTORE_BACKEND")]
    pub backend: Option<BackendKind>,
    /// Compute workers one query may spread its row groups over, while no other query needs
    /// them [default: one per core].
    #[arg(long, env = "NEARSTORE_WORKERS")]
    pub workers: Option<usize>,
    /// The namespace's size in MiB: an upload that would take the data directory past it is
    /// refused as on a full disk [default: the file system's free space].
    #[arg(long, env = "NEARSTORE_CAPACITY_MB")]
    pub capacity_mb: Option<u64>,
    /// Hot-column tier in MiB: decoded column chunks kept in memory, admitted on their second
    /// touch; 0 turns it off [default: a quarter of the machine's memory].
    #[arg(long, env = "NEARSTORE_CACHE_MB")]
    pub cache_mb: Option<u64>,
    /// File-backed tier under the hot-column tier: a directory (standing in for persistent
    /// memory) its chunks are written through to, memory-mapped and verified at start-up, so a
    /// restart keeps them; one device's own (it deletes files of objects it does not hold)
    /// [default: none].
    #[arg(long, env = "NEARSTORE_PMEM_DIR")]
    pub pmem_dir: Option<PathBuf>,
    /// Rows per row group of objects the device writes [default: 131072].
    #[arg(long)]
    pub row_group_rows: Option<usize>,
    /// Rows per data page at most [default: 8192].
    #[arg(long)]
    pub page_rows: Option<usize>,
    /// Compression of the pages of objects the device writes: snappy, lz4, zstd or none
    /// [default: snappy].
    #[arg(long)]
    pub page_codec: Option<PageCodec>,
    /// Emulate a device-to-host link of this many Gb/s (results are paced in the send path)
    /// [default: unshaped].
    #[arg(long, env = "NEARSTORE_LINK_GBPS")]
    pub link_gbps: Option<f64>,
    /// Round-trip time of the emulated link in microseconds, paid once per call
    /// [default: 100 with --link-gbps].
    #[arg(long, env = "NEARSTORE_LINK_RTT_US")]
    pub link_rtt_us: Option<u64>,
    /// TLS certificate chain (PEM); with --tls-key the device serves grpc+tls.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve Prometheus metrics (GET /metrics) on this address [default: off].
    #[arg(long, env = "NEARSTORE_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

/// The TOML configuration file: the same keys as the flags, with underscores.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data: Option<PathBuf>,
    listen: Option<String>,
    demo_scale: Option<f64>,
    no_demo: Option<bool>,
    reader: Option<String>,
    queue_depth: Option<u32>,
    direct_io: Option<bool>,
    backend: Option<String>,
    workers: Option<usize>,
    capacity_mb: Option<u64>,
    cache_mb: Option<u64>,
    pmem_dir: Option<PathBuf>,
    row_group_rows: Option<usize>,
    page_rows: Option<usize>,
    page_codec: Option<String>,
    link_gbps: Option<f64>,
    link_rtt_us: Option<u64>,
    metrics_listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    /// Tenants (`[[tenants]]` tables: name, token_sha256, admin). Without any, the device
    /// runs open: no token needed.
    #[serde(default)]
    tenants: Vec<nearstore_runtime::server::auth::TenantConfig>,
    /// Limits per tenant (`[qos]`: max_queries, max_queued, media_mb_per_s,
    /// kernel_deadline_ms, kernel_call_ms, kernel_memory_mb, max_kernels).
    qos: Option<nearstore_runtime::server::qos::QosConfig>,
}

/// Settings after merging flags, environment, file and defaults.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Device configuration.
    pub device: DeviceConfig,
    /// Listen address.
    pub listen: String,
    /// Demo scale, or none for no demo.
    pub demo_scale: Option<f64>,
    /// The part of the demo table to generate (1-based part, parts).
    pub demo_part: (usize, usize),
    /// Metrics address, if any.
    pub metrics_listen: Option<String>,
}

impl ServeArgs {
    /// Merges flags (and environment) over the TOML file over the defaults.
    pub fn resolve(&self) -> Result<Resolved> {
        let file: FileConfig = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading config {}", p.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing config {}", p.display()))?
            }
            None => FileConfig::default(),
        };
        let reader = match (&self.reader, &file.reader) {
            (Some(r), _) => *r,
            (None, Some(r)) => r.parse().map_err(anyhow::Error::msg)?,
            (None, None) => ReaderChoice::Auto,
        };
        let backend = match (&self.backend, &file.backend) {
            (Some(b), _) => *b,
            (None, Some(b)) => b.parse()?,
            (None, None) => BackendKind::Wasm,
        };
        let defaults = WriteConfig::default();
        let write = WriteConfig {
            row_group_rows: self
                .row_group_rows
                .or(file.row_group_rows)
                .unwrap_or(defaults.row_group_rows),
            page_rows: self
                .page_rows
                .or(file.page_rows)
                .unwrap_or(defaults.page_rows),
            codec: match (self.page_codec, &file.page_codec) {
                (Some(c), _) => c,
                (None, Some(c)) => c.parse().map_err(anyhow::Error::msg)?,
                (None, None) => defaults.codec,
            },
        };
        if write.row_group_rows == 0 || write.page_rows == 0 {
            bail!("row_group_rows and page_rows must be positive");
        }
        let data = self
            .data
            .clone()
            .or(file.data)
            .unwrap_or_else(|| PathBuf::from("./nearstore-data"));
        let mut device = DeviceConfig::new(data);
        device.reader = ReaderConfig {
            choice: reader,
            queue_depth: self.queue_depth.or(file.queue_depth).unwrap_or(64),
            direct_io: self.direct_io || file.direct_io.unwrap_or(false),
        };
        device.write = write;
        device.backend = backend;
        device.workers = self.workers.or(file.workers);
        if device.workers == Some(0) {
            bail!("workers must be at least 1");
        }
        device.capacity_mb = self.capacity_mb.or(file.capacity_mb);
        device.cache_mb = self.cache_mb.or(file.cache_mb);
        device.pmem_dir = self.pmem_dir.clone().or(file.pmem_dir);
        device.link_gbps = self.link_gbps.or(file.link_gbps);
        device.link_rtt_us = self.link_rtt_us.or(file.link_rtt_us);
        device.tenants = file.tenants;
        if let Some(q) = file.qos {
            device.qos = q;
        }
        match (
            self.tls_cert.clone().or(file.tls_cert),
            self.tls_key.clone().or(file.tls_key),
        ) {
            (Some(c), Some(k)) => {
                let read = |p: &PathBuf| {
                    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
                };
                device.tls = Some(nearstore_runtime::TlsPem {
                    cert: read(&c)?,
                    key: read(&k)?,
                });
            }
            (None, None) => {}
            _ => bail!("TLS needs both tls_cert and tls_key"),
        }
        if let Some(g) = device.link_gbps
            && !(g.is_finite() && g > 0.0)
        {
            bail!("link_gbps must be a positive number of Gb/s, got {g}");
        }
        let no_demo = self.no_demo || file.no_demo.unwrap_or(false);
        Ok(Resolved {
            device,
            listen: self
                .listen
                .clone()
                .or(file.listen)
                .unwrap_or_else(|| "127.0.0.1:50051".into()),
            demo_scale: (!no_demo).then(|| self.demo_scale.or(file.demo_scale).unwrap_or(0.1)),
            demo_part: self.demo_part.unwrap_or((1, 1)),
            metrics_listen: self.metrics_listen.clone().or(file.metrics_listen),
        })
    }
}

/// `I/N` with 1 <= I <= N.
fn parse_part(s: &str) -> std::result::Result<(usize, usize), String> {
    let (i, n) = s
        .split_once('/')
        .ok_or_else(|| format!("'{s}' is not a part I/N (e.g. 2/4)"))?;
    let num = |x: &str| x.trim().parse::<usize>().map_err(|e| format!("'{x}': {e}"));
    let (i, n) = (num(i)?, num(n)?);
    if !(1 <= i && i <= n) {
        return Err(format!("part {i}/{n}: expected 1 <= I <= N"));
    }
    Ok((i, n))
}

/// Generates the demo lineitem table (or part of it) when the namespace holds no table.
fn ensure_demo(device: &Device, scale: f64, part: (usize, usize)) -> Result<()> {
    if !device.storage().table_names().is_empty() {
        return Ok(());
    }
    let total = nearstore_runtime::demo::approx_rows("lineitem", scale) / part.1 as u64;
    let of = if part.1 > 1 {
        format!(", part {} of {}", part.0, part.1)
    } else {
        String::new()
    };
    eprintln!(
        "generating the demo table: TPC-H lineitem at scale factor {scale}{of} (~{total} rows)"
    );
    let bar = progress_bar(total, "generating lineitem", "{pos}/{len} rows");
    let t = Instant::now();
    let rows = device.load_tpch_part("lineitem", scale, part, &|rows, total| {
        bar.set_length(total);
        bar.set_position(rows);
    })?;
    bar.finish_and_clear();
    eprintln!(
        "demo table ready: {rows} rows in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested; finishing in-flight calls");
}

/// Runs a device until SIGINT or SIGTERM.
pub async fn serve(args: ServeArgs) -> Result<()> {
    let r = args.resolve()?;
    let config = r.device.clone();
    let device = tokio::task::spawn_blocking(move || Device::open(&config))
        .await?
        .context("opening the device")?;
    if let Some(scale) = r.demo_scale {
        let d = device.clone();
        let part = r.demo_part;
        tokio::task::spawn_blocking(move || ensure_demo(&d, scale, part)).await??;
    }
    let listener = tokio::net::TcpListener::bind(&r.listen)
        .await
        .with_context(|| format!("listening on {}", r.listen))?;
    let addr = listener.local_addr()?;
    eprintln!(
        "{SERVING} {} on {}://{addr} (reader {}, backend {}, link {})",
        r.device.data_dir.display(),
        if r.device.tls.is_some() {
            "grpc+tls"
        } else {
            "grpc"
        },
        device.storage().reader().kind().as_str(),
        r.device.backend.as_str(),
        match r.device.link_gbps {
            Some(g) => format!(
                "{g} Gb/s emulated, {} µs round trip",
                r.device
                    .link_rtt_us
                    .unwrap_or(nearstore_runtime::server::link::DEFAULT_RTT.as_micros() as u64)
            ),
            None => "unshaped".into(),
        }
    );
    if r.device.tenants.is_empty() {
        eprintln!(
            "authentication is off: no tenants are configured, every caller may use every table \
             (add [[tenants]] to the --config file; `nearstore token --tenant NAME` makes a token)"
        );
    } else {
        eprintln!(
            "{} tenant(s) configured: every call needs a bearer token",
            r.device.tenants.len()
        );
    }
    if let Some(m) = &r.metrics_listen {
        let l = tokio::net::TcpListener::bind(m)
            .await
            .with_context(|| format!("listening for metrics on {m}"))?;
        eprintln!("metrics on http://{}/metrics", l.local_addr()?);
        device.serve_metrics(l);
    }
    device.serve(listener, shutdown_signal()).await?;
    eprintln!("nearstore device stopped");
    Ok(())
}

/// Starts a device in this process, generates the demo table if needed, and runs queries
/// against it over Arrow Flight, as any host would.
pub async fn demo(args: DemoArgs) -> Result<()> {
    let config = DeviceConfig::new(&args.data);
    let device = {
        let c = config.clone();
        tokio::task::spawn_blocking(move || Device::open(&c)).await??
    };
    if !device
        .storage()
        .table_names()
        .iter()
        .any(|t| t == "lineitem")
    {
        let d = device.clone();
        let scale = args.scale;
        tokio::task::spawn_blocking(move || ensure_demo(&d, scale, (1, 1))).await??;
    }
    let server = device.serve_local().await?;
    let url = server.url.clone();
    eprintln!(
        "device {} serving {} on {url}",
        reader_name(&device),
        Path::new(&args.data).display()
    );
    let result = run_demo_queries(&url).await;
    server.stop().await?;
    result
}

fn reader_name(d: &Device) -> &'static str {
    d.storage().reader().kind().as_str()
}

async fn run_demo_queries(url: &str) -> Result<()> {
    let mut client = Client::connect(url).await?;
    let info = client.describe("lineitem").await?;
    println!(
        "table lineitem: {} rows, {} on the device\n",
        info.rows,
        human_bytes(info.bytes)
    );

    let queries = [
        (
            "TPC-H Q6 (filter + aggregate on the device)",
            Query::table("lineitem")
                .filter("l_shipdate >= DATE '1994-01-01' AND l_shipdate < DATE '1995-01-01' AND l_discount BETWEEN 0.05 AND 0.07 AND l_quantity < 24")?
                .aggregate(AggFunc::Sum, Some("l_extendedprice * l_discount"), "revenue")?
                .build(),
        ),
        (
            "TPC-H Q1 (group by on the device)",
            Query::table("lineitem")
                .filter("l_shipdate <= DATE '1998-09-02'")?
                .group_by(["l_returnflag", "l_linestatus"])
                .aggregate(AggFunc::Sum, Some("l_quantity"), "sum_qty")?
                .aggregate(AggFunc::Sum, Some("l_extendedprice"), "sum_base_price")?
                .aggregate(AggFunc::Sum, Some("l_extendedprice * (1 - l_discount)"), "sum_disc_price")?
                .aggregate(AggFunc::Avg, Some("l_quantity"), "avg_qty")?
                .aggregate(AggFunc::CountStar, None, "count_order")?
                .order_by("l_returnflag", false)
                .order_by("l_linestatus", false)
                .build(),
        ),
        (
            "A selective scan (one order's line items)",
            Query::table("lineitem")
                .filter("l_orderkey = 4225")?
                .select(["l_orderkey", "l_linenumber", "l_quantity", "l_extendedprice", "l_shipdate"])
                .build(),
        ),
    ];
    let mut moved = 0u64;
    for (title, plan) in queries {
        println!("== {title}");
        let r = client.query(&plan).await?;
        print_batches(&r.batches, &r.schema, Format::Table)?;
        println!("{}\n", format_stats(&r.stats));
        moved += r.stats.bytes_sent;
    }
    println!(
        "The three answers moved {} over the link in all; the table on the device is {}.",
        human_bytes(moved),
        human_bytes(info.bytes)
    );
    Ok(())
}
