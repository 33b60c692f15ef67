//! One host against a Ballista cluster over four devices: TPC-H Q1 and a 1 %-selective scan of
//! lineitem dealt over four in-process devices on loopback, run by one host's SQL session
//! (offload mode) and by a scheduler with two executors (in this process, on their own tokio
//! tasks; 2 task slots each), alternating, several runs each. The report gives median wall
//! times (client call to last row collected) and checks both return the same rows.
//!
//! On a 2-core machine the devices, the executors and the host share the two cores, so this
//! measures the overhead of the distributed path (planning on the scheduler, task launches,
//! the shuffle), not the scaling a cluster of separate machines would show.
//!
//! `cargo bench -p nearstore-benches --bench ballista [-- SCALE]` (release; not part of CI;
//! default SF 0.2).

use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use nearstore_benches::median;
use nearstore_proto::PutMode;
use nearstore_runtime::{Device, DeviceConfig};
use nearstore_sdk::{Client, ClientOptions, Mode, SqlSession};

const RUNS: usize = 5;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Rows as text, sorted, for the comparison (floats to 17 significant digits: exact).
fn text(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = nearstore_test_support::rows::rows_with_digits(batches, 17);
    out.sort();
    out
}

fn main() {
    let scale: f64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(0.2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut servers = Vec::new();
        for d in &dirs {
            let device = Device::open(&DeviceConfig::new(d.path())).unwrap();
            servers.push((device.serve_local().await.unwrap(), device));
        }
        let urls: Vec<String> = servers.iter().map(|(s, _)| s.url.clone()).collect();
        let generated: Vec<RecordBatch> = nearstore_runtime::demo::tpch_batches("lineitem", scale)
            .unwrap()
            .map(|b| b.unwrap())
            .collect();
        for (k, url) in urls.iter().enumerate() {
            let mine: Vec<RecordBatch> = generated.iter().skip(k).step_by(4).cloned().collect();
            let mut c = Client::connect(url).await.unwrap();
            c.put_batches("lineitem", PutMode::Create, mine).await.unwrap();
        }

        let listen: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        tokio::spawn(nearstore_ballista::scheduler(
            listen,
            std::time::Duration::from_secs(3),
        ));
        let work = tempfile::tempdir().unwrap();
        for i in 0..2 {
            tokio::spawn(nearstore_ballista::executor(nearstore_ballista::ExecutorOptions {
                scheduler: listen,
                host: "127.0.0.1".into(),
                flight_port: free_port(),
                grpc_port: free_port(),
                tasks: 2,
                id: format!("bench-executor-{i}"),
                // Each executor near two of the four devices.
                near_devices: urls.iter().skip(i).step_by(2).cloned().collect(),
                work_dir: work.path().join(format!("e{i}")),
            }));
        }
        let cluster =
            nearstore_ballista::connect(&format!("df://{listen}"), &urls, &ClientOptions::default())
                .await
                .unwrap();
        let host = SqlSession::connect_many(&urls, ClientOptions::default(), Mode::Offload)
            .await
            .unwrap();
        let partkeys = (200_000.0 * scale) as i64;
        let queries = [
            (
                "Q1".to_string(),
                "select l_returnflag, l_linestatus, sum(l_quantity), sum(l_extendedprice), \
                 sum(l_extendedprice * (1 - l_discount)), avg(l_quantity), avg(l_discount), count(*) \
                 from lineitem where l_shipdate <= date '1998-09-02' \
                 group by l_returnflag, l_linestatus order by l_returnflag, l_linestatus"
                    .to_string(),
            ),
            (
                "scan 1%".to_string(),
                format!(
                    "select l_orderkey, l_partkey, l_extendedprice from lineitem where l_partkey <= {}",
                    partkeys / 100
                ),
            ),
        ];
        // The executors register within a few seconds.
        let deadline = Instant::now() + Duration::from_secs(60);
        while cluster.sql("select 1").await.unwrap().collect().await.is_err() {
            assert!(Instant::now() < deadline, "the cluster did not come up");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        println!(
            "lineitem SF {scale} over 4 devices; {RUNS} runs each, alternating; median ms from \
             the call to the last row"
        );
        println!("{:<10} {:>8} {:>12} {:>12} {:>10}", "query", "rows", "host ms", "cluster ms", "cluster/host");
        for (name, q) in &queries {
            let (mut h, mut c) = (Vec::new(), Vec::new());
            let (mut hr, mut cr) = (Vec::new(), Vec::new());
            for _ in 0..RUNS {
                let t = Instant::now();
                let r = host.sql(q).await.unwrap();
                h.push(t.elapsed().as_secs_f64() * 1e3);
                hr = text(&r.batches);
                let t = Instant::now();
                let b = cluster.sql(q).await.unwrap().collect().await.unwrap();
                c.push(t.elapsed().as_secs_f64() * 1e3);
                cr = text(&b);
            }
            assert_eq!(hr, cr, "{name}: the cluster's rows differ from the host's");
            let (mh, mc) = (median(&h).unwrap(), median(&c).unwrap());
            println!("{name:<10} {:>8} {mh:>12.1} {mc:>12.1} {:>9.2}x", hr.len(), mc / mh);
        }
    });
}
