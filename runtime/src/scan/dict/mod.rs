//! A decoder of our own for flat column chunks whose pages are dictionary-encoded (or
//! plain): the rows a scan keeps are found from dictionary indices, and only they are ever
//! gathered.
//!
//! Per row group: the filter's columns are read first (one read batch: each chunk's
//! dictionary page and the pages the page index's selection touches). A predicate whose
//! conjuncts each read one column ([`ObjectScan::by_column`]) is answered once per dictionary
//! entry, and the rows are narrowed column after column — the column that keeps the fewest
//! dictionary entries first, every later one read only at the rows the earlier ones kept (a
//! bit-packed run is read at a row without unpacking its neighbours). Then the output
//! columns' pages that hold a kept row are read (a second read batch), and each output column
//! is gathered at the kept rows from its dictionary (fixed-width values read straight from it,
//! others by `take`; an Arrow dictionary column takes the indices as its keys). A plain page
//! (a writer's fallback when a dictionary grew too large) is its own dictionary: its values
//! are the source, the row's place in the page the index. A column whose dictionary has more
//! entries than the rows left to test is tested per row instead (its values gathered at them).
//! The next row group's reads go out while one decodes.
//!
//! Why: on TPC-H Q6 at SF 1 the Parquet decoder decoded each filter column whole into Arrow
//! arrays, evaluated the predicate on them, carried a `RowSelection` between filters, and
//! decoded `l_extendedprice` (a dictionary page of ~0.95 MB a row group) through its
//! dictionary for every row of each page holding a selected one (2 % of rows are). With this
//! decoder, Q6 on a one-worker device went from ~165 to ~88 ms and Q1 from ~300 to ~220 ms;
//! Snappy is now a third to a half of a scan's samples.
//!
//! A top k's bound (`ObjectScan::narrowing`) runs first, as one more column test.
//!
//! Which scans ([`plan`]): every column read is top-level,
//! not repeated, and of a physical type and Arrow type pair this decoder builds (`source_type`);
//! a predicate, if any, split by column. Which row groups: those whose chunks use only PLAIN,
//! RLE and dictionary encodings; the others go to the Parquet decoder
//! (`super::decoded_by_parquet`). A null row (by its page's definition levels) takes the
//! test's answer for a null, and gathers as a null.
//!
//! `pages.rs` reads a chunk's pages, `rows.rs` narrows and gathers rows by them, `hybrid.rs`
//! decodes Parquet's RLE / bit-packed hybrid.

mod hybrid;
mod pages;
mod rows;

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arrow::array::{Array, ArrayRef, DictionaryArray, Int32Array, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};
use futures::StreamExt;
use futures::stream;
use parquet::arrow::arrow_reader::RowSelection;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::basic::{Encoding, Type as PhysicalType};
use parquet::file::metadata::ParquetMetaData;

use super::{Decoded, ErrorSlot, ObjectReader, ObjectScan, Predicate, ScanCounters};
use crate::error::{Error, Result};
use pages::{Body, Chunk, Fetched, Pieces, holds_any, page_rows, read_chunk};
use rows::{Scratch, gather, narrow};

/// A column the decoder reads.
struct Col {
    /// Its name.
    name: String,
    /// Its index in the scan's Arrow schema.
    root: usize,
    /// Its Parquet leaf.
    leaf: usize,
    /// The type the scan gives it.
    output: DataType,
    /// The type its dictionary's (or a plain page's) values are decoded as: `output`, or
    /// an Arrow dictionary column's value type.
    source: DataType,
    physical: PhysicalType,
    /// Optional in the file: its pages carry definition levels.
    optional: bool,
}

/// What the decoder does with one scan.
pub(super) struct Plan {
    /// Every column read, in the schema's order.
    cols: Vec<Col>,
    /// The output columns (indices into `cols`), in the schema's order.
    output: Vec<usize>,
    /// The predicate's groups: the column (an index into `cols`) and its test.
    filters: Vec<(usize, Predicate)>,
    /// A top k's bound (`ObjectScan::narrowing`): its column and test, run before the filters.
    bound: Option<(usize, Predicate)>,
    /// The schema of the batches.
    schema: SchemaRef,
}

