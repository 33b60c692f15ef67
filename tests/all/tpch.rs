//! TPC-H Q6 and Q1 on a generated lineitem table: the device (Wasm filter kernels) returns
//! exactly what the host computes from the fully transferred columns.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Date32Type, Decimal128Type, Float64Type, Int64Type};
use nearstore_proto::{AggFunc, BackendKind, Plan, Projection};
use nearstore_runtime::storage::reader::ReaderChoice;
use nearstore_sdk::Query;

use crate::support::TestDevice;

const SHIP_1994: i32 = 8766; // 1994-01-01
const SHIP_1995: i32 = 9131; // 1995-01-01
const Q1_CUTOFF: i32 = 10471; // 1998-09-02

fn col<'a>(b: &'a RecordBatch, name: &str) -> &'a arrow::array::ArrayRef {
    b.column_by_name(name).unwrap()
}

fn strings(a: &arrow::array::ArrayRef) -> Vec<String> {
    let a = arrow::compute::cast(a, &DataType::Utf8).unwrap();
    a.as_string::<i32>()
        .iter()
        .map(|s| s.unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q6_and_q1_on_the_device_match_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let dev = TestDevice::start(dir.path(), ReaderChoice::Auto).await;
    let d = dev.device.clone();
    let rows = tokio::task::spawn_blocking(move || d.load_tpch("lineitem", 0.01, &|_, _| {}))
        .await
        .unwrap()
        .unwrap();
    assert!(rows > 50_000);
    let mut c = dev.client().await;

    // Full transfer: the raw columns, nothing pushed down.
    let mut full = Plan::scan("lineitem");
    full.projection = [
        "l_shipdate",
        "l_discount",
        "l_quantity",
        "l_extendedprice",
        "l_tax",
        "l_returnflag",
        "l_linestatus",
    ]
    .into_iter()
    .map(|c| Projection::Column(c.to_string()))
    .collect();
    let data = c.query(&full).await.unwrap();
    assert_eq!(data.num_rows() as u64, rows);

    // Q6 on the host: decimals as unscaled i128 (scale 2 each, product scale 4).
    let mut want_q6: i128 = 0;
    for b in &data.batches {
        let ship = col(b, "l_shipdate").as_primitive::<Date32Type>();
        let disc = col(b, "l_discount").as_primitive::<Decimal128Type>();
        let qty = col(b, "l_quantity").as_primitive::<Decimal128Type>();
        let price = col(b, "l_extendedprice").as_primitive::<Decimal128Type>();
        for i in 0..b.num_rows() {
            let (s, d, q) = (ship.value(i), disc.value(i), qty.value(i));
            if (SHIP_1994..SHIP_1995).contains(&s) && (5..=7).contains(&d) && q < 2400 {
                want_q6 += price.value(i) * d;
            }
        }
    }
    let q6 = Query::table("lineitem")
        .filter("l_shipdate >= DATE '1994-01-01' AND l_shipdate < DATE '1995-01-01' AND l_discount BETWEEN 0.05 AND 0.07 AND l_quantity < 24")
        .unwrap()
        .aggregate(AggFunc::Sum, Some("l_extendedprice * l_discount"), "revenue")
        .unwrap()
        .backend(BackendKind::Wasm)
        .build();
    let r = c.query(&q6).await.unwrap();
    assert_eq!(r.stats.placement, "filter=wasm aggregate=wasm exprs=wasm");
    let b = r.concat().unwrap();
    assert_eq!(b.num_rows(), 1);
    let revenue = b.column(0).as_primitive::<Decimal128Type>();
    assert_eq!(revenue.value(0), want_q6);
    assert!(r.stats.bytes_sent < 2048, "{:?}", r.stats);
    // The call's time on the device (receipt to last byte) contains the executor's.
    assert!(
        r.stats.call_us >= r.stats.total_us && r.stats.total_us > 0,
        "{:?}",
        r.stats
    );
    assert!(data.stats.bytes_sent > 100 * r.stats.bytes_sent);

    // Q1 on the host.
    type Acc = (i128, i128, i128, i128, i64); // qty, price, disc_price (scale 4), tax-ed (scale 6), count
    let mut want_q1: BTreeMap<(String, String), Acc> = BTreeMap::new();
    for b in &data.batches {
        let ship = col(b, "l_shipdate").as_primitive::<Date32Type>();
        let disc = col(b, "l_discount").as_primitive::<Decimal128Type>();
        let qty = col(b, "l_quantity").as_primitive::<Decimal128Type>();
        let price = col(b, "l_extendedprice").as_primitive::<Decimal128Type>();
        let tax = col(b, "l_tax").as_primitive::<Decimal128Type>();
        let rf = strings(col(b, "l_returnflag"));
        let ls = strings(col(b, "l_linestatus"));
        for i in 0..b.num_rows() {
            if ship.value(i) > Q1_CUTOFF {
                continue;
            }
            let e = want_q1.entry((rf[i].clone(), ls[i].clone())).or_default();
            let disc_price = price.value(i) * (100 - disc.value(i));
            e.0 += qty.value(i);
            e.1 += price.value(i);
            e.2 += disc_price;
            e.3 += disc_price * (100 + tax.value(i));
            e.4 += 1;
        }
    }
    let q1 = Query::table("lineitem")
        .filter("l_shipdate <= DATE '1998-09-02'")
        .unwrap()
        .group_by(["l_returnflag", "l_linestatus"])
        .aggregate(AggFunc::Sum, Some("l_quantity"), "sum_qty")
        .unwrap()
        .aggregate(AggFunc::Sum, Some("l_extendedprice"), "sum_base_price")
        .unwrap()
        .aggregate(
            AggFunc::Sum,
            Some("l_extendedprice * (1 - l_discount)"),
            "sum_disc_price",
        )
        .unwrap()
        .aggregate(
            AggFunc::Sum,
            Some("l_extendedprice * (1 - l_discount) * (1 + l_tax)"),
            "sum_charge",
        )
        .unwrap()
        .aggregate(AggFunc::Avg, Some("l_quantity"), "avg_qty")
        .unwrap()
        .aggregate(AggFunc::CountStar, None, "count_order")
        .unwrap()
        .order_by("l_returnflag", false)
        .order_by("l_linestatus", false)
        .backend(BackendKind::Wasm)
        .build();
    let r = c.query(&q1).await.unwrap();
    assert_eq!(r.stats.placement, "filter=wasm aggregate=wasm exprs=wasm");
    let b = r.concat().unwrap();
    assert_eq!(b.num_rows(), want_q1.len());
    let rf = strings(col(&b, "l_returnflag"));
    let ls = strings(col(&b, "l_linestatus"));
    // Device decimals carry their own scale; the host sums are at scale 2, 2, 4 and 6.
    let dec_at = |name: &str, i: usize, host_scale: i8| -> i128 {
        let DataType::Decimal128(_, s) = col(&b, name).data_type() else {
            panic!("{name} is not a decimal");
        };
        let v = col(&b, name).as_primitive::<Decimal128Type>().value(i);
        assert!(*s >= host_scale, "{name} has scale {s}");
        let f = 10i128.pow((*s - host_scale) as u32);
        assert_eq!(v % f, 0, "{name} carries digits below scale {host_scale}");
        v / f
    };
    for (i, ((wrf, wls), acc)) in want_q1.iter().enumerate() {
        assert_eq!((&rf[i], &ls[i]), (wrf, wls));
        assert_eq!(dec_at("sum_qty", i, 2), acc.0);
        assert_eq!(dec_at("sum_base_price", i, 2), acc.1);
        assert_eq!(dec_at("sum_disc_price", i, 4), acc.2);
        assert_eq!(dec_at("sum_charge", i, 6), acc.3);
        assert_eq!(
            col(&b, "count_order").as_primitive::<Int64Type>().value(i),
            acc.4
        );
        let avg = col(&b, "avg_qty").as_primitive::<Float64Type>().value(i);
        let want_avg = acc.0 as f64 / 100.0 / acc.4 as f64;
        assert!(
            (avg - want_avg).abs() <= 1e-9 * want_avg,
            "{avg} vs {want_avg}"
        );
    }
    dev.stop().await;
}
