//! `{name}`: a Nearstore map kernel. One float64 value per row: its first argument (a float64
//! column) times the factor given as the parameter; NULL where the argument is NULL.
//!
//! Build: `nearstore kernel build`; try it: `nearstore kernel test target/wasm32-unknown-unknown/
//! release/{lib}.wasm --file data.parquet --args my_column --params 2.5`; in SQL:
//! `SELECT {lib}(my_column, '2.5') FROM t`.
// no_std in the device's sandbox; std on the host, where `cargo test` runs the tests.
#![cfg_attr(target_arch = "wasm32", no_std)]

use nearstore_kernel::abi::status;
use nearstore_kernel::{BLOCK, Batch, KernelResult, MapOutput};

nearstore_kernel::export_map!({lib});
nearstore_kernel::manifest!(
    b"abi=1\nkind=map\nname={name}\noutput=float64\nsignature=float64;params=factor\n"
);

/// The kernel: each row's value, then the rows whose argument is NULL made NULL, per block.
pub fn {lib}(batch: &Batch, out: &mut MapOutput) -> KernelResult {
    let text = core::str::from_utf8(batch.params()).map_err(|_| status::BAD_INPUT)?;
    let factor: f64 = text.trim().parse().map_err(|_| status::BAD_INPUT)?;
    let col = batch.column(0)?;
    let values = col.f64s()?;
    for base in (0..batch.rows()).step_by(BLOCK) {
        let end = (base + BLOCK).min(batch.rows());
        for (i, v) in values[base..end].iter().enumerate() {
            out.set_f64(base + i, v * factor);
        }
        out.keep_valid(base, col.validity_block(base));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nearstore_kernel::Column;
    use nearstore_kernel::abi::types;

    #[test]
    fn scales_valid_values() {
        let values: Vec<u8> = [1.5f64, -2.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let validity = [0b101u8]; // row 1 is NULL
        let col = Column::from_parts(types::FLOAT64, 0, &values, Some(&validity), None, 3);
        let batch = Batch::from_parts(3, vec![col], b"2");
        let (mut v, mut valid) = ([0u64; 3], [0u64; 1]);
        let mut out = MapOutput::from_parts(&mut v, &mut valid, 3);
        {lib}(&batch, &mut out).unwrap();
        assert_eq!(f64::from_bits(out.raw(0)), 3.0);
        assert!(!out.is_valid(1));
        assert_eq!(f64::from_bits(out.raw(2)), 8.0);
    }
}
