//! Range reads and the remote-scan mode: the device serves its stored Parquet's bytes exactly,
//! only to the tenant that owns the table, with every block checked; a remote scan of a
//! corrupt object fails with the device's error and leaves the device serving.

use nearstore_proto::{ErrorCode, Plan, PutMode};
use nearstore_runtime::storage::reader::ReaderChoice;
use nearstore_sdk::{ClientOptions, Mode, SqlSession};

use crate::support::{TestDevice, rows, table_batches};
use crate::tenants::{ALICE, BOB, client, code, tenants};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_reads_return_the_stored_bytes_to_their_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let dev = TestDevice::start_with(dir.path(), |c| c.tenants = tenants()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = listener.local_addr().unwrap();
    let _metrics = dev.device.serve_metrics(listener);
    let mut alice = client(&dev.url, Some(ALICE)).await;
    let mut bob = client(&dev.url, Some(BOB)).await;
    alice
        .put_batches("t", PutMode::Create, table_batches(20_000, 5_000, 1))
        .await
        .unwrap();
    bob.put_batches("mine", PutMode::Create, table_batches(100, 100, 2))
        .await
        .unwrap();
    let object = alice.describe("t").await.unwrap().objects[0].clone();
    let stored = std::fs::read(dev.device.storage().object_path(&object.id)).unwrap();
    assert_eq!(stored.len() as u64, object.bytes);

    // The bytes as stored: unaligned ranges, one across a 4 KiB block boundary, an empty one,
    // the footer's last 8 bytes, and half the object (the answer's splitting into messages is
    // unit-tested in the runtime).
    let n = object.bytes;
    let ranges = [0..4, 4090..4200, 77..77, n - 8..n, 1000..(n / 2)];
    let (got, received) = alice.read_ranges("t", &object.id, &ranges).await.unwrap();
    assert_eq!(got.len(), ranges.len());
    for (r, b) in ranges.iter().zip(&got) {
        assert_eq!(&b[..], &stored[r.start as usize..r.end as usize], "{r:?}");
    }
    assert_eq!(
        received,
        ranges.iter().map(|r| r.end - r.start).sum::<u64>()
    );
    assert_eq!(&got[0][..], b"PAR1");

    // Bob: Alice's table does not exist for him, and naming her object under his own table
    // finds nothing either.
    let e = bob.read_ranges("t", &object.id, &[0..4]).await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::UnknownTable, "{e}");
    let e = bob
        .read_ranges("alice/t", &object.id, &[0..4])
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::UnknownTable, "{e}");
    let e = bob
        .read_ranges("mine", &object.id, &[0..4])
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::UnknownObject, "{e}");
    assert!(e.to_string().contains("has no object"), "{e}");

    // Bad ranges are refused with what was wrong.
    let e = alice
        .read_ranges("t", &object.id, &[0..n + 1])
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::MalformedPlan, "{e}");
    assert!(e.to_string().contains("past the end"), "{e}");
    let e = alice
        .read_ranges("t", &object.id, &[0..(300u64 << 20)])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("at most"), "{e}");

    // Counted for the tenant that read: one call served (the refused ones are failures).
    let text = crate::tenants::http_get(metrics_addr, "/metrics").await;
    assert_eq!(
        crate::tenants::metric(&text, "nearstore_range_reads_total{tenant=\"alice\"}"),
        1.0
    );
    assert_eq!(
        crate::tenants::metric(&text, "nearstore_range_reads_total{tenant=\"bob\"}"),
        0.0
    );

    // The device still answers both tenants.
    assert_eq!(
        alice.query(&Plan::scan("t")).await.unwrap().num_rows(),
        20_000
    );
    assert_eq!(
        bob.query(&Plan::scan("mine")).await.unwrap().num_rows(),
        100
    );
    dev.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_scan_answers_like_the_device_and_fails_on_a_corrupt_block() {
    let dir = tempfile::tempdir().unwrap();
    let dev = TestDevice::start(dir.path(), ReaderChoice::Auto).await;
    let mut c = dev.client().await;
    c.put_batches("t", PutMode::Create, table_batches(50_000, 8_192, 3))
        .await
        .unwrap();
    c.put_batches("other", PutMode::Create, table_batches(1_000, 1_000, 8))
        .await
        .unwrap();
    let remote = SqlSession::connect(&dev.url, ClientOptions::default(), Mode::RemoteScan)
        .await
        .unwrap();
    let offload = SqlSession::connect(&dev.url, ClientOptions::default(), Mode::Offload)
        .await
        .unwrap();
    let q = "select id, val from t where id between 20000 and 20100 order by id";
    let (r, o) = (remote.sql(q).await.unwrap(), offload.sql(q).await.unwrap());
    assert_eq!(rows(&r.batches), rows(&o.batches));
    assert_eq!(r.num_rows(), 101);
    assert_eq!(r.mode, Mode::RemoteScan);
    assert!(r.scans.is_empty());
    // The reader pruned by the file's statistics: far less than the object was read once the
    // footer is cached (the first query reads the last 512 KiB, DataFusion's footer hint).
    let object = c.describe("t").await.unwrap().objects[0].clone();
    let r = remote.sql(q).await.unwrap();
    assert_eq!(rows(&r.batches), rows(&o.batches));
    eprintln!("warm remote scan: {:?} of {} bytes", r.remote, object.bytes);
    assert!(r.remote.calls > 0);
    assert!(
        r.remote.bytes < object.bytes / 2,
        "{:?} of {} bytes",
        r.remote,
        object.bytes
    );
    assert_eq!(r.bytes_moved(), r.remote.bytes);

    // One flipped byte in the middle of the object: the remote scan fails with the device's
    // corrupt-object error, as a query on the device does.
    let path = dev.device.storage().object_path(&object.id);
    let mut data = std::fs::read(&path).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x55;
    std::fs::write(&path, &data).unwrap();
    let fresh = SqlSession::connect(&dev.url, ClientOptions::default(), Mode::RemoteScan)
        .await
        .unwrap();
    let e = fresh.sql("select sum(val) from t").await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::CorruptObject, "{e}");
    assert!(e.to_string().contains("checksum"), "{e}");
    let e = c
        .read_ranges("t", &object.id, &[(mid as u64)..(mid as u64 + 1)])
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::CorruptObject, "{e}");

    // Other tables are served, in either mode.
    let ok = fresh
        .sql("select count(*) from other where id < 10")
        .await
        .unwrap();
    assert_eq!(rows(&ok.batches), ["10"]);
    dev.stop().await;
}
