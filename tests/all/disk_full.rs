//! A full disk: a device whose namespace has no room left refuses the upload with a clear
//! error, keeps answering queries, leaves no partial object, and takes uploads again once
//! space returns. The namespace's capacity (`capacity_mb`, `serve --capacity-mb`) stands in
//! for a small file system: its writes fail with the same `StorageFull` error a full disk
//! gives, through the same code.

use nearstore_proto::{ErrorCode, Plan, PutMode};
use nearstore_sdk::Error;

use crate::support::{TestDevice, sum_ids, table_batches, table_names};

/// Rows of each of the two tables: about 2 MiB each as the device stores them, so one fits
/// in the 3 MiB namespace and two do not.
const ROWS: usize = 120_000;
const CAPACITY_MB: u64 = 3;

fn files(dir: &std::path::Path, sub: &str) -> usize {
    std::fs::read_dir(dir.join(sub)).unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_namespace_refuses_the_upload_keeps_serving_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDevice::start_with(dir.path(), |c| c.capacity_mb = Some(CAPACITY_MB)).await;
    let mut c = d.client().await;
    let first = table_batches(ROWS, 10_000, 1);
    let first_sum = sum_ids(&first);
    let ack = c
        .put_batches("first", PutMode::Create, first)
        .await
        .unwrap();
    let capacity = CAPACITY_MB << 20;
    assert!(
        ack.bytes > capacity / 2 && ack.bytes < capacity,
        "the test needs a table of between half the capacity and all of it; {} bytes is not \
         (retune ROWS)",
        ack.bytes
    );

    // A second table of the same size does not fit beside the first.
    let second = table_batches(ROWS, 10_000, 2);
    let second_sum = sum_ids(&second);
    let err = c
        .put_batches("second", PutMode::Create, second.clone())
        .await
        .unwrap_err();
    match &err {
        Error::Device { code, message, .. } => {
            assert_eq!(*code, ErrorCode::ResourceExhausted, "{err}");
            assert!(message.contains("storage is full"), "{message}");
        }
        other => panic!("expected a device error, got {other}"),
    }
    // An append to the first table is refused the same way and leaves it as it was.
    let err = c
        .put_batches("first", PutMode::Append, second.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("storage is full"), "{err}");

    // Nothing partial is left, and the device serves queries as before.
    assert_eq!(table_names(&mut c).await, vec!["first"]);
    assert_eq!(
        files(dir.path(), "objects"),
        2,
        "the first table's object and sidecar only"
    );
    assert_eq!(files(dir.path(), "tmp"), 0, "no partial upload in tmp/");
    let r = c.query(&Plan::scan("first")).await.unwrap();
    assert_eq!((r.num_rows(), sum_ids(&r.batches)), (ROWS, first_sum));
    assert!(c.scrub().await.unwrap().corrupt.is_empty());
    let info = c.device_info().await.unwrap();
    assert_eq!(info.capacity_bytes, Some(capacity));
    let used = info.used_bytes.expect("a capped namespace reports its use");
    assert!(used >= ack.bytes && used < capacity, "{used} bytes used");

    // Dropping the first table frees its space; the second upload now succeeds.
    c.drop_table("first").await.unwrap();
    let after = c.device_info().await.unwrap().used_bytes.unwrap();
    assert!(
        after + ack.bytes <= used,
        "{after} bytes used after the drop, {used} before"
    );
    let ack = c
        .put_batches("second", PutMode::Create, second)
        .await
        .unwrap();
    assert_eq!(ack.rows, ROWS as u64);
    let r = c.query(&Plan::scan("second")).await.unwrap();
    assert_eq!((r.num_rows(), sum_ids(&r.batches)), (ROWS, second_sum));
    d.stop().await;
}
