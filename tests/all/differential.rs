//! Differential tests: for generated predicates, what the device returns equals what an
//! independent row-by-row model computes on the host from the full data (SQL three-valued
//! logic), for filtered scans and for grouped aggregates.

use std::collections::BTreeMap;

use arrow::array::{
    Array, Date32Array, Decimal128Array, Float64Array, Int64Array, RecordBatch, StringArray,
};
use nearstore_proto::{AggFunc, ArithOp, BackendKind, CmpOp, Expr, Literal, PutMode, TypedLiteral};
use nearstore_runtime::storage::reader::ReaderChoice;
use nearstore_sdk::Query;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::support::{TestDevice, table_batches};

/// One row of the generated table.
#[derive(Debug, Clone)]
struct Row {
    id: i64,
    val: Option<f64>,
    cat: String,
    day: i32,
    price: i128,
}

fn rows_of(batches: &[RecordBatch]) -> Vec<Row> {
    let mut out = Vec::new();
    for b in batches {
        let id = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        let val = b.column(1).as_any().downcast_ref::<Float64Array>().unwrap();
        let cat = b.column(2).as_any().downcast_ref::<StringArray>().unwrap();
        let day = b.column(3).as_any().downcast_ref::<Date32Array>().unwrap();
        let price = b
            .column(4)
            .as_any()
            .downcast_ref::<Decimal128Array>()
            .unwrap();
        for i in 0..b.num_rows() {
            out.push(Row {
                id: id.value(i),
                val: val.is_valid(i).then(|| val.value(i)),
                cat: cat.value(i).to_string(),
                day: day.value(i),
                price: price.value(i),
            });
        }
    }
    out
}

/// A comparable value of the model.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
enum V {
    I(i128),
    F(f64),
    S(String),
}

fn column(row: &Row, name: &str) -> Option<V> {
    match name {
        "id" => Some(V::I(row.id as i128)),
        "val" => row.val.map(V::F),
        "cat" => Some(V::S(row.cat.clone())),
        "day" => Some(V::I(row.day as i128)),
        "price" => Some(V::I(row.price)),
        other => panic!("no column {other}"),
    }
}

/// Literal as the model compares it with `col`.
fn literal(col: &str, l: &Literal) -> Option<V> {
    match (col, l) {
        (_, Literal::Null) => None,
        ("id", Literal::Int(i)) => Some(V::I(*i as i128)),
        ("val", Literal::Float(f)) => Some(V::F(*f)),
        ("cat", Literal::Str(s)) => Some(V::S(s.clone())),
        ("day", Literal::Typed(TypedLiteral::Date(d))) => Some(V::I(days_from_civil(d) as i128)),
        ("price", Literal::Typed(TypedLiteral::Decimal(d))) => {
            let (i, f) = d.split_once('.').unwrap();
            Some(V::I(
                i.parse::<i128>().unwrap() * 100 + f.parse::<i128>().unwrap(),
            ))
        }
        other => panic!("model has no literal {other:?}"),
    }
}

fn eval(e: &Expr, row: &Row) -> Option<bool> {
    let leaf_col = |e: &Expr| match e {
        Expr::Col(c) => c.clone(),
        other => panic!("model leaf {other:?}"),
    };
    match e {
        Expr::Cmp { op, left, right } => {
            let c = base_col(left);
            let Expr::Lit(l) = &**right else {
                panic!("model literal")
            };
            let (a, b) = (value(left, row)?, literal(&c, l)?);
            Some(match op {
                CmpOp::Eq => a == b,
                CmpOp::NotEq => a != b,
                CmpOp::Lt => a < b,
                CmpOp::LtEq => a <= b,
                CmpOp::Gt => a > b,
                CmpOp::GtEq => a >= b,
            })
        }
        Expr::And(v) => v.iter().map(|e| eval(e, row)).reduce(eval_and).flatten(),
        Expr::Or(v) => v
            .iter()
            .map(|e| eval(e, row).map(|b| !b))
            .reduce(eval_and)
            .flatten()
            .map(|b| !b),
        Expr::Not(e) => eval(e, row).map(|b| !b),
        Expr::IsNull(e) => Some(column(row, &leaf_col(e)).is_none()),
        Expr::IsNotNull(e) => Some(column(row, &leaf_col(e)).is_some()),
        Expr::Between {
            expr,
            low,
            high,
            negated,
        } => {
            let ge = eval(
                &Expr::cmp(CmpOp::GtEq, (**expr).clone(), (**low).clone()),
                row,
            );
            let le = eval(
                &Expr::cmp(CmpOp::LtEq, (**expr).clone(), (**high).clone()),
                row,
            );
            let both = eval_and(ge, le);
            if *negated { both.map(|b| !b) } else { both }
        }
        Expr::In {
            expr,
            list,
            negated,
        } => {
            let c = leaf_col(expr);
            let v = column(row, &c)?;
            let mut any_null = false;
            let mut hit = false;
            for l in list {
                match literal(&c, l) {
                    Some(x) if x == v => hit = true,
                    Some(_) => {}
                    None => any_null = true,
                }
            }
            let r = if hit {
                Some(true)
            } else if any_null {
                None
            } else {
                Some(false)
            };
            if *negated { r.map(|b| !b) } else { r }
        }
        Expr::Like {
            expr,
            pattern,
            negated,
        } => {
            let Some(V::S(s)) = column(row, &leaf_col(expr)) else {
                panic!("model LIKE on a non-string")
            };
            let chars: Vec<char> = s.chars().collect();
            let pat: Vec<char> = pattern.chars().collect();
            Some(like(&chars, &pat) != *negated)
        }
        other => panic!("model does not evaluate {other:?}"),
    }
}

/// SQL `LIKE` by characters: `%` any run, `_` any one character (no escapes).
fn like(s: &[char], p: &[char]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some(('%', rest)) => (0..=s.len()).any(|i| like(&s[i..], rest)),
        Some(('_', rest)) => !s.is_empty() && like(&s[1..], rest),
        Some((c, rest)) => s.first() == Some(c) && like(&s[1..], rest),
    }
}

/// The column an operand computes from (its leftmost).
fn base_col(e: &Expr) -> String {
    match e {
        Expr::Col(c) => c.clone(),
        Expr::Arith { left, .. } => base_col(left),
        other => panic!("model operand {other:?}"),
    }
}

