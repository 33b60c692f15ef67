//! The `nearstore` command line: serve a device, upload tables, run queries.
//!
//! The binary's `main` calls [`run`]; tests drive the same function.

pub mod compare;
pub mod kernel;

/// The kernel author's guide (`docs/kernels.md`); its code blocks are compiled as doctests.
#[doc = include_str!("../../docs/kernels.md")]
pub mod kernel_guide {}
mod serve;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use arrow::record_batch::RecordBatch;
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use nearstore_proto::{AggFunc, BackendKind, Plan, PutMode, QueryStats};
use nearstore_sdk::{Client, ClientOptions, Query};

pub use serve::{ServeArgs, serve};

/// Default device address for client commands.
pub const DEFAULT_DEVICE: &str = "grpc://127.0.0.1:50051";

/// Nearstore: a computational storage offload runtime.
#[derive(Debug, Parser)]
#[command(name = "nearstore", version, about)]
pub struct Cli {
    /// Command.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a device: serve its namespace over Arrow Flight.
    Serve(ServeArgs),
    /// Start a device with a generated TPC-H table and query it end to end.
    Demo(DemoArgs),
    /// Upload a Parquet file as a table.
    Put(PutArgs),
    /// List the device's tables.
    Tables(DeviceArg),
    /// Describe a table.
    Describe(TableArgs),
    /// Drop a table.
    Drop(TableArgs),
    /// Run a pushdown query and print the result and the statistics.
    Query(QueryArgs),
    /// Run SQL over the device's tables (DataFusion on the host, pushdown to the device).
    Sql(SqlArgs),
    /// Generate TPC-H tables on this host and upload them to the device.
    Tpch(TpchArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Device information and counters.
    Info(DeviceArg),
    /// Verify every object's checksum on the device.
    Scrub(DeviceArg),
    /// Make a bearer token for a tenant: prints the token once and the `[[tenants]]` entry
    /// (with only the token's SHA-256) for the device's TOML file.
    Token(TokenArgs),
    /// Write, build, test and register Wasm kernels.
    #[command(subcommand)]
    Kernel(kernel::KernelCommand),
}

/// `token` arguments.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Tenant name (its table namespace).
    #[arg(long)]
    pub tenant: String,
    /// Give the tenant the admin role (device-wide actions: info, scrub).
    #[arg(long)]
    pub admin: bool,
}

/// A new random token (256 bits from the OS, hex).
fn new_token() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn token(args: TokenArgs) -> Result<()> {
    let valid = !args.tenant.is_empty()
        && args.tenant.len() <= 64
        && args
            .tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid {
        bail!(
            "tenant name '{}' must be 1-64 characters of [A-Za-z0-9_-]",
            args.tenant
        );
    }
    let token = new_token()?;
    let hash = nearstore_runtime::server::auth::token_hash(&token);
    println!(
        "# token for tenant {} (shown once: give it to the tenant, keep it secret):",
        args.tenant
    );
    println!("#   {token}");
    println!("# add to the device's TOML file (--config):");
    println!("[[tenants]]");
    println!("name = \"{}\"", args.tenant);
    println!("token_sha256 = \"{hash}\"");
    println!("admin = {}", args.admin);
    Ok(())
}

/// The device to talk to.
#[derive(Debug, Args)]
pub struct DeviceArg {
    /// Device URL.
    #[arg(long, env = "NEARSTORE_DEVICE", default_value = DEFAULT_DEVICE)]
    pub device: String,
    /// Bearer token.
    #[arg(long, env = "NEARSTORE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Seconds allowed for one call.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    /// Certificate authority (PEM) of a grpc+tls:// device.
    #[arg(long, env = "NEARSTORE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

/// Reads a CA file for the client options.
fn read_ca(p: &Option<PathBuf>) -> Result<Option<Vec<u8>>> {
    p.as_ref()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .transpose()
}

impl DeviceArg {
    /// A client for the device.
    pub async fn connect(&self) -> Result<Client> {
        let opts = ClientOptions {
            token: self.token.clone(),
            request_timeout: Duration::from_secs(self.timeout_secs),
            tls_ca_pem: read_ca(&self.tls_ca)?,
            ..Default::default()
        };
        Client::connect_with(&self.device, opts)
            .await
            .with_context(|| format!("connecting to the device at {}", self.device))
    }
}

/// `put` arguments.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// Parquet file to upload.
    pub file: PathBuf,
    /// Table name.
    #[arg(long)]
    pub table: String,
    /// What to do if the table exists.
    #[arg(long, value_enum, default_value_t = ModeArg::Create)]
    pub mode: ModeArg,
    #[command(flatten)]
    device: DeviceArg,
}

