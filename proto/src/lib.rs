//! Nearstore wire vocabulary shared by the device and the host: the versioned pushdown plan and
//! its expressions, per-query statistics, control actions and error codes.
//!
//! Everything here is plain serde data; this crate depends on nothing heavier.

#![forbid(unsafe_code)]

pub mod expr;
pub mod plan;
pub mod rate;

pub use expr::{ArithOp, CmpOp, Expr, Literal, TypedLiteral};
pub use plan::{
    AggFunc, Aggregate, BackendKind, IpcCompression, PLAN_VERSION, Plan, Projection, SortKey,
};

use serde::{Deserialize, Serialize};

/// Errors of the wire vocabulary.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A plan or expression that cannot be decoded or is structurally invalid.
    #[error("malformed plan: {0}")]
    MalformedPlan(String),
}

/// Result with this crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Machine-readable error codes the device attaches to every failed call, in the gRPC metadata
/// key [`ERROR_CODE_METADATA`]. Hosts match on these, never on message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The plan names a table the device does not hold.
    UnknownTable,
    /// The plan names a column the table does not have.
    UnknownColumn,
    /// Operand types do not fit (e.g. a string literal compared with an integer column).
    TypeMismatch,
    /// The plan document cannot be decoded or is structurally invalid.
    MalformedPlan,
    /// An object's bytes no longer match their checksum.
    CorruptObject,
    /// An upload was rejected (not Parquet, truncated, schema mismatch).
    InvalidUpload,
    /// A table of that name exists already.
    TableExists,
    /// A compute kernel failed (trap, deadline, memory limit, bad output).
    KernelFailed,
    /// The request needs a feature this device does not offer.
    Unsupported,
    /// Storage I/O failed.
    Io,
    /// The plan calls a kernel the device does not have.
    UnknownKernel,
    /// A kernel module was refused at registration (not Wasm, wrong ABI, forbidden import,
    /// manifest and exports disagree).
    InvalidKernel,
    /// The caller has too many queries running and waiting; retry later (the status carries
    /// `retry-after-ms`).
    ResourceExhausted,
    /// The call carries no valid bearer token.
    Unauthenticated,
    /// The caller's role does not allow the call.
    PermissionDenied,
    /// A range read names an object its table does not have.
    UnknownObject,
    /// Anything else.
    Internal,
}

impl ErrorCode {
    /// The code's wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::UnknownTable => "unknown_table",
            ErrorCode::UnknownColumn => "unknown_column",
            ErrorCode::TypeMismatch => "type_mismatch",
            ErrorCode::MalformedPlan => "malformed_plan",
            ErrorCode::CorruptObject => "corrupt_object",
            ErrorCode::InvalidUpload => "invalid_upload",
            ErrorCode::TableExists => "table_exists",
            ErrorCode::KernelFailed => "kernel_failed",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Io => "io",
            ErrorCode::UnknownKernel => "unknown_kernel",
            ErrorCode::InvalidKernel => "invalid_kernel",
            ErrorCode::ResourceExhausted => "resource_exhausted",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::UnknownObject => "unknown_object",
            ErrorCode::Internal => "internal",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }
}

/// gRPC metadata key carrying the [`ErrorCode`] of a failed call.
pub const ERROR_CODE_METADATA: &str = "x-nearstore-error";

