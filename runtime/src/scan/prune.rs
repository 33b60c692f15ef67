//! Pruning before decoding: which row groups and which pages of a Parquet object may hold rows
//! that satisfy a predicate, judged from min/max/null-count statistics (footer for row groups,
//! page index for pages). Conservative: anything it cannot judge is kept.

use std::collections::HashMap;
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
#[derive(Clone)]
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

/// One column's statistics over the pages of one column chunk (`None`: unknown).
struct ChunkPages<'a> {
    column: &'a str,
    pages: usize,
    stats: Option<ColumnStats>,
}

impl StatsSource for ChunkPages<'_> {
    fn len(&self) -> usize {
        self.pages
    }

    fn column(&self, name: &str) -> Option<ColumnStats> {
        self.stats.clone().filter(|_| name == self.column)
    }
}

/// The page index of some row groups, its statistics converted to Arrow once per column for
/// them all (as leaves of the predicate reach each column).
struct PageIndex<'a> {
    md: &'a ParquetMetaData,
    schema: &'a Schema,
    row_groups: &'a [usize],
    columns: HashMap<String, Option<ColumnPages>>,
}

/// One column's pages in [`PageIndex`]'s row groups.
struct ColumnPages {
    /// Every page's statistics, the row groups' pages one after another (`None` when they
    /// do not convert).
    stats: Option<ColumnStats>,
    /// Per row group, where its pages begin in `stats`, and their first rows.
    chunks: Vec<(usize, Vec<usize>)>,
}

impl<'a> PageIndex<'a> {
    fn new(md: &'a ParquetMetaData, schema: &'a Schema, row_groups: &'a [usize]) -> Self {
        PageIndex {
            md,
            schema,
            row_groups,
            columns: HashMap::new(),
        }
    }

    /// Column `name`'s pages in the `k`-th row group: their statistics (`None` when they
    /// do not convert) and first rows; `None` without the column's page locations.
    fn chunk(&mut self, name: &str, k: usize) -> Option<(Option<ColumnStats>, &[usize])> {
        if !self.columns.contains_key(name) {
            let pages = ColumnPages::convert(self.md, self.schema, self.row_groups, name);
            self.columns.insert(name.to_string(), pages);
        }
        let pages = self.columns.get(name)?.as_ref()?;
        let (at, starts) = pages.chunks.get(k)?;
        let n = starts.len();
        let stats = pages.stats.as_ref().map(|s| ColumnStats {
            mins: s.mins.slice(*at, n),
            maxes: s.maxes.slice(*at, n),
            null_counts: s.null_counts.slice(*at, n),
            row_counts: s.row_counts.as_ref().map(|r| r.slice(*at, n)),
        });
        Some((stats, starts))
    }
}

impl ColumnPages {
    fn convert(
        md: &ParquetMetaData,
        schema: &Schema,
        row_groups: &[usize],
        name: &str,
    ) -> Option<Self> {
        let conv =
            StatisticsConverter::try_new(name, schema, md.file_metadata().schema_descr()).ok()?;
        let leaf = conv.parquet_column_index()?;
        let (ci, oi) = (md.column_index()?, md.offset_index()?);
        let mut chunks = Vec::with_capacity(row_groups.len());
        let mut at = 0;
        for &rg in row_groups {
            let pages = oi.get(rg)?.get(leaf)?.page_locations();
            let starts: Vec<usize> = pages.iter().map(|p| p.first_row_index as usize).collect();
            chunks.push((at, starts));
            at += pages.len();
        }
        let rgs = row_groups.iter();
        let stats = (|| {
            Some(ColumnStats {
                mins: conv.data_page_mins(ci, oi, rgs.clone()).ok()?,
                maxes: conv.data_page_maxes(ci, oi, rgs.clone()).ok()?,
                null_counts: conv.data_page_null_counts(ci, oi, rgs.clone()).ok()?,
                row_counts: conv.data_page_row_counts(oi, md.row_groups(), rgs).ok()?,
            })
        })()
        // One value per page, or the arrays cannot be cut by row group.
        .filter(|s| {
            let rows = s.row_counts.as_ref().is_none_or(|r| r.len() == at);
            s.mins.len() == at && s.maxes.len() == at && s.null_counts.len() == at && rows
        });
        Some(ColumnPages { stats, chunks })
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
    let mut pages = PageIndex::new(md, schema, &row_groups);
    let mut selectors: Vec<RowSelector> = Vec::new();
    for (k, &rg) in row_groups.iter().enumerate() {
        let rows = md.row_group(rg).num_rows() as usize;
        out.rows_total += rows as u64;
        let ranges = if have_page_index {
            page_ranges(pred, &mut pages, k, rows, &mut out)
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
    drop(pages);
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
    let row_groups = [rg];
    let mut pages = PageIndex::new(md, schema, &row_groups);
    let ranges = page_ranges(test, &mut pages, 0, rows, &mut Pruned::default());
    Some(RowSelection::from_consecutive_ranges(
        ranges.into_iter(),
        rows,
    ))
}

/// Row ranges of the `k`-th row group of `index` (of `rows` rows) that may match, from the
/// page index.
fn page_ranges(
    pred: &PhysExpr,
    index: &mut PageIndex,
    k: usize,
    rows: usize,
    out: &mut Pruned,
) -> Vec<Range<usize>> {
    match pred {
        PhysExpr::And(v) => v.iter().fold(vec![0..rows], |acc, e| {
            intersect(&acc, &page_ranges(e, index, k, rows, out))
        }),
        PhysExpr::Or(v) => {
            let mut acc: Vec<Range<usize>> = Vec::new();
            for e in v {
                acc = union(&acc, &page_ranges(e, index, k, rows, out));
            }
            acc
        }
        leaf => {
            let cols = leaf.columns();
            let [column] = cols.as_slice() else {
                return vec![0..rows];
            };
            let Some((stats, pages)) = index.chunk(column, k) else {
                return vec![0..rows];
            };
            let src = ChunkPages {
                column,
                pages: pages.len(),
                stats,
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
