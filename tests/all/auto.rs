//! `Mode::Auto`: per query, offload, remote scan or full transfer, whichever the cost model
//! predicts to be fastest from the devices' estimates (statistics and a sample) and the rates
//! the device learns from its own work; the answer is the same as in the fixed modes.

use std::time::Duration;

use nearstore_proto::PutMode;
use nearstore_sdk::{Client, ClientOptions, Mode, SqlSession};

use crate::support::{TestDevice, sorted_rows, table_batches};

/// The three predicted times in an Auto reason, ms (`None`: the mode cannot run the query).
fn predicted(why: &str) -> [Option<f64>; 3] {
    let after = |label: &str| {
        let rest = why.split(label).nth(1).unwrap_or_else(|| panic!("{why}"));
        rest.split(" ms").next().and_then(|n| n.trim().parse().ok())
    };
    [
        after("predicted offload "),
        after("remote scan "),
        after("full transfer "),
    ]
}

/// A percentage after `label` in an Auto reason.
fn pct_after(why: &str, label: &str) -> f64 {
    why.split(label)
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no '{label}' in: {why}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_mode_runs_the_mode_its_learnt_costs_predict_fastest() {
    let dir = tempfile::tempdir().unwrap();
    let dev = TestDevice::start_with(dir.path(), |_| {}).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = listener.local_addr().unwrap();
    let _metrics = dev.device.serve_metrics(listener);
    let d = dev.device.clone();
    tokio::task::spawn_blocking(move || d.load_tpch("lineitem", 0.01, &|_, _| {}).unwrap())
        .await
        .unwrap();
    let connect = |mode| SqlSession::connect(&dev.url, ClientOptions::default(), mode);
    let auto = connect(Mode::Auto).await.unwrap();
    let transfer = connect(Mode::FullTransfer).await.unwrap();
    let remote = connect(Mode::RemoteScan).await.unwrap();
    // Work for the device to learn from: a scan, an aggregate, a remote scan.
    let mut c = dev.client().await;
    assert_eq!(c.device_info().await.unwrap().rates.scan_bytes_per_s, None);
    for q in [
        "select l_orderkey, l_comment from lineitem",
        "select l_returnflag, sum(l_quantity) as q from lineitem group by l_returnflag",
    ] {
        connect(Mode::Offload).await.unwrap().sql(q).await.unwrap();
    }
    remote.sql("select * from lineitem").await.unwrap();
    let rates = c.device_info().await.unwrap().rates;
    assert!(rates.scan_bytes_per_s.is_some_and(|r| r > 0.0), "{rates:?}");
    assert!(
        rates.aggregate_cells_per_s.is_some_and(|r| r > 0.0),
        "{rates:?}"
    );
    assert!(
        rates.project_rows_per_s.is_some_and(|r| r > 0.0),
        "{rates:?}"
    );
    assert!(!rates.link_shaped);
    assert!(rates.link_bytes_per_s.is_some_and(|r| r > 0.0), "{rates:?}");
    assert!(
        rates.range_bytes_per_s.is_some_and(|r| r > 0.0),
        "{rates:?}"
    );
    // An unshaped link: the device sees no round trip to charge.
    assert_eq!(rates.rtt_us.map(|us| us < 1000.0), Some(true), "{rates:?}");
    let text = crate::tenants::http_get(metrics_addr, "/metrics").await;
    assert!(
        crate::tenants::metric(&text, "nearstore_learnt_scan_bytes_per_second") > 0.0,
        "{text}"
    );

    let q6 = "select sum(l_extendedprice * l_discount) as revenue from lineitem \
              where l_shipdate >= date '1994-01-01' and l_shipdate < date '1995-01-01' \
              and l_discount between 0.05 and 0.07 and l_quantity < 24";
    let sorted = "select l_orderkey, l_quantity from lineitem where l_orderkey <= 600";
    let wide = "select * from lineitem where l_discount = 0.05";
    for q in [
        q6,
        sorted,
        wide,
        "select l_orderkey, l_comment from lineitem",
    ] {
        let (m, why) = auto.decide(q).await.unwrap();
        let [o, r, t] = predicted(&why);
        let best = [
            (Mode::Offload, o),
            (Mode::RemoteScan, r),
            (Mode::FullTransfer, t),
        ]
        .into_iter()
        .filter_map(|(m, c)| c.map(|c| (m, c)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();
        // The reason prints costs to 0.1 ms: a mode within that of the best is a tie there.
        let chosen = [
            (Mode::Offload, o),
            (Mode::RemoteScan, r),
            (Mode::FullTransfer, t),
        ]
        .into_iter()
        .find(|(mode, _)| *mode == m)
        .and_then(|(_, c)| c);
        assert!(
            m == best.0 || chosen == Some(best.1),
            "{q}: chose {m:?}, best {best:?}: {why}"
        );
        // The same answer whichever mode runs it.
        let a = auto.sql(q).await.unwrap();
        assert!(a.reason.starts_with("predicted offload"), "{}", a.reason);
        let t = transfer.sql(q).await.unwrap();
        assert_eq!(sorted_rows(&a), sorted_rows(&t), "{q}");
    }
    // The same text again reuses the decision (and says so); a decision alone is fresh.
    let again = auto.sql(q6).await.unwrap();
    assert!(
        again.reason.starts_with("the decision of ") && again.reason.contains("predicted offload"),
        "{}",
        again.reason
    );
    assert!(
        auto.decide(q6)
            .await
            .unwrap()
            .1
            .starts_with("predicted offload")
    );
    // Q6's filter is on unsorted columns: the statistics cannot narrow it, the sample can.
    let (_, why) = auto.decide(q6).await.unwrap();
    assert_eq!(pct_after(&why, "at most "), 100.0, "{why}");
    assert!(pct_after(&why, "likely keep ") < 10.0, "{why}");
    // l_orderkey is sorted: the page index bounds the filter to a few pages.
    let (_, why) = auto.decide(sorted).await.unwrap();
    assert!(pct_after(&why, "at most ") < 10.0, "{why}");
    // The learnt rates are what the prediction used.
    assert!(why.contains(" MB/s"), "{why}");
    // EXPLAIN shows the plan of the chosen mode.
    let plan = auto.explain(sorted).await.unwrap();
    assert!(!plan.is_empty());
    dev.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_mode_follows_the_link_and_the_filter() {
    // A slow link (2.5 MB/s): what crosses it decides.
    let dir = tempfile::tempdir().unwrap();
    let dev = TestDevice::start_with(dir.path(), |c| c.link_gbps = Some(0.02)).await;
    let d = dev.device.clone();
    tokio::task::spawn_blocking(move || d.load_tpch("lineitem", 0.01, &|_, _| {}).unwrap())
        .await
        .unwrap();
    let auto = SqlSession::connect(&dev.url, ClientOptions::default(), Mode::Auto)
        .await
        .unwrap();
    let offload = SqlSession::connect(&dev.url, ClientOptions::default(), Mode::Offload)
        .await
        .unwrap();
    // A selective filter: offload sends a few hundred rows.
    let sorted = "select l_orderkey, l_quantity from lineitem where l_orderkey <= 600";
    let r = auto.sql(sorted).await.unwrap();
    assert_eq!(r.mode, Mode::Offload, "{}", r.reason);
    // Every row of text columns: the stored Parquet is compressed (strings, dictionaries),
    // the Arrow stream is not, so reading the file remotely moves less.
    let text = "select l_comment, l_shipinstruct, l_shipmode from lineitem";
    let r = auto.sql(text).await.unwrap();
    assert_eq!(r.mode, Mode::RemoteScan, "{}", r.reason);
    let o = offload.sql(text).await.unwrap();
    assert!(
        r.bytes_moved() < o.bytes_moved(),
        "{} vs {}",
        r.bytes_moved(),
        o.bytes_moved()
    );
    assert_eq!(sorted_rows(&r), sorted_rows(&o));
    dev.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_device_is_predicted_slower() {
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
    // Device-bound: an aggregate over every row, its answer one row.
    let q = "select count(*) as n, sum(val) as s from big where val >= 0.5";
    // Offload's predicted device time: the prediction less the round trip it adds (which the
    // device learns from the calls it serves, so it changes once the load arrives).
    let device_ms = |why: &str| {
        let rtt_ms = why
            .split("round trip ")
            .nth(1)
            .and_then(|s| s.split(" µs").next())
            .and_then(|us| us.parse::<f64>().ok())
            .map_or(0.0, |us| us / 1e3);
        predicted(why)[0].unwrap() - rtt_ms
    };
    let idle = device_ms(&auto.decide(q).await.unwrap().1);
    let mut load = Vec::new();
    for _ in 0..4 {
        let url = dev.url.clone();
        load.push(tokio::spawn(async move {
            let mut c = Client::connect(&url).await.unwrap();
            let _ = c.query(&nearstore_proto::Plan::scan("big")).await;
        }));
    }
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
    // Five queries on the device's cores: offload's device time grows by their share. Alone,
    // the query spreads over every core (20 row groups); among five it gets a fifth of them,
    // or shares one.
    let (_, why) = auto.decide(q).await.unwrap();
    let loaded = device_ms(&why);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let time_factor = |queries: f64| {
        let share = cores / queries;
        if share < 1.0 {
            1.0 / share
        } else {
            1.0 / share.floor().clamp(1.0, 20.0)
        }
    };
    let expect = time_factor(5.0) / time_factor(1.0);
    let grew = loaded / idle;
    assert!(
        grew > 1.0 + (expect - 1.0) / 2.0 && grew < expect * 1.1,
        "{idle} -> {loaded} ms on {cores} cores: {why}"
    );
    for l in load {
        l.abort();
    }
    dev.stop().await;
}