/// Per-query statistics, sent by the device as JSON in the `app_metadata` of the last Flight
/// message of a `DoGet` stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueryStats {
    /// Bytes read from the device's media (aligned block reads, metadata included).
    pub bytes_read_media: u64,
    /// Bytes sent to the host for the query: the Arrow IPC messages (bodies and headers) and
    /// this statistics trailer itself.
    pub bytes_sent: u64,
    /// Objects (Parquet files) the table consists of.
    pub objects: u64,
    /// Row groups in the scanned objects.
    pub row_groups_total: u64,
    /// Row groups skipped by min/max statistics.
    pub row_groups_pruned: u64,
    /// Data pages in the predicate columns of the row groups kept.
    pub pages_total: u64,
    /// Of those, pages skipped by the page index.
    pub pages_pruned: u64,
    /// Rows in the row groups kept.
    pub rows_total: u64,
    /// Rows decoded after row-group and page pruning.
    pub rows_scanned: u64,
    /// Rows that passed the filter (of those a top k's running bound left it to test; see
    /// `topk_rows_skipped`).
    pub rows_selected: u64,
    /// Rows returned to the host.
    pub rows_returned: u64,
    /// Rows (or groups) given to the device's top-k pre-selection (`ORDER BY … LIMIT k` kept
    /// on the device), and of those, the ones it kept for the final sort.
    pub topk_rows_in: u64,
    /// See `topk_rows_in`.
    pub topk_rows_kept: u64,
    /// Rows a top k's running bound skipped unread: pages whose statistics show no key as
    /// good as the k-th best kept so far. Without a filter they count as decoded and
    /// selected, as the rows the bound drops after decoding their key do; with one, in
    /// neither (whether they passed it is unknown), and the rows it drops after decoding
    /// their key count as decoded, not selected (the bound runs before the filter).
    pub topk_rows_skipped: u64,
    /// Row groups the device's own dictionary decoder read: the filter answered once per
    /// dictionary entry, rows found from their dictionary indices, and only the rows kept
    /// gathered. The others (and every row group the hot-column tier served) went through the
    /// Parquet decoder.
    pub row_groups_by_dictionary: u64,
    /// Rows the predicate rejected that reached the aggregate unfiltered, marked to be left
    /// out: the hot-column tier hands an aggregate that skips rows a batch most of whose rows
    /// pass without copying the kept ones. Counted in `rows_scanned`, not `rows_selected`.
    pub rows_left_out: u64,
    /// Compute backend the query asked for (or the device default).
    pub backend: String,
    /// Where each operator ran, e.g. `filter=wasm aggregate=native` (an operator the query's
    /// backend cannot run falls back to the native backend).
    pub placement: String,
    /// Modelled device time of FPGA operators (timing model), microseconds.
    pub fpga_modelled_us: u64,
    /// Operators that fell back to another backend after a device fault.
    pub fallbacks: u64,
    /// Storage read path (`io_uring` or `pread`).
    pub reader: String,
    /// Bytes on the media of the column chunks this query took from the hot-column tier
    /// (decoded already: neither read nor decoded again).
    pub cache_hit_bytes: u64,
    /// Bytes on the media of the column chunks it needed that the tier did not hold.
    pub cache_miss_bytes: u64,
    /// Compute workers the query ran on (its row groups dealt among them; 1 when the device
    /// was busy, the table small, or the plan needs one, as a LIMIT without ORDER BY does).
    pub workers: u64,
    /// Time planning (metadata, pruning), microseconds.
    pub plan_us: u64,
    /// Time reading and decoding Parquet (including the filter run inside the decoder), µs,
    /// summed over the workers (so it can exceed the wall time).
    pub scan_us: u64,
    /// Time evaluating filters, µs, summed over the workers.
    pub filter_us: u64,
    /// Time in projection and aggregation, µs, summed over the workers.
    pub compute_us: u64,
    /// The executor's wall time: from the plan's preparation to the last batch, µs.
    pub total_us: u64,
    /// The call's wall time on the device: from receipt of the `DoGet` (before
    /// authentication, admission and binding) to the last result byte leaving the device
    /// (over the emulated link, when shaped), µs. `total_us` is the executor's part of it.
    pub call_us: u64,
    /// Rate of the emulated device-to-host link in Gb/s (`--link-gbps`); absent when the
    /// device sends at the transport's own speed.
    pub link_gbps: Option<f64>,
}

/// `DoAction` types the device understands.
pub mod actions {
    /// Drop a table. Body: the table name (UTF-8).
    pub const DROP_TABLE: &str = "drop_table";
    /// Describe a table. Body: the table name. Result: [`super::TableInfo`] JSON.
    pub const DESCRIBE_TABLE: &str = "describe_table";
    /// Device statistics. Result: [`super::DeviceInfo`] JSON.
    pub const DEVICE_INFO: &str = "device_info";
    /// Verify every object's checksum. Result: [`super::ScrubReport`] JSON.
    pub const SCRUB: &str = "scrub";
    /// What a plan's filter keeps by the Parquet statistics, and the device's load. Body: the
    /// plan (JSON). Result: [`super::Estimate`] JSON.
    pub const ESTIMATE: &str = "estimate";
    /// Register a kernel. Body: [`super::RegisterKernel`] JSON. Result: [`super::KernelInfo`].
    pub const REGISTER_KERNEL: &str = "register_kernel";
    /// The caller's kernels. Result: a JSON array of [`super::KernelInfo`].
    pub const LIST_KERNELS: &str = "list_kernels";
    /// Remove a kernel name. Body: the name (UTF-8).
    pub const REMOVE_KERNEL: &str = "remove_kernel";
    /// Byte ranges of one of a table's objects (the stored Parquet file), for a host that reads
    /// the file itself. Body: [`super::ReadRanges`] JSON. Results: the ranges' bytes in order,
    /// each range in one or more messages of at most [`super::RANGE_CHUNK_BYTES`].
    pub const READ_RANGES: &str = "read_ranges";
}