/// Upload modes.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    /// Fail if the table exists.
    Create,
    /// Add to the table.
    Append,
    /// Replace the table.
    Replace,
}

/// A table argument.
#[derive(Debug, Args)]
pub struct TableArgs {
    /// Table name.
    pub table: String,
    #[command(flatten)]
    device: DeviceArg,
}

/// Output formats.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    /// An aligned text table.
    Table,
    /// CSV with a header line.
    Csv,
    /// One JSON object per row.
    Json,
}

/// `query` arguments.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Table to query.
    #[arg(long, required_unless_present = "plan")]
    pub table: Option<String>,
    /// Filter, e.g. "l_quantity < 24 AND l_shipdate >= DATE '1994-01-01'".
    #[arg(long)]
    pub filter: Option<String>,
    /// Output columns, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub select: Vec<String>,
    /// Aggregates, e.g. "sum(l_extendedprice * l_discount) as revenue" or "count(*)".
    #[arg(long = "agg")]
    pub aggregates: Vec<String>,
    /// Grouping columns, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub group_by: Vec<String>,
    /// Ordering: "column" or "column desc"; repeatable.
    #[arg(long)]
    pub order_by: Vec<String>,
    /// Row limit.
    #[arg(long)]
    pub limit: Option<u64>,
    /// A registered filter kernel: NAME(COLUMN[,COLUMN...]) with optional parameters after a
    /// colon, e.g. "grep(l_comment):special"; repeatable (ANDed with --filter).
    #[arg(long = "kernel")]
    pub kernels: Vec<String>,
    /// Compute backend.
    #[arg(long)]
    pub backend: Option<BackendKind>,
    /// A JSON plan file instead of the flags above.
    #[arg(long, conflicts_with_all = ["table", "filter", "select", "aggregates", "group_by"])]
    pub plan: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Do not print statistics.
    #[arg(long)]
    pub no_stats: bool,
    #[command(flatten)]
    device: DeviceArg,
}

/// Benchmark commands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The same SQL offloaded and fully transferred: results, bytes moved, time; `--check`
    /// makes it a CI gate.
    Compare(compare::CompareArgs),
}

/// `sql` arguments.
#[derive(Debug, Args)]
pub struct SqlArgs {
    /// The query.
    pub query: String,
    /// offload (push filters, projections, aggregates, limits), transfer (pull raw columns)
    /// or auto (choose per query from the statistics and the device's load, and say why).
    #[arg(long, default_value = "offload")]
    pub mode: nearstore_sdk::Mode,
    /// Print per-scan device statistics and the bytes moved.
    #[arg(long)]
    pub stats: bool,
    /// Print the plan (with what each device scan was asked) instead of running the query.
    #[arg(long)]
    pub explain: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Device URL; repeat it (or separate URLs with commas) for a table spread over several
    /// devices: scans fan out to all of them and partial aggregates merge on the host.
    #[arg(long = "device", env = "NEARSTORE_DEVICE", default_value = DEFAULT_DEVICE, value_delimiter = ',')]
    pub devices: Vec<String>,
    /// Bearer token.
    #[arg(long, env = "NEARSTORE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Seconds allowed for one call.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    /// Certificate authority (PEM) of grpc+tls:// devices.
    #[arg(long, env = "NEARSTORE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

/// `tpch` arguments.
#[derive(Debug, Args)]
pub struct TpchArgs {
    /// Scale factor.
    #[arg(long, default_value_t = 0.1)]
    pub scale: f64,
    /// Tables, comma separated [default: all eight].
    #[arg(long, value_delimiter = ',')]
    pub tables: Vec<String>,
    #[command(flatten)]
    device: DeviceArg,
}

/// `demo` arguments.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Data directory of the demo device (kept between runs; the table is generated once).
    #[arg(long, default_value = "./nearstore-data")]
    pub data: PathBuf,
    /// TPC-H scale factor of the generated lineitem table.
    #[arg(long, default_value_t = 0.1)]
    pub scale: f64,
}

