//! Measuring one query in the three modes: offload, remote scan and full transfer, run in
//! rounds whose mode order alternates (so neither warms the caches for another every time),
//! with the median, minimum and maximum wall time of each.

use std::time::Instant;

use anyhow::Result;
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type};
use nearstore_sdk::{ClientOptions, Mode, SqlResult, SqlSession};

use super::{DeviceChild, ModeFigures};

/// The three sessions of a device.
pub(super) struct Sessions {
    pub offload: SqlSession,
    pub remote: SqlSession,
    pub transfer: SqlSession,
}

impl Sessions {
    pub async fn connect(url: &str) -> Result<Self> {
        let s = |m| SqlSession::connect(url, ClientOptions::default(), m);
        Ok(Sessions {
            offload: s(Mode::Offload).await?,
            remote: s(Mode::RemoteScan).await?,
            transfer: s(Mode::FullTransfer).await?,
        })
    }

    fn in_order(&self) -> [&SqlSession; 3] {
        [&self.offload, &self.remote, &self.transfer]
    }
}

/// One query's results and figures in each mode.
pub(super) struct Measured {
    pub offload: (SqlResult, ModeFigures),
    pub remote: (SqlResult, ModeFigures),
    pub transfer: (SqlResult, ModeFigures),
}

impl Measured {
    /// Whether the three modes returned the same rows.
    pub fn equal(&self) -> bool {
        let t = canonical(&self.transfer.0);
        canonical(&self.offload.0) == t && canonical(&self.remote.0) == t
    }
}

/// Per-mode samples of one query.
#[derive(Default)]
struct Samples {
    walls: Vec<f64>,
    devs: Vec<f64>,
    host_cpu: Vec<f64>,
    dev_cpu: Vec<f64>,
    last: Option<SqlResult>,
}

/// Runs `sql` `runs` times in each mode: round `i` runs offload, remote, transfer when `i` is
/// even and the reverse when it is odd. Wall time is the SQL call as the host sees it
/// (planning, every device call, host operators); device time is the device's own
/// `total_us` summed over scans (none for a remote scan, where the device only serves bytes).
pub(super) async fn measure(
    sessions: &Sessions,
    sql: &str,
    runs: usize,
    device: Option<&DeviceChild>,
) -> Result<Measured> {
    let mut samples: [Samples; 3] = Default::default();
    for round in 0..runs.max(1) {
        let mut order = [0usize, 1, 2];
        if round % 2 == 1 {
            order.reverse();
        }
        for m in order {
            let s = sessions.in_order()[m];
            let (c0, d0) = (process_cpu_ms(), device.and_then(DeviceChild::cpu_ms));
            let t = Instant::now();
            let r = s.sql(sql).await?;
            let x = &mut samples[m];
            x.walls.push(t.elapsed().as_secs_f64() * 1e3);
            x.host_cpu.push(process_cpu_ms() - c0);
            if let (Some(d0), Some(d1)) = (d0, device.and_then(DeviceChild::cpu_ms)) {
                x.dev_cpu.push(d1 - d0);
            }
            x.devs
                .push(r.scans.iter().map(|(_, st)| st.total_us as f64 / 1e3).sum());
            x.last = Some(r);
        }
    }
    let [o, rm, t] = samples.map(figures);
    Ok(Measured {
        offload: o,
        remote: rm,
        transfer: t,
    })
}

fn figures(x: Samples) -> (SqlResult, ModeFigures) {
    let r = x.last.expect("at least one run");
    let fig = ModeFigures {
        bytes_moved: r.bytes_moved(),
        bytes_read: r.scans.iter().map(|(_, st)| st.bytes_read_media).sum(),
        wall_ms: median(x.walls.clone()),
        min_ms: x.walls.iter().copied().fold(f64::INFINITY, f64::min),
        max_ms: x.walls.iter().copied().fold(0.0, f64::max),
        device_ms: median(x.devs),
        host_cpu_ms: median(x.host_cpu),
        device_cpu_ms: (!x.dev_cpu.is_empty()).then(|| median(x.dev_cpu)),
        calls: (r.scans.len() as u64).max(r.remote.calls),
    };
    (r, fig)
}

/// Result rows as sorted text, floats to 9 significant digits.
pub(super) fn canonical(r: &SqlResult) -> Vec<String> {
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

/// Arrow IPC stream size of a result.
pub(super) fn ipc_bytes(r: &SqlResult) -> Result<u64> {
    let Some(first) = r.batches.first() else {
        return Ok(0);
    };
    let mut buf = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, &first.schema())?;
    for b in &r.batches {
        w.write(b)?;
    }
    w.finish()?;
    drop(w);
    Ok(buf.len() as u64)
}

pub(super) fn median(mut v: Vec<f64>) -> f64 {
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

/// CPU time of this process (all threads), milliseconds.
fn process_cpu_ms() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass; no other memory is involved.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// A result's values, comparable across engines: the row count and a digest of its rows in
/// sorted order, each numeric cell (integer, decimal or float) as an f64 to 9 significant
/// digits or 6 decimal places, whichever is coarser (engines type the same aggregate
/// differently: DuckDB's `avg` of a decimal is a double, DataFusion's and ours a decimal of
/// scale 6), every other cell as Arrow displays it, nulls as `NULL`.
pub(super) fn values_digest(batches: &[RecordBatch]) -> Result<(usize, u64)> {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut rows: Vec<String> = Vec::new();
    for b in batches {
        let cols: Vec<arrow::array::ArrayRef> = b
            .columns()
            .iter()
            .map(|c| {
                if c.data_type().is_numeric() {
                    arrow::compute::cast(c, &DataType::Float64)
                } else {
                    Ok(c.clone())
                }
            })
            .collect::<Result<_, _>>()?;
        for i in 0..b.num_rows() {
            let cells: Vec<String> = cols
                .iter()
                .map(|c| {
                    if c.is_null(i) {
                        "NULL".to_string()
                    } else if let Some(f) = c.as_primitive_opt::<Float64Type>() {
                        let v = (f.value(i) * 1e6).round() / 1e6;
                        // -0 and 0 are one value.
                        format!("{:.8e}", if v == 0.0 { 0.0 } else { v })
                    } else {
                        arrow::util::display::array_value_to_string(c, i).unwrap_or_default()
                    }
                })
                .collect();
            rows.push(cells.join("|"));
        }
    }
    rows.sort_unstable();
    // DefaultHasher::new() has fixed keys: the same rows give the same digest in this process.
    let mut h = DefaultHasher::new();
    rows.hash(&mut h);
    Ok((rows.len(), h.finish()))
}
