//! `{name}`: a Nearstore aggregate kernel. Per group, the sum of the squares of its first
//! argument (a float64 column); NULLs are skipped, and a group with no value is NULL.
//!
//! Build: `nearstore kernel build`; try it: `nearstore kernel test target/wasm32-unknown-unknown/
//! release/{lib}.wasm --file data.parquet --args my_column`; in SQL:
//! `SELECT g, {lib}(my_column) FROM t GROUP BY g`.
// no_std in the device's sandbox; std on the host, where `cargo test` runs the tests.
#![cfg_attr(target_arch = "wasm32", no_std)]

use nearstore_kernel::{
    AggOutput, BLOCK, Batch, GroupStates, Groups, KernelResult, get_f64, get_i64, put_f64,
    put_i64,
};

/// Per group: the sum (`f64`) at 0, the count of values (`i64`) at 8.
pub const STATE_SIZE: usize = 16;

nearstore_kernel::export_aggregate_kernel!(update, finish, STATE_SIZE);
// The manifest's state_size must say the same.
nearstore_kernel::manifest!(
    b"abi=1\nkind=aggregate\nname={name}\noutput=float64\nstate_size=16\nsignature=float64\n"
);

/// Adds one batch's squares to their groups' sums.
pub fn update(batch: &Batch, groups: Groups, states: &mut GroupStates) -> KernelResult {
    let col = batch.column(0)?;
    let values = col.f64s()?;
    for base in (0..batch.rows()).step_by(BLOCK) {
        let valid = col.validity_block(base);
        let end = (base + BLOCK).min(batch.rows());
        for i in base..end {
            if valid >> (i - base) & 1 == 1 {
                let state = states.get(groups.of(i))?;
                put_f64(state, 0, get_f64(state, 0) + values[i] * values[i]);
                put_i64(state, 8, get_i64(state, 8) + 1);
            }
        }
    }
    Ok(())
}

/// One group's sum, or nothing (NULL) when no value reached it.
pub fn finish(state: &[u8], out: &mut AggOutput) -> KernelResult {
    if get_i64(state, 8) > 0 {
        out.push_f64(get_f64(state, 0))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nearstore_kernel::Column;
    use nearstore_kernel::abi::types;

    #[test]
    fn sums_squares_per_group() {
        let values: Vec<u8> = [1.0f64, 2.0, 3.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let col = Column::from_parts(types::FLOAT64, 0, &values, None, None, 3);
        let batch = Batch::from_parts(3, vec![col], b"");
        let ids = [0i32, 0, 1];
        let mut bytes = vec![0u8; 3 * STATE_SIZE];
        let mut states = GroupStates::from_parts(&mut bytes, STATE_SIZE);
        update(&batch, Groups::from_parts(Some(&ids)), &mut states).unwrap();
        let mut buf = [0u64; 1];
        let mut out = AggOutput::from_parts(&mut buf);
        finish(&bytes[..STATE_SIZE], &mut out).unwrap();
        assert_eq!(f64::from_bits(out.values()[0]), 5.0);
        let mut out = AggOutput::from_parts(&mut buf);
        finish(&bytes[2 * STATE_SIZE..], &mut out).unwrap();
        assert!(out.is_empty(), "group 2 had no row");
    }
}