/// The binary's entry point: parses arguments, sets up logging, runs the command.
pub fn main() -> std::process::ExitCode {
    let cli = <Cli as clap::Parser>::parse();
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("NEARSTORE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the command line.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => serve::serve(args).await,
        Command::Demo(args) => serve::demo(args).await,
        Command::Put(args) => put(args).await,
        Command::Tables(d) => {
            let mut c = d.connect().await?;
            let tables = c.tables().await?;
            if tables.is_empty() {
                println!("(no tables)");
            }
            for t in tables {
                println!(
                    "{:<24} {:>12} rows {:>12} bytes {:>3} objects {:>3} columns",
                    t.name,
                    t.rows,
                    t.bytes,
                    t.objects.len(),
                    t.columns.len()
                );
            }
            Ok(())
        }
        Command::Describe(a) => {
            let mut c = a.device.connect().await?;
            let t = c.describe(&a.table).await?;
            println!("table {}: {} rows, {} bytes", t.name, t.rows, t.bytes);
            for col in &t.columns {
                println!(
                    "  {:<24} {}{}",
                    col.name,
                    col.data_type,
                    if col.nullable { "" } else { " NOT NULL" }
                );
            }
            for o in &t.objects {
                println!(
                    "  object {} rows={} bytes={} row_groups={} sha256={}",
                    o.id, o.rows, o.bytes, o.row_groups, o.sha256
                );
            }
            Ok(())
        }
        Command::Drop(a) => {
            let mut c = a.device.connect().await?;
            c.drop_table(&a.table).await?;
            println!("dropped {}", a.table);
            Ok(())
        }
        Command::Query(args) => query(args).await,
        Command::Sql(args) => sql(args).await,
        Command::Tpch(args) => tpch(args).await,
        Command::Bench(BenchCommand::Compare(args)) => compare::compare(args).await,
        Command::Info(d) => {
            let mut c = d.connect().await?;
            let i = c.device_info().await?;
            println!("{}", serde_json::to_string_pretty(&i)?);
            Ok(())
        }
        Command::Token(args) => token(args),
        Command::Kernel(cmd) => kernel::run(cmd).await,
        Command::Scrub(d) => {
            let mut c = d.connect().await?;
            let r = c.scrub().await?;
            println!(
                "checked {} objects ({} bytes); {} corrupt",
                r.objects_checked,
                r.bytes_checked,
                r.corrupt.len()
            );
            for (table, object, detail) in &r.corrupt {
                println!("  CORRUPT table={table} object={object}: {detail}");
            }
            if !r.corrupt.is_empty() {
                bail!("{} corrupt objects", r.corrupt.len());
            }
            Ok(())
        }
    }
}

async fn sql(args: SqlArgs) -> Result<()> {
    let opts = ClientOptions {
        token: args.token.clone(),
        request_timeout: Duration::from_secs(args.timeout_secs),
        tls_ca_pem: read_ca(&args.tls_ca)?,
        ..Default::default()
    };
    let session = nearstore_sdk::SqlSession::connect_many(&args.devices, opts, args.mode)
        .await
        .with_context(|| format!("connecting to {}", args.devices.join(", ")))?;
    if args.explain {
        if args.mode == nearstore_sdk::Mode::Auto {
            let (m, why) = session.decide(&args.query).await?;
            println!("auto mode chooses {}: {why}", m.as_str());
        }
        println!("{}", session.explain(&args.query).await?);
        return Ok(());
    }
    let r = session.sql(&args.query).await?;
    print_batches(&r.batches, &r.schema, args.format)?;
    if args.stats {
        for (plan, s) in &r.scans {
            eprintln!("-- scan of {}: {}", plan.table, format_stats(s));
        }
        eprintln!(
            "-- {} rows; {} moved from the device in {} scans ({} mode: {})",
            r.num_rows(),
            human_bytes(r.bytes_moved()),
            r.scans.len(),
            r.mode.as_str(),
            r.reason
        );
    }
    Ok(())
}

async fn tpch(args: TpchArgs) -> Result<()> {
    let tables: Vec<String> = if args.tables.is_empty() {
        nearstore_runtime::demo::TPCH_TABLES
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        args.tables.clone()
    };
    let mut client = args.device.connect().await?;
    for t in tables {
        let total = nearstore_runtime::demo::approx_rows(&t, args.scale);
        let bar = progress_bar(total, &format!("uploading {t}"), "{pos}/{len} rows");
        let batches = nearstore_runtime::demo::tpch_batches(&t, args.scale)?;
        let b = bar.clone();
        // Generation is CPU work: run it on a blocking thread, feeding the upload stream.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let producer = tokio::task::spawn_blocking(move || -> Result<()> {
            for batch in batches {
                let batch = batch?;
                b.inc(batch.num_rows() as u64);
                if tx.blocking_send(batch).is_err() {
                    break;
                }
            }
            Ok(())
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let summary = client.put_stream(&t, PutMode::Replace, stream).await;
        producer.await??;
        bar.finish_and_clear();
        let summary = summary?;
        println!(
            "stored {t}: {} rows, {}",
            summary.rows,
            human_bytes(summary.bytes)
        );
    }
    Ok(())
}

