//! Grouped aggregates over a handful of groups, which the built-in Wasm kernel counts and sums
//! per group before touching its state: the answers equal the host's (full transfer) with
//! nulls in the summed and counted column (those aggregates take the row-at-a-time path),
//! int32, int64 and decimal inputs, several sums of 64-bit inputs (which the kernel adds up
//! together, in one pass over the groups), and decimal sums that overflow an `i64` within one
//! batch (redone row at a time in 128 bits); and aggregates over computed inputs, which the
//! kernel computes inside its aggregate call.

use std::sync::Arc;

use arrow::array::{ArrayRef, Decimal128Array, Int32Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use nearstore_proto::{AggFunc, BackendKind};
use nearstore_sdk::Query;

use crate::support::{OffloadAndHost, rows};

/// `rows` rows from `start`: `g` takes 5 values; `v` (int64) is null every 11th row; `small`
/// (int32) never; `big` (decimal(18, 0)) is near 9·10^17, so a dozen rows of a group
/// overflow an `i64`; `price` (decimal(12, 2)) is null every 13th row, `cost` never.
fn batch(start: i64, rows: i64) -> RecordBatch {
    let ids: Vec<i64> = (start..start + rows).collect();
    let g = Int64Array::from_iter_values(ids.iter().map(|i| i % 5));
    let v: Int64Array = ids
        .iter()
        .map(|i| (i % 11 != 0).then_some(i * 31 % 1000 - 500))
        .collect();
    let small = Int32Array::from_iter_values(ids.iter().map(|i| (i % 97) as i32 - 40));
    let big =
        Decimal128Array::from_iter_values(ids.iter().map(|i| 900_000_000_000_000_000 + *i as i128))
            .with_precision_and_scale(18, 0)
            .unwrap();
    let cost = Decimal128Array::from_iter_values(ids.iter().map(|i| i128::from(i * 13 % 100_000)))
        .with_precision_and_scale(12, 2)
        .unwrap();
    let price = ids
        .iter()
        .map(|i| (i % 13 != 4).then_some(i128::from(i * 7 % 100_000)))
        .collect::<Decimal128Array>()
        .with_precision_and_scale(12, 2)
        .unwrap();
    let schema = Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("g", DataType::Int64, false),
        Field::new("v", DataType::Int64, true),
        Field::new("small", DataType::Int32, false),
        Field::new("big", DataType::Decimal128(18, 0), false),
        Field::new("price", DataType::Decimal128(12, 2), true),
        Field::new("cost", DataType::Decimal128(12, 2), false),
    ]);
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(ids)),
        Arc::new(g),
        Arc::new(v),
        Arc::new(small),
        Arc::new(big),
        Arc::new(price),
        Arc::new(cost),
    ];
    RecordBatch::try_new(Arc::new(schema), cols).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn few_groups_sum_and_count_as_the_host_does() {
    let batches: Vec<RecordBatch> = (0..4).map(|i| batch(i * 10_000, 10_000)).collect();
    let t = OffloadAndHost::with_table("f", batches).await;
    let (offload, transfer) = (&t.offload, &t.transfer);
    for q in [
        "select g, count(*) as n, count(v) as nv, sum(v) as sv, sum(id) as si \
         from f group by g order by g",
        "select g, sum(big) as sb, count(big) as nb, count(*) as n from f group by g order by g",
        "select g, sum(big) as sb, sum(v) as sv from f where id > 15000 group by g order by g",
        // Several sums of inputs without nulls: within an `i64` (8 rows of `big` a group),
        // and past it (then row at a time in 128 bits).
        "select g, sum(id) as si, sum(big) as sb, count(*) as n \
         from f where id < 40 group by g order by g",
        "select g, sum(id) as si, sum(big) as sb from f group by g order by g",
        // Five sums of 64-bit inputs, columns and computed ones, which the kernel adds up
        // four in one pass and the fifth on its own; then one that overflows among them.
        "select g, sum(id) as a, sum(g) as b, sum(cost) as c, sum(cost * (1 - cost)) as d, \
         sum(cost * 3) as e, count(*) as n from f group by g order by g",
        "select g, sum(id) as a, sum(cost) as b, sum(big) as c, sum(cost * 3) as d \
         from f group by g order by g",
    ] {
        let a = offload.sql(q).await.unwrap();
        let b = transfer.sql(q).await.unwrap();
        for (plan, st) in &a.scans {
            assert!(
                !plan.aggregates.is_empty(),
                "{q}: the aggregate runs on the device"
            );
            assert!(
                st.placement.contains("aggregate=wasm"),
                "{q}: {}",
                st.placement
            );
        }
        assert_eq!(b.num_rows(), 5, "{q}");
        assert_eq!(rows(&a.batches), rows(&b.batches), "{q}");
    }
    t.stop().await;
}

