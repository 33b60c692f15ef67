//! Pruning before decoding: which row groups and which pages of a Parquet object may hold rows
//! that satisfy a predicate, judged from min/max/null-count statistics (footer for row groups,
//! page index for pages). Conservative: anything it cannot judge is kept.

use std::ops::Range;

use arrow::array::{Array, ArrayRef, BooleanArray, Scalar, UInt64Array};
use arrow::compute::kernels::{boolean, cmp};
use arrow::datatypes::Schema;
use nearstore_proto::CmpOp;
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use parquet::file::metadata::ParquetMetaData;

use crate::plan::PhysExpr;

/// Statistics of one column over N containers (row groups, or pages of one column chunk).
struct ColumnStats {
    mins: ArrayRef,
    maxes: ArrayRef,
    null_counts: UInt64Array,
    row_counts: Option<UInt64Array>,
}

/// Where a leaf predicate finds statistics.
trait StatsSource {
    fn len(&self) -> usize;
    fn column(&self, name: &str) -> Option<ColumnStats>;
}

/// Evaluates `expr` over containers: `true` where the container may hold a matching row.
fn may_match(expr: &PhysExpr, src: &dyn StatsSource) -> BooleanArray {
    let all = || BooleanArray::from(vec![true; src.len()]);
    match expr {
        PhysExpr::And(v) => v.iter().fold(all(), |acc, e| {
            boolean::and(&acc, &may_match(e, src)).unwrap_or_else(|_| all())
        }),
        PhysExpr::Or(v) => {
            let none = BooleanArray::from(vec![false; src.len()]);
            v.iter().fold(none, |acc, e| {
                boolean::or(&acc, &may_match(e, src)).unwrap_or_else(|_| all())
            })
        }
        PhysExpr::Cmp { op, left, right } => match (&**left, &**right) {
            (PhysExpr::Column { name, .. }, PhysExpr::Literal(lit)) => {
                cmp_leaf(*op, name, lit, src).unwrap_or_else(all)
            }
            (PhysExpr::Literal(lit), PhysExpr::Column { name, .. }) => {
                cmp_leaf(op.flip(), name, lit, src).unwrap_or_else(all)
            }
            _ => all(),
        },
        PhysExpr::InList {
            expr,
            list,
            negated: false,
        } => match &**expr {
            PhysExpr::Column { name, .. } => {
                let mut acc = BooleanArray::from(vec![false; src.len()]);
                for i in 0..list.len() {
                    match cmp_leaf(CmpOp::Eq, name, &list.slice(i, 1), src) {
                        Some(m) => acc = boolean::or(&acc, &m).unwrap_or_else(|_| all()),
                        None => return all(),
                    }
                }
                acc
            }
            _ => all(),
        },
        PhysExpr::IsNull(e) => match &**e {
            PhysExpr::Column { name, .. } => match src.column(name) {
                Some(s) => s
                    .null_counts
                    .iter()
                    .map(|n| Some(n.is_none_or(|n| n > 0)))
                    .collect(),
                None => all(),
            },
            _ => all(),
        },
        _ => all(),
    }
}

fn cmp_leaf(
    op: CmpOp,
    column: &str,
    lit: &ArrayRef,
    src: &dyn StatsSource,
) -> Option<BooleanArray> {
    if lit.is_null(0) {
        // A comparison with NULL is never true.
        return Some(BooleanArray::from(vec![false; src.len()]));
    }
    let s = src.column(column)?;
    if s.mins.data_type() != lit.data_type() || s.maxes.data_type() != lit.data_type() {
        return None;
    }
    let v = Scalar::new(lit.clone());
    let r = match op {
        CmpOp::Eq => boolean::and(
            &cmp::lt_eq(&s.mins, &v).ok()?,
            &cmp::gt_eq(&s.maxes, &v).ok()?,
        )
        .ok()?,
        CmpOp::NotEq => {
            // Only a container whose every value equals the literal cannot match.
            let all_eq =
                boolean::and(&cmp::eq(&s.mins, &v).ok()?, &cmp::eq(&s.maxes, &v).ok()?).ok()?;
            boolean::not(&all_eq).ok()?
        }
        CmpOp::Lt => cmp::lt(&s.mins, &v).ok()?,
        CmpOp::LtEq => cmp::lt_eq(&s.mins, &v).ok()?,
        CmpOp::Gt => cmp::gt(&s.maxes, &v).ok()?,
        CmpOp::GtEq => cmp::gt_eq(&s.maxes, &v).ok()?,
    };
    // Missing statistics (null) mean "may match". A container of only nulls never matches.
    let only_nulls = |i: usize| match (&s.row_counts, s.null_counts.is_valid(i)) {
        (Some(rc), true) => {
            rc.is_valid(i) && s.null_counts.value(i) == rc.value(i) && rc.value(i) > 0
        }
        _ => false,
    };
    Some(
        (0..r.len())
            .map(|i| Some(!only_nulls(i) && (r.is_null(i) || r.value(i))))
            .collect(),
    )
}

