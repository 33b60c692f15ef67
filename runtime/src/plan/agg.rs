//! Bound aggregates: the aggregate function, its bound input and output name, the result
//! type, and the exact average both the native and the Wasm accumulators finish with.

use arrow::datatypes::DataType;
use nearstore_proto::AggFunc;

use super::expr::PhysExpr;
use crate::error::{Error, Result};

/// One bound aggregate.
#[derive(Debug, Clone)]
pub struct AggSpec {
    /// Function.
    pub func: AggFunc,
    /// Argument (absent for count(*)).
    pub input: Option<PhysExpr>,
    /// Output column.
    pub name: String,
}

impl AggSpec {
    /// Output type.
    pub fn output_type(&self) -> Result<DataType> {
        let input = self.input.as_ref().map(PhysExpr::data_type);
        Ok(match (self.func, input) {
            (AggFunc::Kernel, Some(t)) => t,
            (AggFunc::CountStar | AggFunc::Count, _) => DataType::Int64,
            (AggFunc::Avg, Some(t)) if is_summable(&t) => DataType::Float64,
            (AggFunc::Sum, Some(t)) if t.is_signed_integer() => DataType::Int64,
            (AggFunc::Sum, Some(t)) if t.is_unsigned_integer() => DataType::UInt64,
            (AggFunc::Sum, Some(t)) if t.is_floating() => DataType::Float64,
            (AggFunc::Sum, Some(DataType::Decimal128(p, s))) => {
                DataType::Decimal128((p + 10).min(38), s)
            }
            (AggFunc::Min | AggFunc::Max, Some(t)) => t,
            (f, t) => {
                return Err(Error::TypeMismatch(format!(
                    "{} cannot aggregate {}",
                    f.as_str(),
                    t.map(|t| t.to_string()).unwrap_or_else(|| "nothing".into())
                )));
            }
        })
    }
}

/// The average of `count` values whose exact unscaled sum is `sum` at `scale`. Both the
/// native and the Wasm accumulators finish averages here, so they agree to the bit.
pub fn avg_exact(sum: i128, scale: i8, count: i64) -> f64 {
    (sum as f64 / 10f64.powi(scale as i32)) / count as f64
}

fn is_summable(t: &DataType) -> bool {
    t.is_integer() || t.is_floating() || matches!(t, DataType::Decimal128(..))
}
