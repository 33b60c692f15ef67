//! `bbox`: keeps the rows whose point (x = argument 0, y = argument 1, both float64) lies in
//! the box given as parameters `xmin,ymin,xmax,ymax` (edges included), as SQL's
//! `x BETWEEN xmin AND xmax AND y BETWEEN ymin AND ymax` does. Rows with a NULL coordinate are
//! not kept.
// no_std in the device's sandbox; std on the host, where `cargo test` runs the tests.
#![cfg_attr(target_arch = "wasm32", no_std)]

use nearstore_kernel::abi::status;
use nearstore_kernel::{BLOCK, Batch, KernelResult, Selection, mask_block};

nearstore_kernel::export_filter!(bbox);
nearstore_kernel::manifest!(
    b"abi=1\nkind=filter\nname=bbox\nsignature=float64,float64;params=xmin,ymin,xmax,ymax\n"
);

/// Parses `xmin,ymin,xmax,ymax`.
fn parse_box(params: &[u8]) -> KernelResult<[f64; 4]> {
    let text = core::str::from_utf8(params).map_err(|_| status::BAD_INPUT)?;
    let mut out = [0f64; 4];
    let mut parts = text.split(',');
    for v in &mut out {
        *v = parts
            .next()
            .and_then(|p| p.trim().parse().ok())
            .ok_or(status::BAD_INPUT)?;
    }
    if parts.next().is_some() {
        return Err(status::BAD_INPUT);
    }
    Ok(out)
}

/// The kernel: per 64-row block, two range masks ANDed with both validity masks.
pub fn bbox(batch: &Batch, sel: &mut Selection) -> KernelResult {
    let [xmin, ymin, xmax, ymax] = parse_box(batch.params())?;
    let (xc, yc) = (batch.column(0)?, batch.column(1)?);
    let (xs, ys) = (xc.f64s()?, yc.f64s()?);
    for base in (0..batch.rows()).step_by(BLOCK) {
        let mx = mask_block(xs, base, |x| x >= xmin && x <= xmax);
        let my = mask_block(ys, base, |y| y >= ymin && y <= ymax);
        sel.push_mask(
            base,
            mx & my & xc.validity_block(base) & yc.validity_block(base),
        )?;
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

    fn bytes(v: &[f64]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn keeps_points_in_the_box_edges_included() {
        let x = bytes(&[0.0, 1.0, 2.0, 5.0, 1.5, -1.0, 1.0]);
        let y = bytes(&[0.0, 1.0, 2.0, 1.0, 3.0, 1.0, 1.0]);
        let yvalid = [0b0011_1111u8]; // row 6 has a NULL y
        let cols = alloc::vec![
            Column::from_parts(types::FLOAT64, 0, &x, None, None, 7),
            Column::from_parts(types::FLOAT64, 0, &y, Some(&yvalid), None, 7),
        ];
        let batch = Batch::from_parts(7, cols, b"0, 0, 2, 2");
        let mut out = [0u32; 7];
        let mut sel = Selection::new(&mut out);
        bbox(&batch, &mut sel).unwrap();
        let n = sel.len();
        assert_eq!(&out[..n], &[0, 1, 2]);
    }

    #[test]
    fn bad_parameters_are_refused() {
        for p in [&b""[..], b"1,2,3", b"1,2,3,4,5", b"a,b,c,d"] {
            assert_eq!(parse_box(p), Err(status::BAD_INPUT), "{p:?}");
        }
    }
}
