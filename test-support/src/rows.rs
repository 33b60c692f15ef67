//! Result rows as text, for comparing answers in the tests and the benches.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type};

/// Result rows as text in their order, floats to `digits` significant digits (as `1.2345e4`;
/// 17 digits keep every `f64` exactly), other cells as Arrow displays them.
pub fn rows_with_digits(batches: &[RecordBatch], digits: usize) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        for i in 0..b.num_rows() {
            let cells: Vec<String> = b
                .columns()
                .iter()
                .map(|c| match c.data_type() {
                    DataType::Float64 if c.is_valid(i) => {
                        let v = c.as_primitive::<Float64Type>().value(i);
                        format!("{v:.*e}", digits - 1)
                    }
                    _ => arrow::util::display::array_value_to_string(c, i).unwrap(),
                })
                .collect();
            out.push(cells.join("|"));
        }
    }
    out
}
