//! The example kernels' generated table: ids, strings of words, points with NULLs, 5 groups.
//! The example-kernel tests (`tests/all/kernel_dev.rs`, `kernel_langs.rs`) use its first
//! 20 000 rows; the benches (`examples`, `kernel_langs`) as many as they are asked for.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};

/// Rows `from..to` of the generated table: ids, strings of words, points, 5 groups.
pub fn example_rows(from: usize, to: usize) -> RecordBatch {
    let words = ["ab", "cd", "abc", "special", "requests", "x", ""];
    let mut x = 0x2545_F491_4F6C_DD1Du64 ^ from as u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut s, mut px, mut py) = (Vec::new(), Vec::new(), Vec::new());
    for i in from..to {
        let k = 1 + (next() % 4) as usize;
        let text: Vec<&str> = (0..k).map(|_| words[(next() % 7) as usize]).collect();
        s.push((i % 11 != 5).then(|| text.join(" ")));
        px.push((i % 13 != 7).then(|| (next() % 2000) as f64 / 10.0 - 100.0));
        py.push(Some((next() % 2000) as f64 / 10.0 - 100.0));
    }
    RecordBatch::try_from_iter(vec![
        (
            "id",
            Arc::new(Int64Array::from_iter_values(from as i64..to as i64)) as ArrayRef,
        ),
        ("s", Arc::new(StringArray::from(s)) as ArrayRef),
        ("x", Arc::new(Float64Array::from(px)) as ArrayRef),
        ("y", Arc::new(Float64Array::from(py)) as ArrayRef),
        (
            "g",
            Arc::new(Int64Array::from_iter_values(
                (from as i64..to as i64).map(|i| i % 5),
            )) as ArrayRef,
        ),
    ])
    .unwrap()
}
