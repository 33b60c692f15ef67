//! `Mode::Auto`: per query, offload or full transfer from what would be pushed, the Parquet
//! statistics of the pushed filters and the device's load, with the reason; the answer is the
//! same as in the fixed modes.

use std::time::Duration;

use nearstore_proto::PutMode;
use nearstore_sdk::{Client, ClientOptions, Mode, SqlSession};

use crate::support::{TestDevice, sorted_rows, table_batches};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_mode_chooses_per_query_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let dev = TestDevice::start_with(dir.path(), |_| {}).await;
    let d = dev.device.clone();
    tokio::task::spawn_blocking(move || d.load_tpch("lineitem", 0.01, &|_, _| {}).unwrap())
        .await
        .unwrap();
    let auto = SqlSession::connect(&dev.url, ClientOptions::default(), Mode::Auto)
        .await
        .unwrap();
    let transfer = SqlSession::connect(&dev.url, ClientOptions::default(), Mode::FullTransfer)
        .await
        .unwrap();
    let cases = [
        (
            "select sum(l_extendedprice * l_discount) as revenue from lineitem \
             where l_shipdate >= date '1994-01-01' and l_quantity < 24",
            Mode::Offload,
            "aggregate over lineitem runs on the device",
        ),
        (
            "select l_orderkey, l_quantity from lineitem where l_orderkey <= 600",
            Mode::Offload,
            "keep at most",
        ),
        (
            "select l_orderkey, l_comment from lineitem",
            Mode::FullTransfer,
            "nothing to push",
        ),
        (
            "select l_orderkey from lineitem where l_discount = 0.05",
            Mode::Offload,
            "cannot narrow",
        ),
    ];
    for (q, want, why) in cases {
        let r = auto.sql(q).await.unwrap();
        assert_eq!(r.mode, want, "{q}: {}", r.reason);
        assert!(r.reason.contains(why), "{q}: {}", r.reason);
        let t = transfer.sql(q).await.unwrap();
        assert_eq!(sorted_rows(&r), sorted_rows(&t), "{q}");
        if want == Mode::Offload {
            assert!(r.bytes_moved() < t.bytes_moved(), "{q}");
        }
    }
    // The selective filter's share comes from the statistics: l_orderkey is sorted, so the
    // row groups and pages beyond key 600 are known not to match.
    let r = auto
        .sql("select l_orderkey from lineitem where l_orderkey <= 600")
        .await
        .unwrap();
    let pct: f64 = r
        .reason
        .split("at most ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{}", r.reason));
    assert!(pct < 10.0, "{}", r.reason);
    // EXPLAIN in auto mode shows the plan of the chosen mode.
    let plan = auto
        .explain("select l_orderkey from lineitem where l_orderkey <= 600")
        .await
        .unwrap();
    assert!(plan.contains("filter="), "{plan}");
    dev.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_mode_spares_a_busy_device_a_non_selective_filter() {
    // A device on a slow emulated link, so queries stay in flight.
    let dir = tempfile::tempdir().unwrap();
    let dev = TestDevice::start_with(dir.path(), |c| c.link_gbps = Some(0.02)).await;
    let mut c = dev.client().await;
    c.put_batches("big", PutMode::Create, table_batches(200_000, 20_000, 3))
        .await
        .unwrap();
    let auto = SqlSession::connect(&dev.url, ClientOptions::default(), Mode::Auto)
        .await
        .unwrap();
    let non_selective = "select id, val from big where val >= 0.5";
    let selective = "select id, val from big where id < 500";
    // Idle: both offloaded.
    assert_eq!(auto.decide(non_selective).await.unwrap().0, Mode::Offload);

    let mut load = Vec::new();
    for _ in 0..4 {
        let url = dev.url.clone();
        load.push(tokio::spawn(async move {
            let mut c = Client::connect(&url).await.unwrap();
            let _ = c.query(&nearstore_proto::Plan::scan("big")).await;
        }));
    }
    // Wait until the device reports the four queries.
    let mut busy = false;
    for _ in 0..100 {
        let e = c
            .estimate(&nearstore_proto::Plan::scan("big"))
            .await
            .unwrap();
        if e.active_queries >= 4 {
            busy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(busy, "the background queries did not start");
    let (m, why) = auto.decide(non_selective).await.unwrap();
    assert_eq!(m, Mode::FullTransfer, "{why}");
    assert!(why.contains("is running 4 queries"), "{why}");
    // A filter the statistics show to be selective is still worth sending to a busy device.
    let (m, why) = auto.decide(selective).await.unwrap();
    assert_eq!(m, Mode::Offload, "{why}");
    for l in load {
        l.abort();
    }
    dev.stop().await;
}
