//! SQL pushdown semantics: single-table queries give the same rows with the device filtering
//! and aggregating (offload) as with the host doing everything (full transfer), including the
//! cases the SDK must keep on the host because the device would compute something else.

use nearstore_proto::PutMode;
use nearstore_runtime::storage::reader::ReaderChoice;
use nearstore_sdk::{ClientOptions, Mode, SqlResult, SqlSession};

use crate::support::rows;
use crate::support::{TestDevice, table_batches};

/// A device with lineitem, orders, customer and part at SF 0.01 and `gen` (20 000 rows of
/// the generated table: float `val` with nulls, strings, dates, decimals), and a session in
/// each mode.
struct Fixture {
    dev: TestDevice,
    offload: SqlSession,
    transfer: SqlSession,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let dev = TestDevice::start(dir.path(), ReaderChoice::Auto).await;
        let d = dev.device.clone();
        tokio::task::spawn_blocking(move || {
            for t in ["lineitem", "orders", "customer", "part"] {
                d.load_tpch(t, 0.01, &|_, _| {}).unwrap();
            }
        })
        .await
        .unwrap();
        dev.client()
            .await
            .put_batches("gen", PutMode::Create, table_batches(20_000, 4_096, 7))
            .await
            .unwrap();
        let offload = SqlSession::connect(&dev.url, ClientOptions::default(), Mode::Offload)
            .await
            .unwrap();
        let transfer = SqlSession::connect(&dev.url, ClientOptions::default(), Mode::FullTransfer)
            .await
            .unwrap();
        Fixture {
            dev,
            offload,
            transfer,
            _dir: dir,
        }
    }

    /// Runs `q` in both modes and checks they agree; returns the offload result.
    async fn agree(&self, q: &str) -> SqlResult {
        let b = self
            .transfer
            .sql(q)
            .await
            .unwrap_or_else(|e| panic!("{q}\ntransfer: {e}"));
        let a = self
            .offload
            .sql(q)
            .await
            .unwrap_or_else(|e| panic!("{q}\noffload: {e}"));
        assert_eq!(rows(&a.batches), rows(&b.batches), "{q}");
        a
    }

    async fn stop(self) {
        self.dev.stop().await;
    }
}

fn filters(r: &SqlResult) -> Vec<String> {
    r.scans
        .iter()
        .filter_map(|(p, _)| p.filter.as_ref().map(|f| f.to_string()))
        .collect()
}

fn aggregated(r: &SqlResult) -> bool {
    r.scans.iter().any(|(p, _)| p.is_aggregate())
}