/// Aggregates over computed decimal inputs (what SQL pushes; the plan-level differential test
/// covers integers and floats), which the kernel computes inside its aggregate call: the
/// answers equal the host's with nulls among the operands, narrow and wide (a product of two
/// decimals) results, an expression two aggregates share, inputs that begin with another
/// input, with few groups and without; an input whose arithmetic fails is Arrow's error, as
/// on the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn computed_inputs_aggregate_as_the_host_does() {
    let batches: Vec<RecordBatch> = (0..4).map(|i| batch(i * 10_000, 10_000)).collect();
    let t = OffloadAndHost::with_table("f", batches).await;
    for (round, q) in [
        "select g, sum(price * (1 - price)) as a, avg(price * (1 - price)) as b, \
         count(price + 1) as c, min(price - 7) as d, max(price * price) as e, count(*) as n \
         from f group by g order by g",
        "select g, sum(big * 3) as a, max(big * big) as b, min(big + big) as c from f \
         where id > 15000 group by g order by g",
        "select sum(price * 2) as a, sum(big * 2) as b, max(price * price) as c from f",
        "select g, sum(big - price) as a, sum(price * 2) as b from f group by g order by g",
        // Inputs whose programs begin with another input's (as TPC-H Q1's charge begins with
        // its discounted price), which the kernel evaluates once: in 64 bits with nulls, and
        // in 128 bits (`big * 2 * big`, whose sums stay within 128 bits over 8 rows a group).
        // DataFusion plans these as a projection over another.
        "select g, sum(price * (1 - price)) as a, sum(price * (1 - price) * (1 + price)) as b, \
         avg(price * (1 - price) * (1 + price) - 3) as c, sum(big * 2) as d, \
         max(big * 2 * big) as e from f group by g order by g",
        "select g, sum(big * 2) as d, max(big * 2 * big) as e, sum(big * 2 * big) as f \
         from f where id < 40 group by g order by g",
    ]
    .iter()
    .enumerate()
    {
        let r = t.agree(q, round).await;
        for (plan, st) in &r.scans {
            assert!(!plan.aggregates.is_empty(), "{q}: pushed down");
            assert!(
                st.placement.contains("aggregate=wasm"),
                "{q}: {}",
                st.placement
            );
        }
    }
    // A sum past 128 bits (about 10^40 a group) fails the query on the device, as in DuckDB;
    // DataFusion's sum wraps around on the host.
    let q = "select g, sum(big * 2) as d, sum(big * 2 * big) as f from f group by g";
    let e = t.offload.sql(q).await.unwrap_err().to_string();
    assert!(e.contains("overflowed"), "{q}: {e}");
    // The pushed plan's names for the aggregates come with what each computes.
    assert!(e.contains(" (sum(((big * "), "{q}: {e}");
    // An error in an input, also where another input's program begins it.
    for q in [
        "select g, sum(price / (price - price)) as a from f group by g",
        "select g, sum(price - 1) as a, sum((price - 1) / (price - price)) as b from f group by g",
    ] {
        let a = t.offload.sql(q).await.unwrap_err().to_string();
        let b = t.transfer.sql(q).await.unwrap_err().to_string();
        for e in [&a, &b] {
            assert!(e.to_lowercase().contains("divide by zero"), "{q}: {e}");
        }
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_int32_sum_as_a_plan_agrees_in_wasm_and_natively() {
    let batches: Vec<RecordBatch> = (0..4).map(|i| batch(i * 10_000, 10_000)).collect();
    let t = OffloadAndHost::with_table("f", batches).await;
    // An int32 sum (SQL widens it on the host first) as a plan, in Wasm and natively.
    let mut c = t.dev.client().await;
    let mut answers = Vec::new();
    for backend in [BackendKind::Native, BackendKind::Wasm] {
        let plan = Query::table("f")
            .group_by(["g"])
            .aggregate(AggFunc::Sum, Some("small"), "ss")
            .unwrap()
            .aggregate(AggFunc::Count, Some("small"), "ns")
            .unwrap()
            .order_by("g", false)
            .backend(backend)
            .build();
        let r = c.query(&plan).await.unwrap();
        assert!(
            r.stats
                .placement
                .contains(&format!("aggregate={}", backend.as_str())),
            "{}",
            r.stats.placement
        );
        answers.push(rows(&r.batches));
    }
    assert_eq!(answers[0].len(), 5);
    assert_eq!(answers[0], answers[1]);
    t.stop().await;
}
