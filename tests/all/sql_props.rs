//! Property-based differential test of the SQL session: generated single-table queries
//! (filters of every kind the device takes, and some it does not; projections; aggregates with
//! and without GROUP BY; ORDER BY + LIMIT) return the same rows in offload mode, where the
//! device filters and aggregates, as in full-transfer mode, where the host computes everything.

use arrow::array::Date32Array;
use nearstore_proto::PutMode;
use nearstore_sdk::{ClientOptions, Mode, SqlSession};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::support::{TestDevice, rows, table_batches};

const ROWS: i64 = 30_000;

fn date(days: i32) -> String {
    let a = Date32Array::from(vec![days]);
    arrow::util::display::array_value_to_string(&a, 0).unwrap()
}

fn op() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["=", "<>", "<", "<=", ">", ">="])
}

/// One predicate over t(id int64, val float64 nullable, cat utf8, day date32, price decimal).
fn leaf() -> impl Strategy<Value = String> {
    prop_oneof![
        (op(), 0..ROWS).prop_map(|(o, n)| format!("id {o} {n}")),
        (op(), 0u32..10_000).prop_map(|(o, v)| format!("val {o} {}", v as f64 / 10.0)),
        (op(), 0i64..1_000_000).prop_map(|(o, p)| format!("price {o} {}.{:02}", p / 100, p % 100)),
        (op(), 8000i32..10_000).prop_map(|(o, d)| format!("day {o} date '{}'", date(d))),
        prop::sample::select(vec![
            "cat = 'beta'",
            "cat <> 'gamma'",
            "cat in ('alpha', 'delta')",
            "cat not in ('epsilon')",
            "cat like 'ga%'",
            "cat like '%ta'",
            "cat like '%mm%'",
            "cat not like 'a%'",
            "val is null",
            "val is not null",
        ])
        .prop_map(str::to_string),
        (0..ROWS, 0i64..3_000).prop_map(|(a, w)| format!("id between {a} and {}", a + w)),
        (0u32..10_000, 0u32..2_000).prop_map(|(a, w)| format!(
            "val not between {} and {}",
            a as f64 / 10.0,
            (a + w) as f64 / 10.0
        )),
        (0i64..500_000).prop_map(|p| format!("price * 2 > {p}")),
        (0..ROWS).prop_map(|n| format!("id + 5 < {n}")),
        (0i64..7).prop_map(|k| format!("id % 7 = {k}")), // not pushable: stays on the host
        (0u32..10_000).prop_map(|v| format!("val - 1.5 >= {}", v as f64 / 10.0)),
    ]
}

fn predicate() -> impl Strategy<Value = String> {
    leaf().prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} and {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} or {b})")),
            inner.prop_map(|a| format!("not ({a})")),
        ]
    })
}

fn query() -> impl Strategy<Value = String> {
    let cols = prop::sample::subsequence(vec!["id", "val", "cat", "day", "price"], 1..=5);
    let aggs = prop::sample::subsequence(
        vec![
            "count(*) as n",
            "count(val) as nv",
            "sum(price) as sp",
            "sum(id) as si",
            "min(val) as mv",
            "max(day) as xd",
            "min(cat) as mc",
            "max(price) as xp",
            "avg(price) as ap",
            "avg(id) as ai",
        ],
        1..=5,
    );
    let groups = prop::sample::select(vec!["", "cat", "day", "cat, day"]);
    // Aggregates weigh twice: about half of them push down (a host-only predicate keeps the
    // aggregate on the host), and the coverage check below needs enough that do.
    prop_oneof![
        // Rows: projection, filter, ORDER BY + LIMIT (id is unique: the order is total).
        1 => (cols, predicate(), prop::option::of(0usize..50)).prop_map(|(c, p, limit)| {
            let mut q = format!("select {} from t where {p} order by id", c.join(", "));
            if let Some(l) = limit {
                q.push_str(&format!(" limit {l}"));
            }
            q
        }),
        // Aggregates, grouped or not.
        2 => (aggs, groups, predicate(), prop::option::of(1usize..20)).prop_map(|(a, g, p, limit)| {
            if g.is_empty() {
                format!("select {} from t where {p}", a.join(", "))
            } else {
                let mut q = format!(
                    "select {g}, {} from t where {p} group by {g} order by {g}",
                    a.join(", ")
                );
                if let Some(l) = limit {
                    q.push_str(&format!(" limit {l}"));
                }
                q
            }
        }),
    ]
}

#[test]
fn generated_queries_agree_between_offload_and_full_transfer() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dev = rt.block_on(TestDevice::start_with(dir.path(), |_| {}));
    let mut client = rt.block_on(dev.client());
    rt.block_on(client.put_batches("t", PutMode::Create, table_batches(ROWS as usize, 7_000, 5)))
        .unwrap();
    let (offload, transfer) = rt.block_on(async {
        (
            SqlSession::connect(&dev.url, ClientOptions::default(), Mode::Offload)
                .await
                .unwrap(),
            SqlSession::connect(&dev.url, ClientOptions::default(), Mode::FullTransfer)
                .await
                .unwrap(),
        )
    });
    // NEARSTORE_SQL_CASES raises the count for a deeper local search (CI runs 64).
    let cases: u32 = std::env::var("NEARSTORE_SQL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let pushed = std::cell::Cell::new((0u32, 0u32, 0u32)); // filters, aggregates, non-empty
    runner
        .run(&query(), |q| {
            let (a, b) = rt.block_on(async { (offload.sql(&q).await, transfer.sql(&q).await) });
            let a = a.map_err(|e| TestCaseError::fail(format!("offload: {e}")))?;
            let b = b.map_err(|e| TestCaseError::fail(format!("transfer: {e}")))?;
            prop_assert_eq!(rows(&a.batches), rows(&b.batches), "{}", q);
            // Offload never moves more, but for a fixed cost (a schema and an empty or
            // one-row result) where the planner leaves full transfer nothing to scan.
            prop_assert!(a.bytes_moved() <= b.bytes_moved() + 4096, "{}", q);
            let (mut f, mut g, mut n) = pushed.get();
            f += a.scans.iter().any(|(p, _)| p.filter.is_some()) as u32;
            g += a.scans.iter().any(|(p, _)| !p.aggregates.is_empty()) as u32;
            n += (b.num_rows() > 0) as u32;
            pushed.set((f, g, n));
            Ok(())
        })
        .unwrap();
    // The generator exercises pushdown, not just host fallbacks. Measured over 640 cases:
    // about 31 % push an aggregate, so 64 cases expect 20 (sd 3.7); the bound is 3.7 sd below.
    let (f, g, n) = pushed.get();
    eprintln!("generated SQL: {f} of {cases} pushed a filter, {g} an aggregate, {n} returned rows");
    assert!(
        f >= cases / 2 && g >= cases / 10 && n >= cases / 2,
        "{f} {g} {n}"
    );
    rt.block_on(dev.stop());
}
