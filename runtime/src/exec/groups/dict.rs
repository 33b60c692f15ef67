//! Group ids straight from dictionary keys ([`DictTable`]): key columns the scan read as
//! Arrow dictionaries (string keys nothing else reads, as TPC-H Q1's flags) are grouped by a
//! table indexed by each combination of their keys.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, DictionaryArray};
use arrow::buffer::BooleanBuffer;
use arrow::compute::take;
use arrow::datatypes::Int32Type;

use super::{GroupKeys, UNSET, plain};
use crate::compute::{SKIP_ROW, lanes};
use crate::error::Result;

/// Cells of a dictionary table at most: one per combination of the key columns' dictionary
/// entries (null included).
const DICT_CELLS_MAX: usize = 1 << 16;

/// Group ids straight from dictionary keys, for key columns read as Arrow dictionaries (Q1's
/// flags): while the batches' dictionaries are the same or equal (a column chunk's pages
/// share theirs; row groups often have equal ones), a table from each combination of keys to
/// its group id, filled as combinations first occur — so an unused dictionary entry makes no
/// group, and a different dictionary starts a new table.
pub(super) struct DictTable {
    /// The dictionaries the table is for (held, so their addresses stay theirs).
    values: Vec<ArrayRef>,
    /// A group id per cell, and past them one cell holding [`SKIP_ROW`]: the cell of a row
    /// left out.
    pub(super) ids: Vec<u32>,
}

impl GroupKeys {
    /// [`GroupKeys::ids`] by dictionary keys ([`DictTable`]); `None` when a column is not an
    /// `Int32`-keyed dictionary or the table would pass [`DICT_CELLS_MAX`].
    pub(super) fn dictionary_ids(
        &mut self,
        cols: &[ArrayRef],
        keep: Option<&BooleanBuffer>,
    ) -> Result<Option<Vec<u32>>> {
        let dicts: Option<Vec<_>> = cols
            .iter()
            .map(|c| c.as_dictionary_opt::<Int32Type>())
            .collect();
        let Some(dicts) = dicts else {
            return Ok(None);
        };
        // Each column's cells: its entries, then null.
        let sizes: Vec<usize> = dicts.iter().map(|d| d.values().len() + 1).collect();
        let cells = sizes.iter().try_fold(1usize, |a, &s| a.checked_mul(s));
        let Some(cells) = cells.filter(|&c| c <= DICT_CELLS_MAX) else {
            return Ok(None);
        };
        let mut table = match self.dict.take() {
            // The same dictionaries, or ones equal to them (the next row group's, as TPC-H's
            // flags have in every row group): the table holds; the new ones are kept, so the
            // next batches of their chunk compare by address.
            Some(mut t)
                if t.values.len() == dicts.len()
                    && t.values
                        .iter()
                        .zip(&dicts)
                        .all(|(v, d)| Arc::ptr_eq(v, d.values()) || **v == **d.values()) =>
            {
                t.values = dicts.iter().map(|d| d.values().clone()).collect();
                t
            }
            _ => {
                let mut ids = vec![UNSET; cells + 1];
                ids[cells] = SKIP_ROW;
                DictTable {
                    values: dicts.iter().map(|d| d.values().clone()).collect(),
                    ids,
                }
            }
        };
        // Each row's cell; a row left out, the cell past the others.
        let codes = || {
            let mut codes = cell_codes(&dicts, &sizes);
            if let Some(keep) = keep {
                for i in (!keep).set_indices() {
                    codes[i] = cells as u32;
                }
            }
            codes
        };
        // Each row's group: its cell's id, mapped in place. A combination met for the first
        // time leaves UNSET; then (a batch in the first few, typically) the cells are worked
        // out again and the new combinations take their groups in row order.
        let (mut ids, unseen) = match table_ids(&dicts, &sizes, &table.ids, keep) {
            Some(found) => found,
            None => {
                let mut ids = codes();
                let mut unseen = false;
                for c in ids.iter_mut() {
                    let id = table.ids[*c as usize];
                    unseen |= id == UNSET;
                    *c = id;
                }
                (ids, unseen)
            }
        };
        if unseen {
            let codes = codes();
            // Combinations met for the first time, at their first row: their groups through
            // the packed or row-format path, in row order (groups keep the order of first
            // appearance).
            let mut first: Vec<u32> = Vec::new();
            for (i, &c) in codes.iter().enumerate() {
                let c = c as usize;
                if table.ids[c] == UNSET {
                    table.ids[c] = UNSET - 1;
                    first.push(i as u32);
                }
            }
            let at = arrow::array::UInt32Array::from(first.clone());
            let rows = cols
                .iter()
                .zip(&self.types)
                .map(|(c, t)| plain(&take(c, &at, None)?, t))
                .collect::<Result<Vec<_>>>()?;
            for (i, id) in first.into_iter().zip(self.ids(&rows, None)?) {
                table.ids[codes[i as usize] as usize] = id;
            }
            for (id, &c) in ids.iter_mut().zip(&codes) {
                *id = table.ids[c as usize];
            }
        }
        self.dict = Some(table);
        Ok(Some(ids))
    }
}

