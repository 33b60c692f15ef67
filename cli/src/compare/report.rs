//! The comparison's report (`report.json`, schema [`REPORT_VERSION`]): per query, each mode's
//! figures, the runs over emulated links and the reference engines', and the targets.

use serde::{Deserialize, Serialize};

/// Current `report.json` schema version.
pub const REPORT_VERSION: u32 = 8;

/// One mode's figures for one query.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ModeFigures {
    /// Bytes the device sent for the query: every result message and its statistics
    /// trailer, or, for a remote scan, every range read's bytes.
    pub bytes_moved: u64,
    /// Calls to devices: scans, or a remote scan's `read_ranges` calls.
    pub calls: u64,
    /// Bytes the device read from its media.
    pub bytes_read: u64,
    /// Median wall time, milliseconds.
    pub wall_ms: f64,
    /// Fastest run's wall time, milliseconds.
    pub min_ms: f64,
    /// Slowest run's wall time, milliseconds.
    pub max_ms: f64,
    /// Runs the figures are taken over (`--runs`, or more for a quick query).
    pub runs: usize,
    /// Device time summed over scans (median run), ms: from receipt of each call to its last
    /// byte leaving the device (authentication, admission, binding, execution and the link).
    pub device_ms: f64,
    /// The executor's part of `device_ms` (median run), ms: preparation to the last batch.
    pub executor_ms: f64,
    /// CPU time of the host (this process: SQL session, decoding, host-side operators),
    /// median run, milliseconds.
    pub host_cpu_ms: f64,
    /// CPU time of the device process (median run), milliseconds; absent for an external
    /// device. Kernel tick resolution (10 ms on most systems).
    pub device_cpu_ms: Option<f64>,
}

/// Wall times over an emulated link.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ShapedRun {
    /// Link rate, Gb/s.
    pub link_gbps: f64,
    /// Whether the three modes returned the same rows over this link too.
    pub equal: bool,
    /// Offload wall time (median), ms.
    pub offload_ms: f64,
    /// Remote-scan wall time (median), ms.
    pub remote_ms: f64,
    /// Full-transfer wall time (median), ms.
    pub transfer_ms: f64,
    /// transfer / offload.
    pub speedup: f64,
    /// Auto mode's choice over this link.
    pub auto: Option<AutoChoice>,
}

/// Auto mode's choice for a query over one link, and its regret.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct AutoChoice {
    /// The mode chosen (`offload`, `remote` or `transfer`).
    pub mode: String,
    /// A decision's wall time, ms (the devices' estimates and the host's planning).
    pub decide_ms: f64,
    /// Auto's median wall time (its runs of the query beside the three modes', as many as
    /// each mode's, reusing its first run's decision) / the fastest mode's median.
    pub regret: f64,
    /// Auto's first run's wall time (the one that decided, before the rounds) / the fastest
    /// mode's median.
    pub first_regret: f64,
    /// The predicted times and rates, as Auto gave them.
    pub reason: String,
}

/// One reference engine's figures for one query.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct EngineRun {
    /// Warm: median wall time of the runs after the first, ms (in-process, producing Arrow,
    /// the file in the page cache).
    pub ms: f64,
    /// Cold: the first run's wall time in the engine's process, ms (its parse, plan and
    /// footer read included).
    pub cold_ms: f64,
    /// Rows returned (checked against ours).
    pub rows: usize,
    /// Whether its values equal the device's (numbers to 9 significant digits or 6 decimal
    /// places, whichever is coarser; rows in any order); `None` when they could not be
    /// compared.
    pub values_equal: Option<bool>,
    /// Where the engine wrote its result (Arrow IPC file), until it is compared.
    #[serde(skip_serializing)]
    pub arrow: Option<std::path::PathBuf>,
}

