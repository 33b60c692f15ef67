//! A query spread over several compute workers answers exactly as one worker does: the same
//! rows in the same order for filtered scans (the table's order), grouped and global
//! aggregates (groups in order of first appearance, native and offloaded accumulators;
//! exact ones over row groups the workers take from a queue as they free up), top-k and
//! ORDER BY with LIMIT, over generated tables, on every backend.

use nearstore_proto::{AggFunc, BackendKind, Plan, PutMode};
use nearstore_sdk::Query;

use crate::support::{TestDevice, rows, table_batches};

/// The plans compared, over the generated table `t` (id, val, cat, day, price).
pub(crate) fn plans(backend: BackendKind) -> Vec<(&'static str, Plan)> {
    let q = || Query::table("t").backend(backend);
    let with = |b: Query, aggs: &[(AggFunc, Option<&str>, &str)]| {
        aggs.iter().fold(b, |b, &(f, input, name)| {
            b.aggregate(f, input, name).unwrap()
        })
    };
    let aggs = |b: Query| {
        with(
            b,
            &[
                (AggFunc::CountStar, None, "n"),
                (AggFunc::Count, Some("val"), "n_val"),
                (AggFunc::Sum, Some("id"), "s_id"),
                (AggFunc::Sum, Some("price"), "s_price"),
                (AggFunc::Sum, Some("val"), "s_val"),
                (AggFunc::Avg, Some("price"), "a_price"),
                (AggFunc::Avg, Some("val"), "a_val"),
                (AggFunc::Min, Some("day"), "lo_day"),
                (AggFunc::Max, Some("val"), "hi_val"),
            ],
        )
    };
    // No float input: the workers take row groups from a queue, in no fixed share.
    let exact = |b: Query| {
        with(
            b,
            &[
                (AggFunc::CountStar, None, "n"),
                (AggFunc::Count, Some("val"), "n_val"),
                (AggFunc::Sum, Some("id"), "s_id"),
                (AggFunc::Sum, Some("price"), "s_price"),
                (AggFunc::Avg, Some("price"), "a_price"),
                (AggFunc::Min, Some("day"), "lo_day"),
                (AggFunc::Max, Some("cat"), "hi_cat"),
            ],
        )
    };
    vec![
        ("scan", q().build()),
        (
            "filter",
            q().filter("val > 500 AND day < DATE '1995-01-01'")
                .unwrap()
                .select(["id", "cat", "price"])
                .build(),
        ),
        (
            "computed column",
            q().filter("id < 90000")
                .unwrap()
                .select(["id"])
                .select_expr("v", "price * 2")
                .unwrap()
                .build(),
        ),
        (
            "global aggregate",
            aggs(q().filter("val >= 100").unwrap()).build(),
        ),
        (
            "aggregate, nothing selected",
            aggs(q().filter("id < 0").unwrap()).build(),
        ),
        ("grouped by cat", aggs(q().group_by(["cat"])).build()),
        (
            "exact, global",
            exact(q().filter("val >= 100").unwrap()).build(),
        ),
        (
            "exact, grouped by day and cat",
            exact(q().group_by(["day", "cat"])).build(),
        ),
        (
            // New groups in every row group: their order is rebuilt from where each first
            // appeared.
            "exact, grouped by id",
            exact(q().filter("id >= 40000").unwrap().group_by(["id"])).build(),
        ),
        (
            "grouped by day (many groups)",
            aggs(q().filter("val IS NOT NULL").unwrap().group_by(["day"])).build(),
        ),
        (
            "min and max of strings",
            q().group_by(["day"])
                .aggregate(AggFunc::Min, Some("cat"), "lo")
                .unwrap()
                .aggregate(AggFunc::Max, Some("cat"), "hi")
                .unwrap()
                .build(),
        ),
        (
            "top-k",
            q().select(["id", "val"])
                .order_by("val", true)
                .order_by("id", false)
                .limit(50)
                .build(),
        ),
        (
            "grouped top-k",
            aggs(q().group_by(["day"]))
                .order_by("s_id", true)
                .limit(7)
                .build(),
        ),
        (
            "ORDER BY with LIMIT past the top-k state",
            q().filter("val < 50")
                .unwrap()
                .select(["id", "day"])
                .order_by("day", false)
                .order_by("id", true)
                .build(),
        ),
        ("LIMIT alone", q().select(["id"]).limit(25_000).build()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_workers_answer_as_one() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let one = TestDevice::start_with(dirs[0].path(), |c| c.workers = Some(1)).await;
    let many = TestDevice::start_with(dirs[1].path(), |c| c.workers = Some(4)).await;
    // 125 000 rows in row groups of 10 000: 13 groups, the last short.
    let data = table_batches(125_000, 25_000, 21);
    let (mut a, mut b) = (one.client().await, many.client().await);
    a.put_batches("t", PutMode::Create, data.clone())
        .await
        .unwrap();
    b.put_batches("t", PutMode::Create, data).await.unwrap();
    let mut spread = 0;
    for backend in [BackendKind::Wasm, BackendKind::Native, BackendKind::Fpga] {
        for (name, plan) in plans(backend) {
            let x = a.query(&plan).await.unwrap();
            let y = b.query(&plan).await.unwrap();
            assert_eq!(x.stats.workers, 1, "{name}");
            // Floats to 9 significant digits: the workers' partial float sums add up in
            // another order than one worker's.
            let (xs, ys) = (rows(&x.batches), rows(&y.batches));
            assert!(!xs.is_empty() || name.contains("nothing"), "{name}");
            assert_eq!(xs.len(), ys.len(), "{name} on {backend:?}");
            assert!(xs == ys, "{name} on {backend:?}: rows differ");
            assert_eq!(x.stats.rows_selected, y.stats.rows_selected, "{name}");
            assert_eq!(x.stats.row_groups_pruned, y.stats.row_groups_pruned);
            assert_eq!(x.stats.placement, y.stats.placement, "{name}");
            if name == "LIMIT alone" {
                // It stops at the first rows found: one worker, in the table's order.
                assert_eq!(y.stats.workers, 1);
            } else if y.stats.workers > 1 {
                spread += 1;
            }
        }
    }
    // Each device serves one query at a time here, so the pool is idle for every one.
    assert!(spread >= 30, "only {spread} queries ran on several workers");
    one.stop().await;
    many.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_worker_fails_its_query_and_the_device_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let dev = TestDevice::start_with(dir.path(), |c| c.workers = Some(3)).await;
    let mut c = dev.client().await;
    c.put_batches("t", PutMode::Create, table_batches(60_000, 20_000, 5))
        .await
        .unwrap();
    // Overflows only past id 50 000, in the last row group, which the third worker reads.
    let bad = Query::table("t")
        .filter("id >= 0")
        .unwrap()
        .select(["id"])
        .select_expr("v", "id * 184467440737095")
        .unwrap()
        .build();
    let err = c.query(&bad).await.unwrap_err().to_string();
    assert!(err.to_lowercase().contains("overflow"), "{err}");
    let ok = Query::table("t")
        .aggregate(AggFunc::CountStar, None, "n")
        .unwrap()
        .build();
    let r = c.query(&ok).await.unwrap();
    assert_eq!(r.stats.workers, 3);
    assert_eq!(rows(&r.batches), vec!["60000".to_string()]);
    dev.stop().await;
}