struct RowGroupStats<'a> {
    md: &'a ParquetMetaData,
    schema: &'a Schema,
}

impl StatsSource for RowGroupStats<'_> {
    fn len(&self) -> usize {
        self.md.num_row_groups()
    }

    fn column(&self, name: &str) -> Option<ColumnStats> {
        let conv =
            StatisticsConverter::try_new(name, self.schema, self.md.file_metadata().schema_descr())
                .ok()?;
        let rgs = self.md.row_groups();
        Some(ColumnStats {
            mins: conv.row_group_mins(rgs.iter()).ok()?,
            maxes: conv.row_group_maxes(rgs.iter()).ok()?,
            null_counts: conv.row_group_null_counts(rgs.iter()).ok()?,
            row_counts: conv.row_group_row_counts(rgs.iter()).ok()?,
        })
    }
}

struct PageStats<'a> {
    md: &'a ParquetMetaData,
    schema: &'a Schema,
    row_group: usize,
    column: &'a str,
    pages: usize,
}

impl StatsSource for PageStats<'_> {
    fn len(&self) -> usize {
        self.pages
    }

    fn column(&self, name: &str) -> Option<ColumnStats> {
        if name != self.column {
            return None;
        }
        let conv =
            StatisticsConverter::try_new(name, self.schema, self.md.file_metadata().schema_descr())
                .ok()?;
        let ci = self.md.column_index()?;
        let oi = self.md.offset_index()?;
        let rg = [self.row_group];
        Some(ColumnStats {
            mins: conv.data_page_mins(ci, oi, rg.iter()).ok()?,
            maxes: conv.data_page_maxes(ci, oi, rg.iter()).ok()?,
            null_counts: conv.data_page_null_counts(ci, oi, rg.iter()).ok()?,
            row_counts: conv
                .data_page_row_counts(oi, self.md.row_groups(), rg.iter())
                .ok()?,
        })
    }
}

/// What pruning decided for one object.
#[derive(Debug, Clone, Default)]
pub struct Pruned {
    /// Row groups to read.
    pub row_groups: Vec<usize>,
    /// Rows to decode within them (concatenated in row-group order); `None` reads all.
    pub selection: Option<RowSelection>,
    /// Row groups skipped.
    pub row_groups_pruned: u64,
    /// Pages of the predicate columns in the kept row groups.
    pub pages_total: u64,
    /// Of those, pages whose rows are all skipped.
    pub pages_pruned: u64,
    /// Rows in kept row groups.
    pub rows_total: u64,
    /// Rows selected for decoding.
    pub rows_selected: u64,
}

/// Prunes row groups by footer statistics, then pages by the page index (when present).
pub fn prune(md: &ParquetMetaData, schema: &Schema, predicate: Option<&PhysExpr>) -> Pruned {
    let n = md.num_row_groups();
    let Some(pred) = predicate else {
        let rows = md.row_groups().iter().map(|r| r.num_rows() as u64).sum();
        return Pruned {
            row_groups: (0..n).collect(),
            rows_total: rows,
            rows_selected: rows,
            ..Default::default()
        };
    };
    let mask = may_match(pred, &RowGroupStats { md, schema });
    let row_groups: Vec<usize> = (0..n).filter(|&i| mask.value(i)).collect();
    let mut out = Pruned {
        row_groups_pruned: (n - row_groups.len()) as u64,
        ..Default::default()
    };

    let have_page_index = md.column_index().is_some() && md.offset_index().is_some();
    let mut selectors: Vec<RowSelector> = Vec::new();
    for &rg in &row_groups {
        let rows = md.row_group(rg).num_rows() as usize;
        out.rows_total += rows as u64;
        let ranges = if have_page_index {
            page_ranges(pred, md, schema, rg, rows, &mut out)
        } else {
            vec![0..rows]
        };
        let sel = RowSelection::from_consecutive_ranges(ranges.into_iter(), rows);
        for s in sel.iter() {
            if !s.skip {
                out.rows_selected += s.row_count as u64;
            }
            selectors.push(*s);
        }
    }
    out.row_groups = row_groups;
    out.selection = Some(RowSelection::from(selectors));
    out
}