async fn put(args: PutArgs) -> Result<()> {
    let bytes = tokio::fs::read(&args.file)
        .await
        .with_context(|| format!("reading {}", args.file.display()))?;
    let mut client = args.device.connect().await?;
    let bar = progress_bar(bytes.len() as u64, "uploading", "{bytes}/{total_bytes}");
    let b = bar.clone();
    let mode = match args.mode {
        ModeArg::Create => PutMode::Create,
        ModeArg::Append => PutMode::Append,
        ModeArg::Replace => PutMode::Replace,
    };
    let summary = client
        .put_parquet(&args.table, mode, bytes.into(), move |n| b.set_position(n))
        .await;
    bar.finish_and_clear();
    let summary = summary?;
    println!(
        "stored table {}: {} rows, {} bytes (object {})",
        summary.table, summary.rows, summary.bytes, summary.object
    );
    Ok(())
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress_bar(total: u64, what: &str, counts: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(&format!(
        "{{spinner}} {what} [{{elapsed_precise}}] [{{wide_bar}}] {counts} ({{eta}})"
    ))
    .expect("valid template")
    .progress_chars("=> ");
    bar.set_style(style);
    bar
}

/// Parses "func(arg) [as name]".
pub fn parse_aggregate(text: &str) -> Result<(AggFunc, Option<String>, String)> {
    let t = text.trim();
    let (call, name) = match t.to_ascii_lowercase().rfind(" as ") {
        Some(i) => (t[..i].trim(), Some(t[i + 4..].trim().to_string())),
        None => (t, None),
    };
    let open = call
        .find('(')
        .with_context(|| format!("aggregate '{text}' should look like sum(column)"))?;
    if !call.ends_with(')') {
        bail!("aggregate '{text}' should look like sum(column)");
    }
    let func = call[..open].trim().to_ascii_lowercase();
    let arg = call[open + 1..call.len() - 1].trim();
    let f = match (func.as_str(), arg) {
        ("count", "*") => AggFunc::CountStar,
        ("count", _) => AggFunc::Count,
        ("sum", _) => AggFunc::Sum,
        ("min", _) => AggFunc::Min,
        ("max", _) => AggFunc::Max,
        ("avg", _) => AggFunc::Avg,
        (other, _) => bail!("unknown aggregate function '{other}' (count, sum, min, max, avg)"),
    };
    let arg = (f != AggFunc::CountStar).then(|| arg.to_string());
    let name = name.unwrap_or_else(|| match &arg {
        Some(a) if a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
            format!("{func}_{a}")
        }
        _ => func.clone(),
    });
    Ok((f, arg, name))
}

/// `NAME(COL[,COL...])[:PARAMS]` → name, columns, parameters.
pub fn parse_kernel_call(text: &str) -> Result<(String, Vec<String>, String)> {
    let bad = || {
        anyhow::anyhow!(
            "kernel call '{text}' must look like NAME(COLUMN[,COLUMN...]) or NAME(COLUMN):PARAMS"
        )
    };
    let open = text.find('(').ok_or_else(bad)?;
    let close = text[open..].find(')').map(|i| open + i).ok_or_else(bad)?;
    let name = text[..open].trim();
    let cols: Vec<String> = text[open + 1..close]
        .split(',')
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect();
    let rest = text[close + 1..].trim_start();
    let params = match rest.strip_prefix(':') {
        Some(p) => p.to_string(),
        None if rest.is_empty() => String::new(),
        None => return Err(bad()),
    };
    if name.is_empty() || cols.is_empty() {
        return Err(bad());
    }
    Ok((name.to_string(), cols, params))
}

fn build_plan(args: &QueryArgs) -> Result<Plan> {
    if let Some(p) = &args.plan {
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        let mut plan = Plan::from_json(&bytes)?;
        if let Some(b) = args.backend {
            plan.backend = Some(b);
        }
        if args.limit.is_some() {
            plan.limit = args.limit;
        }
        return Ok(plan);
    }
    let table = args.table.clone().context("--table is required")?;
    let mut q = Query::table(table);
    if let Some(f) = &args.filter {
        q = q.filter(f)?;
    }
    for k in &args.kernels {
        let (name, args, params) = parse_kernel_call(k)?;
        q = q.kernel_filter(&name, args, &params);
    }
    if !args.select.is_empty() {
        q = q.select(args.select.iter().map(|s| s.trim().to_string()));
    }
    for a in &args.aggregates {
        let (f, arg, name) = parse_aggregate(a)?;
        q = q.aggregate(f, arg.as_deref(), &name)?;
    }
    if !args.group_by.is_empty() {
        q = q.group_by(args.group_by.iter().map(|s| s.trim().to_string()));
    }
    for o in &args.order_by {
        let mut parts = o.split_whitespace();
        let col = parts.next().context("empty --order-by")?;
        let desc = match parts.next().map(|s| s.to_ascii_lowercase()) {
            None => false,
            Some(d) if d == "desc" => true,
            Some(d) if d == "asc" => false,
            Some(d) => bail!("--order-by direction '{d}' (expected asc or desc)"),
        };
        q = q.order_by(col, desc);
    }
    if let Some(l) = args.limit {
        q = q.limit(l);
    }
    if let Some(b) = args.backend {
        q = q.backend(b);
    }
    Ok(q.build())
}

