//! `score`: a map kernel computing `wx * x + wy * y` for float columns x (argument 0) and y
//! (argument 1) with the weights given as parameters `wx,wy`, as SQL's `wx * x + wy * y` does
//! (NULL when either input is NULL).
//!
//! In SQL: `SELECT id, score(x, y, '0.5,2') FROM pts`, or in a filter:
//! `WHERE score(x, y, '1,1') > 10`.
// no_std in the device's sandbox; std on the host, where `cargo test` runs the tests.
#![cfg_attr(target_arch = "wasm32", no_std)]

use nearstore_kernel::abi::status;
use nearstore_kernel::{BLOCK, Batch, KernelResult, MapOutput};

nearstore_kernel::export_map!(score);
nearstore_kernel::manifest!(
    b"abi=1\nkind=map\nname=score\noutput=float64\nsignature=float64,float64;params=wx,wy\n"
);

/// Parses `wx,wy`.
fn parse_weights(params: &[u8]) -> KernelResult<(f64, f64)> {
    let text = core::str::from_utf8(params).map_err(|_| status::BAD_INPUT)?;
    let (a, b) = text.split_once(',').ok_or(status::BAD_INPUT)?;
    let parse = |s: &str| s.trim().parse::<f64>().map_err(|_| status::BAD_INPUT);
    Ok((parse(a)?, parse(b)?))
}

/// The kernel: a straight loop per 64-row block (vectorised with simd128), then the block's
/// validity.
pub fn score(batch: &Batch, out: &mut MapOutput) -> KernelResult {
    let (wx, wy) = parse_weights(batch.params())?;
    let (xc, yc) = (batch.column(0)?, batch.column(1)?);
    let (xs, ys) = (xc.f64s()?, yc.f64s()?);
    for base in (0..batch.rows()).step_by(BLOCK) {
        let end = (base + BLOCK).min(batch.rows());
        for i in base..end {
            out.set_f64(i, wx * xs[i] + wy * ys[i]);
        }
        out.keep_valid(base, xc.validity_block(base) & yc.validity_block(base));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    extern crate alloc;
    use super::*;
    use alloc::vec::Vec;
    use nearstore_kernel::Column;
    use nearstore_kernel::abi::types;

    #[test]
    fn weighted_sum_with_nulls() {
        let x: Vec<u8> = [1.0f64, 2.0, 3.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let y: Vec<u8> = [10.0f64, 20.0, 30.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let valid_y = [0b101u8];
        let batch = Batch::from_parts(
            3,
            alloc::vec![
                Column::from_parts(types::FLOAT64, 0, &x, None, None, 3),
                Column::from_parts(types::FLOAT64, 0, &y, Some(&valid_y), None, 3),
            ],
            b"0.5, 2",
        );
        let (mut values, mut validity) = ([0u64; 3], [0u64; 1]);
        let mut out = MapOutput::from_parts(&mut values, &mut validity, 3);
        score(&batch, &mut out).unwrap();
        assert_eq!(f64::from_bits(out.raw(0)), 20.5);
        assert!(!out.is_valid(1));
        assert_eq!(f64::from_bits(out.raw(2)), 61.5);
        assert_eq!(
            score(&Batch::from_parts(0, Vec::new(), b"x"), &mut out),
            Err(status::BAD_INPUT)
        );
    }
}
