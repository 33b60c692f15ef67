//! Measuring one query in the three modes: offload, remote scan and full transfer, run in
//! rounds whose mode order changes (so none warms the caches for another every time),
//! with the median, minimum and maximum wall time of each; and Auto mode run beside them in
//! the same rounds, after a first run of its own that decides (the rounds' runs of the same
//! text reuse the decision, as [`nearstore_sdk::DECISION_TTL`] allows).

use std::time::Instant;

use anyhow::Result;
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type};
use nearstore_proto::IpcCompression;
use nearstore_sdk::{ClientOptions, Mode, SqlResult, SqlSession};

use super::{AutoChoice, DeviceChild, ModeFigures};

/// A query outside the suite that every mode runs once on a freshly started device, so its
/// learnt rates have a sample before Auto's first choice.
const WARM_UP: &str = "select l_partkey, l_quantity from lineitem where l_quantity < 3";

/// The sessions of a device: the three modes and Auto.
pub(super) struct Sessions {
    pub offload: SqlSession,
    pub remote: SqlSession,
    pub transfer: SqlSession,
    pub auto: SqlSession,
}

impl Sessions {
    /// Sessions on the device at `url`; full transfer's results compressed with
    /// `compression`.
    pub async fn connect(url: &str, compression: Option<IpcCompression>) -> Result<Self> {
        let s = |m| SqlSession::connect(url, ClientOptions::default(), m);
        let compressed = ClientOptions {
            compression,
            ..Default::default()
        };
        let sessions = Sessions {
            offload: s(Mode::Offload).await?,
            remote: s(Mode::RemoteScan).await?,
            transfer: SqlSession::connect(url, compressed, Mode::FullTransfer).await?,
            auto: s(Mode::Auto).await?,
        };
        for s in sessions.in_order() {
            s.sql(WARM_UP).await?;
        }
        Ok(sessions)
    }

    fn in_order(&self) -> [&SqlSession; 4] {
        [&self.offload, &self.remote, &self.transfer, &self.auto]
    }
}

/// One query's results and figures in each mode.
pub(super) struct Measured {
    pub offload: (SqlResult, ModeFigures),
    pub remote: (SqlResult, ModeFigures),
    pub transfer: (SqlResult, ModeFigures),
    /// Auto's runs: the last result (its mode and reason) and their figures.
    pub auto: (SqlResult, ModeFigures),
    /// Auto's first run's wall time (ms): the one that decided.
    pub auto_first_ms: f64,
    /// A decision on its own before the runs: its wall time (ms).
    pub decide_ms: f64,
}

impl Measured {
    /// Auto's choice with its regret: Auto's median wall time / the fastest mode's median,
    /// and its first run's (the decision's own cost included) / the same.
    pub fn auto_choice(&self) -> AutoChoice {
        let (r, fig) = &self.auto;
        let best = [
            self.offload.1.wall_ms,
            self.remote.1.wall_ms,
            self.transfer.1.wall_ms,
        ]
        .into_iter()
        .fold(f64::INFINITY, f64::min)
        .max(1e-3);
        AutoChoice {
            mode: r.mode.as_str().to_string(),
            decide_ms: self.decide_ms,
            regret: fig.wall_ms / best,
            first_regret: self.auto_first_ms / best,
            reason: r.reason.clone(),
        }
    }

    /// Whether the three modes and Auto returned the same rows.
    pub fn equal(&self) -> bool {
        let t = canonical(&self.transfer.0);
        canonical(&self.offload.0) == t
            && canonical(&self.remote.0) == t
            && canonical(&self.auto.0) == t
    }
}

/// Per-mode samples of one query.
#[derive(Default)]
struct Samples {
    walls: Vec<f64>,
    devs: Vec<f64>,
    execs: Vec<f64>,
    host_cpu: Vec<f64>,
    dev_cpu: Vec<f64>,
    last: Option<SqlResult>,
}

/// The order of the sessions ([`Sessions::in_order`]: offload 0, remote 1, transfer 2, Auto 3)
/// in each round, a Williams square: over four rounds every session runs right after every
/// other exactly once, so what a run leaves behind (a full transfer's gigabyte, a remote
/// scan's allocations) weighs on each alike; within three rounds each runs after a full
/// transfer once (with rounds that only alternated, Auto ran after one in two of three rounds
/// and its wide scans' medians took the slow runs).
const ROUNDS: [[usize; 4]; 4] = [[0, 1, 3, 2], [1, 2, 0, 3], [2, 3, 1, 0], [3, 0, 2, 1]];

/// A query whose fastest session's first run took less than this (ms) runs [`QUICK_ROUNDS`]
/// rounds: a millisecond query's median of three is at the mercy of one scheduler hiccup, and
/// its extra rounds cost little.
const QUICK_MS: f64 = 50.0;