/// Predicates and aggregates over one table, each in both modes. Whatever the SDK pushes or
/// keeps, the rows must be the same.
const SINGLE_TABLE: &[&str] = &[
    // Comparisons, BETWEEN and IN with decimal, date, string and float literals.
    "select count(*) from lineitem where l_discount in (0.05, 0.1)",
    "select count(*) from lineitem where l_discount = 0.065",
    "select count(*) from customer where c_acctbal < -999.5",
    "select count(*) from customer where c_acctbal between -100 and 100.5",
    "select count(*) from lineitem where not (l_quantity between 10 and 20)",
    "select count(*) from lineitem where l_shipdate > '1995-01-01'",
    "select count(*) from orders where o_orderdate in (date '1996-01-02', date '1996-01-03')",
    "select count(*) from gen where day between date '1992-01-01' and date '1993-01-01'",
    "select count(*) from gen where day > date '1995-01-01' - interval '10' day",
    "select count(*) from gen where day < now()",
    "select count(*) from gen where price > 1e3",
    "select count(*) from gen where price = 12.345",
    "select count(*) from gen where price < 5000 and price > 4000.005",
    "select count(*) from gen where val > 50.5",
    "select count(*) from gen where val >= -0.0",
    "select count(*) from gen where id = 5.0",
    "select count(*) from gen where id in (5, 6.5)",
    "select count(*) from gen where cast(id as double) > 5.5",
    "select count(*) from gen where cat > 'b' and cat < 'e'",
    // NULL semantics: NULL in IN lists and BETWEEN bounds, nullable columns, NOT.
    "select count(*) from customer where c_nationkey in (1, null)",
    "select count(*) from customer where c_nationkey not in (1, null)",
    "select count(*) from gen where cat in ('alpha', 'beta', 'x', 'y', 'z', null)",
    "select count(*) from gen where cat not in ('alpha', 'beta', 'x', 'y', 'z', null)",
    "select count(*) from gen where id not in (1, 2, 3, 4, 5, 6, 7, null)",
    "select count(*) from gen where val in (0.1, 99.9, 1, 2, 3, 4, null)",
    "select count(*) from gen where val between null and 5",
    "select count(*) from gen where val not between 5 and null",
    "select count(*) from gen where val is null",
    "select count(*) from gen where not (val > 50.5)",
    "select count(*) from gen where (val > 5) is not true",
    "select count(*) from gen where (val > 5) = false",
    "select count(*) from gen where cat like 'a%' or val is null",
    "select count(*) from gen where id < 100 and (val is null or val > 500)",
    "select count(*) from gen where val > 5 or true",
    "select count(*) from gen where null",
    // LIKE: wildcards, backslash escapes, anchoring, case.
    "select count(*) from part where p_name like '%\\%%'",
    "select count(*) from part where p_comment like '%_%'",
    "select count(*) from orders where o_comment like '%special%requests%'",
    "select count(*) from orders where o_comment not like '%special%requests%'",
    "select count(*) from customer where c_phone like '13-%'",
    "select count(*) from gen where cat like ''",
    "select count(*) from gen where cat like 'ALPHA'",
    "select count(*) from gen where cat ilike 'ALPHA'",
    "select count(*) from gen where cat like '_eta'",
    "select count(*) from gen where cat not like '%a'",
    // Arithmetic.
    "select count(*) from lineitem where l_quantity * l_discount > 1.5",
    "select count(*) from lineitem where l_quantity + l_tax > 50",
    "select count(*) from lineitem where l_extendedprice / l_quantity > 1000",
    "select count(*) from lineitem where l_orderkey / 7 = 3",
    "select count(*) from lineitem where l_orderkey % 7 = 3",
    "select count(*) from gen where val * 2 > 101",
    "select count(*) from gen where val / 3 > 33.3",
    "select count(*) from gen where val + 1 > 50",
    "select count(*) from gen where -val < -50",
    "select count(*) from gen where id / 3 = 5",
    "select count(*) from gen where price * 2 > 1000",
    "select count(*) from gen where price - 1 > 50",
    "select count(*) from gen where price + price * 0.5 > 1000",
    // Aggregates: empty inputs, literals, NULL groups, decimal and float inputs.
    "select count(*), sum(l_quantity), avg(l_quantity), min(l_shipdate), max(l_comment) \
     from lineitem where l_quantity < 0",
    "select count(*), sum(val), avg(val) from gen where id < 0",
    "select sum(1), count(1), sum(2.5), min('x'), avg(1), max(date '1995-01-01') from lineitem",
    "select sum(1), avg(1) from lineitem where l_quantity < 0",
    "select sum(l_linenumber), avg(l_linenumber), min(l_shipdate), max(l_shipmode) from lineitem",
    "select sum(l_extendedprice / l_quantity) from lineitem",
    "select avg(l_quantity * 2) from lineitem",
    "select l_returnflag, count(*) from lineitem group by l_returnflag having count(*) > 100 \
     order by 1",
    "select sum(val), min(val), max(val), count(val), avg(val) from gen",
    "select cat, sum(val), count(val), avg(price) from gen group by cat order by cat",
    "select val, count(*) from gen group by val order by val nulls first limit 5",
    "select day, count(*), sum(price), avg(price), min(val) from gen group by day order by day \
     limit 5",
    "select price, count(*) from gen group by price order by 2 desc, 1 limit 5",
    "select max(cat), min(cat), max(day) from gen where val is null",
    "select sum(price * 2), avg(price * 0.5), min(price - 1), max(price + 0.001) from gen",
    "select count(distinct l_suppkey), count(distinct l_returnflag) from lineitem",
    "select count(distinct l_suppkey) from lineitem where l_quantity < 10",
    "select distinct l_returnflag, l_linestatus from lineitem order by 1, 2",
    "select l_shipmode from lineitem where l_quantity > 49 group by l_shipmode order by 1",
    "select sum(distinct l_quantity), stddev(l_quantity) from lineitem",
    "select l_returnflag, count(*) filter (where l_quantity > 10) from lineitem group by 1 \
     order by 1",
    "select l_returnflag as f, max(l_shipdate) as m from lineitem group by f order by m, f",
    // A limit pushed below an exact filter.
    "select count(*) from (select l_orderkey from lineitem where l_quantity < 5 limit 100)",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_table_queries_agree_between_offload_and_full_transfer() {
    let f = Fixture::new().await;
    for q in SINGLE_TABLE {
        f.agree(q).await;
    }
    // Both modes refuse the same things.
    for q in [
        "select count(*) from lineitem where 1 / l_discount > 14.2857",
        "select count(*) from part where p_name like '%#%%' escape '#'",
    ] {
        let e = f.offload.sql(q).await.unwrap_err().to_string();
        let t = f.transfer.sql(q).await.unwrap_err().to_string();
        assert!(
            e.to_lowercase().contains("divide by zero") || e.contains("escape"),
            "{q}: {e}"
        );
        assert!(
            t.to_lowercase().contains("divide by zero") || t.contains("escape"),
            "{q}: {t}"
        );
    }
    f.stop().await;
}

/// Regression: decimal division was pushed although the device divides at another scale.
/// DataFusion keeps each operand's type, so `100 / l_quantity` divides a scale-0 dividend and
/// truncates the quotient to 4 decimals; the device converted the literal to the column's
/// scale 2 first and kept 6 decimals, so `> 2.0408` kept rows it should not and a pushed
/// `sum(100 / l_quantity)` came out larger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decimal_division_stays_on_the_host() {
    let f = Fixture::new().await;
    let r = f
        .agree("select count(*) from lineitem where 100 / l_quantity > 2.0408")
        .await;
    assert!(filters(&r).is_empty(), "{:?}", filters(&r));
    let r = f.agree("select sum(100 / l_quantity) from lineitem").await;
    assert!(!aggregated(&r), "decimal division pushed in an aggregate");
    let r = f
        .agree("select count(*) from gen where price / 3 > 1000")
        .await;
    assert!(filters(&r).is_empty(), "{:?}", filters(&r));
    // Float and integer division still go to the device.
    let r = f
        .agree("select count(*) from gen where val / 3 > 33.3")
        .await;
    assert_eq!(filters(&r), vec!["((val / 3.0) > 33.3)"]);
    let r = f
        .agree("select count(*) from lineitem where l_orderkey / 7 = 3")
        .await;
    assert_eq!(filters(&r), vec!["((l_orderkey / 7) = 3)"]);
    f.stop().await;
}

