//! `grep`: keeps the rows whose string column (argument 0) contains the parameter bytes, as
//! SQL's `col LIKE '%needle%'` does (NULL strings are not kept; an empty needle keeps every
//! non-NULL row).
//!
//! Call it with `{"kernel": {"name": "grep", "args": ["l_comment"], "params": "special"}}`, or
//! in SQL as `WHERE grep(l_comment, 'special')`.
// no_std in the device's sandbox; std on the host, where `cargo test` runs the tests.
#![cfg_attr(target_arch = "wasm32", no_std)]

use nearstore_kernel::abi::{status, types};
use nearstore_kernel::{BLOCK, Batch, KernelResult, Selection};

nearstore_kernel::export_filter!(grep);
nearstore_kernel::manifest!(b"abi=1\nkind=filter\nname=grep\nsignature=utf8;params=needle\n");

/// Whether `needle` occurs in `hay` (first-byte scan, then a compare).
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    if hay.len() < needle.len() {
        return false;
    }
    let last_start = hay.len() - needle.len();
    let mut i = 0;
    while i <= last_start {
        match hay[i..=last_start].iter().position(|&b| b == first) {
            None => return false,
            Some(p) => {
                let at = i + p;
                if &hay[at + 1..at + needle.len()] == rest {
                    return true;
                }
                i = at + 1;
            }
        }
    }
    false
}

/// The kernel: one 64-row block at a time, a mask of matching valid rows per block.
pub fn grep(batch: &Batch, sel: &mut Selection) -> KernelResult {
    let col = batch.column(0)?;
    if col.type_code() != types::UTF8 {
        return Err(status::BAD_INPUT);
    }
    let needle = batch.params();
    for base in (0..batch.rows()).step_by(BLOCK) {
        let valid = col.validity_block(base);
        let mut m = 0u64;
        let n = (batch.rows() - base).min(BLOCK);
        for j in 0..n {
            if valid >> j & 1 == 1 && contains(col.str_value(base + j), needle) {
                m |= 1 << j;
            }
        }
        sel.push_mask(base, m)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    extern crate alloc;
    extern crate std;
    use super::*;
    use alloc::vec::Vec;
    use nearstore_kernel::Column;

    fn utf8(values: &[&str]) -> (Vec<u8>, Vec<u8>) {
        let mut data = Vec::new();
        let mut offs = Vec::new();
        offs.extend_from_slice(&0i32.to_le_bytes());
        for v in values {
            data.extend_from_slice(v.as_bytes());
            offs.extend_from_slice(&(data.len() as i32).to_le_bytes());
        }
        (data, offs)
    }

    #[test]
    fn keeps_rows_containing_the_needle() {
        let words = [
            "special requests",
            "",
            "pending",
            "xspecialx",
            "spec",
            "special",
        ];
        let (data, offs) = utf8(&words);
        // Row 5 is NULL (its bit is clear).
        let validity = [0b0001_1111u8];
        let col = Column::from_parts(types::UTF8, 0, &data, Some(&validity), Some(&offs), 6);
        let batch = Batch::from_parts(6, alloc::vec![col], b"special");
        let mut out = [0u32; 6];
        let mut sel = Selection::new(&mut out);
        grep(&batch, &mut sel).unwrap();
        let n = sel.len();
        assert_eq!(&out[..n], &[0, 3]);
    }

    #[test]
    fn substring_search_matches_the_naive_one() {
        let hay = b"abababcabcabcd";
        for needle in [
            &b""[..],
            b"a",
            b"abc",
            b"abcd",
            b"bcd",
            b"dd",
            b"cabcab",
            b"abababcabcabcd",
        ] {
            let naive = needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle);
            assert_eq!(contains(hay, needle), naive, "{needle:?}");
        }
    }
}