/// Each row's group in `table` (a [`DictTable`]'s ids) in one pass, for one or two key
/// columns without nulls (TPC-H Q1's flags), the rows `keep` leaves out [`SKIP_ROW`]; and
/// whether a kept row's cell is [`UNSET`]. `None` for other keys ([`cell_codes`] first).
fn table_ids(
    dicts: &[&DictionaryArray<Int32Type>],
    sizes: &[usize],
    table: &[u32],
    keep: Option<&BooleanBuffer>,
) -> Option<(Vec<u32>, bool)> {
    if dicts.len() > 2 || dicts.iter().any(|d| d.null_count() > 0) {
        return None;
    }
    let first = dicts[0].keys().values();
    // A key is below its dictionary's length (Arrow checks it of a non-null key), so a
    // cell is below the table's.
    let second = dicts.get(1).map(|d| (&d.keys().values()[..], sizes[1]));
    let small = second.map(|(keys, size)| (keys, size as u32));
    let mut ids: Vec<u32> = match (lanes::small_table_lookup(first, small, table), second) {
        (Some(ids), _) => ids,
        (None, None) => first.iter().map(|&a| table[a as usize]).collect(),
        (None, Some((second, size))) => first
            .iter()
            .zip(second.iter())
            .map(|(&a, &b)| table[a as usize * size + b as usize])
            .collect(),
    };
    if let Some(keep) = keep {
        // The rows left out are the zero bits, a few per word where marking pays.
        for (w, word) in keep.bit_chunks().iter_padded().enumerate() {
            let mut out = !word;
            while out != 0 {
                let i = w * 64 + out.trailing_zeros() as usize;
                if i >= ids.len() {
                    break;
                }
                ids[i] = SKIP_ROW;
                out &= out - 1;
            }
        }
    }
    let unseen = ids.contains(&UNSET);
    Some((ids, unseen))
}

/// Each row's cell in a [`DictTable`] of dictionary columns of `sizes` cells each (their
/// entries, then null): code × size + key, a column at a time, the first column's keys taken
/// as they are. In u32: the cells fit 16 bits ([`DICT_CELLS_MAX`]); a null key's slot holds
/// anything (wrapping arithmetic) until it is set to its column's null cell.
fn cell_codes(dicts: &[&DictionaryArray<Int32Type>], sizes: &[usize]) -> Vec<u32> {
    let mut codes: Vec<u32> = Vec::new();
    for (j, (d, &s)) in dicts.iter().zip(sizes).enumerate() {
        let (s, keys) = (s as u32, d.keys().values());
        if j == 0 {
            codes = keys.iter().map(|&k| k as u32).collect();
        } else {
            for (c, &k) in codes.iter_mut().zip(keys.iter()) {
                *c = c.wrapping_mul(s).wrapping_add(k as u32);
            }
        }
        if let Some(nulls) = d.nulls().filter(|n| n.null_count() > 0) {
            for i in (0..codes.len()).filter(|&i| nulls.is_null(i)) {
                codes[i] = codes[i].wrapping_sub(keys[i] as u32).wrapping_add(s - 1);
            }
        }
    }
    codes
}