/// Rounds a quick query runs (three Williams squares).
const QUICK_ROUNDS: usize = 12;

/// A session whose first run took more than this many times the fastest one's sits out a
/// quick query's extra rounds (a second-long full transfer beside a 5 ms offload cannot be the
/// fastest; its median stays that of the first `runs`).
const OUT_OF_RUNNING: f64 = 5.0;

/// The fastest first run of the four sessions, ms.
fn fastest_first(samples: &[Samples; 4]) -> f64 {
    samples
        .iter()
        .filter_map(|x| x.walls.first().copied())
        .fold(f64::INFINITY, f64::min)
}

/// Runs `sql` `runs` times in each mode and in Auto ([`QUICK_ROUNDS`] times for a quick
/// query), in the orders of [`ROUNDS`]. Wall time is
/// the SQL call as the host sees it
/// (planning, every device call, host operators); device time is each call's `call_us`
/// (receipt of the call to the last byte leaving the device) summed over scans, and the
/// executor's part of it (`total_us`) is kept beside it; a remote scan has neither (the device
/// only serves bytes).
pub(super) async fn measure(
    sessions: &Sessions,
    sql: &str,
    runs: usize,
    device: Option<&DeviceChild>,
) -> Result<Measured> {
    // Auto's first run decides (and keeps the decision); it is timed on its own, and the
    // rounds below time `runs` runs that reuse the decision, as many as each mode gets, so
    // Auto's median and the modes' are taken over the same number of runs (with the deciding
    // run among them, a median of three was the slower of two ordinary runs, against the
    // middle of three for the modes). Then a decision on its own, for its time (`decide`
    // keeps nothing).
    let t = Instant::now();
    sessions.auto.sql(sql).await?;
    let auto_first_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    sessions.auto.decide(sql).await?;
    let decide_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut samples: [Samples; 4] = Default::default();
    let mut rounds = runs.max(1);
    let mut round = 0;
    while round < rounds {
        for m in ROUNDS[round % ROUNDS.len()] {
            if round >= runs && samples[m].walls[0] > OUT_OF_RUNNING * fastest_first(&samples) {
                continue;
            }
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
            x.devs.push(r.scans.iter().map(|(_, st)| call_ms(st)).sum());
            x.execs.push(executor_ms(&r));
            x.last = Some(r);
        }
        round += 1;
        if round == 1 && fastest_first(&samples) < QUICK_MS {
            rounds = rounds.max(QUICK_ROUNDS);
        }
    }
    let [o, rm, t, a] = samples.map(figures);
    Ok(Measured {
        offload: o,
        remote: rm,
        transfer: t,
        auto: a,
        auto_first_ms,
        decide_ms,
    })
}

/// A result's executor time summed over its scans (`total_us`: from preparation to the last
/// batch), ms.
pub(super) fn executor_ms(r: &SqlResult) -> f64 {
    r.scans.iter().map(|(_, st)| st.total_us as f64 / 1e3).sum()
}

/// A device scan's call time, ms (a device older than `call_us` reports only the executor's
/// time).
pub(super) fn call_ms(st: &nearstore_proto::QueryStats) -> f64 {
    st.call_us.max(st.total_us) as f64 / 1e3
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
        executor_ms: median(x.execs),
        host_cpu_ms: median(x.host_cpu),
        device_cpu_ms: (!x.dev_cpu.is_empty()).then(|| median(x.dev_cpu)),
        calls: (r.scans.len() as u64).max(r.remote.calls),
        runs: x.walls.len(),
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

/// Results up to this many rows are kept cell by cell and compared with a tolerance; larger
/// ones (the sweep's raw rows: stored decimals, no computed averages) by a digest.
const COMPARED_ROWS_MAX: usize = 10_000;

/// One cell of a result, as compared across engines.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Cell {
    Null,
    Num(f64),
    Text(String),
}

impl Cell {
    /// Its text in a row's key: numbers to 9 significant digits or 6 decimals, whichever is
    /// coarser.
    fn key(&self) -> String {
        match self {
            Cell::Null => "NULL".into(),
            Cell::Num(v) => {
                let v = (v * 1e6).round() / 1e6;
                // -0 and 0 are one value.
                format!("{:.8e}", if v == 0.0 { 0.0 } else { v })
            }
            Cell::Text(t) => t.clone(),
        }
    }

    /// Equal as values: numbers within 1e-9 relative or one unit of a 6-decimal scale
    /// (engines truncate or round a decimal average at its last digit differently).
    fn same(&self, other: &Cell) -> bool {
        match (self, other) {
            (Cell::Num(a), Cell::Num(b)) => {
                (a - b).abs() <= 1e-9 * a.abs().max(b.abs()) + 1.000_001e-6
            }
            (a, b) => a == b,
        }
    }
}