/// An operand's value: a column, or arithmetic on it with literals of its type.
fn value(e: &Expr, row: &Row) -> Option<V> {
    match e {
        Expr::Col(c) => column(row, c),
        Expr::Arith { op, left, right } => {
            let b = match &**right {
                Expr::Lit(Literal::Int(i)) => V::I(*i as i128),
                Expr::Lit(Literal::Float(f)) => V::F(*f),
                other => panic!("model arithmetic on {other:?}"),
            };
            Some(match (value(left, row)?, b) {
                (V::I(x), V::I(y)) => V::I(match op {
                    ArithOp::Add => x + y,
                    ArithOp::Sub => x - y,
                    ArithOp::Mul => x * y,
                    ArithOp::Div => x / y,
                }),
                (V::F(x), V::F(y)) => V::F(match op {
                    ArithOp::Add => x + y,
                    ArithOp::Sub => x - y,
                    ArithOp::Mul => x * y,
                    ArithOp::Div => x / y,
                }),
                other => panic!("model arithmetic on {other:?}"),
            })
        }
        other => panic!("model operand {other:?}"),
    }
}

fn eval_and(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match (a, b) {
        (Some(false), _) | (_, Some(false)) => Some(false),
        (Some(true), Some(true)) => Some(true),
        _ => None,
    }
}

/// Days since 1970-01-01 of `YYYY-MM-DD` (proleptic Gregorian).
fn days_from_civil(d: &str) -> i64 {
    let p: Vec<i64> = d.split('-').map(|x| x.parse().unwrap()).collect();
    let (y, m, dd) = (if p[1] <= 2 { p[0] - 1 } else { p[0] }, p[1], p[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> String {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}-{m:02}-{d:02}")
}

fn leaf() -> impl Strategy<Value = Expr> {
    let op = prop_oneof![
        Just(CmpOp::Eq),
        Just(CmpOp::NotEq),
        Just(CmpOp::Lt),
        Just(CmpOp::LtEq),
        Just(CmpOp::Gt),
        Just(CmpOp::GtEq)
    ];
    let lit = prop_oneof![
        (0i64..40_000).prop_map(|i| ("id", Literal::Int(i))),
        (0u32..1000).prop_map(|x| ("val", Literal::Float(x as f64))),
        prop::sample::select(vec!["alpha", "beta", "gamma", "delta", "zeta"])
            .prop_map(|s| ("cat", Literal::Str(s.to_string()))),
        (8000i64..10_000).prop_map(|d| (
            "day",
            Literal::Typed(TypedLiteral::Date(civil_from_days(d)))
        )),
        (0i64..1_000_000).prop_map(|c| (
            "price",
            Literal::Typed(TypedLiteral::Decimal(format!("{}.{:02}", c / 100, c % 100)))
        )),
    ];
    let arith = prop_oneof![
        Just(ArithOp::Add),
        Just(ArithOp::Sub),
        Just(ArithOp::Mul),
        Just(ArithOp::Div)
    ];
    // `id op k op2 k2 cmp lit` and `val op x cmp lit`: arithmetic in the predicate.
    let computed = prop_oneof![
        (
            arith.clone(),
            1i64..9,
            arith.clone(),
            1i64..1000,
            0i64..80_000
        )
            .prop_map(|(a, k, b, k2, lit)| (
                Expr::arith(
                    b,
                    Expr::arith(a, Expr::col("id"), Expr::Lit(Literal::Int(k))),
                    Expr::Lit(Literal::Int(k2))
                ),
                Literal::Int(lit)
            )),
        (arith, 1u32..8, 0u32..2000).prop_map(|(a, x, lit)| (
            Expr::arith(
                a,
                Expr::col("val"),
                Expr::Lit(Literal::Float(x as f64 / 2.0))
            ),
            Literal::Float(lit as f64)
        )),
    ];
    prop_oneof![
        6 => (op.clone(), lit).prop_map(|(op, (c, l))| Expr::cmp(op, Expr::col(c), Expr::Lit(l))),
        2 => (op, computed).prop_map(|(op, (e, l))| Expr::cmp(op, e, Expr::Lit(l))),
        2 => (
            prop::sample::select(vec![
                "al%", "%ta", "%lph%", "beta", "%", "%a%", "e%", "%on", "g_mma", "%e%a%", "", "%%"
            ]),
            any::<bool>()
        )
            .prop_map(|(p, negated)| Expr::Like {
                expr: Box::new(Expr::col("cat")),
                pattern: p.to_string(),
                negated
            }),
        1 => Just(Expr::IsNull(Box::new(Expr::col("val")))),
        1 => Just(Expr::IsNotNull(Box::new(Expr::col("val")))),
        1 => (0i64..40_000, 0i64..5_000, any::<bool>()).prop_map(|(lo, w, negated)| Expr::Between {
            expr: Box::new(Expr::col("id")),
            low: Box::new(Expr::Lit(Literal::Int(lo))),
            high: Box::new(Expr::Lit(Literal::Int(lo + w))),
            negated,
        }),
        1 => (prop::collection::vec(0i64..40_000, 0..4), any::<bool>(), any::<bool>()).prop_map(
            |(ids, with_null, negated)| {
                let mut list: Vec<Literal> = ids.into_iter().map(Literal::Int).collect();
                if with_null {
                    list.push(Literal::Null);
                }
                Expr::In { expr: Box::new(Expr::col("id")), list, negated }
            }
        ),
    ]
}

fn predicate() -> impl Strategy<Value = Expr> {
    leaf().prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::And),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::Or),
            inner.prop_map(|e| Expr::Not(Box::new(e))),
        ]
    })
}