async fn query(args: QueryArgs) -> Result<()> {
    let plan = build_plan(&args)?;
    let mut client = args.device.connect().await?;
    let result = client.query(&plan).await?;
    print_batches(&result.batches, &result.schema, args.format)?;
    if !args.no_stats {
        eprintln!("{}", format_stats(&result.stats));
    }
    Ok(())
}

/// Prints batches to stdout in `format`.
pub fn print_batches(
    batches: &[RecordBatch],
    schema: &arrow::datatypes::SchemaRef,
    format: Format,
) -> Result<()> {
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match format {
        Format::Table => {
            if batches.iter().all(|b| b.num_rows() == 0) {
                let empty = RecordBatch::new_empty(schema.clone());
                writeln!(
                    out,
                    "{}",
                    arrow::util::pretty::pretty_format_batches(&[empty])?
                )?;
            } else {
                writeln!(
                    out,
                    "{}",
                    arrow::util::pretty::pretty_format_batches(batches)?
                )?;
            }
        }
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut out);
            if batches.is_empty() {
                w.write(&RecordBatch::new_empty(schema.clone()))?;
            }
            for b in batches {
                w.write(b)?;
            }
        }
        Format::Json => {
            let mut w = arrow::json::LineDelimitedWriter::new(&mut out);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
    }
    Ok(())
}

/// Human-readable statistics.
pub fn format_stats(s: &QueryStats) -> String {
    let topk = if s.topk_rows_in > 0 {
        format!(
            " | top-k pre-selection kept {} of {}",
            s.topk_rows_kept, s.topk_rows_in
        )
    } else {
        String::new()
    };
    format!(
        "-- device: backend={} ({}) reader={} | read {} from media, sent {} to host | row groups {}/{} pruned, pages {}/{} pruned | rows: {} in kept row groups, {} decoded, {} selected, {} returned{topk} | time: plan {:.1} ms, scan {:.1} ms (filter {:.1} ms), compute {:.1} ms, total {:.1} ms",
        s.backend,
        s.placement,
        s.reader,
        human_bytes(s.bytes_read_media),
        human_bytes(s.bytes_sent),
        s.row_groups_pruned,
        s.row_groups_total,
        s.pages_pruned,
        s.pages_total,
        s.rows_total,
        s.rows_scanned,
        s.rows_selected,
        s.rows_returned,
        s.plan_us as f64 / 1e3,
        s.scan_us as f64 / 1e3,
        s.filter_us as f64 / 1e3,
        s.compute_us as f64 / 1e3,
        s.total_us as f64 / 1e3,
    )
}

/// Bytes with a binary unit.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_calls_parse() {
        assert_eq!(
            parse_kernel_call("grep(l_comment):special req").unwrap(),
            (
                "grep".into(),
                vec!["l_comment".to_string()],
                "special req".into()
            )
        );
        assert_eq!(
            parse_kernel_call("bbox(x, y):0,0,1,1").unwrap().2,
            "0,0,1,1".to_string()
        );
        assert_eq!(parse_kernel_call("k(a)").unwrap().2, "");
        for bad in ["grep", "grep()", "(a)", "grep(a) x", "grep(a"] {
            assert!(parse_kernel_call(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn aggregates_parse() {
        let (f, a, n) = parse_aggregate("sum(l_extendedprice * l_discount) as revenue").unwrap();
        assert_eq!(
            (f, a.as_deref(), n.as_str()),
            (
                AggFunc::Sum,
                Some("l_extendedprice * l_discount"),
                "revenue"
            )
        );
        let (f, a, n) = parse_aggregate("count(*)").unwrap();
        assert_eq!((f, a, n.as_str()), (AggFunc::CountStar, None, "count"));
        let (_, _, n) = parse_aggregate("AVG(l_quantity)").unwrap();
        assert_eq!(n, "avg_l_quantity");
        assert!(parse_aggregate("median(x)").is_err());
        assert!(parse_aggregate("sum x").is_err());
    }
}
