//! The example kernels against the same computation on the host: each example's SQL runs in
//! offload mode (the kernel on the device, next to the data) and its host-side equivalent in
//! full-transfer mode (the columns cross the link, DataFusion computes), side by side on one
//! device holding a generated table, alternating, several runs each. The report gives the
//! medians of wall time and the bytes the device sent, and checks both return the same number
//! of rows.
//!
//! `cargo bench -p nearstore-benches --bench examples [-- ROWS]` (release; not part of CI;
//! default 1 000 000 rows).

use std::path::{Path, PathBuf};
use std::time::Instant;

use arrow::array::RecordBatch;
use nearstore_proto::PutMode;
use nearstore_runtime::{Device, DeviceConfig};
use nearstore_sdk::{Client, ClientOptions, Mode, SqlSession};
use nearstore_test_support::example_data::example_rows;

const RUNS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `sql` once: milliseconds, bytes the device sent, rows.
async fn run(s: &SqlSession, sql: &str) -> (f64, u64, usize) {
    let t = Instant::now();
    let r = s.sql(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    (
        t.elapsed().as_secs_f64() * 1e3,
        r.bytes_moved(),
        r.num_rows(),
    )
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels/examples");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("nearstore-bench"))
        .join("kernel-bench");
    eprintln!("building the example kernels");
    let modules = nearstore::kernel::build(&examples, Some(&target)).expect("examples build");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let device = Device::open(&DeviceConfig::new(dir.path())).unwrap();
        let server = device.serve_local().await.unwrap();
        let mut c = Client::connect(&server.url).await.unwrap();
        let chunk = 100_000;
        let batches: Vec<RecordBatch> = (0..n)
            .step_by(chunk)
            .map(|from| example_rows(from, (from + chunk).min(n)))
            .collect();
        c.put_batches("pts", PutMode::Create, batches)
            .await
            .unwrap();
        for m in &modules {
            let name = m.file_stem().unwrap().to_str().unwrap();
            c.register_kernel(name, &std::fs::read(m).unwrap())
                .await
                .unwrap();
        }
        let offload = SqlSession::connect(&server.url, ClientOptions::default(), Mode::Offload)
            .await
            .unwrap();
        let host = SqlSession::connect(&server.url, ClientOptions::default(), Mode::FullTransfer)
            .await
            .unwrap();
        let cases = [
            (
                "grep",
                "select id from pts where grep(s, 'special re')",
                "select id from pts where s like '%special re%'",
            ),
            (
                "bbox",
                "select id, x, y from pts where bbox(x, y, '-10,-20.5,30,0')",
                "select id, x, y from pts where x between -10 and 30 and y between -20.5 and 0",
            ),
            (
                "score",
                "select id, score(x, y, '0.5,2') from pts where x > 90",
                "select id, 0.5 * x + 2 * y from pts where x > 90",
            ),
            (
                "histogram",
                "select g, histogram(y, '-100,100,20') from pts group by g",
                "select g, cast(floor((y - -100) * 20 / (100 - -100)) as bigint) as b, count(*) \
                 from pts where y >= -100 and y < 100 group by g, b",
            ),
            (
                "topk",
                "select g, topk(id, x, '10') from pts group by g",
                "select g, id from (select g, id, row_number() over (partition by g order by x \
                 desc, id) as r from pts where x is not null) where r <= 10",
            ),
        ];
        println!(
            "{n} rows; medians of {RUNS} runs, alternating; bytes = what the device sent\n\n\
             | example | kernel on device ms | host computes ms | speedup | device bytes | \
             full-transfer bytes | less moved |\n|---|---:|---:|---:|---:|---:|---:|"
        );
        for (name, on_device, on_host) in cases {
            // One warm-up each, then alternate.
            run(&offload, on_device).await;
            run(&host, on_host).await;
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let (mut bytes_a, mut bytes_b) = (0, 0);
            for _ in 0..RUNS {
                let (ms, bytes, rows_a) = run(&offload, on_device).await;
                a.push(ms);
                bytes_a = bytes;
                let (ms, bytes, rows_b) = run(&host, on_host).await;
                b.push(ms);
                bytes_b = bytes;
                // The aggregates answer per group (a list) where the host answers per
                // (group, bucket or rank) row; the rest must agree row for row.
                if !matches!(name, "histogram" | "topk") {
                    assert_eq!(rows_a, rows_b, "{name}: different row counts");
                }
            }
            let (a, b) = (median(a), median(b));
            println!(
                "| {name} | {a:.1} | {b:.1} | {:.1}x | {bytes_a} | {bytes_b} | {:.1}x |",
                b / a,
                bytes_b as f64 / bytes_a.max(1) as f64
            );
        }
        server.stop().await.unwrap();
    });
}
