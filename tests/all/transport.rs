//! Transport: failures reach the caller as specific, bounded errors (a device that dies in the
//! middle of streaming a result, a device too slow for the caller's timeout); compressed
//! results are the uncompressed ones in fewer bytes.

use std::time::{Duration, Instant};

use nearstore_proto::{IpcCompression, Plan, PutMode};
use nearstore_sdk::{Client, ClientOptions, Error, Mode, SqlSession};

use crate::support::{DeviceProcess, TestDevice, connect_retry, rows, table_batches};

/// A device whose results leave through a 0.02 Gb/s link: 200 000 generated rows (~8 MB of
/// IPC) take seconds to stream, so the stream is surely in flight when the test acts.
async fn slow_device(dir: &std::path::Path) -> DeviceProcess {
    let dev = DeviceProcess::start(dir, &["--link-gbps", "0.02"]);
    let mut c = connect_retry(&dev.url, Duration::from_secs(20)).await;
    c.put_batches("big", PutMode::Create, table_batches(200_000, 20_000, 7))
        .await
        .unwrap();
    dev
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_mid_stream_is_a_transport_error() {
    let dir = tempfile::tempdir().unwrap();
    let dev = slow_device(dir.path()).await;
    let url = dev.url.clone();
    let query = tokio::spawn(async move {
        let mut c = Client::connect(&url).await.unwrap();
        let t = Instant::now();
        (c.query(&Plan::scan("big")).await, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !query.is_finished(),
        "the result finished before the device died"
    );
    dev.kill9();
    let (r, took) = tokio::time::timeout(Duration::from_secs(30), query)
        .await
        .expect("the client does not hang on a dead device")
        .unwrap();
    match r {
        Err(Error::Transport { message, .. }) => {
            assert!(!message.is_empty());
        }
        other => panic!("expected a transport error, got {other:?}"),
    }
    assert!(took < Duration::from_secs(30), "{took:?}");

    // The SQL session reports the same kind of error.
    let dir = tempfile::tempdir().unwrap();
    let dev = slow_device(dir.path()).await;
    let s = SqlSession::connect(&dev.url, ClientOptions::default(), Mode::FullTransfer)
        .await
        .unwrap();
    let q = tokio::spawn(async move { s.sql("select * from big").await.map(|r| r.num_rows()) });
    tokio::time::sleep(Duration::from_millis(800)).await;
    dev.kill9();
    let r = tokio::time::timeout(Duration::from_secs(30), q)
        .await
        .expect("no hang")
        .unwrap();
    assert!(matches!(r, Err(Error::Transport { .. })), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_slower_than_its_timeout_fails_in_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let dev = slow_device(dir.path()).await;
    let opts = ClientOptions {
        request_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let mut c = Client::connect_with(&dev.url, opts).await.unwrap();
    let t = Instant::now();
    let r = c.query(&Plan::scan("big")).await;
    assert!(matches!(r, Err(Error::Transport { .. })), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // The device keeps serving after the abandoned stream.
    let mut c = Client::connect(&dev.url).await.unwrap();
    let mut p = Plan::scan("big");
    p.filter = Some(nearstore_proto::Expr::parse("id < 10").unwrap());
    assert_eq!(c.query(&p).await.unwrap().num_rows(), 10);
}

/// Results compressed with lz4 and zstd (Arrow IPC body compression, decoded by the SDK's
/// Arrow reader) hold the same rows as uncompressed ones, in fewer bytes sent; SQL in full
/// transfer mode gives the same answer either way; a plan naming an unknown codec is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_results_are_the_same_rows_in_fewer_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let dev = TestDevice::start(
        dir.path(),
        nearstore_runtime::storage::reader::ReaderChoice::Auto,
    )
    .await;
    let mut c = dev.client().await;
    c.put_batches("t", PutMode::Create, table_batches(50_000, 10_000, 3))
        .await
        .unwrap();
    let plain = c.query(&Plan::scan("t")).await.unwrap();
    for codec in [IpcCompression::Lz4, IpcCompression::Zstd] {
        let mut plan = Plan::scan("t");
        plan.compression = Some(codec);
        let r = c.query(&plan).await.unwrap();
        assert_eq!(rows(&r.batches), rows(&plain.batches), "{codec:?}");
        assert!(
            r.stats.bytes_sent * 10 < plain.stats.bytes_sent * 9,
            "{codec:?}: {} bytes compressed, {} plain",
            r.stats.bytes_sent,
            plain.stats.bytes_sent
        );
        // Through the session option and SQL in full transfer mode.
        let opts = ClientOptions {
            compression: Some(codec),
            ..Default::default()
        };
        let sql = "select cat, count(*), sum(id), min(val) from t group by cat order by cat";
        let want = SqlSession::connect(&dev.url, ClientOptions::default(), Mode::FullTransfer)
            .await
            .unwrap()
            .sql(sql)
            .await
            .unwrap();
        let s = SqlSession::connect(&dev.url, opts, Mode::FullTransfer)
            .await
            .unwrap();
        let got = s.sql(sql).await.unwrap();
        assert_eq!(rows(&got.batches), rows(&want.batches), "{codec:?}");
        let sent = |r: &nearstore_sdk::SqlResult| -> u64 {
            r.scans.iter().map(|(_, s)| s.bytes_sent).sum()
        };
        assert!(sent(&got) < sent(&want), "{codec:?}");
    }
    let bad = br#"{"version":1,"table":"t","compression":"snappy"}"#;
    let e = c.query_json(&bad[..]).await.unwrap_err();
    assert!(e.to_string().contains("snappy"), "{e}");
    dev.stop().await;
}