/// A result's values, comparable across engines (types aside: DuckDB's `avg` of a decimal is
/// a double, DataFusion's and ours a decimal of scale 6). Numeric cells (integer, decimal,
/// float) become f64, other cells their Arrow display, nulls `NULL`; rows are sorted by their
/// key. A small result keeps its cells; a large one only its row count and a digest of the
/// keys.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Values {
    Rows(Vec<Vec<Cell>>),
    Digest(usize, u64),
}

impl Values {
    /// Whether `self` and `other` are the same values.
    pub fn same(&self, other: &Values) -> bool {
        match (self, other) {
            (Values::Rows(a), Values::Rows(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|(x, y)| x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.same(q)))
            }
            (Values::Digest(n, d), Values::Digest(m, e)) => n == m && d == e,
            _ => false,
        }
    }
}

/// The [`Values`] of a result.
pub(super) fn values_of(batches: &[RecordBatch]) -> Result<Values> {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut rows: Vec<Vec<Cell>> = Vec::new();
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
            rows.push(
                cols.iter()
                    .map(|c| {
                        if c.is_null(i) {
                            Cell::Null
                        } else if let Some(f) = c.as_primitive_opt::<Float64Type>() {
                            Cell::Num(f.value(i))
                        } else {
                            Cell::Text(
                                arrow::util::display::array_value_to_string(c, i)
                                    .unwrap_or_default(),
                            )
                        }
                    })
                    .collect(),
            );
        }
    }
    let mut keyed: Vec<(String, Vec<Cell>)> = rows
        .into_iter()
        .map(|r| (r.iter().map(Cell::key).collect::<Vec<_>>().join("|"), r))
        .collect();
    keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    if keyed.len() <= COMPARED_ROWS_MAX {
        return Ok(Values::Rows(keyed.into_iter().map(|(_, r)| r).collect()));
    }
    // DefaultHasher::new() has fixed keys: the same rows give the same digest in this process.
    let mut h = DefaultHasher::new();
    for (k, _) in &keyed {
        k.hash(&mut h);
    }
    Ok(Values::Digest(keyed.len(), h.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Decimal128Array, Float64Array, StringArray};
    use std::sync::Arc;

    #[test]
    fn over_four_rounds_every_session_runs_right_after_every_other_once() {
        let mut pairs = std::collections::BTreeSet::new();
        for round in ROUNDS {
            let mut seen = round.to_vec();
            seen.sort();
            assert_eq!(seen, [0, 1, 2, 3], "{round:?}");
            for w in round.windows(2) {
                assert!(pairs.insert((w[0], w[1])), "{w:?} twice");
            }
        }
        assert_eq!(pairs.len(), 12);
        // Within the default three rounds, each of the others runs right after a full
        // transfer (2) once, counting the step from one round to the next.
        let flat: Vec<usize> = ROUNDS[..3].iter().flatten().copied().collect();
        let mut after: Vec<usize> = flat
            .windows(2)
            .filter(|w| w[0] == 2)
            .map(|w| w[1])
            .collect();
        after.sort();
        assert_eq!(after, [0, 1, 3]);
    }

    fn batch(avg: arrow::array::ArrayRef) -> RecordBatch {
        let flag: arrow::array::ArrayRef = Arc::new(StringArray::from(vec!["A", "N"]));
        RecordBatch::try_from_iter([("flag", flag), ("avg", avg)]).unwrap()
    }

    #[test]
    fn a_truncated_decimal_average_equals_a_double_but_a_wrong_value_does_not() {
        // Ours: decimal(…, 6), truncated; DuckDB's: a double; rows in another order.
        let ours = batch(Arc::new(
            Decimal128Array::from(vec![25_522_005, 25_516_471])
                .with_precision_and_scale(38, 6)
                .unwrap(),
        ));
        let theirs = RecordBatch::try_from_iter([
            (
                "flag",
                Arc::new(StringArray::from(vec!["N", "A"])) as arrow::array::ArrayRef,
            ),
            (
                "avg",
                Arc::new(Float64Array::from(vec![
                    25.516471920522985,
                    25.522005853257337,
                ])),
            ),
        ])
        .unwrap();
        let a = values_of(&[ours]).unwrap();
        assert!(a.same(&values_of(&[theirs]).unwrap()));
        let wrong = batch(Arc::new(Float64Array::from(vec![25.5221, 25.516471])));
        assert!(!a.same(&values_of(&[wrong]).unwrap()));
    }
}