/// Largest message body of a `read_ranges` answer.
pub const RANGE_CHUNK_BYTES: usize = 4 << 20;

/// Most bytes one `read_ranges` call may ask for.
pub const RANGE_CALL_BYTES_MAX: u64 = 256 << 20;

/// Most ranges one `read_ranges` call may ask for.
pub const RANGE_CALL_RANGES_MAX: usize = 4096;

/// A `read_ranges` request: byte ranges (`[start, end)`) of one object of a table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReadRanges {
    /// The table (the caller's name for it).
    pub table: String,
    /// The object id, as `describe_table` lists it.
    pub object: String,
    /// `[start, end)` byte offsets.
    pub ranges: Vec<[u64; 2]>,
}

/// A plan's footprint by the Parquet statistics (min/max per row group, the page index),
/// without reading any data, and the device's current load.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Estimate {
    /// Rows in the table.
    pub rows_total: u64,
    /// Rows in the row groups and pages the filter may match: an upper bound of the rows it
    /// keeps.
    pub rows_may_match: u64,
    /// Row groups in the table.
    pub row_groups_total: u64,
    /// Row groups the filter may match.
    pub row_groups_may_match: u64,
    /// Queries the device is running now.
    pub active_queries: u64,
    /// Rows the filter likely keeps: `rows_may_match` scaled by the share of a sample of the
    /// row groups it may match (the filter evaluated on their first rows), or
    /// `rows_may_match` when no sample was taken.
    pub rows_likely: u64,
    /// Rows in that sample.
    pub rows_sampled: u64,
    /// Compressed bytes of the columns the plan reads, in the row groups and pages the filter
    /// may match (pages counted by the share of the row group's rows they hold).
    pub bytes_may_read: u64,
    /// Compressed bytes of the columns the plan reads, in every row group.
    pub bytes_all: u64,
    /// Bytes after the objects' last column chunk: footer and page index, what a reader of
    /// the files fetches before any data.
    pub bytes_metadata: u64,
    /// Estimated Arrow bytes per output row of the plan (its projected columns, or its groups
    /// and aggregates), from the column types and, for strings, the statistics' lengths.
    pub out_bytes_per_row: u64,
    /// Compute workers the device has (a query alone spreads its row groups over them all).
    pub cores: u64,
    /// The device's learnt rates.
    pub rates: DeviceRates,
}

/// Rates a device learns from its own work, each a moving estimate over its recent past;
/// `None` until it has seen that kind of work. Auto mode's cost model reads them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceRates {
    /// Compressed Parquet bytes one query reads and decodes per second of its scan (the
    /// filter inside the decoder included), over about the last GiB scanned.
    pub scan_bytes_per_s: Option<f64>,
    /// Aggregate cells one query computes per second after its filter (a cell: one row for
    /// one group key or one aggregate), over about the last billion cells.
    pub aggregate_cells_per_s: Option<f64>,
    /// Rows one query projects per second after its filter (no aggregate), over about the
    /// last 100 million rows.
    pub project_rows_per_s: Option<f64>,
    /// Whether the link is an emulated one of a set rate (then `link_bytes_per_s` is that
    /// rate, and a call pays `rtt_us`); otherwise the transport's own pace.
    pub link_shaped: bool,
    /// Bytes per second the link (emulated or the transport) carried while a message waited
    /// on it, over about the last GiB sent.
    pub link_bytes_per_s: Option<f64>,
    /// The round-trip time a call paid before its first byte, µs (zero on an unshaped link:
    /// the device sees no fabric), a moving average.
    pub rtt_us: Option<f64>,
    /// Bytes per second a range read takes from the media, CRC checks included (the link
    /// excluded), over about the last GiB read.
    pub range_bytes_per_s: Option<f64>,
}

/// The `DoPut` descriptor command (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutCommand {
    /// Target table.
    pub table: String,
    /// What to do when the table exists.
    #[serde(default)]
    pub mode: PutMode,
    /// Payload format.
    #[serde(default)]
    pub format: PutFormat,
}