/// The decoder's plan for `scan`, or `None` when the scan is not one it reads (see the module
/// docs).
pub(super) fn plan(scan: &ObjectScan) -> Option<Plan> {
    if scan.predicate.is_some() && scan.by_column.is_none() {
        return None;
    }
    let schema = scan.metadata.schema();
    let descr = scan.metadata.metadata().file_metadata().schema_descr();
    let by_column = scan.by_column.clone().unwrap_or_default();
    let bound = match &scan.narrowing {
        None => None,
        Some((cols, test)) => match cols.as_slice() {
            [name] => Some((name.clone(), test.clone())),
            _ => return None,
        },
    };
    let mut roots: Vec<usize> = scan
        .columns
        .iter()
        .chain(by_column.iter().map(|(n, _)| n))
        .chain(bound.iter().map(|(n, _)| n))
        .map(|n| schema.index_of(n).ok())
        .collect::<Option<_>>()?;
    roots.sort_unstable();
    roots.dedup();
    let mut cols = Vec::with_capacity(roots.len());
    for &root in &roots {
        let leaves: Vec<usize> = (0..descr.num_columns())
            .filter(|&l| descr.get_column_root_idx(l) == root)
            .collect();
        let [leaf] = leaves[..] else { return None };
        let c = descr.column(leaf);
        if c.path().parts().len() != 1 || c.max_rep_level() != 0 || c.max_def_level() > 1 {
            return None;
        }
        let field = schema.field(root);
        let source = source_type(c.physical_type(), field.data_type())?;
        cols.push(Col {
            name: field.name().clone(),
            root,
            leaf,
            output: field.data_type().clone(),
            source,
            physical: c.physical_type(),
            optional: c.max_def_level() == 1,
        });
    }
    let at = |name: &str| cols.iter().position(|c| c.name == name);
    let mut output: Vec<usize> = scan.columns.iter().map(|n| at(n)).collect::<Option<_>>()?;
    output.sort_unstable();
    output.dedup();
    let filters = by_column
        .into_iter()
        .map(|(n, p)| Some((at(&n)?, p)))
        .collect::<Option<_>>()?;
    let bound = match bound {
        Some((n, p)) => Some((at(&n)?, p)),
        None => None,
    };
    let roots: Vec<usize> = output.iter().map(|&i| cols[i].root).collect();
    let schema = Arc::new(schema.project(&roots).ok()?);
    Some(Plan {
        cols,
        output,
        filters,
        bound,
        schema,
    })
}

/// The type a column's values are decoded as, when the decoder builds its output type from
/// this physical type: fixed-width values kept as stored (a decimal stored as INT64 as
/// `Decimal64`, widened to `Decimal128` when the scan asks for that), strings as `Utf8`
/// (viewed or made an Arrow dictionary's values as the scan asks).
fn source_type(physical: PhysicalType, output: &DataType) -> Option<DataType> {
    use DataType as D;
    let ok = match (physical, output) {
        (PhysicalType::INT32, D::Int32 | D::Date32) => true,
        (PhysicalType::INT64, D::Int64 | D::Decimal64(..) | D::Decimal128(..)) => true,
        (PhysicalType::FLOAT, D::Float32) | (PhysicalType::DOUBLE, D::Float64) => true,
        (PhysicalType::BYTE_ARRAY, D::Utf8 | D::Utf8View) => true,
        (PhysicalType::BYTE_ARRAY, D::Dictionary(k, v)) => **k == D::Int32 && **v == D::Utf8,
        _ => false,
    };
    match output {
        _ if !ok => None,
        D::Dictionary(_, v) => Some(v.as_ref().clone()),
        t => Some(t.clone()),
    }
}

