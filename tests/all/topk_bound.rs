//! A top k's running bound: once a worker kept k rows, the decoder drops rows whose first
//! sort key is worse than the k-th best of them before the other columns are decoded. The
//! answers equal the host's (full transfer) for keys that improve as the table goes on (so
//! later row groups hold the answer), ties broken by a second key, nulls first and last,
//! ascending and descending, with and without a filter; and groups ordered by their key, which
//! the k best distinct keys bound.

use std::sync::Arc;

use arrow::array::{ArrayRef, Decimal128Array, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};

use nearstore_proto::QueryStats;

use crate::support::OffloadAndHost;

/// `rows` rows from `start`: `up` grows with the row (with ties: ten rows a value), `down`
/// shrinks, `f` a float with nulls every 11th row, `s` a string, `g` shrinks as `down` but
/// is null on rows 30 000 to 30 999 (one page of the test device's), `p` a decimal that shrinks
/// (stored as INT64, decoded as Decimal64).
fn batch(start: i64, rows: i64) -> RecordBatch {
    let ids: Vec<i64> = (start..start + rows).collect();
    let up = Int64Array::from_iter_values(ids.iter().map(|i| i / 10));
    let down = Int64Array::from_iter_values(ids.iter().map(|i| -i));
    let f: Float64Array = ids
        .iter()
        .map(|i| (i % 11 != 0).then_some((i % 997) as f64 * 0.5))
        .collect();
    let g: Int64Array = ids
        .iter()
        .map(|i| (!(30_000..31_000).contains(i)).then_some(-i))
        .collect();
    let p = Decimal128Array::from_iter_values(ids.iter().map(|i| -i as i128 * 25))
        .with_precision_and_scale(12, 2)
        .unwrap();
    let s: StringArray = ids
        .iter()
        .map(|i| Some(format!("s{:06}", i % 5000)))
        .collect();
    let schema = Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("up", DataType::Int64, false),
        Field::new("down", DataType::Int64, false),
        Field::new("f", DataType::Float64, true),
        Field::new("s", DataType::Utf8, false),
        Field::new("g", DataType::Int64, true),
        Field::new("p", DataType::Decimal128(12, 2), false),
    ]);
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(ids)),
        Arc::new(up),
        Arc::new(down),
        Arc::new(f),
        Arc::new(s),
        Arc::new(g),
        Arc::new(p),
    ];
    RecordBatch::try_new(Arc::new(schema), cols).unwrap()
}

/// Runs `q` in offload and full transfer (they must agree) and returns the device scan's
/// statistics, asserting its bound skipped at least 50 000 of the 80 000 rows unread (the
/// best rows come first, so later row groups' pages show no key as good).
async fn agree_skipping(t: &OffloadAndHost, q: &str) -> QueryStats {
    let a = t.agree(q, 0).await;
    let stats = a.scans[0].1.clone();
    assert!(stats.topk_rows_skipped >= 50_000, "{q}: {stats:?}");
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_top_k_with_a_running_bound_answers_as_the_host_does() {
    let batches: Vec<RecordBatch> = (0..8).map(|i| batch(i * 10_000, 10_000)).collect();
    let t = OffloadAndHost::with_table("t", batches).await;
    // First, before the hot-column tier holds anything: the
    // rows the bound drops still count as scanned (and, with no filter, as selected), and
    // the top-k pre-selection saw fewer of them than the table holds (the best rows come
    // first: each worker's later row groups are dropped whole).
    let a = t
        .offload
        .sql("select id, down from t order by down desc, id limit 15")
        .await
        .unwrap();
    let (_, stats) = &a.scans[0];
    assert_eq!(stats.rows_scanned, 80_000);
    assert_eq!(stats.rows_selected, 80_000);
    assert!(stats.topk_rows_in < 80_000, "{}", stats.topk_rows_in);
    // Later row groups' pages show no key as good as the bound: skipped unread (row groups of
    // 10 000 rows, pages of 1 000 on the test device).
    assert!(stats.topk_rows_skipped >= 50_000, "{stats:?}");
    assert!(stats.topk_rows_in + stats.topk_rows_skipped <= 80_000);
    // With a filter, the skipped rows are neither decoded nor counted as selected.
    let q = "select id, down from t where f > 100 order by down desc, id limit 15";
    let stats = agree_skipping(&t, q).await;
    assert_eq!(stats.rows_scanned + stats.topk_rows_skipped, 80_000);
    // The bound applies to the row groups the hot-column tier serves too (a row group is
    // admitted on its second touch and served from memory on the third): a key whose pages
    // all hold every value, so nothing is skipped unread and the bound drops rows one by one.
    let q = "select id, f from t order by f desc nulls last, id limit 20";
    for round in 0..3 {
        let a = t.agree(q, round).await;
        let (_, s) = &a.scans[0];
        assert!(s.topk_rows_in < 40_000, "round {round}: {s:?}");
        assert!(round < 2 || s.cache_hit_bytes > 0, "round {round}: {s:?}");
    }
    // Groups ordered by their key: rows of keys worse than the k-th best distinct key kept so
    // far are dropped (and, here, the later row groups' pages skipped unread).
    let q =
        "select down, count(*) as n, sum(id) as s from t group by down order by down desc limit 5";
    agree_skipping(&t, q).await;
    // A decimal key, decoded as stored (Decimal64), against statistics read as the table's
    // Decimal128.
    agree_skipping(
        &t,
        "select p, count(*) as n from t group by p order by p desc limit 5",
    )
    .await;
    for q in [
        "select up, count(*) as n, sum(id) as s from t group by up order by up desc limit 5",
        "select up, count(*) as n from t where f > 100 group by up order by up limit 7",
        "select g, count(*) as n, min(id) as m from t group by g order by g desc nulls first limit 3",
        "select g, count(*) as n from t group by g order by g nulls last limit 3",
        "select g, count(*) as n from t group by g order by g nulls first limit 2",
        "select up, s, count(*) as n from t group by up, s order by up desc, s limit 4",
        "select up % 7 as r, count(*) as n from t group by up % 7 order by r limit 3",
    ] {
        for round in 0..2 {
            t.agree(q, round).await;
        }
    }
    for q in [
        "select id, up from t order by up desc, id limit 15",
        "select id, up from t order by up desc, id desc limit 3",
        "select id, down from t order by down limit 7",
        "select id, down, s from t where id % 3 = 0 order by down desc limit 5",
        "select id, f from t order by f desc nulls first, id limit 20",
        "select id, f from t order by f desc nulls last, id limit 20",
        "select id, f from t order by f nulls first, id limit 12",
        "select id, f from t where up > 100 order by f, id limit 30",
        "select s, id from t order by s desc, id limit 9",
        // A page of nulls among shrinking keys: the best rows with nulls first, skipped
        // with nulls last.
        "select id, g from t order by g desc nulls first, id limit 5",
        "select id, g from t order by g desc nulls first, id limit 1500",
        "select id, g from t order by g desc nulls last, id limit 5",
        "select id, g from t order by g nulls first, id limit 5",
        "select id, g from t where id > 29000 order by g desc, id limit 8",
    ] {
        for round in 0..3 {
            t.agree(q, round).await;
        }
    }
    t.stop().await;
}
