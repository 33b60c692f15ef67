//! Columns decoded as Arrow dictionaries. Grouping by dictionary keys: string group columns
//! that nothing else reads are grouped by their keys. Filtering by dictionary entries: a
//! string column that only conjuncts of its own read is filtered by answering them once per
//! dictionary entry. The answers equal the host's (full transfer) with nulls in the keys,
//! dictionary entries no selected row uses (the filter drops them) and row groups whose
//! dictionaries differ (each holds other values).

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, StringViewArray};
use arrow::datatypes::{DataType, Field, Schema};

use crate::support::OffloadAndHost;

/// `rows` rows from `start`: `grp` (Utf8) takes 7 of 30 values, shifted per 10 000 rows (a
/// row group: the dictionaries differ), null every 13th row; `flag` (Utf8View) x or y, null
/// every 17th.
fn batch(start: i64, rows: i64) -> RecordBatch {
    let ids: Vec<i64> = (start..start + rows).collect();
    let grp: StringArray = ids
        .iter()
        .map(|i| (i % 13 != 0).then(|| format!("k{}", (i / 10_000) * 4 + i % 7)))
        .collect();
    let flag: StringViewArray = ids
        .iter()
        .map(|i| (i % 17 != 0).then_some(if i % 2 == 0 { "x" } else { "y" }))
        .collect();
    let val = Int64Array::from_iter_values(ids.iter().map(|i| i * 37 % 1000));
    let schema = Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("grp", DataType::Utf8, true),
        Field::new("flag", DataType::Utf8View, true),
        Field::new("val", DataType::Int64, false),
    ]);
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(ids)),
        Arc::new(grp),
        Arc::new(flag),
        Arc::new(val),
    ];
    RecordBatch::try_new(Arc::new(schema), cols).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dictionary_keys_group_as_the_host_does() {
    let batches: Vec<RecordBatch> = (0..6).map(|i| batch(i * 10_000, 10_000)).collect();
    let t = OffloadAndHost::with_table("d", batches).await;
    for q in [
        "select grp, count(*) as n, sum(val) as s from d group by grp order by grp",
        // The filter leaves most entries of each row group's dictionary unused.
        "select grp, flag, count(*) as n, min(val) as lo from d where val < 60 \
         group by grp, flag order by grp, flag",
        "select flag, grp, count(*) as n from d where id >= 25000 group by flag, grp \
         order by flag, grp",
        "select flag, max(id) as m from d where val > 990 group by flag order by flag",
        // Not the dictionary path (the key is filtered on too): the same answers.
        "select grp, count(*) as n from d where grp <> 'k3' group by grp order by grp",
    ] {
        // Three times: the third is served from the hot-column tier.
        for round in 0..3 {
            let a = t.agree(q, round).await;
            assert!(
                a.scans.iter().all(|(p, _)| !p.aggregates.is_empty()),
                "{q}: the aggregate runs on the device"
            );
        }
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dictionary_filters_keep_the_rows_the_host_does() {
    let batches: Vec<RecordBatch> = (0..6).map(|i| batch(i * 10_000, 10_000)).collect();
    let t = OffloadAndHost::with_table("d", batches).await;
    for q in [
        "select id, val from d where flag = 'x' and val < 20 order by id",
        "select count(*) as n, sum(val) as s from d where grp = 'k5'",
        // Two dictionary columns, one of them for IS NULL (a null key's answer).
        "select id from d where grp is null and flag = 'y' and val < 300 order by id",
        // OR and LIKE on one column; NOT over a column with nulls (null rows drop out).
        "select id, val from d where (grp like 'k1%' or grp = 'k20') and not (flag = 'x') \
         and val > 900 order by id",
        "select count(*) as n from d where grp is not null and flag is null",
        // A dictionary filter beside dictionary group keys.
        "select grp, count(*) as n from d where flag in ('x') group by grp order by grp",
        // The filter column read elsewhere too: plain strings, the same answers.
        "select grp, count(*) as n from d where grp <> 'k3' and flag = 'x' group by grp \
         order by grp",
        "select id, flag from d where flag = 'y' and id < 40 order by id",
        "select id from d where grp = 'k9' or id < 3 order by id",
    ] {
        // Three times: the third is served from the hot-column tier.
        for round in 0..3 {
            t.agree(q, round).await;
        }
    }
    t.stop().await;
}
