//! The device's hash aggregation (`exec::aggregate::HashAggregator`, native accumulators) on
//! decoded batches: group ids for few string keys (TPC-H Q1's `l_returnflag, l_linestatus`),
//! for one integer key with many groups (`l_partkey`), and merging two workers' partial
//! aggregates. Rows per second.
//!
//! `cargo bench -p nearstore-benches --no-default-features --bench grouping` (release profile;
//! not part of CI).

use std::hint::black_box;
use std::sync::Arc;

use arrow::array::{ArrayRef, Decimal128Array, Int64Array, RecordBatch, StringArray};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nearstore_proto::AggFunc;
use nearstore_runtime::exec::aggregate::HashAggregator;
use nearstore_runtime::plan::{AggSpec, Binder, PhysExpr};

const ROWS: usize = 8192;
const BATCHES: usize = 32;

fn batches() -> Vec<RecordBatch> {
    let mut next = nearstore_benches::xorshift(0x2545_F491_4F6C_DD1Du64);
    (0..BATCHES)
        .map(|_| {
            let flag: StringArray = (0..ROWS)
                .map(|_| Some(["A", "N", "R"][(next() % 3) as usize]))
                .collect();
            let status: StringArray = (0..ROWS)
                .map(|_| Some(["F", "O"][(next() % 2) as usize]))
                .collect();
            let part: Int64Array = (0..ROWS).map(|_| Some((next() % 200_000) as i64)).collect();
            let price = (0..ROWS)
                .map(|_| Some((next() % 10_000_000) as i128))
                .collect::<Decimal128Array>()
                .with_precision_and_scale(15, 2)
                .unwrap();
            RecordBatch::try_from_iter(vec![
                ("l_returnflag", Arc::new(flag) as ArrayRef),
                ("l_linestatus", Arc::new(status) as ArrayRef),
                ("l_partkey", Arc::new(part) as ArrayRef),
                ("l_extendedprice", Arc::new(price) as ArrayRef),
            ])
            .unwrap()
        })
        .collect()
}

fn aggregator(batch: &RecordBatch, keys: &[&str]) -> HashAggregator {
    let schema = batch.schema();
    let binder = Binder::new("bench", &schema);
    let group_by = keys.iter().map(|k| binder.column(k).unwrap()).collect();
    let aggs = vec![
        AggSpec {
            func: AggFunc::CountStar,
            input: None,
            name: "n".into(),
        },
        AggSpec {
            func: AggFunc::Sum,
            input: Some(binder.column("l_extendedprice").unwrap()),
            name: "s".into(),
        },
    ];
    HashAggregator::new(group_by, aggs).unwrap()
}

fn column(e: &PhysExpr, b: &RecordBatch) -> nearstore_runtime::error::Result<ArrayRef> {
    match e {
        PhysExpr::Column { name, .. } => Ok(b.column_by_name(name).unwrap().clone()),
        _ => unreachable!("the bench groups and sums columns"),
    }
}

fn grouping(c: &mut Criterion) {
    let data = batches();
    let mut g = c.benchmark_group("grouping");
    g.throughput(Throughput::Elements((ROWS * BATCHES) as u64));
    for (name, keys) in [
        (
            "q1 keys (2 strings, 6 groups)",
            &["l_returnflag", "l_linestatus"][..],
        ),
        ("l_partkey (int, ~150k groups)", &["l_partkey"][..]),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut h = aggregator(&data[0], keys);
                for batch in &data {
                    h.update(batch, None, &column).unwrap();
                }
                black_box(h.finish().unwrap())
            })
        });
    }
    g.bench_function("merge two workers' partials (l_partkey)", |b| {
        b.iter(|| {
            let (first, second) = data.split_at(BATCHES / 2);
            let mut halves = [first, second].map(|part| {
                let mut h = aggregator(&data[0], &["l_partkey"]);
                for batch in part {
                    h.update(batch, None, &column).unwrap();
                }
                Some(h)
            });
            let mut merged = halves[0].take().unwrap();
            merged.merge(halves[1].take().unwrap()).unwrap();
            black_box(merged.finish().unwrap())
        })
    });
    g.finish();
}

criterion_group!(benches, grouping);
criterion_main!(benches);
