//! Parquet scan with and without pruning, and Flight streaming against raw Arrow IPC over TCP.
//!
//! `cargo bench -p nearstore-benches --bench scan` (release profile; not part of CI).
//!
//! - `scan/point_pruned` vs `scan/point_unpruned`: the same point predicate on TPC-H lineitem
//!   (SF 0.1, 600 k rows, 5 row groups), once as `l_orderkey = K` (row groups and pages pruned by
//!   statistics) and once as `l_orderkey + 0 = K`, which statistics cannot prune, so every page
//!   is read and decoded. Same rows either way; the set-up checks that.
//! - `transport/flight` vs `transport/raw_ipc`: the same 100 k-row, 16-column result, once
//!   through the device's Flight `DoGet` on loopback and once as a plain Arrow IPC stream written
//!   to a TCP socket and read back, to show what Flight's framing costs. `transport/executor_only`
//!   runs the query without any transport: Flight's own cost is `flight - executor_only`.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nearstore_proto::{Expr, Plan, QueryStats};
use nearstore_runtime::{Device, DeviceConfig};
use nearstore_sdk::Client;

const SCALE: f64 = 0.1;
const KEY: i64 = 300_001;

struct Fixture {
    _dir: tempfile::TempDir,
    device: Device,
    rt: tokio::runtime::Runtime,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::open(&DeviceConfig::new(dir.path())).unwrap();
    device
        .load_tpch("lineitem", SCALE, &|_, _| {})
        .expect("lineitem generated");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    Fixture {
        _dir: dir,
        device,
        rt,
    }
}

fn plan(filter: &str) -> Plan {
    let mut p = Plan::scan("lineitem");
    p.filter = Some(Expr::parse(filter).unwrap());
    p
}

async fn run(device: &Device, plan: &Plan) -> (usize, QueryStats) {
    let ex = device.executor();
    let q = ex.prepare(plan).await.unwrap();
    let (mut rx, stats) = ex.execute(q);
    let mut rows = 0;
    while let Some(b) = rx.recv().await {
        rows += b.unwrap().num_rows();
    }
    (rows, stats.await.unwrap())
}

fn scan(c: &mut Criterion) {
    let f = fixture();
    let pruned = plan(&format!("l_orderkey = {KEY}"));
    let unpruned = plan(&format!("l_orderkey + 0 = {KEY}"));
    let (a, sa) = f.rt.block_on(run(&f.device, &pruned));
    let (b, sb) = f.rt.block_on(run(&f.device, &unpruned));
    assert_eq!(a, b, "both forms select the same rows");
    assert!(sa.row_groups_pruned > 0 && sb.row_groups_pruned == 0);
    eprintln!(
        "scan: pruned form reads {} B ({} of {} row groups pruned, {} pages pruned); unpruned form reads {} B",
        sa.bytes_read_media,
        sa.row_groups_pruned,
        sa.row_groups_total,
        sa.pages_pruned,
        sb.bytes_read_media
    );
    let mut g = c.benchmark_group("scan");
    g.throughput(Throughput::Elements(sb.rows_total));
    g.bench_function("point_pruned", |bch| {
        bch.iter(|| f.rt.block_on(run(&f.device, &pruned)))
    });
    g.bench_function("point_unpruned", |bch| {
        bch.iter(|| f.rt.block_on(run(&f.device, &unpruned)))
    });
    g.finish();
}

/// Writes `batches` as one Arrow IPC stream to a TCP connection and reads them back.
async fn raw_ipc(batches: Arc<Vec<RecordBatch>>) -> usize {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let writer = std::thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        sock.set_nodelay(true).unwrap();
        let mut w =
            StreamWriter::try_new(std::io::BufWriter::new(sock), &batches[0].schema()).unwrap();
        for b in batches.iter() {
            w.write(b).unwrap();
        }
        w.finish().unwrap();
    });
    let rows = tokio::task::spawn_blocking(move || {
        let sock = std::net::TcpStream::connect(addr).unwrap();
        let r = StreamReader::try_new(std::io::BufReader::new(sock), None).unwrap();
        r.map(|b| b.unwrap().num_rows()).sum::<usize>()
    })
    .await
    .unwrap();
    writer.join().unwrap();
    rows
}

fn transport(c: &mut Criterion) {
    let f = fixture();
    let server = f.rt.block_on(f.device.serve_local()).unwrap();
    let p = plan("l_orderkey <= 100000");
    let mut client = f.rt.block_on(Client::connect(&server.url)).unwrap();
    let r = f.rt.block_on(client.query(&p)).unwrap();
    let rows: usize = r.batches.iter().map(|b| b.num_rows()).sum();
    let batches = Arc::new(r.batches);
    eprintln!(
        "transport: {rows} rows, {} B of Arrow IPC",
        r.stats.bytes_sent
    );
    let mut g = c.benchmark_group("transport");
    g.throughput(Throughput::Bytes(r.stats.bytes_sent));
    g.bench_function("flight", |bch| {
        bch.iter(|| {
            let n: usize =
                f.rt.block_on(client.query(&p))
                    .unwrap()
                    .batches
                    .iter()
                    .map(|b| b.num_rows())
                    .sum();
            assert_eq!(n, rows);
        })
    });
    // The device's own part of the Flight figure: the same query without any transport.
    g.bench_function("executor_only", |bch| {
        bch.iter(|| assert_eq!(f.rt.block_on(run(&f.device, &p)).0, rows))
    });
    g.bench_function("raw_ipc", |bch| {
        bch.iter(|| assert_eq!(f.rt.block_on(raw_ipc(batches.clone())), rows))
    });
    g.finish();
    f.rt.block_on(server.stop()).unwrap();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = scan, transport
}
criterion_main!(benches);
