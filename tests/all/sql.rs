//! SQL through DataFusion: TPC-H queries over all eight tables give the same rows with the
//! device doing the filtering (offload) as with the host doing everything (full transfer),
//! and offload moves fewer bytes.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type};
use nearstore_runtime::storage::reader::ReaderChoice;
use nearstore_sdk::{ClientOptions, Mode, SqlSession};

use crate::support::TestDevice;

pub const QUERIES: &[(&str, &str)] = &[
    (
        "q1",
        "select l_returnflag, l_linestatus, sum(l_quantity) as sum_qty, sum(l_extendedprice) as sum_base_price, \
         sum(l_extendedprice * (1 - l_discount)) as sum_disc_price, sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)) as sum_charge, \
         avg(l_quantity) as avg_qty, avg(l_extendedprice) as avg_price, avg(l_discount) as avg_disc, count(*) as count_order \
         from lineitem where l_shipdate <= date '1998-09-02' group by l_returnflag, l_linestatus order by l_returnflag, l_linestatus",
    ),
    (
        "q3",
        "select l_orderkey, sum(l_extendedprice * (1 - l_discount)) as revenue, o_orderdate, o_shippriority \
         from customer, orders, lineitem where c_mktsegment = 'BUILDING' and c_custkey = o_custkey and l_orderkey = o_orderkey \
         and o_orderdate < date '1995-03-15' and l_shipdate > date '1995-03-15' \
         group by l_orderkey, o_orderdate, o_shippriority order by revenue desc, o_orderdate, l_orderkey limit 10",
    ),
    (
        "q5",
        "select n_name, sum(l_extendedprice * (1 - l_discount)) as revenue from customer, orders, lineitem, supplier, nation, region \
         where c_custkey = o_custkey and l_orderkey = o_orderkey and l_suppkey = s_suppkey and c_nationkey = s_nationkey \
         and s_nationkey = n_nationkey and n_regionkey = r_regionkey and r_name = 'ASIA' \
         and o_orderdate >= date '1994-01-01' and o_orderdate < date '1995-01-01' group by n_name order by revenue desc",
    ),
    (
        "q6",
        "select sum(l_extendedprice * l_discount) as revenue from lineitem where l_shipdate >= date '1994-01-01' \
         and l_shipdate < date '1995-01-01' and l_discount between 0.05 and 0.07 and l_quantity < 24",
    ),
    (
        "q10",
        "select c_custkey, c_name, sum(l_extendedprice * (1 - l_discount)) as revenue, c_acctbal, n_name, c_address, c_phone, c_comment \
         from customer, orders, lineitem, nation where c_custkey = o_custkey and l_orderkey = o_orderkey \
         and o_orderdate >= date '1993-10-01' and o_orderdate < date '1994-01-01' and l_returnflag = 'R' and c_nationkey = n_nationkey \
         group by c_custkey, c_name, c_acctbal, c_phone, n_name, c_address, c_comment order by revenue desc, c_custkey limit 20",
    ),
    (
        "q12",
        "select l_shipmode, sum(case when o_orderpriority = '1-URGENT' or o_orderpriority = '2-HIGH' then 1 else 0 end) as high_line_count, \
         sum(case when o_orderpriority <> '1-URGENT' and o_orderpriority <> '2-HIGH' then 1 else 0 end) as low_line_count \
         from orders, lineitem where o_orderkey = l_orderkey and l_shipmode in ('MAIL', 'SHIP') and l_commitdate < l_receiptdate \
         and l_shipdate < l_commitdate and l_receiptdate >= date '1994-01-01' and l_receiptdate < date '1995-01-01' \
         group by l_shipmode order by l_shipmode",
    ),
    (
        "q14",
        "select 100.00 * sum(case when p_type like 'PROMO%' then l_extendedprice * (1 - l_discount) else 0 end) \
         / sum(l_extendedprice * (1 - l_discount)) as promo_revenue from lineitem, part \
         where l_partkey = p_partkey and l_shipdate >= date '1995-09-01' and l_shipdate < date '1995-10-01'",
    ),
];

