//! Multi-device fan-out: lineitem spread over three device processes answers every query
//! exactly as one device holding all of it does; scans reach every device and pushed
//! aggregates come back as partial aggregates merged on the host.

use arrow::array::RecordBatch;
use nearstore_proto::PutMode;
use nearstore_sdk::{ClientOptions, Mode, SqlSession};

use crate::support::{DeviceProcess, connect_retry, rows, tpch_slices};

const QUERIES: &[&str] = &[
    // Q1: grouped sums, decimal averages, counts.
    "select l_returnflag, l_linestatus, sum(l_quantity) as sum_qty, sum(l_extendedprice) as sum_base_price, \
     sum(l_extendedprice * (1 - l_discount)) as sum_disc_price, avg(l_quantity) as avg_qty, \
     avg(l_discount) as avg_disc, count(*) as count_order from lineitem where l_shipdate <= date '1998-09-02' \
     group by l_returnflag, l_linestatus order by l_returnflag, l_linestatus",
    // Q6: one ungrouped sum.
    "select sum(l_extendedprice * l_discount) as revenue from lineitem where l_shipdate >= date '1994-01-01' \
     and l_shipdate < date '1995-01-01' and l_discount between 0.05 and 0.07 and l_quantity < 24",
    // Minima, maxima, a float average of an integer column, counts of a nullable expression.
    "select l_shipmode, count(*) as n, min(l_shipdate) as first, max(l_extendedprice) as top, \
     avg(l_partkey) as avg_part, count(l_comment) as comments from lineitem group by l_shipmode order by l_shipmode",
    // A group that exists on some devices only.
    "select l_orderkey, count(*) as n, sum(l_quantity) as q from lineitem where l_orderkey < 40 \
     group by l_orderkey order by l_orderkey",
    // Filter, order by and limit across devices.
    "select l_orderkey, l_linenumber, l_extendedprice from lineitem where l_discount = 0.10 \
     order by l_extendedprice desc, l_orderkey, l_linenumber limit 7",
    // No rows anywhere.
    "select count(*) as n, sum(l_quantity) as q, min(l_orderkey) as m from lineitem where l_quantity > 1000",
    // Plain rows from every device.
    "select l_orderkey, l_partkey from lineitem where l_partkey < 30 order by l_orderkey, l_partkey",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_devices_answer_like_one_device_holding_everything() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let procs: Vec<DeviceProcess> = dirs
        .iter()
        .map(|d| DeviceProcess::start(d.path(), &[]))
        .collect();
    let (parts, whole) = (&procs[..3], &procs[3]);

    // lineitem at SF 0.01: batches dealt round-robin to the three parts, all of it to `whole`.
    let batches = tpch_slices("lineitem", 0.01, 5000);
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut c = connect_retry(&whole.url, std::time::Duration::from_secs(20)).await;
    c.put_batches("lineitem", PutMode::Create, batches.clone())
        .await
        .unwrap();
    let mut held = 0;
    for (k, p) in parts.iter().enumerate() {
        let mine: Vec<RecordBatch> = batches
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 == k)
            .map(|(_, b)| b.clone())
            .collect();
        held += mine.iter().map(|b| b.num_rows()).sum::<usize>();
        let mut c = connect_retry(&p.url, std::time::Duration::from_secs(20)).await;
        c.put_batches("lineitem", PutMode::Create, mine)
            .await
            .unwrap();
    }
    assert_eq!(held, total);
    assert!(batches.len() >= 3, "every device holds a part");

    let urls: Vec<String> = parts.iter().map(|p| p.url.clone()).collect();
    let opts = ClientOptions::default;
    let one = SqlSession::connect(&whole.url, opts(), Mode::Offload)
        .await
        .unwrap();
    let fan = SqlSession::connect_many(&urls, opts(), Mode::Offload)
        .await
        .unwrap();
    let fan_transfer = SqlSession::connect_many(&urls, opts(), Mode::FullTransfer)
        .await
        .unwrap();
    // The host's own Parquet reader over the three devices' objects.
    let fan_remote = SqlSession::connect_many(&urls, opts(), Mode::RemoteScan)
        .await
        .unwrap();
    for q in QUERIES {
        let a = one.sql(q).await.unwrap_or_else(|e| panic!("{q}: {e}"));
        let b = fan.sql(q).await.unwrap_or_else(|e| panic!("{q}: {e}"));
        let t = fan_transfer.sql(q).await.unwrap();
        let r = fan_remote
            .sql(q)
            .await
            .unwrap_or_else(|e| panic!("{q}: {e}"));
        assert_eq!(rows(&a.batches), rows(&b.batches), "{q}");
        assert_eq!(rows(&t.batches), rows(&b.batches), "{q}");
        assert_eq!(rows(&r.batches), rows(&b.batches), "{q}");
        assert!(
            r.scans.is_empty(),
            "{q}: the remote scan sent a device plan"
        );
        // Every device was asked, once.
        let mut asked = b.scans.len();
        assert_eq!(asked, 3, "{q}");
        asked = t.scans.len();
        assert_eq!(asked, 3, "{q}");
        // Never more than full transfer. Where nothing but the projection is pushed, both move
        // the same Arrow; the statistics trailers (counted) differ by a few bytes of timings.
        let trailer_jitter = 32 * b.scans.len() as u64;
        let scans = |r: &nearstore_sdk::SqlResult| -> Vec<String> {
            r.scans
                .iter()
                .map(|(p, st)| format!("{p:?} {st:?}"))
                .collect()
        };
        assert!(
            b.bytes_moved() <= t.bytes_moved() + trailer_jitter,
            "{q}: {} vs {}\noffload {:#?}\ntransfer {:#?}",
            b.bytes_moved(),
            t.bytes_moved(),
            scans(&b),
            scans(&t)
        );
    }
    // The aggregates were pushed to each device, not computed from raw rows.
    let q1 = fan.sql(QUERIES[0]).await.unwrap();
    assert!(q1.scans.iter().all(|(p, _)| !p.aggregates.is_empty()));
    assert!(q1.bytes_moved() < 16 * 1024, "{}", q1.bytes_moved());
    let plan = fan.explain(QUERIES[4]).await.unwrap();
    assert!(plan.contains("devices=3"), "{plan}");
    // ORDER BY … LIMIT goes to every device, which returns its own top 7.
    assert!(
        plan.contains("order_by=[l_extendedprice desc, l_orderkey, l_linenumber], limit=7"),
        "{plan}"
    );
    let top = fan.sql(QUERIES[4]).await.unwrap();
    for (p, st) in &top.scans {
        assert_eq!(p.limit, Some(7));
        assert!(st.rows_returned <= 7, "{st:?}");
    }

    // The CLI takes the devices as a repeated --device.
    let mut cmd = std::process::Command::new(crate::support::cli_bin());
    cmd.args([
        "sql",
        "select count(*) as n from lineitem",
        "--format",
        "csv",
    ]);
    for u in &urls {
        cmd.args(["--device", u]);
    }
    let out = cmd.env_remove("NEARSTORE_DEVICE").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("n\n{total}\n")
    );
}
