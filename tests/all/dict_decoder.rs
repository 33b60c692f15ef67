//! The device's dictionary decoder (rows found from dictionary indices, the filter answered
//! once per dictionary entry, only the kept rows gathered) answers as the host does over full
//! transfer: filters on one column and on several (the narrowest first), on a string column
//! decoded as an Arrow dictionary, on a column whose dictionary overflowed into plain pages,
//! on an optional column without nulls; output columns gathered from dictionaries, from plain
//! pages and as Arrow dictionaries (group keys); nulls in filters and in the output. The
//! statistics show which row groups it read.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Array, Decimal128Array, Float64Array, Int32Array, Int64Array, RecordBatch,
    StringArray,
};

use crate::support::OffloadAndHost;

/// Rows `start..start + n`: `k` (0..50), `d` (a date), `p` (decimal), `f` (float), `s` (37
/// strings), `c` (a distinct 150-byte string a row: its dictionary outgrows the writer's limit,
/// the rest of the row group's pages are plain), `m` (optional, never null), `n` (optional,
/// null every third row in the batches that start at a multiple of 20 000), `sn` (as `s`,
/// null where `n` is).
fn batch(start: i64, n: usize) -> RecordBatch {
    let ids: Vec<i64> = (start..start + n as i64).collect();
    let mix = |i: i64| (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20;
    let k = Int32Array::from_iter_values(ids.iter().map(|&i| (mix(i) % 50) as i32));
    let d = Date32Array::from_iter_values(ids.iter().map(|&i| 9000 + (mix(i) % 700) as i32));
    let p = Decimal128Array::from_iter_values(ids.iter().map(|&i| (mix(i) % 90_000) as i128))
        .with_precision_and_scale(15, 2)
        .unwrap();
    let f = Float64Array::from_iter_values(ids.iter().map(|&i| (mix(i) % 997) as f64 * 0.5));
    let s: StringArray = ids
        .iter()
        .map(|&i| Some(format!("s{}", mix(i) % 37)))
        .collect();
    let c: StringArray = ids
        .iter()
        .map(|&i| Some(format!("{i:08}{}", "x".repeat(142))))
        .collect();
    let m: Int64Array = ids.iter().map(|&i| Some(i % 2000)).collect();
    let nulls = start % 20_000 == 0;
    let null = |i: i64| nulls && i % 3 == 0;
    let nn: Int64Array = ids.iter().map(|&i| (!null(i)).then_some(i % 100)).collect();
    let sn: StringArray = ids
        .iter()
        .map(|&i| (!null(i)).then(|| format!("s{}", mix(i) % 37)))
        .collect();
    RecordBatch::try_from_iter_with_nullable(vec![
        ("id", Arc::new(Int64Array::from(ids)) as ArrayRef, false),
        ("k", Arc::new(k) as ArrayRef, false),
        ("d", Arc::new(d) as ArrayRef, false),
        ("p", Arc::new(p) as ArrayRef, false),
        ("f", Arc::new(f) as ArrayRef, false),
        ("s", Arc::new(s) as ArrayRef, false),
        ("c", Arc::new(c) as ArrayRef, false),
        ("m", Arc::new(m) as ArrayRef, true),
        ("n", Arc::new(nn) as ArrayRef, true),
        ("sn", Arc::new(sn) as ArrayRef, true),
    ])
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dictionary_decoder_answers_as_the_host_does() {
    // 8 row groups of 10 000 rows (the test device's), pages of 1 000.
    let batches: Vec<RecordBatch> = (0..8).map(|i| batch(i * 10_000, 10_000)).collect();
    // The hot-column tier off: row groups it served would not reach the decoder.
    let t = OffloadAndHost::with_table_on("t", batches, |c| c.cache_mb = Some(0)).await;
    // (query, row groups the dictionary decoder must read)
    let cases: &[(&str, u64)] = &[
        // Three filter columns, as TPC-H Q6.
        (
            "select sum(p * 2) as r, count(*) as n from t \
             where d >= date '1995-01-01' and d < date '1995-04-01' and k between 5 and 9 and f < 200",
            8,
        ),
        // A string filter decoded as an Arrow dictionary; output from plain pages (c).
        (
            "select id, s, c from t where s = 's3' and k < 20 order by id",
            8,
        ),
        // A filter on the column whose pages turn plain.
        (
            "select id, k from t where c like '%0007%' or c < '00000100' order by id",
            8,
        ),
        // OR and NOT within one column; several conjuncts on one column.
        (
            "select id, d from t where (k = 1 or k = 47 or k = 3) and not (k = 47) \
             and not (f > 400 or f < 10) and d > date '1995-03-01' and d <> date '1995-06-01' \
             order by id",
            8,
        ),
        // A grouped aggregate: the string key decoded as an Arrow dictionary.
        (
            "select s, count(*) as n, sum(f) as sf, min(d) as lo from t where k > 10 \
             group by s order by s",
            8,
        ),
        // A test after a narrow one on a column whose dictionary is larger than the rows
        // left: answered per row (the column gathered at them), from dictionary and plain
        // pages.
        (
            "select id, p, c from t where k = 3 and p > 300.00 and c like '%5%' order by id",
            8,
        ),
        // An optional column without nulls.
        (
            "select id, m from t where m between 100 and 110 order by id",
            8,
        ),
        // Nothing passes (a string between the statistics' bounds, in no dictionary).
        (
            "select count(*) as n, sum(p) as sp from t where k < 40 and s = 's100'",
            8,
        ),
        // No filter at all.
        (
            "select sum(p) as sp, min(d) as lo, max(s) as hi, count(*) as n from t",
            8,
        ),
        // Nulls in half the row groups: a null takes the test's answer for a null, and is
        // gathered as a null (a number, and a group key decoded as an Arrow dictionary).
        (
            "select count(*) as n, sum(n) as sn from t where n is null or n > 90",
            8,
        ),
        ("select id, n from t where k = 7 and n < 3 order by id", 8),
        (
            "select id, n, f from t where k = 7 and (n is null or n < 3) order by id",
            8,
        ),
        (
            "select id, n from t where not (n >= 3) and k < 9 order by id",
            8,
        ),
        (
            "select sn, count(*) as c, sum(f) as sf from t where k < 10 group by sn order by sn",
            8,
        ),
    ];
    for (i, (q, by_dictionary)) in cases.iter().enumerate() {
        let a = t.agree(q, i).await;
        let stats = &a.scans[0].1;
        assert_eq!(
            stats.row_groups_by_dictionary, *by_dictionary,
            "{q}: {stats:?}"
        );
    }
    // A filter that reads two columns in one conjunct is not split by column: the Parquet
    // decoder reads it all.
    let a = t
        .agree("select id from t where id > m and k = 3 order by id", 0)
        .await;
    assert_eq!(a.scans[0].1.row_groups_by_dictionary, 0, "{:?}", a.scans[0]);
    t.stop().await;
}