/// Rows as text, floats to 9 significant digits (aggregation order may differ between runs).
fn rows(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        for i in 0..b.num_rows() {
            let cells: Vec<String> = b
                .columns()
                .iter()
                .map(|c| match c.data_type() {
                    DataType::Float64 if c.is_valid(i) => {
                        format!("{:.8e}", c.as_primitive::<Float64Type>().value(i))
                    }
                    _ => arrow::util::display::array_value_to_string(c, i).unwrap(),
                })
                .collect();
            out.push(cells.join("|"));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpch_queries_agree_between_offload_and_full_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let dev = TestDevice::start(dir.path(), ReaderChoice::Auto).await;
    let d = dev.device.clone();
    tokio::task::spawn_blocking(move || {
        for t in nearstore_runtime::demo::TPCH_TABLES {
            d.load_tpch(t, 0.01, &|_, _| {}).unwrap();
        }
    })
    .await
    .unwrap();
    let offload = SqlSession::connect(&dev.url, ClientOptions::default(), Mode::Offload)
        .await
        .unwrap();
    let transfer = SqlSession::connect(&dev.url, ClientOptions::default(), Mode::FullTransfer)
        .await
        .unwrap();
    for (name, q) in QUERIES {
        let a = offload
            .sql(q)
            .await
            .unwrap_or_else(|e| panic!("{name} offload: {e}"));
        let b = transfer
            .sql(q)
            .await
            .unwrap_or_else(|e| panic!("{name} transfer: {e}"));
        assert!(a.num_rows() > 0, "{name} returned nothing");
        assert_eq!(rows(&a.batches), rows(&b.batches), "{name}");
        assert!(
            b.scans
                .iter()
                .all(|(p, _)| p.filter.is_none() && p.limit.is_none())
        );
        assert!(
            a.scans.iter().any(|(p, _)| p.filter.is_some()),
            "{name}: nothing pushed"
        );
        assert!(
            a.bytes_moved() < b.bytes_moved(),
            "{name}: offload moved {} bytes, transfer {}",
            a.bytes_moved(),
            b.bytes_moved()
        );
        if *name == "q6" {
            // Filter and aggregate both run on the device: one row crosses the link.
            assert!(
                !a.scans[0].0.aggregates.is_empty(),
                "q6 aggregate not pushed"
            );
            assert!(a.bytes_moved() < 1024, "q6 moved {} bytes", a.bytes_moved());
        }
        eprintln!(
            "{name}: offload {} B, transfer {} B ({:.1}x less)",
            a.bytes_moved(),
            b.bytes_moved(),
            b.bytes_moved() as f64 / a.bytes_moved() as f64
        );
    }
    let plan = offload.explain(QUERIES[3].1).await.unwrap();
    assert!(plan.contains("DeviceScanExec: table=lineitem"), "{plan}");
    assert!(plan.contains("filter="), "{plan}");
    assert!(plan.contains("aggregates=[sum("), "{plan}");
    dev.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_errors_are_specific() {
    let dir = tempfile::tempdir().unwrap();
    let dev = TestDevice::start(dir.path(), ReaderChoice::Auto).await;
    let d = dev.device.clone();
    tokio::task::spawn_blocking(move || d.load_tpch("nation", 0.01, &|_, _| {}).unwrap())
        .await
        .unwrap();
    let s = SqlSession::connect(&dev.url, ClientOptions::default(), Mode::Offload)
        .await
        .unwrap();
    let e = s.sql("select * from nope").await.unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    let e = s.sql("select n_nope from nation").await.unwrap_err();
    assert!(e.to_string().contains("n_nope"), "{e}");
    let r = s
        .sql("select count(*) from nation where n_regionkey = 1")
        .await
        .unwrap();
    assert_eq!(rows(&r.batches), vec!["5".to_string()]);
    dev.stop().await;
    // A device that is down: a transport error, quickly.
    let opts = ClientOptions {
        connect_timeout: std::time::Duration::from_secs(2),
        ..Default::default()
    };
    let e = SqlSession::connect(&dev_url_down(), opts, Mode::Offload)
        .await
        .unwrap_err();
    assert!(matches!(e, nearstore_sdk::Error::Transport { .. }), "{e}");
}

fn dev_url_down() -> String {
    format!("grpc://127.0.0.1:{}", crate::support::free_port())
}
