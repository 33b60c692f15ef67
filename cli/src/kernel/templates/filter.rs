//! `{name}`: a Nearstore filter kernel. It keeps the rows whose first argument (an int64
//! column) is greater than the number given as the parameter.
//!
//! Build: `nearstore kernel build`; try it: `nearstore kernel test target/wasm32-unknown-unknown/
//! release/{lib}.wasm --file data.parquet --args my_column --params 42`.
// no_std in the device's sandbox; std on the host, where `cargo test` runs the tests.
#![cfg_attr(target_arch = "wasm32", no_std)]

use nearstore_kernel::abi::status;
use nearstore_kernel::{BLOCK, Batch, KernelResult, Selection, mask_block};

nearstore_kernel::export_filter!({lib});
nearstore_kernel::manifest!(b"abi=1\nkind=filter\nname={name}\nsignature=int64;params=threshold\n");

/// The kernel: one 64-row block at a time, a mask of the rows to keep.
pub fn {lib}(batch: &Batch, sel: &mut Selection) -> KernelResult {
    let text = core::str::from_utf8(batch.params()).map_err(|_| status::BAD_INPUT)?;
    let threshold: i64 = text.trim().parse().map_err(|_| status::BAD_INPUT)?;
    let col = batch.column(0)?;
    let values = col.i64s()?;
    for base in (0..batch.rows()).step_by(BLOCK) {
        let keep = mask_block(values, base, |v| v > threshold) & col.validity_block(base);
        sel.push_mask(base, keep)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nearstore_kernel::Column;
    use nearstore_kernel::abi::types;

    #[test]
    fn keeps_values_above_the_threshold() {
        let values: Vec<u8> = [5i64, 50, 42, 43].iter().flat_map(|v| v.to_le_bytes()).collect();
        let col = Column::from_parts(types::INT64, 0, &values, None, None, 4);
        let batch = Batch::from_parts(4, vec![col], b"42");
        let mut out = [0u32; 4];
        let mut sel = Selection::new(&mut out);
        {lib}(&batch, &mut sel).unwrap();
        let n = sel.len();
        assert_eq!(&out[..n], &[1, 3]);
    }
}
