//! The command line's definitions (clap): the commands and each one's arguments. `serve`'s
//! and `kernel`'s live beside their implementations (`serve.rs`, `kernel.rs`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use nearstore_proto::BackendKind;

use crate::{ServeArgs, compare, kernel};

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
    /// Serve Flight SQL over devices: ADBC, JDBC and other Flight SQL clients run SQL with
    /// pushdown.
    Gateway(crate::gateway::GatewayArgs),
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
    /// Run the processes of an Apache DataFusion Ballista cluster that queries devices
    /// (`nearstore sql --ballista df://HOST:PORT` sends it queries).
    #[command(subcommand)]
    Cluster(crate::cluster::ClusterCommand),
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
    pub(crate) device: DeviceArg,
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
    pub(crate) device: DeviceArg,
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
    pub(crate) device: DeviceArg,
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
    /// offload (push filters, projections, aggregates, limits), transfer (pull raw columns),
    /// remote (the host's Parquet reader reads the stored files' byte ranges itself: what a
    /// host does without offload) or auto (choose per query from the statistics and the
    /// device's load, and say why).
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
    /// Results arrive as Arrow IPC compressed with lz4 or zstd (the device compresses; worth it
    /// for full transfer over a slow link) [default: uncompressed].
    #[arg(long)]
    pub compression: Option<nearstore_proto::IpcCompression>,
    /// Run the query on the Ballista cluster whose scheduler is at this URL (`df://HOST:PORT`,
    /// see `nearstore cluster`) instead of on this host (offload mode).
    #[arg(long)]
    pub ballista: Option<String>,
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
    pub(crate) device: DeviceArg,
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
