//! The output of a filter: selected rows pushed a block mask at a time, written as row
//! indices or as a bitmap.

use crate::abi::status;
use crate::{BLOCK, KernelResult};

/// The output of a filter: indices of selected rows, strictly increasing.
#[derive(Debug)]
pub struct Selection<'a> {
    out: Out<'a>,
    len: usize,
}

#[derive(Debug)]
enum Out<'a> {
    Indices(&'a mut [u32]),
    Bitmap(&'a mut [u64]),
}

impl<'a> Selection<'a> {
    /// A selection writing row indices into `out`.
    pub fn new(out: &'a mut [u32]) -> Self {
        Selection {
            out: Out::Indices(out),
            len: 0,
        }
    }

    /// A selection writing a bitmap into `words` (zeroed here).
    pub fn bitmap(words: &'a mut [u64]) -> Self {
        words.fill(0);
        Selection {
            out: Out::Bitmap(words),
            len: 0,
        }
    }

    /// Selected rows so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is selected.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Selects the rows `base + i` for each set bit `i` of `mask`. Blocks must come in order.
    #[inline]
    pub fn push_mask(&mut self, base: usize, mut mask: u64) -> KernelResult {
        let n = mask.count_ones() as usize;
        match &mut self.out {
            Out::Indices(out) => {
                if self.len + n > out.len() {
                    return Err(status::OUTPUT_TOO_SMALL);
                }
                while mask != 0 {
                    let i = mask.trailing_zeros() as usize;
                    out[self.len] = (base + i) as u32;
                    self.len += 1;
                    mask &= mask - 1;
                }
            }
            Out::Bitmap(words) => {
                if mask == 0 {
                    return Ok(());
                }
                let (w, shift) = (base / 64, base % 64);
                let spill = if shift == 0 { 0 } else { mask >> (64 - shift) };
                if w >= words.len() || (spill != 0 && w + 1 >= words.len()) {
                    return Err(status::OUTPUT_TOO_SMALL);
                }
                words[w] |= mask << shift;
                if spill != 0 {
                    words[w + 1] |= spill;
                }
                self.len += n;
            }
        }
        Ok(())
    }

    /// Selects the rows of consecutive blocks: `masks[i]` is the mask of the 64 rows from
    /// `base + 64 * i`, as [`Selection::push_mask`] takes it. A bitmap output from a row
    /// that starts one of its words takes them in one pass, a word each.
    pub fn push_masks(&mut self, base: usize, masks: &[u64]) -> KernelResult {
        if let Out::Bitmap(words) = &mut self.out
            && base.is_multiple_of(BLOCK)
        {
            let first = base / BLOCK;
            let out = first
                .checked_add(masks.len())
                .and_then(|end| words.get_mut(first..end))
                .ok_or(status::OUTPUT_TOO_SMALL)?;
            let mut n = 0;
            for (w, m) in out.iter_mut().zip(masks) {
                *w |= m;
                n += m.count_ones() as usize;
            }
            self.len += n;
            return Ok(());
        }
        for (i, m) in masks.iter().enumerate() {
            self.push_mask(base + i * BLOCK, *m)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::abi::types;
    use crate::{Column, mask_block};
    use alloc::vec::Vec;

    #[test]
    fn masks_and_selection() {
        let v: Vec<i64> = (0..130).collect();
        assert_eq!(mask_block(&v, 0, |x| x < 3), 0b111);
        assert_eq!(mask_block(&v, 128, |_| true), 0b11);
        let mut out = [0u32; 4];
        let mut sel = Selection::new(&mut out);
        sel.push_mask(64, 0b1010).unwrap();
        assert_eq!(sel.len(), 2);
        assert_eq!(sel.push_mask(128, 0b111), Err(status::OUTPUT_TOO_SMALL));
        assert_eq!(&out[..2], &[65, 67]);
        let mut words = [u64::MAX; 3];
        let mut sel = Selection::bitmap(&mut words);
        sel.push_mask(0, 0b101).unwrap();
        sel.push_mask(96, 0xFFFF_0000_0000_0001).unwrap();
        assert_eq!(sel.len(), 19);
        assert_eq!(words, [0b101, 1 << 32, 0xFFFF_0000]);
        let validity = [0b0000_0101u8, 0, 0, 0, 0, 0, 0, 0, 0xFF];
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let c = Column::from_parts(types::INT64, 0, &bytes, Some(&validity), None, 70);
        assert_eq!(c.validity_block(0), 0b101);
        assert_eq!(c.validity_block(64), 0b11_1111);
        assert!(c.f64s().is_err());
    }

    /// Consecutive blocks pushed at once select what one push per block selects: into a
    /// bitmap from a word's first row, from any other row, and as indices.
    #[test]
    fn masks_pushed_at_once_select_as_one_at_a_time() {
        let masks = [0xF0F0_0000_0000_0001u64, 0, u64::MAX, 1 << 63];
        for base in [0, 64, 5] {
            let (mut a, mut b) = ([u64::MAX; 6], [u64::MAX; 6]);
            let (mut x, mut y) = (Selection::bitmap(&mut a), Selection::bitmap(&mut b));
            x.push_masks(base, &masks).unwrap();
            for (i, m) in masks.iter().enumerate() {
                y.push_mask(base + i * BLOCK, *m).unwrap();
            }
            assert_eq!((x.len(), a), (y.len(), b), "from row {base}");
            let (mut a, mut b) = ([0u32; 200], [0u32; 200]);
            let (mut x, mut y) = (Selection::new(&mut a), Selection::new(&mut b));
            x.push_masks(base, &masks).unwrap();
            for (i, m) in masks.iter().enumerate() {
                y.push_mask(base + i * BLOCK, *m).unwrap();
            }
            assert_eq!((x.len(), a), (y.len(), b), "from row {base}");
        }
        let mut words = [0u64; 2];
        let mut sel = Selection::bitmap(&mut words);
        assert_eq!(sel.push_masks(64, &[1, 1]), Err(status::OUTPUT_TOO_SMALL));
    }
}