/// Whether the decoder reads row group `rg` (see the module docs).
fn reads_row_group(md: &ParquetMetaData, rg: usize, plan: &Plan) -> bool {
    let group = md.row_group(rg);
    plan.cols.iter().all(|c| {
        let chunk = group.column(c.leaf);
        chunk.encodings().all(|e| {
            matches!(
                e,
                Encoding::PLAIN
                    | Encoding::RLE
                    | Encoding::RLE_DICTIONARY
                    | Encoding::PLAIN_DICTIONARY
            )
        })
    })
}

/// The batches of `scan` by `plan`: row groups the decoder reads, in order, and runs of the
/// others through the Parquet decoder.
pub(super) fn open(
    scan: ObjectScan,
    plan: Plan,
    counters: Arc<ScanCounters>,
    errors: ErrorSlot,
) -> Decoded {
    let md = scan.metadata.metadata().clone();
    let mut selection = scan.pruned.selection.clone();
    let mut parts: Vec<(bool, Vec<usize>, Option<RowSelection>)> = Vec::new();
    for &rg in &scan.pruned.row_groups {
        let rows = md.row_group(rg).num_rows() as usize;
        let part = selection.as_mut().map(|s| s.split_off(rows));
        let ours = reads_row_group(&md, rg, &plan);
        match parts.last_mut() {
            Some((false, groups, sel)) if !ours => {
                groups.push(rg);
                super::append_selection(sel, part);
            }
            _ => parts.push((ours, vec![rg], part)),
        }
    }
    let shared = Arc::new(Shared {
        scan,
        plan,
        counters,
        errors,
    });
    let limit = shared.scan.limit;
    // The next part's reads go out while this one decodes (the read path works on its own
    // thread).
    let batches = stream::iter(parts)
        .map(move |(ours, groups, sel)| {
            let sh = shared.clone();
            async move {
                if !ours {
                    let mut scan = sh.scan.clone();
                    scan.pruned.row_groups = groups;
                    scan.pruned.selection = sel;
                    return match super::decoded_by_parquet(
                        scan,
                        sh.counters.clone(),
                        sh.errors.clone(),
                    ) {
                        Ok(s) => s,
                        Err(e) => stream::once(async { Err(e) }).boxed(),
                    };
                }
                let rg = groups[0];
                sh.counters
                    .row_groups_by_dictionary
                    .fetch_add(1, Ordering::Relaxed);
                match sh.row_group(rg, sel).await {
                    Ok(batches) => stream::iter(batches.into_iter().map(Ok)).boxed(),
                    Err(e) => stream::once(async { Err(e) }).boxed(),
                }
            }
        })
        .buffered(2)
        .flatten();
    match limit {
        None => batches.boxed(),
        // Stop after `limit` rows, the last batch cut.
        Some(limit) => batches
            .scan(limit, |left, b| {
                let out = match b {
                    Ok(_) if *left == 0 => None,
                    Ok(b) => {
                        let b = b.slice(0, b.num_rows().min(*left));
                        *left -= b.num_rows();
                        Some(Ok(b))
                    }
                    Err(e) => Some(Err(e)),
                };
                futures::future::ready(out)
            })
            .boxed(),
    }
}

/// What every row group of one scan uses.
struct Shared {
    scan: ObjectScan,
    plan: Plan,
    counters: Arc<ScanCounters>,
    errors: ErrorSlot,
}

impl Shared {
    fn corrupt(&self, rg: usize, col: &Col, detail: impl std::fmt::Display) -> Error {
        Error::CorruptObject {
            object: self.scan.object.id.clone(),
            detail: format!("row group {rg}, column '{}': {detail}", col.name),
        }
    }