/// Checks one predicate on `table` against the model: filtered scans on every backend return
/// exactly the model's rows, and grouped aggregates (native, Wasm, FPGA) its groups.
fn check_predicate(
    rt: &tokio::runtime::Runtime,
    c: &mut nearstore_sdk::Client,
    table: &str,
    model: &[Row],
    pred: &Expr,
    wasm_filters: &std::cell::Cell<u32>,
) -> Result<(), TestCaseError> {
    let pred = pred.clone();
    // Filtered scan on each backend: the ids returned are exactly the rows the model
    // keeps.
    let want: Vec<i64> = model
        .iter()
        .filter(|row| eval(&pred, row) == Some(true))
        .map(|row| row.id)
        .collect();
    for backend in [BackendKind::Native, BackendKind::Wasm, BackendKind::Fpga] {
        let plan = Query::table(table)
            .filter_expr(pred.clone())
            .select(["id"])
            .backend(backend)
            .build();
        let r = rt
            .block_on(c.query(&plan))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        if r.stats.placement.contains("filter=wasm") {
            wasm_filters.set(wasm_filters.get() + 1);
        }
        let mut got: Vec<i64> = r
            .batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        got.sort_unstable();
        prop_assert_eq!(&got, &want, "predicate {} on {:?}", pred, backend);
    }

    // Grouped aggregates over the same predicate, accumulated natively, in Wasm and on the
    // emulated FPGA.
    type Agg = (i64, i64, Option<f64>, Option<i128>);
    let mut want: BTreeMap<String, Agg> = BTreeMap::new();
    for row in model.iter().filter(|row| eval(&pred, row) == Some(true)) {
        let e = want.entry(row.cat.clone()).or_insert((0, 0, None, None));
        e.0 += 1;
        e.1 += row.id;
        if let Some(v) = row.val {
            e.2 = Some(e.2.map_or(v, |m: f64| m.min(v)));
        }
        e.3 = Some(e.3.map_or(row.price, |m: i128| m.max(row.price)));
    }
    for backend in [BackendKind::Native, BackendKind::Wasm, BackendKind::Fpga] {
        let plan = Query::table(table)
            .filter_expr(pred.clone())
            .group_by(["cat"])
            .aggregate(AggFunc::CountStar, None, "n")
            .unwrap()
            .aggregate(AggFunc::Sum, Some("id"), "sum_id")
            .unwrap()
            .aggregate(AggFunc::Min, Some("val"), "min_val")
            .unwrap()
            .aggregate(AggFunc::Max, Some("price"), "max_price")
            .unwrap()
            .order_by("cat", false)
            .backend(backend)
            .build();
        let r = rt
            .block_on(c.query(&plan))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let b = r.concat().unwrap();
        if backend != BackendKind::Native {
            let want = format!("aggregate={}", backend.as_str());
            prop_assert!(r.stats.placement.contains(&want), "{}", r.stats.placement);
        }
        let cat = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let n = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        let s = b.column(2).as_any().downcast_ref::<Int64Array>().unwrap();
        let mv = b.column(3).as_any().downcast_ref::<Float64Array>().unwrap();
        let mp = b
            .column(4)
            .as_any()
            .downcast_ref::<Decimal128Array>()
            .unwrap();
        let got: BTreeMap<String, Agg> = (0..b.num_rows())
            .map(|i| {
                (
                    cat.value(i).to_string(),
                    (
                        n.value(i),
                        s.value(i),
                        mv.is_valid(i).then(|| mv.value(i)),
                        mp.is_valid(i).then(|| mp.value(i)),
                    ),
                )
            })
            .collect();
        prop_assert_eq!(
            got,
            want.clone(),
            "aggregates under {} on {:?}",
            pred,
            backend
        );
    }
    Ok(())
}

#[test]
fn generated_predicates_match_the_host_model() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let batches = table_batches(40_000, 6_000, 21);
    let model = rows_of(&batches);
    let dev = rt.block_on(TestDevice::start(dir.path(), ReaderChoice::Auto));
    let mut client = rt.block_on(dev.client());
    rt.block_on(client.put_batches("t", PutMode::Create, batches))
        .unwrap();

    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    });
    let client = std::cell::RefCell::new(client);
    let wasm_filters = std::cell::Cell::new(0u32);
    runner
        .run(&predicate(), |pred| {
            let mut c = client.borrow_mut();
            check_predicate(&rt, &mut c, "t", &model, &pred, &wasm_filters)
        })
        .unwrap();
    // String comparisons fall back to the native backend; most predicates must have run in Wasm.
    assert!(
        wasm_filters.get() >= 16,
        "only {} predicates ran in Wasm",
        wasm_filters.get()
    );
    rt.block_on(dev.stop());
}

/// Generated tables too: for each case a new table (its size, its batch boundaries and its
/// values drawn from the case) is uploaded, and a generated predicate is checked on it.
#[test]
fn generated_tables_and_predicates_match_the_host_model() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dev = rt.block_on(TestDevice::start(dir.path(), ReaderChoice::Auto));
    let client = std::cell::RefCell::new(rt.block_on(dev.client()));
    let mut runner = TestRunner::new(Config {
        cases: 24,
        failure_persistence: None,
        ..Config::default()
    });
    let case = std::cell::Cell::new(0u32);
    let wasm_filters = std::cell::Cell::new(0u32);
    let table = (1usize..12_000, 1usize..5_000, any::<u64>());
    runner
        .run(&(table, predicate()), |((rows, batch_rows, seed), pred)| {
            let mut c = client.borrow_mut();
            let name = format!("g{}", case.get());
            case.set(case.get() + 1);
            let batches = table_batches(rows, batch_rows, seed);
            let model = rows_of(&batches);
            rt.block_on(c.put_batches(&name, PutMode::Create, batches))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let r = check_predicate(&rt, &mut c, &name, &model, &pred, &wasm_filters);
            rt.block_on(c.drop_table(&name))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            r
        })
        .unwrap();
    assert!(
        wasm_filters.get() >= 8,
        "only {} ran in Wasm",
        wasm_filters.get()
    );
    rt.block_on(dev.stop());
}

#[test]
fn date_helpers_round_trip() {
    for d in [0i64, 8000, 10_000, -1, 18_000] {
        assert_eq!(days_from_civil(&civil_from_days(d)), d);
    }
    assert_eq!(civil_from_days(8766), "1994-01-01");
}

/// Computed columns over [`calc_table`], and whether the Wasm kernel computes each.
const CALC_EXPRS: [(&str, bool); 20] = [
    ("d * (1 - d)", true),
    ("d + d - d", true),
    ("d * d * d", true),
    ("i * 3 - i", true),
    ("i * i", true),
    ("a32 * 2", true),
    ("a32 + a32", true),
    ("f * 2.5 - f", true),
    ("big + big", true),
    ("big * big", true),
    ("d * 3", true),
    ("a32 + i", false),
    ("i / 7", true),
    ("a32 / 3", true),
    ("(f - 1.0) / f", true),
    ("i / (i - i)", true),
    ("d / d", true),
    ("d / (d + 1000000)", true),
    ("big / d", true),
    ("big / dn", true),
];

