//! Shared helpers: in-process devices, device processes, generated tables.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, Date32Array, Decimal128Array, Float64Array, Int64Array, RecordBatch, StringArray,
};
use nearstore::serve_process::ServeProcess;
use nearstore_proto::PutMode;
use nearstore_runtime::storage::WriteConfig;
use nearstore_runtime::storage::reader::{ReaderChoice, ReaderConfig};
use nearstore_runtime::{Device, DeviceConfig};
use nearstore_sdk::{Client, ClientOptions, Mode, SqlSession};

/// A device running in this process on a loopback port.
pub struct TestDevice {
    /// Its URL.
    pub url: String,
    /// The device.
    pub device: Device,
    server: nearstore_runtime::LocalServer,
}

impl TestDevice {
    /// Starts a device on `dir` with `reader` and small row groups (10 000 rows, pages of
    /// 1 000), so small tables still have many row groups and pages.
    pub async fn start(dir: &Path, reader: ReaderChoice) -> Self {
        Self::start_with(dir, |c| {
            c.reader = ReaderConfig {
                choice: reader,
                ..Default::default()
            }
        })
        .await
    }

    /// Like [`TestDevice::start`] with the automatic reader, with `configure` applied to the
    /// configuration last.
    pub async fn start_with(dir: &Path, configure: impl FnOnce(&mut DeviceConfig)) -> Self {
        let mut config = DeviceConfig::new(dir);
        config.write = WriteConfig {
            row_group_rows: 10_000,
            page_rows: 1_000,
            ..WriteConfig::default()
        };
        configure(&mut config);
        let device = Device::open(&config).expect("device opens");
        let server = device.serve_local().await.expect("device serves");
        TestDevice {
            url: server.url.clone(),
            device,
            server,
        }
    }

    /// A connected client.
    pub async fn client(&self) -> Client {
        connect_retry(&self.url, Duration::from_secs(10)).await
    }

    /// Stops serving and waits for the server to finish.
    pub async fn stop(self) {
        self.server.stop().await.unwrap();
    }
}

/// A device in a temporary directory holding one table, with an offload and a full-transfer
/// SQL session on it: the set-up of a test that compares pushed queries with the host's
/// answer.
pub struct OffloadAndHost {
    /// The device.
    pub dev: TestDevice,
    /// Its tables in offload mode.
    pub offload: SqlSession,
    /// Its tables in full-transfer mode: the host computes.
    pub transfer: SqlSession,
    _dir: tempfile::TempDir,
}

impl OffloadAndHost {
    /// Starts a device (as [`TestDevice::start_with`], defaults kept) holding `batches` as
    /// `table`, and connects both sessions.
    pub async fn with_table(table: &str, batches: Vec<RecordBatch>) -> Self {
        Self::with_table_on(table, batches, |_| {}).await
    }

    /// [`OffloadAndHost::with_table`] on a device configured by `configure` last.
    pub async fn with_table_on(
        table: &str,
        batches: Vec<RecordBatch>,
        configure: impl FnOnce(&mut DeviceConfig),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let dev = TestDevice::start_with(dir.path(), configure).await;
        dev.client()
            .await
            .put_batches(table, PutMode::Create, batches)
            .await
            .unwrap();
        let connect = |m| SqlSession::connect(&dev.url, ClientOptions::default(), m);
        let (offload, transfer) = (
            connect(Mode::Offload).await.unwrap(),
            connect(Mode::FullTransfer).await.unwrap(),
        );
        OffloadAndHost {
            dev,
            offload,
            transfer,
            _dir: dir,
        }
    }

    /// Runs `q` in offload and in full transfer (its `round`-th time, for the messages):
    /// asserts the host's answer has rows and the device's equals it; returns the offload
    /// result for further checks.
    pub async fn agree(&self, q: &str, round: usize) -> nearstore_sdk::SqlResult {
        let a = self.offload.sql(q).await.unwrap();
        let b = self.transfer.sql(q).await.unwrap();
        assert!(b.num_rows() > 0, "{q}");
        assert_eq!(rows(&a.batches), rows(&b.batches), "{q} (round {round})");
        a
    }

    /// Stops the device.
    pub async fn stop(self) {
        self.dev.stop().await;
    }
}

/// Connects, retrying until `within` has passed.
/// The names of the tables the device lists, in its order.
pub async fn table_names(c: &mut Client) -> Vec<String> {
    c.tables()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect()
}

pub async fn connect_retry(url: &str, within: Duration) -> Client {
    let start = Instant::now();
    loop {
        match Client::connect(url).await {
            Ok(c) => return c,
            Err(e) if start.elapsed() < within => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("device at {url} did not come up: {e}"),
        }
    }
}

