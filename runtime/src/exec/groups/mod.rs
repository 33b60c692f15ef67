//! Group ids for a hash aggregate's keys. One integer key column whose values span at most
//! 2^20 (a part key, a date, a small code) indexes a table by value ([`Direct`], `direct.rs`):
//! no hashing, and a table of 4 bytes per value that stays in cache where a hash map of
//! packed keys (32 bytes an entry) does not. One or two key columns whose values fit 8 bytes each
//! (integers, dates, booleans, decimals of up to 18 digits, strings of up to 8 bytes: TPC-H
//! Q1's flags, most codes and dates) are packed into a fixed-width key per row and looked up
//! in a hash map of those; any other keys go through Arrow's row format (any type, any
//! number of columns). Packing skips encoding each row into a buffer of its own and hashing
//! it, which was about 15 % of Q1's device CPU. A batch whose values do not fit (a long
//! string) moves the aggregate to the row format for good. The row format also stores each
//! group's key once, for the result and for merging workers. Key columns the scan read as
//! Arrow dictionaries (string keys nothing else reads) skip even that: a table indexed by
//! their dictionary keys maps each combination to its group ([`DictTable`]).

use std::collections::HashMap;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use arrow::buffer::BooleanBuffer;
use arrow::compute::{filter, take};
use arrow::datatypes::{
    DataType, Date32Type, Date64Type, Decimal128Type, Int8Type, Int16Type, Int32Type, Int64Type,
    UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow::row::{RowConverter, Rows, SortField};

use crate::compute::SKIP_ROW;
use crate::error::{Error, Result};

mod dict;
mod direct;
use dict::DictTable;
use direct::{Direct, direct};

/// A table cell no row has reached yet (not a group id: [`GROUPS_MAX`]; not [`SKIP_ROW`]).
const UNSET: u32 = u32::MAX - 2;

/// Most groups one query may build.
pub const GROUPS_MAX: usize = 10_000_000;

/// A dictionary column as the key's type `t` (a `Utf8View` key is read as a dictionary of
/// `Utf8`); other columns as they are.
fn plain(c: &ArrayRef, t: &DataType) -> Result<ArrayRef> {
    match c.data_type() {
        DataType::Dictionary(..) => Ok(arrow::compute::cast(c, t)?),
        _ => Ok(c.clone()),
    }
}

/// foldhash, not SipHash: fast, and a per-process random seed keeps crafted keys from
/// colliding predictably.
type Hasher = foldhash::fast::RandomState;

/// Packed key: up to two 8-byte values, and per column a byte of null flag and length.
type Packed = (u128, u16);

enum Index {
    Direct(Direct),
    Packed(HashMap<Packed, u32, Hasher>),
    Rows(HashMap<Box<[u8]>, u32, Hasher>),
}

/// The groups of one aggregate: their keys and the index from a key to its group id.
pub(super) struct GroupKeys {
    conv: RowConverter,
    index: Index,
    /// Each group's key in the row format, in group id order (one buffer, not one
    /// allocation per group).
    rows: Rows,
    /// The dictionary path's table, when the keys come as dictionaries.
    dict: Option<DictTable>,
    /// The key columns' types.
    types: Vec<DataType>,
}

impl GroupKeys {
    /// Keys of the given column types.
    pub fn new(types: &[DataType]) -> Result<Self> {
        let conv = RowConverter::new(types.iter().map(|t| SortField::new(t.clone())).collect())?;
        let index = if types.len() == 1 && direct(&types[0]) {
            Index::Direct(Direct::new())
        } else if types.len() <= 2 && types.iter().all(packable) {
            Index::Packed(HashMap::default())
        } else {
            Index::Rows(HashMap::default())
        };
        Ok(GroupKeys {
            rows: conv.empty_rows(0, 0),
            conv,
            index,
            dict: None,
            types: types.to_vec(),
        })
    }

    /// Groups so far.
    pub fn len(&self) -> usize {
        self.rows.num_rows()
    }

    /// The group id of each row of the key columns `cols`, new groups added in row order
    /// (ids fit `u32`: [`GROUPS_MAX`]); with `keep`, the rows it keeps, the others
    /// [`SKIP_ROW`] (making no group). Columns may come as dictionaries of the key types.
    pub fn ids(&mut self, cols: &[ArrayRef], keep: Option<&BooleanBuffer>) -> Result<Vec<u32>> {
        if cols
            .iter()
            .any(|c| matches!(c.data_type(), DataType::Dictionary(..)))
        {
            if let Some(ids) = self.dictionary_ids(cols, keep)? {
                return Ok(ids);
            }
            let hydrated = cols.iter().zip(&self.types).map(|(c, t)| plain(c, t));
            let hydrated = hydrated.collect::<Result<Vec<_>>>()?;
            return self.ids(&hydrated, keep);
        }
        if let Some(keep) = keep {
            // The kept rows' groups, the others left out.
            let mask = BooleanArray::new(keep.clone(), None);
            let kept = cols.iter().map(|c| filter(c, &mask));
            let kept = kept.collect::<std::result::Result<Vec<_>, _>>()?;
            let mut ids = self.ids(&kept, None)?.into_iter();
            return Ok(keep
                .iter()
                .map(|k| match k {
                    true => ids.next().expect("a group per kept row"),
                    false => SKIP_ROW,
                })
                .collect());
        }
        if let Index::Direct(d) = &mut self.index {
            let mut fresh = Vec::new();
            if let Some(ids) = d.column_ids(&cols[0], self.rows.num_rows() as u32, &mut fresh)? {
                self.add_rows(cols, fresh)?;
                return Ok(ids);
            }
            // Values spread too far for a table: packed keys from now on.
            self.index = Index::Packed(d.packed());
        }
        if let Index::Packed(map) = &mut self.index {
            if let Some(keys) = pack(cols) {
                let mut fresh = Vec::new();
                let mut next = self.rows.num_rows() as u32;
                let ids = keys
                    .iter()
                    .enumerate()
                    .map(|(i, k)| {
                        *map.entry(*k).or_insert_with(|| {
                            fresh.push(i as u32);
                            next += 1;
                            next - 1
                        })
                    })
                    .collect();
                self.add_rows(cols, fresh)?;
                return Ok(ids);
            }
            // A value that does not pack: the row format from now on.
            let rows = self.rows.iter().enumerate();
            self.index = Index::Rows(rows.map(|(g, r)| (r.as_ref().into(), g as u32)).collect());
        }
        let Index::Rows(map) = &mut self.index else {
            unreachable!("moved to rows above")
        };
        let encoded = self.conv.convert_columns(cols)?;
        let mut ids = Vec::with_capacity(encoded.num_rows());
        for r in encoded.iter() {
            let g = match map.get(r.as_ref()) {
                Some(&g) => g,
                None => {
                    let g = self.rows.num_rows();
                    check_groups(g + 1)?;
                    map.insert(r.as_ref().into(), g as u32);
                    self.rows.push(r);
                    g as u32
                }
            };
            ids.push(g);
        }
        Ok(ids)
    }

    /// Keeps the row-format keys of the new groups first seen at rows `fresh` of `cols`.
    fn add_rows(&mut self, cols: &[ArrayRef], fresh: Vec<u32>) -> Result<()> {
        if fresh.is_empty() {
            return Ok(());
        }
        check_groups(self.len() + fresh.len())?;
        let at = arrow::array::UInt32Array::from(fresh);
        let picked = cols
            .iter()
            .map(|c| take(c, &at, None))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        self.conv.append(&mut self.rows, &picked)?;
        Ok(())
    }

    /// The group ids here of `other`'s groups (the same keys over other rows), adding the
    /// ones new here in `other`'s order.
    pub fn absorb(&mut self, other: &GroupKeys) -> Result<Vec<usize>> {
        // Their rows belong to their converter: read again as this one's.
        let parser = self.conv.parser();
        let cols = self
            .conv
            .convert_rows(other.rows.iter().map(|r| parser.parse(r.data())))?;
        Ok(self
            .ids(&cols, None)?
            .into_iter()
            .map(|g| g as usize)
            .collect())
    }

    /// The key columns, one row per group in id order.
    pub fn columns(&self) -> Result<Vec<ArrayRef>> {
        Ok(self.conv.convert_rows(self.rows.iter())?)
    }
}

fn check_groups(n: usize) -> Result<()> {
    if n > GROUPS_MAX {
        return Err(Error::Unsupported(format!("more than {GROUPS_MAX} groups")));
    }
    Ok(())
}

/// Whether values of `t` may pack into 8 bytes (strings only when short, checked per batch).
fn packable(t: &DataType) -> bool {
    use DataType::*;
    match t {
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 | Date32 | Date64
        | Boolean | Utf8 | LargeUtf8 | Utf8View => true,
        Decimal128(p, _) => *p <= 18,
        _ => false,
    }
}

/// The packed key of every row of `cols` (one or two columns), or `None` when a value does
/// not fit 8 bytes. Per column: the value's 8 bytes, and a byte holding whether it is null
/// (bit 7) and, for strings, its length (so "a" and "a\0" differ).
fn pack(cols: &[ArrayRef]) -> Option<Vec<Packed>> {
    let n = cols.first()?.len();
    let mut keys = vec![(0u128, 0u16); n];
    for (j, col) in cols.iter().enumerate() {
        let shift = 64 * j as u32;
        let meta_shift = 8 * j as u32;
        let mut put = |i: usize, v: u64, meta: u8| {
            keys[i].0 |= (v as u128) << shift;
            keys[i].1 |= (meta as u16) << meta_shift;
        };
        let fits = pack_column(col, &mut put);
        if !fits {
            return None;
        }
        if col.null_count() > 0 {
            for i in (0..n).filter(|&i| col.is_null(i)) {
                // A null's value bits are whatever the buffer holds: clear them.
                keys[i].0 &= !((u64::MAX as u128) << shift);
                keys[i].1 = (keys[i].1 & !(0xFFu16 << meta_shift)) | (0x80u16 << meta_shift);
            }
        }
    }
    Some(keys)
}

/// Calls `put(row, value, meta)` for every row of `col`; false when a value does not fit.
fn pack_column(col: &ArrayRef, put: &mut impl FnMut(usize, u64, u8)) -> bool {
    macro_rules! ints {
        ($t:ty) => {{
            for (i, v) in col.as_primitive::<$t>().values().iter().enumerate() {
                put(i, *v as u64, 0);
            }
            true
        }};
    }
    // A string's bytes and length, when it has at most 8 bytes.
    let short = |put: &mut dyn FnMut(usize, u64, u8), i: usize, b: &[u8]| {
        if b.len() > 8 {
            return false;
        }
        let mut v = [0u8; 8];
        v[..b.len()].copy_from_slice(b);
        put(i, u64::from_le_bytes(v), b.len() as u8);
        true
    };
    match col.data_type() {
        DataType::Int8 => ints!(Int8Type),
        DataType::Int16 => ints!(Int16Type),
        DataType::Int32 => ints!(Int32Type),
        DataType::Int64 => ints!(Int64Type),
        DataType::UInt8 => ints!(UInt8Type),
        DataType::UInt16 => ints!(UInt16Type),
        DataType::UInt32 => ints!(UInt32Type),
        DataType::UInt64 => ints!(UInt64Type),
        DataType::Date32 => ints!(Date32Type),
        DataType::Date64 => ints!(Date64Type),
        DataType::Boolean => {
            for (i, v) in col.as_boolean().values().iter().enumerate() {
                put(i, v as u64, 0);
            }
            true
        }
        DataType::Decimal128(..) => {
            let a = col.as_primitive::<Decimal128Type>();
            for (i, v) in a.values().iter().enumerate() {
                match i64::try_from(*v) {
                    Ok(v) => put(i, v as u64, 0),
                    // A null slot may hold anything: it is cleared after.
                    Err(_) if a.is_null(i) => put(i, 0, 0),
                    Err(_) => return false,
                }
            }
            true
        }
        DataType::Utf8 => {
            let a = col.as_string::<i32>();
            (0..a.len()).all(|i| a.is_null(i) || short(&mut *put, i, a.value(i).as_bytes()))
        }
        DataType::LargeUtf8 => {
            let a = col.as_string::<i64>();
            (0..a.len()).all(|i| a.is_null(i) || short(&mut *put, i, a.value(i).as_bytes()))
        }
        DataType::Utf8View => {
            let a = col.as_string_view();
            (0..a.len()).all(|i| a.is_null(i) || short(&mut *put, i, a.value(i).as_bytes()))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};

    use super::*;

    fn strings(v: &[Option<&str>]) -> ArrayRef {
        Arc::new(StringArray::from(v.to_vec()))
    }

    /// A dictionary column: `keys` into `values`.
    fn dict(values: &[Option<&str>], keys: &[Option<i32>]) -> ArrayRef {
        let keys = arrow::array::Int32Array::from(keys.to_vec());
        Arc::new(arrow::array::DictionaryArray::new(keys, strings(values)))
    }

    /// The same batches' ids through the dictionary path and as plain strings, and the keys.
    fn both(batches: &[Vec<ArrayRef>]) -> (Vec<Vec<u32>>, Vec<Vec<u32>>, Vec<ArrayRef>) {
        let types = vec![DataType::Utf8; batches[0].len()];
        let (mut d, mut p) = (
            GroupKeys::new(&types).unwrap(),
            GroupKeys::new(&types).unwrap(),
        );
        let mut out = (Vec::new(), Vec::new());
        for cols in batches {
            out.0.push(d.ids(cols, None).unwrap());
            let plain_cols: Vec<ArrayRef> = cols
                .iter()
                .map(|c| plain(c, &DataType::Utf8).unwrap())
                .collect();
            out.1.push(p.ids(&plain_cols, None).unwrap());
        }
        assert!(d.dict.is_some(), "the dictionary path ran");
        (out.0, out.1, d.columns().unwrap())
    }

    #[test]
    fn dictionary_keys_group_as_their_strings_do() {
        // Nulls (in the keys and in the values), an unused entry, and a second dictionary
        // (the next row group's) in another order with a new value.
        let values = [Some("a"), Some("b"), None, Some("unused"), Some("c")];
        let first = dict(
            &values,
            &[Some(0), None, Some(1), Some(2), Some(0), Some(4), None],
        );
        let second = dict(
            &[Some("c"), Some("z"), Some("a")],
            &[Some(1), Some(0), Some(2), None, Some(1)],
        );
        let (by_dict, by_string, keys) = both(&[vec![first], vec![second]]);
        assert_eq!(by_dict, by_string);
        // A null key and a key to a null value are one group, as nulls are.
        assert_eq!(by_dict[0], vec![0, 1, 2, 1, 0, 3, 1]);
        assert_eq!(by_dict[1], vec![4, 3, 0, 1, 4]);
        // Groups in order of first appearance; no group for the unused entry.
        let keys = keys[0].as_string::<i32>();
        let names: Vec<Option<&str>> = keys.iter().collect();
        assert_eq!(names, [Some("a"), None, Some("b"), Some("c"), Some("z")]);
    }

    #[test]
    fn an_equal_dictionary_keeps_the_table_and_a_reordered_one_does_not() {
        let ab = [Some("a"), Some("b")];
        let batches = [
            vec![dict(&ab, &[Some(0), Some(1), Some(1)])],
            // Equal values in another array (the next row group's).
            vec![dict(&ab, &[Some(1), Some(0)])],
            // The same values in another order: key 0 is now "b".
            vec![dict(&[Some("b"), Some("a")], &[Some(0), Some(1)])],
        ];
        let (by_dict, by_string, _) = both(&batches);
        assert_eq!(by_dict, by_string);
        assert_eq!(by_dict, [vec![0, 1, 1], vec![1, 0], vec![1, 0]]);
        let mut k = GroupKeys::new(&[DataType::Utf8]).unwrap();
        k.ids(&batches[0], None).unwrap();
        let table = k.dict.as_ref().unwrap().ids.as_ptr();
        k.ids(&batches[1], None).unwrap();
        assert_eq!(k.dict.as_ref().unwrap().ids.as_ptr(), table, "kept");
        k.ids(&batches[2], None).unwrap();
        assert_ne!(k.dict.as_ref().unwrap().ids.as_ptr(), table, "rebuilt");
    }

    #[test]
    fn two_dictionary_keys_and_a_too_large_dictionary_agree_with_strings() {
        let flags = [Some("A"), Some("N"), Some("R")];
        let status = [Some("F"), Some("O")];
        let batch =
            |k1: &[Option<i32>], k2: &[Option<i32>]| vec![dict(&flags, k1), dict(&status, k2)];
        let a = batch(
            &[Some(0), Some(1), Some(2), Some(1), None],
            &[Some(0), Some(1), Some(0), Some(1), Some(1)],
        );
        let b = batch(&[Some(2), Some(2), Some(0)], &[Some(1), Some(0), None]);
        let (by_dict, by_string, _) = both(&[a, b]);
        assert_eq!(by_dict, by_string);
        assert_eq!(by_dict, vec![vec![0, 1, 2, 1, 3], vec![4, 2, 5]]);
        // More entries than the table takes: the strings' path, same ids.
        let many: Vec<String> = (0..70_000).map(|i| format!("v{i}")).collect();
        let many: Vec<Option<&str>> = many.iter().map(|s| Some(s.as_str())).collect();
        let big = dict(&many, &[Some(69_999), Some(3), Some(69_999)]);
        let types = [DataType::Utf8];
        let mut k = GroupKeys::new(&types).unwrap();
        assert_eq!(k.ids(&[big], None).unwrap(), vec![0, 1, 0]);
        assert!(k.dict.is_none());
    }

    #[test]
    fn packed_keys_tell_apart_what_the_row_format_does() {
        let mut k = GroupKeys::new(&[DataType::Utf8, DataType::Int64]).unwrap();
        let a = strings(&[Some("a"), Some("a\0"), None, Some(""), Some("a"), None]);
        let b: ArrayRef = Arc::new(Int64Array::from(vec![
            Some(1),
            Some(1),
            Some(1),
            Some(1),
            Some(1),
            None,
        ]));
        assert_eq!(k.ids(&[a, b], None).unwrap(), vec![0, 1, 2, 3, 0, 4]);
        assert!(matches!(k.index, Index::Packed(_)));
        // A long string moves the keys to the row format; the groups stay.
        let a = strings(&[Some("a longer string"), Some("a\0"), None]);
        let b: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), Some(1), None]));
        assert_eq!(k.ids(&[a, b], None).unwrap(), vec![5, 1, 4]);
        assert!(matches!(k.index, Index::Rows(_)));
        let cols = k.columns().unwrap();
        assert_eq!(cols[0].len(), 6);
        assert_eq!(cols[0].as_string::<i32>().value(5), "a longer string");
        assert!(cols[1].is_null(4));
    }

    #[test]
    fn rows_not_kept_are_left_out_and_make_no_group() {
        // Through the dictionary table and through packed keys: the kept rows' ids are those
        // of the kept rows alone, the others SKIP_ROW, and a key only rejected rows hold ("x")
        // makes no group.
        let values = [Some("a"), Some("b"), Some("x"), None];
        let keys = [Some(0), Some(2), Some(1), Some(3), Some(2), None, Some(0)];
        let keep = BooleanBuffer::from(vec![true, false, true, true, false, true, true]);
        let kept_keys: Vec<Option<i32>> = keys
            .iter()
            .zip(keep.iter())
            .filter(|(_, k)| *k)
            .map(|(&key, _)| key)
            .collect();
        let want = vec![0, SKIP_ROW, 1, 2, SKIP_ROW, 2, 0];
        for (name, col, kept) in [
            (
                "dictionary",
                dict(&values, &keys),
                dict(&values, &kept_keys),
            ),
            (
                "packed",
                plain(&dict(&values, &keys), &DataType::Utf8).unwrap(),
                plain(&dict(&values, &kept_keys), &DataType::Utf8).unwrap(),
            ),
        ] {
            let mut k = GroupKeys::new(&[DataType::Utf8]).unwrap();
            assert_eq!(
                k.ids(std::slice::from_ref(&col), Some(&keep)).unwrap(),
                want,
                "{name}"
            );
            let mut alone = GroupKeys::new(&[DataType::Utf8]).unwrap();
            alone.ids(&[kept], None).unwrap();
            assert_eq!(k.columns().unwrap(), alone.columns().unwrap(), "{name}");
            assert_eq!(k.len(), 3, "{name}: a, b, null");
            // Then kept, the rejected key takes the next group.
            let all = BooleanBuffer::from(vec![true; 7]);
            assert_eq!(
                k.ids(&[col], Some(&all)).unwrap(),
                vec![0, 3, 1, 2, 3, 2, 0],
                "{name}"
            );
        }
    }

    #[test]
    fn absorbing_another_keys_maps_its_groups_and_appends_new_ones() {
        let mut x = GroupKeys::new(&[DataType::Utf8]).unwrap();
        let mut y = GroupKeys::new(&[DataType::Utf8]).unwrap();
        x.ids(&[strings(&[Some("r"), Some("n")])], None).unwrap();
        y.ids(&[strings(&[Some("a"), Some("n"), None])], None)
            .unwrap();
        assert_eq!(x.absorb(&y).unwrap(), vec![2, 1, 3]);
        assert_eq!(x.len(), 4);
    }
}