/// The table of the computed-column tests: int32, int64, decimal(15, 2), decimal(38, 10) and
/// float columns with nulls, extremes at every 997th row, a divisor NULL exactly there, and a
/// group `g` of four values.
fn calc_table() -> RecordBatch {
    use arrow::array::{ArrayRef, Decimal128Array, Int32Array, Int64Array};
    use std::sync::Arc;
    let n = 20_000i64;
    let edge = |i: i64| i % 997 == 0;
    let a32: Int32Array = (0..n)
        .map(|i| {
            (i % 7 != 3).then_some(if edge(i) {
                i32::MAX - 3
            } else {
                (i % 2001 - 1000) as i32
            })
        })
        .collect();
    let i64s: Int64Array = (0..n)
        .map(|i| (i % 11 != 5).then_some(i * 7919 - 50_000_000))
        .collect();
    let d = (0..n)
        .map(|i| (i % 13 != 2).then_some((i * 37) % 100_000 - 20_000))
        .map(|v| v.map(i128::from))
        .collect::<Decimal128Array>()
        .with_precision_and_scale(15, 2)
        .unwrap();
    let big = (0..n)
        .map(|i| {
            Some(if edge(i) {
                i128::MAX / 3
            } else {
                i as i128 * 1_000_000_007
            })
        })
        .collect::<Decimal128Array>()
        .with_precision_and_scale(38, 10)
        .unwrap();
    // A divisor that is NULL exactly where `big` is at its extreme: raising those dividends
    // for the quotient's scale would overflow, but Arrow computes no row with a NULL operand.
    let dn = (0..n)
        .map(|i| (!edge(i)).then_some((i as i128 % 50 + 1) * 100))
        .collect::<Decimal128Array>()
        .with_precision_and_scale(15, 2)
        .unwrap();
    let f =
        Float64Array::from_iter((0..n).map(|i| (i % 17 != 1).then_some(i as f64 / 7.0 - 1000.0)));
    RecordBatch::try_from_iter(vec![
        (
            "id",
            Arc::new(Int64Array::from_iter_values(0..n)) as ArrayRef,
        ),
        ("a32", Arc::new(a32) as ArrayRef),
        ("i", Arc::new(i64s) as ArrayRef),
        ("d", Arc::new(d) as ArrayRef),
        ("big", Arc::new(big) as ArrayRef),
        ("dn", Arc::new(dn) as ArrayRef),
        ("f", Arc::new(f) as ArrayRef),
        (
            "g",
            Arc::new(Int64Array::from_iter_values((0..n).map(|i| i % 4))) as ArrayRef,
        ),
    ])
    .unwrap()
}

/// Computed columns (`+ - *` over int32, int64, decimals and floats, with nulls, extremes and
/// overflows): the Wasm kernel's expression program returns exactly the native backend's
/// values, or the same error; and it is where the placement says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn computed_columns_in_wasm_equal_native() {
    let dir = tempfile::tempdir().unwrap();
    let dev = TestDevice::start(dir.path(), ReaderChoice::Auto).await;
    let mut c = dev.client().await;
    let batch = calc_table();
    c.put_batches("calc", PutMode::Create, vec![batch])
        .await
        .unwrap();
    let cases = CALC_EXPRS;
    let (mut agreed, mut failed_alike) = (0, Vec::new());
    for (text, in_wasm) in cases {
        let run = |b: BackendKind| {
            Query::table("calc")
                .select(["id"])
                .select_expr("v", text)
                .unwrap()
                .backend(b)
                .build()
        };
        let native = c.query(&run(BackendKind::Native)).await;
        let wasm = c.query(&run(BackendKind::Wasm)).await;
        match (native, wasm) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a.concat().unwrap(), b.concat().unwrap(), "{text}");
                let want = if in_wasm {
                    "project=wasm"
                } else {
                    "project=native"
                };
                assert!(
                    b.stats.placement.contains(want) && !b.stats.placement.contains("re-run"),
                    "{text}: {}",
                    b.stats.placement
                );
                agreed += 1;
            }
            (Err(a), Err(b)) => {
                assert_eq!(a.to_string(), b.to_string(), "{text}");
                failed_alike.push(text);
            }
            (a, b) => panic!("{text}: native {:?} but wasm {:?}", a.err(), b.err()),
        }
    }
    // The int32 extremes doubled, the decimal(38, 10) extremes squared or raised by 10^6 for
    // a quotient at scale 14 overflow (unless the divisor is NULL there), and a division by
    // zero fails (as errors, alike); everything else computes.
    assert_eq!(
        (agreed, failed_alike),
        (
            15,
            vec![
                "a32 * 2",
                "a32 + a32",
                "big * big",
                "i / (i - i)",
                "big / d"
            ]
        )
    );
    dev.stop().await;
}

/// Aggregates over the computed columns of [`CALC_EXPRS`] (sum, min, max, count and avg, by a
/// group of four and over all rows), which the Wasm backend computes inside its aggregate
/// call: the same answers as the native backend's, or an error on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_over_computed_columns_in_wasm_equal_native() {
    let dir = tempfile::tempdir().unwrap();
    let dev = TestDevice::start(dir.path(), ReaderChoice::Auto).await;
    let mut c = dev.client().await;
    c.put_batches("calc", PutMode::Create, vec![calc_table()])
        .await
        .unwrap();
    let (mut agreed, mut failed_alike) = (0, Vec::new());
    for (text, _) in CALC_EXPRS {
        for grouped in [true, false] {
            let run = |b: BackendKind| {
                let mut q = Query::table("calc");
                if grouped {
                    q = q.group_by(["g"]).order_by("g", false);
                }
                for (f, name) in [
                    (AggFunc::Sum, "s"),
                    (AggFunc::Min, "lo"),
                    (AggFunc::Max, "hi"),
                    (AggFunc::Count, "n"),
                    (AggFunc::Avg, "mean"),
                ] {
                    q = q.aggregate(f, Some(text), name).unwrap();
                }
                q.backend(b).build()
            };
            let native = c.query(&run(BackendKind::Native)).await;
            let wasm = c.query(&run(BackendKind::Wasm)).await;
            match (native, wasm) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a.concat().unwrap(), b.concat().unwrap(), "{text}");
                    assert!(
                        b.stats.placement.contains("aggregate=wasm"),
                        "{text}: {}",
                        b.stats.placement
                    );
                    agreed += 1;
                }
                (Err(a), Err(b)) => {
                    let (a, b) = (a.to_string(), b.to_string());
                    // A sum past 128 bits: the native accumulators name the first that
                    // overflowed, the kernel's every sum it has.
                    let sum = |e: &str| e.contains("aggregate s") && e.ends_with("overflowed");
                    assert!(a == b || (sum(&a) && sum(&b)), "{text}: {a} / {b}");
                    failed_alike.push(text);
                }
                (a, b) => panic!("{text}: native {:?} but wasm {:?}", a.err(), b.err()),
            }
        }
    }
    // The projections that fail (the int32 extremes doubled, the decimal(38, 10) extremes
    // squared or raised for a quotient, a division by zero) fail as aggregate inputs too, and
    // so do sums past their type (`i * i` as int64, `big + big` past 128 bits), grouped or
    // not; the rest agree.
    assert_eq!(
        (agreed, failed_alike),
        (
            26,
            [
                "i * i",
                "a32 * 2",
                "a32 + a32",
                "big + big",
                "big * big",
                "i / (i - i)",
                "big / d"
            ]
            .iter()
            .flat_map(|t| [*t, *t])
            .collect::<Vec<_>>()
        )
    );
    dev.stop().await;
}

