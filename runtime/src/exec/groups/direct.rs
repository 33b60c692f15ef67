//! Group ids of one integer key column by value ([`Direct`]): a table indexed by value, no
//! hashing, 4 bytes a value.

use std::collections::HashMap;

use arrow::array::{Array, ArrayRef, ArrowPrimitiveType, AsArray, PrimitiveArray};
use arrow::datatypes::{
    DataType, Date32Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type,
    UInt32Type,
};

use super::{Hasher, Packed, UNSET};
use crate::error::{Error, Result};

/// Values a [`Direct`] table may span at most (4 MiB of ids).
const DIRECT_SPAN_MAX: usize = 1 << 20;

/// Group ids of one integer key column by value: `ids[v - base]` is value `v`'s group
/// ([`UNSET`] while no row had it), `null` the null key's. The table covers the values met so
/// far and grows as batches widen their range (by at least its own length when it grows down,
/// so that a descending key does not copy it each batch); a batch that would take it past
/// [`DIRECT_SPAN_MAX`] moves the keys to [`Index::Packed`](super::Index::Packed) for good. DuckDB's perfect hash
/// aggregate does the same from the file's statistics; this one learns the range from the data.
pub(super) struct Direct {
    base: i64,
    ids: Vec<u32>,
    null: u32,
}

impl Direct {
    /// A table of no values yet.
    pub(super) fn new() -> Self {
        Direct {
            base: 0,
            ids: Vec::new(),
            null: UNSET,
        }
    }

    /// Grows the table to cover `lo..=hi` as well; false when that spans too many values.
    fn cover(&mut self, lo: i64, hi: i64) -> bool {
        let (have_lo, have_hi) = match self.ids.len() {
            0 => (lo, hi),
            n => (self.base, self.base + (n as i64 - 1)),
        };
        let (lo, hi) = (lo.min(have_lo), hi.max(have_hi));
        let span = hi as i128 - lo as i128 + 1;
        if span > DIRECT_SPAN_MAX as i128 {
            return false;
        }
        if self.ids.is_empty() {
            self.base = lo;
            self.ids = vec![UNSET; span as usize];
            return true;
        }
        if lo < self.base {
            let need = (self.base - lo) as usize;
            let room = DIRECT_SPAN_MAX - self.ids.len();
            let grow = need.max(self.ids.len()).min(room);
            let grow = match self.base.checked_sub(grow as i64) {
                Some(_) => grow,
                None => need,
            };
            self.ids.splice(0..0, std::iter::repeat_n(UNSET, grow));
            self.base -= grow as i64;
        }
        let len = (hi - self.base + 1) as usize;
        if len > self.ids.len() {
            self.ids.resize(len, UNSET);
        }
        true
    }

    /// The ids of the rows of `col` (one of the [`direct`] types), as [`Direct::ids`] gives
    /// them.
    pub(super) fn column_ids(
        &mut self,
        col: &ArrayRef,
        next: u32,
        fresh: &mut Vec<u32>,
    ) -> Result<Option<Vec<u32>>> {
        macro_rules! by {
            ($t:ty) => {
                self.ids(col.as_primitive::<$t>(), next, fresh)
            };
        }
        Ok(match col.data_type() {
            DataType::Int8 => by!(Int8Type),
            DataType::Int16 => by!(Int16Type),
            DataType::Int32 => by!(Int32Type),
            DataType::Int64 => by!(Int64Type),
            DataType::UInt8 => by!(UInt8Type),
            DataType::UInt16 => by!(UInt16Type),
            DataType::UInt32 => by!(UInt32Type),
            DataType::Date32 => by!(Date32Type),
            t => return Err(Error::Internal(format!("no direct group ids for {t}"))),
        })
    }

