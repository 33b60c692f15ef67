//! The aggregate program (see `nearstore_kernel_abi::agg`) and its state: the program for a
//! query's aggregates, and the per-group slots a kernel or device accumulates — checked,
//! merged and turned into result arrays.
//!
//! Aggregates (count, sum, min, max, avg over int32/int64/date32/float64/decimal inputs)
//! accumulate in the built-in kernel's `nearstore_agg_update` (or the FPGA's aggregate engine)
//! into `agg::SLOT_BYTES` per group and aggregate; the host computes group ids (Arrow row
//! format + hash map) and reads the state back at the end, checking every count against the
//! rows it gave ([`check_counts`], [`finish_state`]).

use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use nearstore_kernel_abi::agg;
use nearstore_proto::AggFunc;

use super::columns::OwnedColumn;
use super::expr::expr_program_with;
use crate::compute::AggInput;
use crate::error::{Error, Result};
use crate::plan::{AggSpec, PhysExpr};

/// The aggregate program (see `nearstore_kernel_abi::agg`) for `aggs` and the columns it
/// reads in the kernel ABI's layout (column 0 is left for the groups): each array input, and
/// each column of `batch` a computed input's expression program reads.
pub(crate) fn marshal_aggregate(
    aggs: &[AggSpec],
    inputs: &[Option<AggInput<'_>>],
    batch: &RecordBatch,
) -> Result<(Vec<u8>, Vec<OwnedColumn>)> {
    let n = u16::try_from(aggs.len())
        .map_err(|_| Error::Unsupported(format!("{} aggregates in one query", aggs.len())))?;
    let mut params = Vec::with_capacity(2 + aggs.len() * 4);
    params.extend(n.to_le_bytes());
    let mut owned = Vec::new();
    // The arrays staged so far, by position: an input shared by several aggregates (an
    // average's sum and count, `sum(x)` beside `avg(x)`: TPC-H Q1 reads `l_quantity` three
    // times), or read by a computed input as well, is laid out and copied into the kernel once.
    let mut staged: Vec<ArrayRef> = Vec::new();
    let mut stage = |arr: &ArrayRef| -> u16 {
        match staged.iter().position(|s| Arc::ptr_eq(s, arr)) {
            Some(k) => k as u16 + 1,
            None => {
                owned.push(OwnedColumn::of(arr));
                staged.push(arr.clone());
                owned.len() as u16
            }
        }
    };
    // The computed inputs' programs, each once.
    let mut programs: Vec<Vec<u8>> = Vec::new();
    for (a, input) in aggs.iter().zip(inputs) {
        let func = match a.func {
            AggFunc::CountStar => agg::COUNT_STAR,
            AggFunc::Count => agg::COUNT,
            AggFunc::Sum | AggFunc::Avg => agg::SUM,
            AggFunc::Min => agg::MIN,
            AggFunc::Max => agg::MAX,
            AggFunc::Kernel => {
                return Err(Error::Internal(
                    "aggregate kernels do not run in the built-in kernel".into(),
                ));
            }
        };
        let (at, kind) = match input {
            Some(AggInput::Array(arr)) => (stage(arr), agg::INPUT_COLUMN),
            Some(AggInput::Computed(e)) => {
                let program = expr_program_with(e, &mut |name| {
                    Some(stage(batch.column_by_name(name)?).to_le_bytes())
                })
                .ok_or_else(|| {
                    Error::Internal("a computed aggregate input the kernel cannot evaluate".into())
                })?;
                let k = match programs.iter().position(|p| *p == program) {
                    Some(k) => k,
                    None => {
                        programs.push(program);
                        programs.len() - 1
                    }
                };
                (k as u16, agg::INPUT_COMPUTED)
            }
            None => (agg::NO_COLUMN, agg::INPUT_COLUMN),
        };
        params.push(func);
        params.extend(at.to_le_bytes());
        params.push(kind);
    }
    for p in programs {
        params.extend((p.len() as u32).to_le_bytes());
        params.extend(p);
    }
    Ok((params, owned))
}

/// Checks that every count in a kernel's aggregate slots lies within the `rows` it was given.
pub(crate) fn check_counts(state: &[u8], rows: u64, kernel: &str) -> Result<()> {
    for slot in state.chunks_exact(agg::SLOT_BYTES) {
        let count = i64::from_le_bytes(slot[16..24].try_into().expect("8 bytes"));
        if count < 0 || count as u64 > rows {
            return Err(bad_output(
                kernel,
                format!("count {count} exceeds the {rows} rows given"),
            ));
        }
    }
    Ok(())
}

/// Adds the aggregate slots `src` into `dst` (both `groups × aggs` slots): counts and sums add
/// up (float sums as floats), minima and maxima keep the better of the two.
pub(crate) fn merge_state(aggs: &[AggSpec], dst: &mut [u8], src: &[u8]) -> Result<()> {
    let naggs = aggs.len();
    if dst.len() != src.len() || naggs == 0 || !dst.len().is_multiple_of(naggs * agg::SLOT_BYTES) {
        return Err(Error::Internal(
            "aggregate states of different shapes".into(),
        ));
    }
    let float: Vec<bool> = aggs
        .iter()
        .map(|a| a.input.as_ref().map(PhysExpr::data_type) == Some(DataType::Float64))
        .collect();
    for (i, (d, s)) in dst
        .chunks_exact_mut(agg::SLOT_BYTES)
        .zip(src.chunks_exact(agg::SLOT_BYTES))
        .enumerate()
    {
        let a = &aggs[i % naggs];
        let read = |b: &[u8]| {
            (
                i128::from_le_bytes(b[..16].try_into().expect("16 bytes")),
                i64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
            )
        };
        let ((da, dc), (sa, sc)) = (read(d), read(s));
        if dc < 0 || sc < 0 {
            return Err(Error::Internal(format!(
                "aggregate {} has a negative count to merge",
                a.name
            )));
        }
        if sc == 0 {
            continue;
        }
        let count = dc
            .checked_add(sc)
            .ok_or_else(|| Error::Internal(format!("aggregate {} count overflowed", a.name)))?;
        let acc = match a.func {
            AggFunc::Sum | AggFunc::Avg if float[i % naggs] => {
                let sum = f64::from_bits(da as u64) + f64::from_bits(sa as u64);
                sum.to_bits() as i128
            }
            AggFunc::Sum | AggFunc::Avg => da
                .checked_add(sa)
                .ok_or_else(|| Error::TypeMismatch(format!("aggregate {} overflowed", a.name)))?,
            AggFunc::Min if dc == 0 || sa < da => sa,
            AggFunc::Max if dc == 0 || sa > da => sa,
            _ => da,
        };
        d[..16].copy_from_slice(&acc.to_le_bytes());
        d[16..24].copy_from_slice(&count.to_le_bytes());
    }
    Ok(())
}

/// Turns a kernel's aggregate state into result arrays, checking what can be checked: every
/// count lies within the rows given to the kernel, and sums fit their result types.
pub fn finish_state(
    aggs: &[AggSpec],
    state: &[u8],
    n_groups: usize,
    rows_seen: u64,
    kernel: &str,
) -> Result<Vec<ArrayRef>> {
    use arrow::array::{Decimal128Array, Float64Array, Int64Array};
    let bad = |detail: String| bad_output(kernel, detail);
    let naggs = aggs.len();
    if state.len() != n_groups * naggs * agg::SLOT_BYTES {
        return Err(bad("aggregate state has the wrong size".into()));
    }
    let slot = |g: usize, j: usize| -> (i128, i64) {
        let at = (g * naggs + j) * agg::SLOT_BYTES;
        let acc = i128::from_le_bytes(state[at..at + 16].try_into().expect("16 bytes"));
        let count = i64::from_le_bytes(state[at + 16..at + 24].try_into().expect("8 bytes"));
        (acc, count)
    };
    let f64_of = |acc: i128| f64::from_bits(acc as u64);
    let mut out = Vec::with_capacity(naggs);
    for (j, a) in aggs.iter().enumerate() {
        let mut accs = Vec::with_capacity(n_groups);
        for g in 0..n_groups {
            let (acc, count) = slot(g, j);
            if count < 0 || count as u64 > rows_seen {
                return Err(bad(format!(
                    "count {count} for {} exceeds the {rows_seen} rows given",
                    a.name
                )));
            }
            accs.push((acc, count));
        }
        let out_type = a.output_type()?;
        let in_type = a.input.as_ref().map(PhysExpr::data_type);
        let present = |c: i64| c > 0;
        let arr: ArrayRef = match (a.func, in_type.as_ref()) {
            (AggFunc::CountStar | AggFunc::Count, _) => Arc::new(Int64Array::from(
                accs.iter().map(|(_, c)| *c).collect::<Vec<_>>(),
            )),
            (AggFunc::Avg, Some(DataType::Float64)) => Arc::new(
                accs.iter()
                    .map(|(s, c)| present(*c).then(|| f64_of(*s) / *c as f64))
                    .collect::<Float64Array>(),
            ),
            (AggFunc::Avg, Some(t)) => {
                let scale = if let DataType::Decimal128(_, s) = t {
                    *s
                } else {
                    0
                };
                Arc::new(
                    accs.iter()
                        .map(|(s, c)| present(*c).then(|| crate::plan::avg_exact(*s, scale, *c)))
                        .collect::<Float64Array>(),
                )
            }
            (AggFunc::Sum, Some(DataType::Float64)) => Arc::new(
                accs.iter()
                    .map(|(s, c)| present(*c).then(|| f64_of(*s)))
                    .collect::<Float64Array>(),
            ),
            (AggFunc::Sum, Some(DataType::Decimal128(..))) => {
                let DataType::Decimal128(p, s) = out_type else {
                    return Err(Error::Internal("decimal sum without decimal type".into()));
                };
                let arr = accs
                    .iter()
                    .map(|(v, c)| present(*c).then_some(*v))
                    .collect::<Decimal128Array>()
                    .with_precision_and_scale(p, s)?;
                arr.validate_decimal_precision(p)
                    .map_err(|_| Error::TypeMismatch(format!("aggregate {} overflowed", a.name)))?;
                Arc::new(arr)
            }
            (AggFunc::Sum, Some(_)) => Arc::new(
                accs.iter()
                    .map(|(v, c)| {
                        present(*c)
                            .then(|| {
                                i64::try_from(*v).map_err(|_| {
                                    Error::TypeMismatch(format!("aggregate {} overflowed", a.name))
                                })
                            })
                            .transpose()
                    })
                    .collect::<Result<Int64Array>>()?,
            ),
            (AggFunc::Min | AggFunc::Max, Some(t)) => {
                min_max(t, accs.iter().map(|(v, c)| present(*c).then_some(*v)), &bad)?
            }
            (f, t) => {
                return Err(Error::Internal(format!(
                    "{} of {t:?} placed on the Wasm backend",
                    f.as_str()
                )));
            }
        };
        out.push(arr);
    }
    Ok(out)
}

/// The minima or maxima of an input of type `t` from their accumulators (`None` where no row
/// reached the group; floats as total-order keys), each checked to fit `t`.
fn min_max(
    t: &DataType,
    vals: impl Iterator<Item = Option<i128>>,
    bad: &dyn Fn(String) -> Error,
) -> Result<ArrayRef> {
    use arrow::array::{Date32Array, Decimal128Array, Float64Array, Int32Array, Int64Array};
    let key_to_f64 = |k: i128| {
        let k = k as i64;
        f64::from_bits((k ^ ((((k >> 63) as u64) >> 1) as i64)) as u64)
    };
    Ok(match t {
        DataType::Float64 => Arc::new(vals.map(|v| v.map(key_to_f64)).collect::<Float64Array>()),
        DataType::Int64 => Arc::new(
            vals.map(|v| {
                v.map(|x| i64::try_from(x).map_err(|_| bad("min/max out of range".into())))
                    .transpose()
            })
            .collect::<Result<Int64Array>>()?,
        ),
        DataType::Int32 | DataType::Date32 => {
            let ints = vals
                .map(|v| {
                    v.map(|x| i32::try_from(x).map_err(|_| bad("min/max out of range".into())))
                        .transpose()
                })
                .collect::<Result<Vec<Option<i32>>>>()?;
            if *t == DataType::Date32 {
                Arc::new(Date32Array::from(ints))
            } else {
                Arc::new(Int32Array::from(ints))
            }
        }
        DataType::Decimal128(p, s) => {
            let arr = vals
                .collect::<Decimal128Array>()
                .with_precision_and_scale(*p, *s)?;
            arr.validate_decimal_precision(*p)
                .map_err(|_| bad("min/max out of the column's precision".into()))?;
            Arc::new(arr)
        }
        other => {
            return Err(Error::Internal(format!(
                "min/max of {other} placed on Wasm"
            )));
        }
    })
}

/// The error of a kernel output that fails a check (as the sandbox reports one).
fn bad_output(kernel: &str, detail: String) -> Error {
    Error::Kernel(format!("kernel {kernel} returned invalid output: {detail}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;

    #[test]
    fn an_input_several_aggregates_share_is_staged_once() {
        let spec = |func, col: Option<&str>| AggSpec {
            func,
            input: col.map(|c| PhysExpr::Column {
                name: c.into(),
                data_type: DataType::Int64,
            }),
            name: "a".into(),
        };
        let aggs = [
            spec(AggFunc::Sum, Some("x")),
            spec(AggFunc::CountStar, None),
            spec(AggFunc::Count, Some("x")),
            spec(AggFunc::Sum, Some("y")),
            spec(AggFunc::Max, Some("x")),
        ];
        let x: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
        // Equal values in another array: not the same input, staged on its own.
        let y: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
        let batch = RecordBatch::try_from_iter([("x", x.clone()), ("y", y.clone())]).unwrap();
        let inputs = [Some(x.clone()), None, Some(x.clone()), Some(y), Some(x)]
            .map(|i| i.map(AggInput::Array));
        let (params, owned) = marshal_aggregate(&aggs, &inputs, &batch).unwrap();
        assert_eq!(owned.len(), 2);
        let (entries, mut computed) = agg::split(&params).unwrap();
        assert!(computed.next().is_none());
        let cols: Vec<u16> = entries
            .chunks_exact(4)
            .map(|p| u16::from_le_bytes([p[1], p[2]]))
            .collect();
        assert_eq!(cols, [1, agg::NO_COLUMN, 1, 2, 1]);
    }

    #[test]
    fn a_computed_input_reads_staged_columns_and_is_programmed_once() {
        let col = |name: &str| PhysExpr::Column {
            name: name.into(),
            data_type: DataType::Int64,
        };
        let product = PhysExpr::Arith {
            op: nearstore_proto::ArithOp::Mul,
            left: Box::new(col("y")),
            right: Box::new(col("x")),
            data_type: DataType::Int64,
        };
        let spec = |func, input: Option<PhysExpr>| AggSpec {
            func,
            input,
            name: "a".into(),
        };
        let aggs = [
            spec(AggFunc::Sum, Some(col("x"))),
            spec(AggFunc::Sum, Some(product.clone())),
            spec(AggFunc::Avg, Some(product.clone())),
        ];
        let x: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
        let y: ArrayRef = Arc::new(Int64Array::from(vec![4, 5, 6]));
        let batch = RecordBatch::try_from_iter([("x", x.clone()), ("y", y)]).unwrap();
        let inputs = [
            Some(AggInput::Array(x)),
            Some(AggInput::Computed(&product)),
            Some(AggInput::Computed(&product)),
        ];
        let (params, owned) = marshal_aggregate(&aggs, &inputs, &batch).unwrap();
        // x (an array input, then read by the product) once, y once.
        assert_eq!(owned.len(), 2);
        let (entries, computed) = agg::split(&params).unwrap();
        let entries: Vec<(u16, u8)> = entries
            .chunks_exact(4)
            .map(|p| (u16::from_le_bytes([p[1], p[2]]), p[3]))
            .collect();
        assert_eq!(
            entries,
            [
                (1, agg::INPUT_COLUMN),
                (0, agg::INPUT_COMPUTED),
                (0, agg::INPUT_COMPUTED)
            ]
        );
        let computed: Vec<&[u8]> = computed.collect();
        assert_eq!(computed.len(), 1);
        // The program reads x as staged column 1 (the array input's) and y as column 2.
        let renumbered = super::super::expr::expr_program_with(&product, &mut |n| match n {
            "x" => Some(1u16.to_le_bytes()),
            "y" => Some(2u16.to_le_bytes()),
            _ => None,
        })
        .unwrap();
        assert_eq!(computed[0], renumbered.as_slice());
    }
}