/// One query of the report.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct QueryReport {
    /// Name.
    pub name: String,
    /// Fraction of rows the filter keeps, for the sweep.
    pub selectivity: Option<f64>,
    /// `narrow` or `wide` projection, for the sweep.
    pub projection: Option<String>,
    /// The SQL.
    pub sql: String,
    /// Result rows.
    pub rows: usize,
    /// Arrow IPC size of the exact result (what an ideal offload would move).
    pub result_ipc_bytes: u64,
    /// Whether the three modes returned the same rows.
    pub equal: bool,
    /// Offload figures (loopback).
    pub offload: ModeFigures,
    /// Remote-scan figures (loopback): the host's Parquet reader on the device's file.
    pub remote: ModeFigures,
    /// Full-transfer figures (loopback).
    pub transfer: ModeFigures,
    /// transfer bytes / offload bytes.
    pub reduction: f64,
    /// transfer wall time / offload wall time on loopback.
    pub speedup: f64,
    /// The same query over emulated links.
    pub shaped: Vec<ShapedRun>,
    /// The link rate (Gb/s) above which remote scan beats offload, interpolated between the
    /// emulated links measured; `None` when one of them wins at every link.
    pub crossover_gbps: Option<f64>,
    /// The crossover in words (which mode wins where).
    pub crossover: String,
    /// Reference engines: engine name → figures.
    pub reference: std::collections::BTreeMap<String, EngineRun>,
    /// Auto mode's choice on loopback.
    pub auto: Option<AutoChoice>,
    /// The query over several drives (`--devices`).
    pub drives: Vec<DriveRun>,
}

/// One query with lineitem dealt over `devices` drives, each behind a `link_gbps` link.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct DriveRun {
    /// Drives (device processes).
    pub devices: usize,
    /// Each drive's link, Gb/s.
    pub link_gbps: f64,
    /// Offload wall time (median), ms, measured with the drives sharing this machine's cores.
    pub offload_ms: f64,
    /// Remote-scan wall time (median), ms, measured likewise.
    pub remote_ms: f64,
    /// The slowest drive's device time in the offload runs (median), ms.
    pub device_ms: f64,
    /// The slowest drive's device time with each drive queried alone (median), ms: its time
    /// with cores of its own.
    pub device_alone_ms: f64,
    /// Projected, not measured: offload with `device_alone_ms` in place of `device_ms`.
    pub projected_offload_ms: f64,
    /// Projected, not measured: remote scan as one host with one link runs it (the
    /// one-drive remote time at this link).
    pub projected_remote_ms: f64,
}

/// The report (`report.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Report {
    /// Schema version ([`REPORT_VERSION`]).
    pub version: u32,
    /// TPC-H scale factor (started device) or 0 for an external device.
    pub scale: f64,
    /// Runs per query and mode.
    pub runs: usize,
    /// Compute workers of the started device, which the reference engines get as threads (0
    /// for an external device).
    pub workers: usize,
    /// Compression of full transfer's Arrow IPC (`lz4`, `zstd`); none: uncompressed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_compression: Option<String>,
    /// Rows in lineitem.
    pub table_rows: u64,
    /// Emulated link rates run besides loopback, Gb/s.
    pub links: Vec<f64>,
    /// Reference engines that ran: name → version.
    pub engines: std::collections::BTreeMap<String, String>,
    /// Why reference engines did not run, if they did not.
    pub reference_note: Option<String>,
    /// Queries.
    pub queries: Vec<QueryReport>,
    /// The hot-column tier, cold against warm (`--cache-mb`; absent when skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm: Option<super::pair::PairSection>,
    /// 1 compute worker against the started devices' count, side by side (absent with one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_pair: Option<super::pair::PairSection>,
    /// DuckDB (`a`) against the device (`b`), each query alternately on both (absent when
    /// DuckDB did not run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versus: Option<super::pair::PairSection>,
    /// The same at 1 thread and 1 worker, when the started devices have more (absent
    /// otherwise, or when DuckDB did not run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versus_single: Option<super::pair::PairSection>,
    /// The performance targets, each with its measured value.
    pub targets: Vec<Target>,
    /// Problems found by --check.
    pub failures: Vec<String>,
}

/// A performance target and whether this run met it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Target {
    /// What is promised.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// Met, missed, or not measurable in this run (`None`).
    pub met: Option<bool>,
}