    /// The ids of `a`'s rows, new groups numbered from `next` and their first rows pushed on
    /// `fresh`; `None` (nothing changed) when its values would take the table past its span.
    fn ids<T>(
        &mut self,
        a: &PrimitiveArray<T>,
        mut next: u32,
        fresh: &mut Vec<u32>,
    ) -> Option<Vec<u32>>
    where
        T: ArrowPrimitiveType,
        T::Native: Into<i64>,
    {
        let values = a.values();
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        match a.nulls().filter(|n| n.null_count() > 0) {
            None => {
                for &v in values.iter() {
                    let v: i64 = v.into();
                    lo = lo.min(v);
                    hi = hi.max(v);
                }
            }
            Some(nulls) => {
                for i in nulls.valid_indices() {
                    let v: i64 = values[i].into();
                    lo = lo.min(v);
                    hi = hi.max(v);
                }
            }
        }
        if lo <= hi && !self.cover(lo, hi) {
            return None;
        }
        let mut take = |slot: &mut u32, i: usize| {
            if *slot == UNSET {
                *slot = next;
                next += 1;
                fresh.push(i as u32);
            }
            *slot
        };
        let base = self.base;
        let ids = match a.nulls().filter(|n| n.null_count() > 0) {
            None => values
                .iter()
                .enumerate()
                .map(|(i, &v)| take(&mut self.ids[(v.into() - base) as usize], i))
                .collect(),
            Some(nulls) => values
                .iter()
                .enumerate()
                .map(|(i, &v)| match nulls.is_valid(i) {
                    true => take(&mut self.ids[(v.into() - base) as usize], i),
                    false => take(&mut self.null, i),
                })
                .collect(),
        };
        Some(ids)
    }

    /// The same groups as packed keys (as [`pack`] makes them for one integer column).
    pub(super) fn packed(&self) -> HashMap<Packed, u32, Hasher> {
        let mut map = HashMap::with_capacity_and_hasher(self.ids.len(), Hasher::default());
        for (k, &id) in self.ids.iter().enumerate() {
            if id != UNSET {
                let v = self.base + k as i64;
                map.insert((v as u64 as u128, 0), id);
            }
        }
        if self.null != UNSET {
            map.insert((0, 0x80), self.null);
        }
        map
    }
}

/// Whether one key column of type `t` may take the [`Direct`] path.
pub(super) fn direct(t: &DataType) -> bool {
    use DataType::*;
    matches!(
        t,
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | Date32
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array};
    use arrow::datatypes::DataType;

    use super::super::{GroupKeys, Index};

    #[test]
    fn direct_ids_agree_with_packed_keys_as_the_range_grows_and_when_it_spreads_too_far() {
        // Batches that widen the range up and down (a descending run among them), nulls, and
        // at last a value beyond the table's span: the same ids and keys as packed keys.
        let mut batches: Vec<Vec<Option<i64>>> = vec![
            vec![Some(500), Some(7), None, Some(500), Some(-3)],
            vec![Some(10_000), None, Some(7), Some(-40_000)],
        ];
        for b in 0..20 {
            batches.push((0..50).map(|i| Some(-50_000 - 3_000 * b - i)).collect());
        }
        batches.push(vec![Some(7), Some(1 << 40), None, Some(-3), Some(i64::MIN)]);
        batches.push(vec![Some(1 << 40), Some(12)]);
        let mut direct = GroupKeys::new(&[DataType::Int64]).unwrap();
        let mut packed = GroupKeys::new(&[DataType::Int64]).unwrap();
        packed.index = Index::Packed(HashMap::default());
        let last = batches.len() - 1;
        for (n, b) in batches.into_iter().enumerate() {
            let col: ArrayRef = Arc::new(Int64Array::from(b));
            assert_eq!(
                direct.ids(std::slice::from_ref(&col), None).unwrap(),
                packed.ids(&[col], None).unwrap()
            );
            let is_direct = matches!(direct.index, Index::Direct(_));
            assert_eq!(is_direct, n < last - 1, "batch {n}");
        }
        assert_eq!(direct.columns().unwrap(), packed.columns().unwrap());
        // Small unsigned and date keys take the table too, nulls their own group.
        let mut k = GroupKeys::new(&[DataType::UInt8]).unwrap();
        let col: ArrayRef = Arc::new(arrow::array::UInt8Array::from(vec![
            Some(255),
            None,
            Some(0),
            Some(255),
            None,
        ]));
        assert_eq!(k.ids(&[col], None).unwrap(), vec![0, 1, 2, 0, 1]);
        assert!(matches!(k.index, Index::Direct(_)));
    }
}