/// `ORDER BY key [, id] LIMIT k` with the top-k pre-selection in the Wasm kernel equals the
/// native sort, for every key type, both directions, both null placements, ties and k from one
/// to more than the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topk_in_wasm_equals_native() {
    use arrow::array::{ArrayRef, Date32Array, Decimal128Array, Int32Array, Int64Array};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let dev = TestDevice::start(dir.path(), ReaderChoice::Auto).await;
    let mut c = dev.client().await;
    let n = 30_000i64;
    // Few distinct values (many ties), NULLs, and extremes.
    let h = |i: i64| (i.wrapping_mul(2_654_435_761) >> 7) % 1000;
    let batches: Vec<RecordBatch> = (0..3)
        .map(|part| {
            let ids: Vec<i64> = (part * n / 3..(part + 1) * n / 3).collect();
            let col =
                |f: &dyn Fn(i64) -> Option<i64>| ids.iter().map(|&i| f(i)).collect::<Vec<_>>();
            let v = |i: i64| (i % 9 != 4).then(|| h(i) - 500);
            RecordBatch::try_from_iter(vec![
                ("id", Arc::new(Int64Array::from(ids.clone())) as ArrayRef),
                (
                    "a",
                    Arc::new(
                        col(&v)
                            .into_iter()
                            .map(|x| x.map(|x| x as i32))
                            .collect::<Int32Array>(),
                    ) as ArrayRef,
                ),
                (
                    "b",
                    Arc::new(Int64Array::from(col(&|i| {
                        if i == 77 {
                            Some(i64::MIN)
                        } else {
                            v(i).map(|x| x * 1_000_003)
                        }
                    }))) as ArrayRef,
                ),
                (
                    "f",
                    Arc::new(
                        col(&v)
                            .into_iter()
                            .map(|x| x.map(|x| if x == 13 { -0.0 } else { x as f64 / 3.0 }))
                            .collect::<Float64Array>(),
                    ) as ArrayRef,
                ),
                (
                    "d",
                    Arc::new(
                        col(&v)
                            .into_iter()
                            .map(|x| x.map(|x| x as i128 * 7))
                            .collect::<Decimal128Array>()
                            .with_precision_and_scale(12, 2)
                            .unwrap(),
                    ) as ArrayRef,
                ),
                (
                    "w",
                    Arc::new(
                        col(&v)
                            .into_iter()
                            .map(|x| x.map(|x| x as i128 * 10i128.pow(30)))
                            .collect::<Decimal128Array>()
                            .with_precision_and_scale(38, 4)
                            .unwrap(),
                    ) as ArrayRef,
                ),
                (
                    "day",
                    Arc::new(
                        col(&v)
                            .into_iter()
                            .map(|x| x.map(|x| x as i32 + 9000))
                            .collect::<Date32Array>(),
                    ) as ArrayRef,
                ),
            ])
            .unwrap()
        })
        .collect();
    c.put_batches("tk", PutMode::Create, batches).await.unwrap();
    let mut checked = 0;
    for key in ["a", "b", "f", "d", "w", "day"] {
        for (descending, nulls_first) in TOPK_ORDERS {
            for k in [1u64, 7, 100, 5000, 40_000] {
                let run = |b: BackendKind| {
                    let mut p = Query::table("tk")
                        .select(["id", key])
                        .limit(k)
                        .backend(b)
                        .build();
                    p.order_by = topk_order(key, descending, nulls_first, "id");
                    p
                };
                let (native, _) = topk_like_native(&mut c, &run, k.min(n as u64)).await;
                assert!(
                    !native.stats.placement.contains("topk"),
                    "{}",
                    native.stats.placement
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 6 * 4 * 5);
    dev.stop().await;
}

/// Integer columns the Wasm filter gets narrowed (each batch's values in the fewest bytes
/// that hold them, tried at the width the last batch needed): for int32, date32, int64 and
/// decimal(15, 2) columns with nulls, over batches whose ranges grow and shrink, compares
/// against literals on either side of every width's bounds select exactly the native
/// backend's rows — with NOT, IN lists and tails shorter than a block; and so do compares of
/// two columns of one type stored at different widths (floats with NaN and -0.0 too).
#[test]
fn narrowed_integer_columns_filter_like_native() {
    use arrow::array::{ArrayRef, Int32Array};
    use std::sync::Arc;

    // Per batch: rows and the bound of its values (|v| <= bound).
    let shapes: [(usize, i64); 9] = [
        (700, 100),
        (0, 5),
        (1500, 2_000_000_000),
        (1, 127),
        (2100, 30_000),
        (64, 128),
        (900, i64::MAX),
        (1030, 32_768),
        (500, 3),
    ];
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let batches: Vec<RecordBatch> = shapes
        .iter()
        .map(|&(rows, bound)| {
            let mut value = |cap: i64| -> Option<i64> {
                let r = next();
                let b = bound.min(cap);
                // Every tenth row null; the bounds themselves appear.
                match r % 10 {
                    0 => None,
                    1 => Some(b),
                    2 => Some(-b),
                    _ => Some((r >> 8) as i64 % (b.saturating_add(1)).max(1)),
                }
            };
            let i32s: Int32Array = (0..rows)
                .map(|_| value(i32::MAX as i64).map(|v| v as i32))
                .collect();
            let days: Date32Array = (0..rows)
                .map(|_| value(100_000).map(|v| v as i32))
                .collect();
            let i64s: Int64Array = (0..rows).map(|_| value(i64::MAX)).collect();
            let dec = (0..rows)
                .map(|_| value(999_999_999_999_999).map(i128::from))
                .collect::<Decimal128Array>()
                .with_precision_and_scale(15, 2)
                .unwrap();
            // Second columns of each type, of a narrower range (another stored width), to
            // compare column against column; floats with -0.0 and NaN among them.
            let a2: Int32Array = (0..rows).map(|_| value(300).map(|v| v as i32)).collect();
            let d2: Date32Array = (0..rows).map(|_| value(40_000).map(|v| v as i32)).collect();
            let k2: Int64Array = (0..rows).map(|_| value(1 << 40)).collect();
            let p2 = (0..rows)
                .map(|_| value(100).map(i128::from))
                .collect::<Decimal128Array>()
                .with_precision_and_scale(15, 2)
                .unwrap();
            let float = |v: Option<i64>| {
                v.map(|v| match v % 7 {
                    0 => f64::NAN,
                    1 => -0.0,
                    _ => v as f64 / 8.0,
                })
            };
            let f: Float64Array = (0..rows).map(|_| float(value(50))).collect();
            let f2: Float64Array = (0..rows).map(|_| float(value(50))).collect();
            RecordBatch::try_from_iter(vec![
                ("a", Arc::new(i32s) as ArrayRef),
                ("d", Arc::new(days) as ArrayRef),
                ("k", Arc::new(i64s) as ArrayRef),
                ("p", Arc::new(dec) as ArrayRef),
                ("a2", Arc::new(a2) as ArrayRef),
                ("d2", Arc::new(d2) as ArrayRef),
                ("k2", Arc::new(k2) as ArrayRef),
                ("p2", Arc::new(p2) as ArrayRef),
                ("f", Arc::new(f) as ArrayRef),
                ("f2", Arc::new(f2) as ArrayRef),
            ])
            .unwrap()
        })
        .collect();

    let predicates = edge_predicates();

    // The FPGA engine compares columns with literals only.
    let column_pair = bind_for_test(&batches[0], "k < k2");
    assert!(matches!(
        nearstore_runtime::compute::wasm::fixed_width_filter_support(&column_pair),
        nearstore_runtime::compute::Support::Unsupported
    ));
    let predicates: Vec<&str> = predicates.iter().map(String::as_str).collect();
    let (checked, partial) = wasm_filters_like_native(&batches, &predicates);
    assert!(
        checked > 1000 && partial > checked / 4,
        "{checked} {partial}"
    );
}

/// The predicates of [`narrowed_integer_columns_filter_like_native`]: each column against
/// literals on either side of every width's bounds, with NOT and IN lists, and columns of one
/// type against each other.
fn edge_predicates() -> Vec<String> {
    let edges: Vec<i64> = vec![
        0,
        3,
        -127,
        127,
        128,
        -128,
        -129,
        32_767,
        32_768,
        -32_768,
        -32_769,
        i32::MAX as i64,
        i32::MIN as i64,
        i32::MAX as i64 + 1,
        i32::MIN as i64 - 1,
        i64::MAX,
        i64::MIN + 1,
    ];
    let decimal = |v: i64| {
        let sign = if v < 0 { "-" } else { "" };
        let a = v.unsigned_abs();
        format!("{sign}{}.{:02}", a / 100, a % 100)
    };
    let mut predicates = Vec::new();
    for &e in &edges {
        for op in ["=", "!=", "<", "<=", ">", ">="] {
            if i32::try_from(e).is_ok() {
                predicates.push(format!("a {op} {e}"));
            }
            if (-100_000..=100_000).contains(&e) {
                predicates.push(format!("d {op} DATE '{}'", civil_from_days(e)));
            }
            predicates.push(format!("k {op} {e}"));
            if e.unsigned_abs() <= 999_999_999_999_999 {
                predicates.push(format!("p {op} {}", decimal(e)));
            }
        }
        predicates.push(format!("NOT (k < {e}) OR a IS NULL"));
    }
    for op in ["=", "!=", "<", "<=", ">", ">="] {
        for (x, y) in [
            ("a", "a2"),
            ("d", "d2"),
            ("k", "k2"),
            ("p", "p2"),
            ("f", "f2"),
        ] {
            predicates.push(format!("{x} {op} {y}"));
        }
        predicates.push(format!("NOT (k2 {op} k) OR d > d2"));
    }
    predicates.push("k IN (3, 128, -129, 99999999999, -32769) AND NOT a IN (0, 2147483647)".into());
    predicates.push("k NOT IN (127, 40000) AND p IN (1.27, -1.28, 327.68)".into());
    predicates
}

/// Runs each predicate (each must compile for the Wasm kernel) over `batches` in a Wasm and a
/// native session — one pair per predicate, as per query, so later batches of the Wasm one
/// try the widths earlier ones needed — and asserts they select the same rows of every
/// batch. Returns the batches checked and those where some but not all rows were selected.
fn wasm_filters_like_native(batches: &[RecordBatch], predicates: &[&str]) -> (usize, usize) {
    use arrow::array::BooleanArray;
    use nearstore_runtime::compute::native::NativeBackend;
    use nearstore_runtime::compute::wasm::{SandboxConfig, WasmBackend};
    use nearstore_runtime::compute::{ComputeBackend, Support};

    let wasm = WasmBackend::new(SandboxConfig::default()).unwrap();
    let selected = |b: &BooleanArray| -> Vec<usize> {
        (0..b.len())
            .filter(|&i| b.is_valid(i) && b.value(i))
            .collect()
    };
    let (mut checked, mut partial) = (0, 0);
    for text in predicates {
        let pred = bind_for_test(&batches[0], text);
        assert!(
            matches!(wasm.supports_filter(&pred), Support::Exact),
            "{text} runs in Wasm"
        );
        let mut w = wasm.open().unwrap();
        let mut n = NativeBackend.open().unwrap();
        for (i, batch) in batches.iter().enumerate() {
            let want = selected(&n.filter(&pred, batch).unwrap());
            let got = selected(
                &w.filter(&pred, batch)
                    .unwrap_or_else(|e| panic!("{text}, batch {i}: {e}")),
            );
            assert_eq!(got, want, "{text}, batch {i}");
            checked += 1;
            partial += usize::from(!want.is_empty() && want.len() < batch.num_rows());
        }
        // The kernel answered every batch itself (none re-run natively).
        assert_eq!(w.report().native_reruns, 0, "{text}");
    }
    (checked, partial)
}

/// Sort orders the top-k tests try: (descending, nulls first), both defaults and both
/// explicit placements.
const TOPK_ORDERS: [(bool, Option<bool>); 4] = [
    (false, None),
    (true, None),
    (false, Some(true)),
    (true, Some(false)),
];

/// `ORDER BY key, tiebreak` (the tiebreak ascending).
fn topk_order(
    key: &str,
    descending: bool,
    nulls_first: Option<bool>,
    tiebreak: &str,
) -> Vec<nearstore_proto::SortKey> {
    use nearstore_proto::SortKey;
    vec![
        SortKey {
            column: key.into(),
            descending,
            nulls_first,
        },
        SortKey {
            column: tiebreak.into(),
            descending: false,
            nulls_first: None,
        },
    ]
}

/// Runs the plan `run` builds on the native and the Wasm backends: the same `rows` rows, the
/// Wasm run with its top-k pre-selection in the kernel. Returns the native result.
async fn topk_like_native(
    c: &mut nearstore_sdk::Client,
    run: &dyn Fn(BackendKind) -> nearstore_proto::Plan,
    rows: u64,
) -> (nearstore_sdk::QueryResult, nearstore_sdk::QueryResult) {
    let (native_plan, wasm_plan) = (run(BackendKind::Native), run(BackendKind::Wasm));
    let what = format!("{:?}", wasm_plan.order_by);
    let native = c.query(&native_plan).await.unwrap();
    let wasm = c.query(&wasm_plan).await.unwrap();
    assert_eq!(native.concat().unwrap(), wasm.concat().unwrap(), "{what}");
    assert_eq!(wasm.num_rows() as u64, rows, "{what}");
    assert!(
        wasm.stats.placement.contains("topk=wasm"),
        "{what}: {}",
        wasm.stats.placement
    );
    // The pre-selection saw rows and kept at least the answer's.
    let s = &wasm.stats;
    assert!(
        s.topk_rows_in >= s.topk_rows_kept && s.topk_rows_kept >= rows && s.topk_rows_in > 0,
        "{what}: top-k kept {} of {}",
        s.topk_rows_kept,
        s.topk_rows_in
    );
    (native, wasm)
}

/// `GROUP BY … ORDER BY aggregate [, key] LIMIT k` pre-selects the top groups in the Wasm
/// kernel (`topk=wasm`) and answers exactly as the native backend: 30 000 groups, sums with
/// ties and NULLs (groups whose values are all NULL), both directions, both null placements,
/// and k from one to more than the groups. The query statistics show the pre-selection kept
/// under a quarter of the groups where few tie at the top.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topk_over_aggregates_in_wasm_equals_native() {
    use arrow::array::ArrayRef;
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let dev = TestDevice::start(dir.path(), ReaderChoice::Auto).await;
    let mut c = dev.client().await;
    let (n, groups) = (120_000i64, 30_000i64);
    let g = Int64Array::from_iter_values((0..n).map(|i| (i * 7919) % groups));
    // Few distinct sums (ties); every row of the groups ≡ 3 (mod 97) NULL.
    let v: Int64Array = (0..n)
        .map(|i| ((i * 7919) % groups % 97 != 3).then_some(i % 13 - 6))
        .collect();
    let f = Float64Array::from_iter_values((0..n).map(|i| (i % 1000) as f64 / 8.0));
    let batch = RecordBatch::try_from_iter(vec![
        ("g", Arc::new(g) as ArrayRef),
        ("v", Arc::new(v) as ArrayRef),
        ("f", Arc::new(f) as ArrayRef),
    ])
    .unwrap();
    c.put_batches("ga", PutMode::Create, vec![batch])
        .await
        .unwrap();
    let mut checked = 0;
    for key in ["s", "m", "n"] {
        for (descending, nulls_first) in TOPK_ORDERS {
            for k in [1u64, 10, 999, 40_000] {
                let run = |b: BackendKind| {
                    let mut p = Query::table("ga")
                        .group_by(["g"])
                        .aggregate(AggFunc::Sum, Some("v"), "s")
                        .unwrap()
                        .aggregate(AggFunc::Max, Some("f"), "m")
                        .unwrap()
                        .aggregate(AggFunc::CountStar, None, "n")
                        .unwrap()
                        .limit(k)
                        .backend(b)
                        .build();
                    p.order_by = topk_order(key, descending, nulls_first, "g");
                    p
                };
                let (_, wasm) = topk_like_native(&mut c, &run, k.min(groups as u64)).await;
                // Every group is offered once; by a sum or a maximum (few ties at the top) the
                // device keeps far fewer than all for a k below the groups. (Counts all tie.)
                let s = &wasm.stats;
                assert_eq!(s.topk_rows_in, groups as u64, "{key} top {k}");
                if key != "n" && k < 1000 {
                    assert!(
                        s.topk_rows_kept * 4 < s.topk_rows_in,
                        "{key} top {k}: kept {} of {}",
                        s.topk_rows_kept,
                        s.topk_rows_in
                    );
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 3 * 4 * 4);
    dev.stop().await;
}

/// Predicates with arithmetic (+ - * / over int32, int64, decimal and float64 operands, on
/// either side or both) run in the Wasm kernel, which computes both sides and compares them,
/// and select exactly the native backend's rows: with NULLs, infinities from float division,
/// NOT, BETWEEN and OR, NaN and -0.0 from arithmetic, a divisor that is zero only where it is
/// NULL, columns staged in one byte, decimals beyond 64 bits, sliced batches and an empty
/// one — and the kernel answers every batch itself. A division by zero, `i64::MIN / -1` or an
/// int32 overflow fails both backends with Arrow's error.
#[test]
fn arithmetic_filters_in_wasm_equal_native() {
    use arrow::array::{ArrayRef, Decimal128Array, Int32Array};
    use nearstore_runtime::compute::native::NativeBackend;
    use nearstore_runtime::compute::wasm::{SandboxConfig, WasmBackend};
    use nearstore_runtime::compute::{ComputeBackend, Support};
    use std::sync::Arc;

    let n = 12_000i64;
    let a32: Int32Array = (0..n)
        .map(|i| (i % 7 != 3).then_some((i % 2001 - 1000) as i32))
        .collect();
    let i64s: Int64Array = (0..n)
        .map(|i| (i % 11 != 5).then_some(i * 7919 - 50_000_000))
        .collect();
    let d = (0..n)
        .map(|i| (i % 13 != 2).then_some(i128::from((i * 37) % 10_000 - 2_000)))
        .collect::<Decimal128Array>()
        .with_precision_and_scale(15, 2)
        .unwrap();
    // Zero at row 7000 (valid): `(f - 1.0) / f` is -inf there, `f / f` NaN, `f * -1.0` -0.0.
    let f =
        Float64Array::from_iter((0..n).map(|i| (i % 17 != 1).then_some(i as f64 / 7.0 - 1000.0)));
    // A divisor that is 0 only where it is NULL (Arrow keeps 0 in null slots).
    let b32: Int32Array = (0..n)
        .map(|i| Some((i % 23 - 11) as i32).filter(|v| *v != 0 && i % 5 != 0))
        .collect();
    // Staged in one byte per value.
    let s8: Int32Array = (0..n).map(|i| Some((i % 200 - 100) as i32)).collect();
    // Beyond 64 bits (precision 38).
    let wide = (0..n)
        .map(|i| (i % 19 != 7).then_some(i128::from(i - 6000) * 10i128.pow(24)))
        .collect::<Decimal128Array>()
        .with_precision_and_scale(38, 4)
        .unwrap();
    let whole = RecordBatch::try_from_iter(vec![
        ("a32", Arc::new(a32) as ArrayRef),
        ("i", Arc::new(i64s) as ArrayRef),
        ("d", Arc::new(d) as ArrayRef),
        ("f", Arc::new(f) as ArrayRef),
        ("b32", Arc::new(b32) as ArrayRef),
        ("s8", Arc::new(s8) as ArrayRef),
        ("wide", Arc::new(wide) as ArrayRef),
    ])
    .unwrap();
    let batches = [
        whole.slice(0, 4000),
        whole.slice(4000, 1),
        whole.slice(4001, 5999),
        whole.slice(10_000, 0),
        whole.slice(10_000, 2000),
    ];
    let (checked, partial) = wasm_filters_like_native(
        &batches,
        &[
            "i * 3 - i > 1000",
            "a32 + a32 < 10",
            "a32 * 2 >= a32 + 100",
            "i / 7 < -1000",
            "a32 / 3 = 5",
            "i - 5 BETWEEN -100000 AND 100000000",
            "NOT (i + 1 > 0)",
            "a32 * 2 > 0 OR i / 3 < 0",
            "d * (1 - d) > -5",
            "d + d = d * 2",
            "d - 1.5 < 0",
            "f / 4.0 < f - 3.0",
            "(f - 1.0) / f > 0.5",
            "(f - 1.0) / f < -1000000.0",
            "2.0 * f > f",
            "100 < i + i",
            "a32 / b32 > 2",
            "f / f = f / f",
            "f * -1.0 < 0.0",
            "s8 * 2 > 50",
            "s8 - a32 <= 0",
            "wide + wide > wide",
            "wide - 1 < 0",
            "d / (d + 1000) < 0",
            "wide / (d + 1000) > 100",
        ],
    );
    assert_eq!(checked, 25 * batches.len());
    // Of the three batches with many rows, most predicates select some rows but not all.
    assert!(partial >= 25 * 2, "{partial} partial selections");

    // Errors: a division by zero on a valid row, an int32 product out of range, and
    // `i64::MIN / -1`. The kernel stops, and the batch re-runs natively for Arrow's error.
    let wasm = WasmBackend::new(SandboxConfig::default()).unwrap();
    let min = RecordBatch::try_from_iter(vec![(
        "m",
        Arc::new(Int64Array::from(vec![Some(5), None, Some(i64::MIN)])) as ArrayRef,
    )])
    .unwrap();
    for (text, batch) in [
        ("i / (i - i) > 0", &whole),
        ("a32 * 10000000 > 0", &whole),
        ("m / -1 > 0", &min),
    ] {
        let pred = bind_for_test(batch, text);
        assert!(
            matches!(wasm.supports_filter(&pred), Support::Exact),
            "{text}"
        );
        let native = NativeBackend
            .open()
            .unwrap()
            .filter(&pred, batch)
            .unwrap_err();
        let mut session = wasm.open().unwrap();
        let got = session.filter(&pred, batch).unwrap_err();
        assert_eq!(got.to_string(), native.to_string(), "{text}");
        assert_eq!(session.report().native_reruns, 1, "{text}");
    }
}

/// `text` bound against `batch`'s schema as a predicate.
fn bind_for_test(batch: &RecordBatch, text: &str) -> nearstore_runtime::plan::PhysExpr {
    nearstore_runtime::plan::Binder::new("test", &batch.schema())
        .bind_bool(&Expr::parse(text).unwrap())
        .unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// String filters in the Wasm kernel (comparisons byte-wise with literals and between two
/// string columns, IN lists, LIKE of every shape: prefix, suffix, contains, exact, and any
/// other pattern with `_`, inner `%` and `\` escapes, matched a character at a time) select
/// exactly the native backend's rows: with NULLs, empty, multi-line and non-ASCII strings,
/// and a sliced batch whose offsets do not start at 0.
#[test]
fn string_filters_in_wasm_equal_native() {
    use arrow::array::ArrayRef;
    use std::sync::Arc;

    let words = [
        "",
        "a",
        "ab",
        "abc",
        "b",
        "ba",
        "bab",
        "zürich",
        "zu",
        "über",
        "naïve",
        "aaaa",
        "xabcx",
        "ABC",
        "a%b",
        "a_b",
        "a\\b",
        "a\nb",
        "ab\n",
        "日本語",
        "a日b",
        "aXb",
    ];
    let column = |k: usize| -> StringArray {
        (0..3000)
            .map(|i: usize| (i % (9 + k) != 4).then(|| words[(i * (7 + k) + i / 16) % words.len()]))
            .collect()
    };
    let id = Int64Array::from_iter_values(0..3000);
    let whole = RecordBatch::try_from_iter(vec![
        ("s", Arc::new(column(0)) as ArrayRef),
        ("id", Arc::new(id) as ArrayRef),
        ("t", Arc::new(column(4)) as ArrayRef),
    ])
    .unwrap();
    let batches = [
        whole.slice(0, 1100),
        whole.slice(1100, 1),
        whole.slice(1101, 1899),
    ];
    let in_wasm = [
        "s = 'ab'",
        "s != 'ab'",
        "s < 'b'",
        "s <= 'ba'",
        "s > 'zu'",
        "s >= ''",
        "s = ''",
        "s LIKE 'a%'",
        "s LIKE '%b'",
        "s LIKE '%b%'",
        "s LIKE 'zü%'",
        "s LIKE '%ï%'",
        "s LIKE ''",
        "s LIKE 'abc'",
        "s LIKE '%'",
        "s NOT LIKE '%a%'",
        "NOT (s LIKE 'b%') AND id < 2000",
        "s IN ('a', 'über', 'nothing')",
        "s NOT IN ('', 'ABC')",
        "s IS NULL OR s LIKE '%x'",
        "s LIKE 'a_b'",
        "s LIKE 'a%b'",
        "s LIKE '%a\\%b%'",
        "s LIKE 'a\\_b'",
        "s LIKE 'a\\\\b'",
        "s LIKE 'a\\'",
        "s LIKE '_'",
        "s LIKE '__'",
        "s LIKE '_b%'",
        "s LIKE '%_%_%'",
        "s LIKE 'a%b%'",
        "s LIKE '%a%b'",
        "s LIKE '_日_'",
        "s LIKE '%本_'",
        "s LIKE 'a%\nb'",
        "s LIKE 'ab_'",
        "s NOT LIKE 'a_%'",
        "s = t",
        "s < t",
        "s >= t",
        "s != t OR s IS NULL",
    ];
    let (_, partial) = wasm_filters_like_native(&batches, &in_wasm);
    assert!(
        partial > 70,
        "{partial} batches selected some rows but not all"
    );
}

/// Boolean columns in the Wasm filter (`b`, `NOT b`, `b = false`, `b != true`, with NULLs and
/// batches sliced at offsets that are not whole bytes) select exactly the native rows.
#[test]
fn boolean_filters_in_wasm_equal_native() {
    use arrow::array::{ArrayRef, BooleanArray};
    use std::sync::Arc;

    let b: BooleanArray = (0..2000)
        .map(|i: usize| (i % 7 != 3).then_some(i.is_multiple_of(3) || i.is_multiple_of(11)))
        .collect();
    let id = Int64Array::from_iter_values(0..2000);
    let whole = RecordBatch::try_from_iter(vec![
        ("b", Arc::new(b) as ArrayRef),
        ("id", Arc::new(id) as ArrayRef),
    ])
    .unwrap();
    let batches = [
        whole.slice(3, 1100),
        whole.slice(1103, 1),
        whole.slice(1104, 896),
    ];
    let predicates = [
        "b",
        "NOT b",
        "b = true",
        "b = false",
        "b != true",
        "b != false",
        "b IS NULL OR b",
        "b AND id < 1500",
        "NOT b OR id > 1900",
    ];
    let (checked, partial) = wasm_filters_like_native(&batches, &predicates);
    assert!(partial > checked / 2, "{checked} {partial}");
}