/// Regression: date arithmetic was answered Exact and the device, whose arithmetic is numeric
/// only, failed the query ("arithmetic needs numbers, got Date32").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn date_arithmetic_stays_on_the_host() {
    let f = Fixture::new().await;
    let r = f
        .agree(
            "select count(*) from orders where o_orderdate - date '1995-01-01' > 30 \
             and o_orderstatus = 'F'",
        )
        .await;
    assert_eq!(filters(&r), vec!["(o_orderstatus = 'F')"]);
    f.agree("select count(*) from gen where day - date '1992-01-01' > 1000")
        .await;
    f.stop().await;
}

/// Regression: integer `+ - *` were pushed, but on overflow DataFusion wraps while the device
/// fails the query with an overflow error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integer_overflow_agrees() {
    let f = Fixture::new().await;
    for q in [
        "select count(*) from lineitem where l_orderkey * 4611686018427387904 > 0",
        "select count(*) from gen where id + 9223372036854775000 > 0",
        "select sum(id * 4611686018427387904) from gen",
    ] {
        let r = f.agree(q).await;
        assert!(filters(&r).is_empty(), "{q}: {:?}", filters(&r));
        assert!(
            !aggregated(&r),
            "{q}: integer arithmetic pushed in an aggregate"
        );
    }
    f.stop().await;
}

/// Regression: NaN and infinite float literals were pushed, but the plan travels as JSON,
/// which turns them into NULL: `val < 'NaN'` kept no row on the device, every non-null row on
/// the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_finite_float_literals_stay_on_the_host() {
    let f = Fixture::new().await;
    for q in [
        "select count(*) from gen where val < 'NaN'::double",
        "select count(*) from gen where val = 'NaN'::double",
        "select count(*) from gen where val < 'Infinity'::double",
        "select count(*) from gen where val > '-Infinity'::double and cat = 'beta'",
    ] {
        let r = f.agree(q).await;
        assert!(
            filters(&r).iter().all(|x| !x.contains("val")),
            "{q}: {:?}",
            filters(&r)
        );
    }
    let r = f
        .transfer
        .sql("select count(*) from gen where val < 'NaN'::double")
        .await
        .unwrap();
    assert_eq!(rows(&r.batches), vec!["17143"]);
    f.stop().await;
}

/// Regression: a pushed decimal average whose device sum has a larger scale than the average
/// (the device widens the scale of each product's operands: four scale-2 factors give scale
/// 16 on the device, 8 in DataFusion, whose average has scale 12) was scaled up by
/// `10^max(0, 12 - 16)` = 1 and read at scale 12: 10 000 times too large.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_decimal_average_of_a_wide_product() {
    let f = Fixture::new().await;
    for q in [
        "select avg(l_quantity * l_discount * l_tax * l_extendedprice) from lineitem",
        "select l_returnflag, avg(l_quantity * l_discount * l_tax * l_extendedprice), \
         avg(l_quantity) from lineitem group by l_returnflag order by 1",
        // Negative averages truncate towards zero, as DataFusion's do.
        "select avg((0 - l_quantity) * l_discount * l_tax * l_extendedprice) from lineitem \
         where l_quantity < 3",
    ] {
        let r = f.agree(q).await;
        assert!(aggregated(&r), "{q}: aggregate not pushed");
    }
    f.stop().await;
}
