//! TPC-H data for the embedded default and for tests, generated with `tpchgen-arrow`.

use arrow::record_batch::RecordBatch;
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator,
    PartSuppGenerator, RegionGenerator, SupplierGenerator,
};
use tpchgen_arrow::{
    CustomerArrow, LineItemArrow, NationArrow, OrderArrow, PartArrow, PartSuppArrow, RegionArrow,
    SupplierArrow,
};

use crate::error::{Error, Result};

/// The eight TPC-H tables.
pub const TPCH_TABLES: [&str; 8] = [
    "lineitem", "orders", "customer", "part", "partsupp", "supplier", "nation", "region",
];

/// Rows per generated batch.
const GEN_BATCH_ROWS: usize = 64 * 1024;

/// Approximate row count of `table` at `scale` (exact for all but lineitem), for progress.
pub fn approx_rows(table: &str, scale: f64) -> u64 {
    let per_sf = match table {
        "lineitem" => 6_001_215.0,
        "orders" => 1_500_000.0,
        "customer" => 150_000.0,
        "part" => 200_000.0,
        "partsupp" => 800_000.0,
        "supplier" => 10_000.0,
        "nation" => return 25,
        "region" => return 5,
        _ => 0.0,
    };
    (per_sf * scale).ceil() as u64
}

/// Batches of one TPC-H table at `scale`.
pub fn tpch_batches(
    table: &str,
    scale: f64,
) -> Result<Box<dyn Iterator<Item = Result<RecordBatch>> + Send>> {
    tpch_part_batches(table, scale, (1, 1))
}

/// Batches of part `part.0` (1-based) of `part.1` of one TPC-H table at `scale`: the
/// generator's own partitioning, so the parts together are the whole table (a table dealt
/// over several devices).
pub fn tpch_part_batches(
    table: &str,
    scale: f64,
    part: (usize, usize),
) -> Result<Box<dyn Iterator<Item = Result<RecordBatch>> + Send>> {
    if !(scale > 0.0 && scale <= 1000.0) {
        return Err(Error::InvalidUpload(format!(
            "TPC-H scale factor {scale} is outside (0, 1000]"
        )));
    }
    let (p, n) = part;
    if !(1 <= p && p <= n && n <= 1024) {
        return Err(Error::InvalidUpload(format!(
            "TPC-H part {p} of {n}: expected 1 <= part <= parts <= 1024"
        )));
    }
    let (p, n) = (p as i32, n as i32);
    fn boxed<I>(it: I) -> Box<dyn Iterator<Item = Result<RecordBatch>> + Send>
    where
        I: Iterator<Item = std::result::Result<RecordBatch, arrow::error::ArrowError>>
            + Send
            + 'static,
    {
        Box::new(it.map(|r| r.map_err(Error::from)))
    }
    let b = GEN_BATCH_ROWS;
    Ok(match table {
        "lineitem" => {
            boxed(LineItemArrow::new(LineItemGenerator::new(scale, p, n)).with_batch_size(b))
        }
        "orders" => boxed(OrderArrow::new(OrderGenerator::new(scale, p, n)).with_batch_size(b)),
        "customer" => {
            boxed(CustomerArrow::new(CustomerGenerator::new(scale, p, n)).with_batch_size(b))
        }
        "part" => boxed(PartArrow::new(PartGenerator::new(scale, p, n)).with_batch_size(b)),
        "partsupp" => {
            boxed(PartSuppArrow::new(PartSuppGenerator::new(scale, p, n)).with_batch_size(b))
        }
        "supplier" => {
            boxed(SupplierArrow::new(SupplierGenerator::new(scale, p, n)).with_batch_size(b))
        }
        "nation" => boxed(NationArrow::new(NationGenerator::new(scale, p, n)).with_batch_size(b)),
        "region" => boxed(RegionArrow::new(RegionGenerator::new(scale, p, n)).with_batch_size(b)),
        other => {
            return Err(Error::InvalidUpload(format!(
                "unknown TPC-H table '{other}' (expected one of {})",
                TPCH_TABLES.join(", ")
            )));
        }
    })
}