/// A generated table: `id` (0.., sorted), `val` (float, every 7th null), `cat` (5 strings),
/// `day` (date32), `price` (decimal(15,2)).
pub fn table_batches(rows: usize, batch_rows: usize, seed: u64) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < rows {
        let n = batch_rows.min(rows - start);
        out.push(make_batch(start as i64, n, seed));
        start += n;
    }
    out
}

/// One batch of the generated table, rows `start..start + n`.
pub fn make_batch(start: i64, n: usize, seed: u64) -> RecordBatch {
    let ids: Vec<i64> = (start..start + n as i64).collect();
    let mix = |i: i64| {
        let mut x = (i as u64) ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 31;
        x
    };
    let val: Float64Array = ids
        .iter()
        .map(|&i| (i % 7 != 3).then(|| (mix(i) % 10_000) as f64 / 10.0))
        .collect();
    let cats = ["alpha", "beta", "gamma", "delta", "epsilon"];
    let cat: StringArray = ids
        .iter()
        .map(|&i| Some(cats[(mix(i) % 5) as usize]))
        .collect();
    let day: Date32Array = ids
        .iter()
        .map(|&i| Some(8000 + (mix(i) % 2000) as i32))
        .collect();
    let price = ids
        .iter()
        .map(|&i| Some((mix(i) % 1_000_000) as i128))
        .collect::<Decimal128Array>()
        .with_precision_and_scale(15, 2)
        .unwrap();
    // Nullability declared, not inferred: a batch of rows without a null `val` (three rows or
    // fewer) has the table's schema too.
    RecordBatch::try_from_iter_with_nullable(vec![
        ("id", Arc::new(Int64Array::from(ids)) as ArrayRef, false),
        ("val", Arc::new(val) as ArrayRef, true),
        ("cat", Arc::new(cat) as ArrayRef, false),
        ("day", Arc::new(day) as ArrayRef, false),
        ("price", Arc::new(price) as ArrayRef, false),
    ])
    .unwrap()
}

/// Path of the CLI binary built for tests.
pub fn cli_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nearstore-under-test"))
}

/// A device in its own process (`nearstore serve`), killed when dropped.
pub struct DeviceProcess {
    process: ServeProcess,
    /// Its URL.
    pub url: String,
}

impl DeviceProcess {
    /// Starts `nearstore serve` on `dir` and a loopback port the device picks (its start-up
    /// line names it), without the demo table, with small row groups (10 000 rows, pages of
    /// 1 000) and `extra` arguments.
    pub fn start(dir: &Path, extra: &[&str]) -> Self {
        let args = [
            "--no-demo",
            "--row-group-rows",
            "10000",
            "--page-rows",
            "1000",
        ];
        let process = ServeProcess::start(
            &cli_bin(),
            dir,
            args.iter().chain(extra),
            Duration::from_secs(60),
        )
        .expect("the device process starts and announces its address within 60 s");
        DeviceProcess {
            url: process.url.clone(),
            process,
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.process.id()
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill9(self) {
        self.process.kill().expect("SIGKILL delivered");
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(self) -> std::process::ExitStatus {
        self.process
            .terminate(Duration::from_secs(20))
            .expect("the device stops within 20 s of SIGTERM")
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sum of `id` over batches (a cheap content check).
pub fn sum_ids(batches: &[RecordBatch]) -> i64 {
    batches
        .iter()
        .map(|b| {
            let ids = b
                .column_by_name("id")
                .expect("id column")
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("int64 ids");
            ids.values().iter().sum::<i64>()
        })
        .sum()
}

/// Result rows as text in their order, floats to 9 significant digits (the order of a float
/// sum may differ between plans).
pub fn rows(batches: &[RecordBatch]) -> Vec<String> {
    rows_with_digits(batches, 9)
}

pub use nearstore_test_support::rows::rows_with_digits;

/// A SQL result's rows as exact text, sorted (for queries without a total order).
pub fn sorted_rows(r: &nearstore_sdk::SqlResult) -> Vec<String> {
    let mut v: Vec<String> = r
        .batches
        .iter()
        .flat_map(|b| {
            (0..b.num_rows()).map(move |i| {
                b.columns()
                    .iter()
                    .map(|c| arrow::util::display::array_value_to_string(c, i).unwrap())
                    .collect::<Vec<_>>()
                    .join("|")
            })
        })
        .collect();
    v.sort();
    v
}

/// TPC-H `table` at `scale` as generated, cut into batches of `rows` rows.
pub fn tpch_slices(table: &str, scale: f64, rows: usize) -> Vec<RecordBatch> {
    let generated: Vec<RecordBatch> = nearstore_runtime::demo::tpch_batches(table, scale)
        .unwrap()
        .map(|b| b.unwrap())
        .collect();
    let all = arrow::compute::concat_batches(&generated[0].schema(), &generated).unwrap();
    (0..all.num_rows())
        .step_by(rows)
        .map(|o| all.slice(o, rows.min(all.num_rows() - o)))
        .collect()
}