    /// One row group's batches: its selected rows narrowed by the filters, the output columns
    /// gathered at those left.
    async fn row_group(&self, rg: usize, sel: Option<RowSelection>) -> Result<Vec<RecordBatch>> {
        let md = self.scan.metadata.metadata().clone();
        let rows = md.row_group(rg).num_rows() as usize;
        let mut pos: Vec<u32> = Vec::with_capacity(rows);
        match &sel {
            None => pos.extend(0..rows as u32),
            Some(sel) => {
                let mut at = 0usize;
                for s in sel.iter() {
                    if !s.skip {
                        pos.extend(at as u32..(at + s.row_count) as u32);
                    }
                    at += s.row_count;
                }
            }
        }
        let mut chunks: Vec<Option<Chunk>> = (0..self.plan.cols.len()).map(|_| None).collect();
        let mut scratch = Scratch::default();

        // A top k's bound first, on its column's dictionary as the row group starts (it only
        // tightens: later rows are kept by an older, looser bound); its drops counted as the
        // Parquet decoder's are (`super::count_narrowed`).
        if let Some((c, test)) = &self.plan.bound
            && !pos.is_empty()
        {
            // With the filter's columns: one read.
            let mut first: Vec<usize> = vec![*c];
            first.extend(self.plan.filters.iter().map(|(f, _)| *f).filter(|f| f != c));
            self.load(rg, &first, &pos, &mut chunks).await?;
            let chunk = chunks[*c].as_ref().expect("loaded");
            let col = &self.plan.cols[*c];
            let before = pos.len();
            self.apply(rg, chunk, col, test, &mut pos, &mut scratch)?;
            let with_predicate = self.scan.predicate.is_some();
            super::count_narrowed(&self.counters, before - pos.len(), with_predicate);
        }

        // The filter's columns: answered per dictionary entry, narrowed one after another.
        if !self.plan.filters.is_empty() && !pos.is_empty() {
            let filtered: Vec<usize> = self
                .plan
                .filters
                .iter()
                .map(|(c, _)| *c)
                .filter(|&c| chunks[c].is_none())
                .collect();
            self.load(rg, &filtered, &pos, &mut chunks).await?;
            let started = std::time::Instant::now();
            let scanned = pos.len();
            // Columns whose dictionaries are small beside the rows to test (an eighth of them
            // or less) are answered per entry first, the one that keeps the smallest share of
            // its entries first; then the others, each per entry or per row by the rows left
            // (`apply`).
            let mut answered: Vec<(usize, Answers)> = Vec::new();
            let mut later: Vec<(usize, &Predicate)> = Vec::new();
            for (c, test) in &self.plan.filters {
                let chunk = chunks[*c].as_ref().expect("loaded");
                let col = &self.plan.cols[*c];
                match chunk.dict.as_ref().is_some_and(|d| d.len() * 8 > pos.len()) {
                    true => later.push((*c, test)),
                    false => answered.push((*c, self.answers(chunk, col, test)?)),
                }
            }
            answered.sort_by(|a, b| a.1.share().total_cmp(&b.1.share()));
            for (c, answers) in &answered {
                let chunk = chunks[*c].as_ref().expect("loaded");
                let col = &self.plan.cols[*c];
                narrow(chunk, answers, &mut pos, &mut scratch)
                    .map_err(|e| self.corrupt(rg, col, e))?;
                if pos.is_empty() {
                    break;
                }
            }
            for (c, test) in later {
                if pos.is_empty() {
                    break;
                }
                let chunk = chunks[c].as_ref().expect("loaded");
                self.apply(rg, chunk, &self.plan.cols[c], test, &mut pos, &mut scratch)?;
            }
            self.counters
                .rows_scanned
                .fetch_add(scanned as u64, Ordering::Relaxed);
            self.counters
                .rows_selected
                .fetch_add(pos.len() as u64, Ordering::Relaxed);
            self.counters
                .filter_us
                .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        if pos.is_empty() {
            return Ok(Vec::new());
        }

        // The output columns at the rows kept.
        let missing: Vec<usize> = self
            .plan
            .output
            .iter()
            .copied()
            .filter(|&c| chunks[c].is_none())
            .collect();
        self.load(rg, &missing, &pos, &mut chunks).await?;
        // A batch the rows kept of whole runs of `step` rows of the row group, as many runs as
        // keep at most `step` rows: where pages hold `step` rows, as the device writes them,
        // no page is unpacked for two batches.
        let step = self.scan.batch_size.max(1);
        let mut batches = Vec::with_capacity(pos.len().div_ceil(step));
        let mut rest = &pos[..];
        while !rest.is_empty() {
            let mut take = 0;
            while let Some(&p) = rest.get(take) {
                let end = (p as usize / step + 1) * step;
                let next = take + rest[take..].partition_point(|&q| (q as usize) < end);
                if take > 0 && next > step {
                    break;
                }
                take = next;
            }
            let (window, after) = rest.split_at(take);
            rest = after;
            let columns = self
                .plan
                .output
                .iter()
                .map(|&c| {
                    let chunk = chunks[c].as_ref().expect("loaded");
                    let col = &self.plan.cols[c];
                    gather(chunk, col, window, &mut scratch).map_err(|e| self.corrupt(rg, col, e))
                })
                .collect::<Result<Vec<_>>>()?;
            let options = RecordBatchOptions::new().with_row_count(Some(window.len()));
            batches.push(RecordBatch::try_new_with_options(
                self.plan.schema.clone(),
                columns,
                &options,
            )?);
        }
        Ok(batches)
    }

    /// Reads and decompresses the chunks of columns `cols` of row group `rg`: each one's
    /// dictionary page and the pages that hold a row of `pos` (every page without a page
    /// index), in one read batch.
    async fn load(
        &self,
        rg: usize,
        cols: &[usize],
        pos: &[u32],
        chunks: &mut [Option<Chunk>],
    ) -> Result<()> {
        if cols.is_empty() {
            return Ok(());
        }
        let md = self.scan.metadata.metadata().clone();
        let group = md.row_group(rg);
        let rows = group.num_rows() as usize;
        let mut ranges: Vec<Range<u64>> = Vec::new();
        let mut wanted: Vec<(usize, Range<usize>, Option<Fetched>)> = Vec::new();
        for &c in cols {
            let col = &self.plan.cols[c];
            let meta = group.column(col.leaf);
            let (start, len) = meta.byte_range();
            let first = ranges.len();
            let pages = md
                .offset_index()
                .and_then(|oi| oi.get(rg))
                .and_then(|o| o.get(col.leaf))
                .map(|o| o.page_locations().clone());
            let fetched = match pages {
                None => {
                    ranges.push(start..start + len);
                    None
                }
                Some(pages) => {
                    if let Some(p) = pages.first()
                        && p.offset as u64 > start
                    {
                        ranges.push(start..p.offset as u64);
                    }
                    let keep: Vec<bool> = (0..pages.len())
                        .map(|i| {
                            let (a, b) = page_rows(&pages, i, rows);
                            holds_any(pos, a, b)
                        })
                        .collect();
                    for (p, _) in pages.iter().zip(&keep).filter(|(_, k)| **k) {
                        let at = p.offset as u64;
                        ranges.push(at..at + p.compressed_page_size.max(0) as u64);
                    }
                    Some(Fetched { pages, keep })
                }
            };
            wanted.push((c, first..ranges.len(), fetched));
        }
        let mut reader = ObjectReader::new(
            self.scan.object.clone(),
            self.counters.clone(),
            self.errors.clone(),
        );
        let bytes = reader
            .get_byte_ranges(ranges.clone())
            .await
            .map_err(|e| self.errors.take_or(Error::Parquet(e)))?;
        for (c, span, fetched) in wanted {
            let col = &self.plan.cols[c];
            let pieces = Pieces(
                ranges[span.clone()]
                    .iter()
                    .map(|r| r.start)
                    .zip(bytes[span].iter().cloned())
                    .collect(),
            );
            let chunk =
                read_chunk(&md, rg, col, pieces, fetched).map_err(|e| self.corrupt(rg, col, e))?;
            chunks[c] = Some(chunk);
        }
        Ok(())
    }

    /// Narrows `pos` to the rows of `chunk` that pass `test`: answered per dictionary entry,
    /// or per row when the dictionary has more entries than `pos` has rows (the column's
    /// values gathered at them and tested).
    fn apply(
        &self,
        rg: usize,
        chunk: &Chunk,
        col: &Col,
        test: &Predicate,
        pos: &mut Vec<u32>,
        s: &mut Scratch,
    ) -> Result<()> {
        if chunk.dict.as_ref().is_none_or(|d| d.len() <= pos.len()) {
            let answers = self.answers(chunk, col, test)?;
            return narrow(chunk, &answers, pos, s).map_err(|e| self.corrupt(rg, col, e));
        }
        let values = gather(chunk, col, pos, s).map_err(|e| self.corrupt(rg, col, e))?;
        let b = test(&column_batch(col, values)?).map_err(|e| self.errors.take_or(e))?;
        let mut kept = 0;
        for (j, passed) in passing(&b).iter().enumerate() {
            pos[kept] = pos[j];
            kept += passed as usize;
        }
        pos.truncate(kept);
        Ok(())
    }

    /// The test's answer for each entry of a chunk's dictionary (a row passes when its
    /// entry's answer is true), or `None` when the chunk has no dictionary (its plain pages
    /// are tested as they come).
    fn answers(&self, chunk: &Chunk, col: &Col, test: &Predicate) -> Result<Answers> {
        let run = |values: &ArrayRef| -> Result<Vec<bool>> {
            let batch = one_column(col, values)?;
            let b = test(&batch).map_err(|e| self.errors.take_or(e))?;
            Ok(passing(&b).iter().collect())
        };
        let dictionary = chunk.dict.as_ref().map(&run).transpose()?;
        let null = match chunk.pages.iter().any(|p| p.nulls.is_some()) {
            true => run(&arrow::array::new_null_array(&col.source, 1))?[0],
            false => false,
        };
        let plain = chunk
            .pages
            .iter()
            .map(|p| match &p.body {
                Body::Values(v) => run(v).map(Some),
                Body::Indices { .. } => Ok(None),
            })
            .collect::<Result<_>>()?;
        Ok(Answers {
            dictionary,
            null,
            plain,
        })
    }
}

/// Which rows of a test's answer pass (a null fails).
fn passing(b: &arrow::array::BooleanArray) -> arrow::buffer::BooleanBuffer {
    match b.nulls() {
        Some(n) => b.values() & n.inner(),
        None => b.values().clone(),
    }
}

/// A one-column batch of `values` (a source's) as a filter takes it: an Arrow dictionary
/// column as a dictionary over them (keys 0..n).
fn one_column(col: &Col, values: &ArrayRef) -> Result<RecordBatch> {
    let array: ArrayRef = match &col.output {
        DataType::Dictionary(..) => {
            let keys = Int32Array::from_iter_values(0..values.len() as i32);
            Arc::new(DictionaryArray::<Int32Type>::try_new(keys, values.clone())?)
        }
        _ => values.clone(),
    };
    column_batch(col, array)
}

/// A batch of `col` alone, `array` of its output type.
fn column_batch(col: &Col, array: ArrayRef) -> Result<RecordBatch> {
    let field = Field::new(&col.name, col.output.clone(), true);
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(vec![field])),
        vec![array],
    )?)
}

/// A filter's answers for one chunk.
struct Answers {
    /// Per dictionary entry.
    dictionary: Option<Vec<bool>>,
    /// For a null (asked only when a page read has nulls).
    null: bool,
    /// Per row of each plain page (by the chunk's page order; `None` for dictionary pages).
    plain: Vec<Option<Vec<bool>>>,
}

impl Answers {
    /// The share of dictionary entries that pass (1 without a dictionary).
    fn share(&self) -> f64 {
        match &self.dictionary {
            Some(d) if !d.is_empty() => d.iter().filter(|a| **a).count() as f64 / d.len() as f64,
            _ => 1.0,
        }
    }
}