/// The rows of row group `rg` that may satisfy `test` by the page index, as a selection of
/// the row group; `None` without a page index (every row may).
pub fn row_group_selection(
    md: &ParquetMetaData,
    schema: &Schema,
    rg: usize,
    test: &PhysExpr,
) -> Option<RowSelection> {
    if md.column_index().is_none() || md.offset_index().is_none() {
        return None;
    }
    let rows = md.row_group(rg).num_rows() as usize;
    let ranges = page_ranges(test, md, schema, rg, rows, &mut Pruned::default());
    Some(RowSelection::from_consecutive_ranges(
        ranges.into_iter(),
        rows,
    ))
}

/// Row ranges of row group `rg` that may match, from the page index.
fn page_ranges(
    pred: &PhysExpr,
    md: &ParquetMetaData,
    schema: &Schema,
    rg: usize,
    rows: usize,
    out: &mut Pruned,
) -> Vec<Range<usize>> {
    match pred {
        PhysExpr::And(v) => v.iter().fold(vec![0..rows], |acc, e| {
            intersect(&acc, &page_ranges(e, md, schema, rg, rows, out))
        }),
        PhysExpr::Or(v) => {
            let mut acc: Vec<Range<usize>> = Vec::new();
            for e in v {
                acc = union(&acc, &page_ranges(e, md, schema, rg, rows, out));
            }
            acc
        }
        leaf => {
            let cols = leaf.columns();
            let [column] = cols.as_slice() else {
                return vec![0..rows];
            };
            let Some(pages) = page_row_starts(md, schema, rg, column) else {
                return vec![0..rows];
            };
            let src = PageStats {
                md,
                schema,
                row_group: rg,
                column,
                pages: pages.len(),
            };
            let mask = may_match(leaf, &src);
            out.pages_total += pages.len() as u64;
            let mut ranges = Vec::new();
            for (i, &start) in pages.iter().enumerate() {
                let end = pages.get(i + 1).copied().unwrap_or(rows);
                if mask.value(i) {
                    match ranges.last_mut() {
                        Some(Range { end: e, .. }) if *e == start => *e = end,
                        _ => ranges.push(start..end),
                    }
                } else {
                    out.pages_pruned += 1;
                }
            }
            ranges
        }
    }
}

/// First row of each data page of `column` in row group `rg`.
fn page_row_starts(
    md: &ParquetMetaData,
    schema: &Schema,
    rg: usize,
    column: &str,
) -> Option<Vec<usize>> {
    let conv =
        StatisticsConverter::try_new(column, schema, md.file_metadata().schema_descr()).ok()?;
    let idx = conv.parquet_column_index()?;
    let oi = md.offset_index()?.get(rg)?.get(idx)?;
    Some(
        oi.page_locations()
            .iter()
            .map(|p| p.first_row_index as usize)
            .collect(),
    )
}

fn intersect(a: &[Range<usize>], b: &[Range<usize>]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let s = a[i].start.max(b[j].start);
        let e = a[i].end.min(b[j].end);
        if s < e {
            out.push(s..e);
        }
        if a[i].end < b[j].end {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

fn union(a: &[Range<usize>], b: &[Range<usize>]) -> Vec<Range<usize>> {
    let mut all: Vec<Range<usize>> = a.iter().chain(b).cloned().collect();
    all.sort_by_key(|r| r.start);
    let mut out: Vec<Range<usize>> = Vec::new();
    for r in all {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_algebra() {
        assert_eq!(intersect(&[0..10, 20..30], &[5..25]), vec![5..10, 20..25]);
        assert_eq!(union(&[0..10, 20..30], &[5..22]), vec![0..30]);
        assert_eq!(intersect(&[0..10], &[]), Vec::<Range<usize>>::new());
    }
}
