//! The layout of a pushed plan's output: how each output column comes from the device's
//! result (as it is, or an average finished on the host from a sum and a count).

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use datafusion::common::DataFusionError;

/// How one output column of a pushed aggregate comes from the device's result.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub(super) enum OutCol {
    /// Device column i as it is.
    Direct(usize),
    /// A float average from a device sum (of any numeric type) and count.
    FloatAvg { sum: usize, count: usize },
    /// DataFusion's decimal average from a device sum and count: `sum * 10^(scale - sum
    /// scale) / count`, truncated, as DataFusion's `DecimalAverager` computes it (with the
    /// sum scaled down instead when its scale exceeds the average's).
    DecimalAvg {
        sum: usize,
        count: usize,
        precision: u8,
        scale: i8,
    },
}

/// Builds the output columns of a pushed aggregate from the device's result.
pub(super) fn apply_layout(
    b: RecordBatch,
    layout: &[OutCol],
) -> datafusion::common::Result<RecordBatch> {
    use arrow::array::{Array, ArrayRef, AsArray, Decimal128Array};
    use arrow::datatypes::{DataType, Decimal128Type, Int64Type};
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(layout.len());
    for l in layout {
        match *l {
            OutCol::Direct(i) => cols.push(b.column(i).clone()),
            OutCol::FloatAvg { sum, count } => {
                let s = arrow::compute::cast(b.column(sum), &DataType::Float64)?;
                let s = s.as_primitive::<arrow::datatypes::Float64Type>();
                let c = b.column(count).as_primitive::<Int64Type>();
                let out: arrow::array::Float64Array = (0..b.num_rows())
                    .map(|r| {
                        (s.is_valid(r) && c.value(r) != 0).then(|| s.value(r) / c.value(r) as f64)
                    })
                    .collect();
                cols.push(Arc::new(out));
            }
            OutCol::DecimalAvg {
                sum,
                count,
                precision,
                scale,
            } => {
                let DataType::Decimal128(_, sum_scale) = b.column(sum).data_type() else {
                    return Err(DataFusionError::Internal(
                        "decimal avg over a non-decimal sum".into(),
                    ));
                };
                // The device's sum can have a larger scale than DataFusion's (it may widen
                // decimal operands), even larger than the average's: then the sum is scaled
                // down instead of up. Truncating twice, by 10^k and then by the count, is the
                // same as truncating once by their product, so the result is DataFusion's.
                let pow = |k: i8| {
                    10i128
                        .checked_pow(k as u32)
                        .ok_or_else(|| DataFusionError::Execution("avg scale out of range".into()))
                };
                let (up, down) = if scale >= *sum_scale {
                    (pow(scale - sum_scale)?, 1)
                } else {
                    (1, pow(sum_scale - scale)?)
                };
                let s = b.column(sum).as_primitive::<Decimal128Type>();
                let c = b.column(count).as_primitive::<Int64Type>();
                let out = (0..b.num_rows())
                    .map(|r| {
                        if s.is_null(r) || c.value(r) == 0 {
                            return Ok(None);
                        }
                        let v = s.value(r).checked_mul(up).ok_or_else(|| {
                            DataFusionError::Execution(
                                "Arithmetic Overflow in AvgAccumulator".into(),
                            )
                        })? / down;
                        Ok(Some(v / c.value(r) as i128))
                    })
                    .collect::<datafusion::common::Result<Decimal128Array>>()?
                    .with_precision_and_scale(precision, scale)?;
                cols.push(Arc::new(out));
            }
        }
    }
    let schema = Arc::new(arrow::datatypes::Schema::new(
        cols.iter()
            .enumerate()
            .map(|(i, c)| {
                arrow::datatypes::Field::new(format!("c{i}"), c.data_type().clone(), true)
            })
            .collect::<Vec<_>>(),
    ));
    Ok(RecordBatch::try_new(schema, cols)?)
}