/// What an upload does to an existing table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PutMode {
    /// Fail if the table exists.
    #[default]
    Create,
    /// Add the upload as a new object of the table (schemas must match).
    Append,
    /// Replace the table atomically.
    Replace,
}

/// Payload of an upload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PutFormat {
    /// Arrow record batches in ordinary Flight messages.
    #[default]
    Arrow,
    /// A Parquet file's bytes in the `data_body` of header-less Flight messages; the device
    /// validates and re-encodes it with statistics and a page index.
    Parquet,
}

/// Result of an upload, JSON in the `PutResult` metadata.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PutSummary {
    /// Table written.
    pub table: String,
    /// Rows written.
    pub rows: u64,
    /// Bytes of the stored object.
    pub bytes: u64,
    /// Object id.
    pub object: String,
}

/// A registered kernel.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KernelInfo {
    /// Name (an alias of the module).
    pub name: String,
    /// SHA-256 of the module (hex): the version.
    pub sha256: String,
    /// Kind from the manifest (`filter`, `map` or `aggregate`).
    pub kind: String,
    /// Output type of a map or aggregate kernel (`int64`, `float64`, `list_int64`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Module size.
    pub bytes: u64,
}

/// Body of the `register_kernel` action (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterKernel {
    /// Name to register the module under.
    pub name: String,
    /// The WebAssembly module, hex-encoded.
    pub module_hex: String,
}

/// A table as the device describes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TableInfo {
    /// Name.
    pub name: String,
    /// Columns: name, Arrow type, nullable.
    pub columns: Vec<ColumnInfo>,
    /// Total rows.
    pub rows: u64,
    /// Total stored bytes.
    pub bytes: u64,
    /// Objects.
    pub objects: Vec<ObjectInfo>,
}

/// One column of a table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ColumnInfo {
    /// Name.
    pub name: String,
    /// Arrow data type, as Arrow displays it.
    pub data_type: String,
    /// Whether nulls are allowed.
    pub nullable: bool,
}

/// One stored object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ObjectInfo {
    /// Object id.
    pub id: String,
    /// Rows.
    pub rows: u64,
    /// Bytes.
    pub bytes: u64,
    /// Row groups.
    pub row_groups: u64,
    /// SHA-256 of the object's bytes.
    pub sha256: String,
}

/// Device-wide information.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Software version.
    pub version: String,
    /// Storage read path in use.
    pub reader: String,
    /// Default compute backend.
    pub backend: String,
    /// Tables held.
    pub tables: u64,
    /// Queries served since start.
    pub queries: u64,
    /// Queries that failed since start.
    pub errors: u64,
    /// Queries running now.
    #[serde(default)]
    pub active_queries: u64,
    /// The rates the device has learnt from its own work.
    #[serde(default)]
    pub rates: DeviceRates,
    /// The namespace's capacity in bytes, when it has one (`serve --capacity-mb`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_bytes: Option<u64>,
    /// Bytes of the namespace's files, when it has a capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
    /// The hot-column tier (decoded column chunks in memory, `serve --cache-mb`).
    #[serde(default)]
    pub cache: CacheInfo,
}

/// The hot-column tier's budget, use and counters since start. Hits and misses are counted in
/// the column chunks' bytes on the media (what a hit saved reading).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CacheInfo {
    /// Budget in bytes (0: the tier is off).
    pub budget_bytes: u64,
    /// Bytes of decoded arrays kept.
    pub used_bytes: u64,
    /// Column chunks kept.
    pub chunks: u64,
    /// Media bytes of chunks served from the tier.
    pub hit_bytes: u64,
    /// Media bytes of chunks queries needed that the tier did not hold.
    pub miss_bytes: u64,
    /// Bytes of decoded arrays admitted.
    pub admitted_bytes: u64,
    /// Bytes of decoded arrays evicted for room (not counting invalidation).
    pub evicted_bytes: u64,
    /// Chunks the file-backed tier (`--pmem-dir`) gave back at start-up, verified.
    pub pmem_restored_chunks: u64,
    /// Chunk files it found at start-up and deleted: torn, corrupt, or of objects gone.
    pub pmem_rejected_chunks: u64,
}

/// Result of a scrub.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScrubReport {
    /// Objects verified.
    pub objects_checked: u64,
    /// Bytes verified.
    pub bytes_checked: u64,
    /// Objects whose bytes do not match their checksum: `(table, object id, detail)`.
    pub corrupt: Vec<(String, String, String)>,
}
