//! `histogram`: an aggregate kernel counting the values of a numeric column (argument 0:
//! float64, int64 or int32) in equal-width buckets over `[lo, hi)`, parameters
//! `lo,hi,buckets` (at most 256 buckets). Value `x` falls in bucket
//! `floor((x - lo) * buckets / (hi - lo))`; NULLs and values outside the range are not
//! counted. The result is a list of `buckets` counts per group.
//!
//! In SQL: `SELECT g, histogram(x, '0,100,10') FROM t GROUP BY g`.
// no_std in the device's sandbox; std on the host, where `cargo test` runs the tests.
#![cfg_attr(target_arch = "wasm32", no_std)]

use nearstore_kernel::abi::{status, types};
use nearstore_kernel::{
    AggOutput, BLOCK, Batch, GroupStates, Groups, KernelResult, get_i64, put_i64,
};

/// Most buckets.
pub const BUCKETS_MAX: usize = 256;
/// Per group: the bucket count (`i64`), then one `i64` count per bucket.
pub const STATE_SIZE: usize = 8 + 8 * BUCKETS_MAX;

nearstore_kernel::export_aggregate_kernel!(update, finish, STATE_SIZE);
// The manifest below must say the same.
const _: () = assert!(STATE_SIZE == 2056);
nearstore_kernel::manifest!(
    b"abi=1\nkind=aggregate\nname=histogram\noutput=list_int64\nstate_size=2056\nsignature=float64;params=lo,hi,buckets\n"
);

/// Parses `lo,hi,buckets`.
fn parse(params: &[u8]) -> KernelResult<(f64, f64, usize)> {
    let text = core::str::from_utf8(params).map_err(|_| status::BAD_INPUT)?;
    let mut parts = text.split(',').map(str::trim);
    let lo: f64 = parts
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or(status::BAD_INPUT)?;
    let hi: f64 = parts
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or(status::BAD_INPUT)?;
    let n: usize = parts
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or(status::BAD_INPUT)?;
    if parts.next().is_some() || !(lo < hi) || n == 0 || n > BUCKETS_MAX {
        return Err(status::BAD_INPUT);
    }
    Ok((lo, hi, n))
}

/// Counts one batch into its groups' histograms.
pub fn update(batch: &Batch, groups: Groups, states: &mut GroupStates) -> KernelResult {
    let (lo, hi, n) = parse(batch.params())?;
    let col = batch.column(0)?;
    // The column's values as f64, whatever its type (resolved once, not per row).
    let (f, i64s, i32s) = match col.type_code() {
        types::FLOAT64 => (col.f64s()?, &[][..], &[][..]),
        types::INT64 => (&[][..], col.i64s()?, &[][..]),
        types::INT32 => (&[][..], &[][..], col.i32s()?),
        _ => return Err(status::BAD_INPUT),
    };
    let value = |i: usize| -> f64 {
        match col.type_code() {
            types::FLOAT64 => f[i],
            types::INT64 => i64s[i] as f64,
            _ => i32s[i] as f64,
        }
    };
    for base in (0..batch.rows()).step_by(BLOCK) {
        let valid = col.validity_block(base);
        let end = (base + BLOCK).min(batch.rows());
        for i in base..end {
            let state = states.get(groups.of(i))?;
            put_i64(state, 0, n as i64);
            let x = value(i);
            if valid >> (i - base) & 1 == 0 || !(x >= lo && x < hi) {
                continue;
            }
            let b = (((x - lo) * n as f64 / (hi - lo)) as usize).min(n - 1);
            let at = 8 + 8 * b;
            put_i64(state, at, get_i64(state, at) + 1);
        }
    }
    Ok(())
}

/// One group's counts (an empty list for a group no row reached).
pub fn finish(state: &[u8], out: &mut AggOutput) -> KernelResult {
    let n = get_i64(state, 0) as usize;
    if n > BUCKETS_MAX {
        return Err(status::BAD_INPUT);
    }
    for b in 0..n {
        out.push_i64(get_i64(state, 8 + 8 * b))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    extern crate alloc;
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;
    use nearstore_kernel::Column;

    #[test]
    fn counts_per_group_and_bucket() {
        let xs = [0.0f64, 9.9, 10.0, 55.5, 99.9, 100.0, -1.0, 42.0];
        let x: Vec<u8> = xs.iter().flat_map(|v| v.to_le_bytes()).collect();
        // Row 7 is NULL.
        let valid = [0b0111_1111u8];
        let batch = Batch::from_parts(
            8,
            vec![Column::from_parts(
                types::FLOAT64,
                0,
                &x,
                Some(&valid),
                None,
                8,
            )],
            b"0,100,10",
        );
        let ids = [0i32, 0, 0, 1, 1, 1, 0, 1];
        let mut bytes = vec![0u8; 2 * STATE_SIZE];
        let mut states = GroupStates::from_parts(&mut bytes, STATE_SIZE);
        update(&batch, Groups::from_parts(Some(&ids)), &mut states).unwrap();
        let mut buf = [0u64; 16];
        let mut out = AggOutput::from_parts(&mut buf);
        finish(&bytes[..STATE_SIZE], &mut out).unwrap();
        assert_eq!(out.values(), &[2, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        let mut out = AggOutput::from_parts(&mut buf);
        finish(&bytes[STATE_SIZE..], &mut out).unwrap();
        assert_eq!(out.values(), &[0, 0, 0, 0, 0, 1, 0, 0, 0, 1]);
        let mut small = [0u64; 4];
        let mut out = AggOutput::from_parts(&mut small);
        assert_eq!(
            finish(&bytes[..STATE_SIZE], &mut out),
            Err(status::OUTPUT_TOO_SMALL)
        );
        assert_eq!(parse(b"5,1,10"), Err(status::BAD_INPUT));
    }
}
