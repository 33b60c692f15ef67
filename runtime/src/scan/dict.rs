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
//! is gathered at the kept rows from its dictionary (`take`; an Arrow dictionary column takes
//! the indices as its keys). A plain page (a writer's fallback when a dictionary grew too
//! large) is its own dictionary: its values are the source, the row's offset in the page the
//! index.
//!
//! Why: on TPC-H Q6 at SF 1 the Parquet decoder decoded each filter column whole into Arrow
//! arrays, evaluated the predicate on them, carried a `RowSelection` between filters, and
//! decoded `l_extendedprice` (a dictionary of ~78 000 entries a row group) through its
//! dictionary for every row of each page holding a selected one (2 % of rows are). A
//! prototype of this decoder over the same file (all in memory, one thread) ran Q6 in 68-81 ms
//! against the decoder path's ~180 ms: what remains is mostly Snappy.
//!
//! A top k's bound (`ObjectScan::narrowing`) runs first, as one more column test.
//!
//! Which scans ([`plan`]): every column read is top-level,
//! not repeated, and of a physical type and Arrow type pair this decoder builds (`source_type`);
//! a predicate, if any, split by column. Which row groups: those whose chunks use only PLAIN,
//! RLE and dictionary encodings; the others go to the Parquet decoder
//! (`super::decoded_by_parquet`). A null row (by its page's definition levels) takes the
//! test's answer for a null, and gathers as a null.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arrow::array::{
    Array, ArrayRef, DictionaryArray, Int32Array, RecordBatch, RecordBatchOptions, StringArray,
    UInt32Array, make_array,
};
use arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream;
use parquet::arrow::arrow_reader::RowSelection;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::basic::{Encoding, Type as PhysicalType};
use parquet::column::page::{Page, PageReader};
use parquet::file::metadata::ParquetMetaData;
use parquet::file::page_index::offset_index::PageLocation;
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::serialized_reader::SerializedPageReader;

use super::{Batches, ErrorSlot, ObjectReader, ObjectScan, Predicate, ScanCounters};
use crate::error::{Error, Result};

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
    /// Optional in the file (its chunks must count no nulls).
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
) -> Batches {
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
                if let (Some(sel), Some(part)) = (sel.as_mut(), part) {
                    *sel = sel.iter().chain(part.iter()).copied().collect();
                }
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
            let answers = self.answers(chunk, col, test)?;
            let before = pos.len();
            narrow(chunk, &answers, &mut pos, &mut scratch)
                .map_err(|e| self.corrupt(rg, col, e))?;
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
            let mut answered: Vec<(usize, Answers)> = Vec::new();
            for (c, test) in &self.plan.filters {
                let chunk = chunks[*c].as_ref().expect("loaded");
                let col = &self.plan.cols[*c];
                answered.push((*c, self.answers(chunk, col, test)?));
            }
            // The column that keeps the smallest share of its dictionary first.
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
        let step = self.scan.batch_size.max(1);
        let mut batches = Vec::with_capacity(pos.len().div_ceil(step));
        for window in pos.chunks(step) {
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
        let mut wanted: Vec<(usize, Range<usize>, Option<Vec<bool>>)> = Vec::new();
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
            let keep = match &pages {
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
                            let (a, b) = page_rows(pages, i, rows);
                            holds_any(pos, a, b)
                        })
                        .collect();
                    for (p, _) in pages.iter().zip(&keep).filter(|(_, k)| **k) {
                        let at = p.offset as u64;
                        ranges.push(at..at + p.compressed_page_size.max(0) as u64);
                    }
                    Some(keep)
                }
            };
            wanted.push((c, first..ranges.len(), keep));
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
        for (c, span, keep) in wanted {
            let col = &self.plan.cols[c];
            let pieces = Pieces(
                ranges[span.clone()]
                    .iter()
                    .map(|r| r.start)
                    .zip(bytes[span].iter().cloned())
                    .collect(),
            );
            let chunk =
                read_chunk(&md, rg, col, pieces, keep).map_err(|e| self.corrupt(rg, col, e))?;
            chunks[c] = Some(chunk);
        }
        Ok(())
    }

    /// The test's answer for each entry of a chunk's dictionary (a row passes when its
    /// entry's answer is true), or `None` when the chunk has no dictionary (its plain pages
    /// are tested as they come).
    fn answers(&self, chunk: &Chunk, col: &Col, test: &Predicate) -> Result<Answers> {
        let run = |values: &ArrayRef| -> Result<Vec<bool>> {
            let batch = one_column(col, values)?;
            let b = test(&batch).map_err(|e| self.errors.take_or(e))?;
            // A null answer fails.
            let passed = match b.nulls() {
                Some(n) => b.values() & n.inner(),
                None => b.values().clone(),
            };
            Ok(passed.iter().collect())
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

/// A one-column batch of `values` as a filter takes it: an Arrow dictionary column as a
/// dictionary over them (keys 0..n).
fn one_column(col: &Col, values: &ArrayRef) -> Result<RecordBatch> {
    let array: ArrayRef = match &col.output {
        DataType::Dictionary(..) => {
            let keys = Int32Array::from_iter_values(0..values.len() as i32);
            Arc::new(DictionaryArray::<Int32Type>::try_new(keys, values.clone())?)
        }
        _ => values.clone(),
    };
    let schema = Arc::new(Schema::new(vec![Field::new(
        &col.name,
        col.output.clone(),
        true,
    )]));
    Ok(RecordBatch::try_new(schema, vec![array])?)
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

/// A column chunk's pages as read: its dictionary, and the data pages fetched.
struct Chunk {
    dict: Option<ArrayRef>,
    pages: Vec<DataPage>,
}

/// A decompressed data page.
struct DataPage {
    /// Its first row in the row group.
    first: usize,
    rows: usize,
    /// Values it holds (its rows less its nulls).
    values: usize,
    /// With nulls: each row's place among the values, [`NULL`] for a null row.
    nulls: Option<Vec<u32>>,
    body: Body,
}

/// A null row's place among its page's values.
const NULL: u32 = u32::MAX;

/// Each of `rows` rows' place among a page's values by its definition levels (an RLE /
/// bit-packed hybrid of width 1), [`NULL`] for a null; `None` when no row is null.
fn places(levels: &[u8], rows: usize) -> std::result::Result<Option<Vec<u32>>, String> {
    let (mut runs_buf, mut defined) = (Vec::new(), Vec::new());
    unpack_at(levels, 1, rows, None, &mut runs_buf, &mut defined)?;
    if defined.iter().all(|&d| d == 1) {
        return Ok(None);
    }
    let mut next = 0u32;
    let places = defined
        .iter()
        .map(|&d| match d {
            1 => {
                next += 1;
                next - 1
            }
            _ => NULL,
        })
        .collect();
    Ok(Some(places))
}

enum Body {
    /// Dictionary indices: an RLE / bit-packed hybrid of `bit_width` bits.
    Indices { data: Bytes, bit_width: u8 },
    /// Plain values, decoded.
    Values(ArrayRef),
}

/// Rows `[a, b)` of page `i` of a chunk by its page index.
fn page_rows(pages: &[PageLocation], i: usize, rows: usize) -> (usize, usize) {
    let a = pages[i].first_row_index.max(0) as usize;
    let b = pages
        .get(i + 1)
        .map_or(rows, |p| p.first_row_index.max(0) as usize);
    (a, b.max(a))
}

/// Whether sorted `pos` holds a row in `[a, b)`.
fn holds_any(pos: &[u32], a: usize, b: usize) -> bool {
    let i = pos.partition_point(|&p| (p as usize) < a);
    pos.get(i).is_some_and(|&p| (p as usize) < b)
}

/// Byte ranges of an object as fetched, served to the page reader by file offset.
struct Pieces(Vec<(u64, Bytes)>);

impl Pieces {
    fn find(&self, start: u64, len: usize) -> parquet::errors::Result<Bytes> {
        for (at, b) in &self.0 {
            if start >= *at && start + len as u64 <= at + b.len() as u64 {
                let s = (start - at) as usize;
                return Ok(b.slice(s..s + len));
            }
        }
        Err(parquet::errors::ParquetError::General(format!(
            "bytes {start}..{} were not read",
            start + len as u64
        )))
    }
}

impl Length for Pieces {
    fn len(&self) -> u64 {
        self.0
            .iter()
            .map(|(a, b)| a + b.len() as u64)
            .max()
            .unwrap_or(0)
    }
}

impl ChunkReader for Pieces {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        use bytes::Buf;
        let (at, b) = self
            .0
            .iter()
            .find(|(at, b)| start >= *at && start < at + b.len() as u64)
            .ok_or_else(|| {
                parquet::errors::ParquetError::General(format!("byte {start} was not read"))
            })?;
        Ok(b.slice((start - at) as usize..).reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.find(start, length)
    }
}

/// Decompresses a chunk's fetched pages (`keep`: which pages of its page index were fetched;
/// `None`: the whole chunk was).
fn read_chunk(
    md: &ParquetMetaData,
    rg: usize,
    col: &Col,
    pieces: Pieces,
    keep: Option<Vec<bool>>,
) -> std::result::Result<Chunk, String> {
    let group = md.row_group(rg);
    let meta = group.column(col.leaf);
    let rows = group.num_rows() as usize;
    let locations = md
        .offset_index()
        .and_then(|oi| oi.get(rg))
        .and_then(|o| o.get(col.leaf))
        .map(|o| o.page_locations().clone());
    let mut reader = SerializedPageReader::new(Arc::new(pieces), meta, rows, locations.clone())
        .map_err(|e| e.to_string())?;
    let mut chunk = Chunk {
        dict: None,
        pages: Vec::new(),
    };
    let mut next_row = 0usize;
    let mut page = 0usize;
    loop {
        let is_dict = match reader.peek_next_page().map_err(|e| e.to_string())? {
            None => break,
            Some(m) => m.is_dict,
        };
        if !is_dict && let (Some(keep), Some(locations)) = (&keep, &locations) {
            let fetched = keep.get(page).copied().unwrap_or(false);
            next_row = page_rows(locations, page, rows).0;
            page += 1;
            if !fetched {
                reader.skip_next_page().map_err(|e| e.to_string())?;
                continue;
            }
        }
        let Some(p) = reader.get_next_page().map_err(|e| e.to_string())? else {
            break;
        };
        match p {
            Page::DictionaryPage {
                buf,
                num_values,
                encoding,
                ..
            } => {
                if !matches!(encoding, Encoding::PLAIN | Encoding::PLAIN_DICTIONARY) {
                    return Err(format!("dictionary page encoded as {encoding}"));
                }
                chunk.dict = Some(plain_values(&buf, num_values as usize, col)?);
            }
            Page::DataPage {
                buf,
                num_values,
                encoding,
                def_level_encoding,
                ..
            } => {
                let n = num_values as usize;
                let mut at = 0;
                let mut nulls = None;
                if col.optional {
                    if def_level_encoding != Encoding::RLE {
                        return Err(format!("definition levels encoded as {def_level_encoding}"));
                    }
                    let len = buf
                        .get(..4)
                        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
                        .ok_or("a page shorter than its levels")?;
                    let levels = buf
                        .get(4..4 + len)
                        .ok_or("a page shorter than its levels")?;
                    nulls = places(levels, n)?;
                    at = 4 + len;
                }
                let page = data_page(next_row, n, nulls, buf.slice(at..), encoding, col, &chunk)?;
                chunk.pages.push(page);
                next_row += n;
            }
            Page::DataPageV2 {
                buf,
                num_values,
                encoding,
                num_nulls,
                num_rows,
                def_levels_byte_len,
                rep_levels_byte_len,
                ..
            } => {
                if num_rows != num_values || (num_nulls != 0 && !col.optional) {
                    return Err("levels that do not match the column".into());
                }
                let n = num_values as usize;
                let (rep, def) = (rep_levels_byte_len as usize, def_levels_byte_len as usize);
                let mut nulls = None;
                if num_nulls != 0 {
                    let levels = buf
                        .get(rep..rep + def)
                        .ok_or("a page shorter than its levels")?;
                    nulls = places(levels, n)?;
                }
                let values = buf.slice((rep + def).min(buf.len())..);
                let page = data_page(next_row, n, nulls, values, encoding, col, &chunk)?;
                chunk.pages.push(page);
                next_row += n;
            }
        }
    }
    Ok(chunk)
}

/// A data page of `rows` rows from `first` as the decoder keeps it: its nulls' places, and
/// its values section (`data`) as indices or plain values.
fn data_page(
    first: usize,
    rows: usize,
    nulls: Option<Vec<u32>>,
    data: Bytes,
    encoding: Encoding,
    col: &Col,
    chunk: &Chunk,
) -> std::result::Result<DataPage, String> {
    let values = match &nulls {
        Some(places) => places.iter().filter(|&&p| p != NULL).count(),
        None => rows,
    };
    let body = match encoding {
        Encoding::RLE_DICTIONARY | Encoding::PLAIN_DICTIONARY => {
            if chunk.dict.is_none() {
                return Err("a dictionary-encoded page without a dictionary".into());
            }
            let bit_width = *data.first().ok_or("an empty page")?;
            if bit_width > 32 {
                return Err(format!("bit width {bit_width}"));
            }
            Body::Indices {
                data: data.slice(1..),
                bit_width,
            }
        }
        Encoding::PLAIN => Body::Values(plain_values(&data, values, col)?),
        e => return Err(format!("a page encoded as {e}")),
    };
    Ok(DataPage {
        first,
        rows,
        values,
        nulls,
        body,
    })
}

/// `n` plain-encoded values of `col` as an Arrow array of its source type.
fn plain_values(buf: &Bytes, n: usize, col: &Col) -> std::result::Result<ArrayRef, String> {
    let short = || format!("a page shorter than its {n} values");
    let fixed = |width: usize, t: DataType| -> std::result::Result<ArrayRef, String> {
        let bytes = buf.get(..n * width).ok_or_else(short)?;
        // The page's own buffer when its values are aligned, else a copy.
        let buffer = match bytes.as_ptr().align_offset(width) {
            0 => Buffer::from(buf.slice(..n * width)),
            _ => Buffer::from_slice_ref(bytes),
        };
        let data = arrow::array::ArrayData::builder(t)
            .len(n)
            .add_buffer(buffer)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(make_array(data))
    };
    match (col.physical, &col.source) {
        (PhysicalType::INT32 | PhysicalType::FLOAT, t) => fixed(4, t.clone()),
        (PhysicalType::INT64, DataType::Decimal128(p, s)) => {
            let v = fixed(8, DataType::Decimal64(*p, *s))?;
            arrow::compute::cast(&v, &col.source).map_err(|e| e.to_string())
        }
        (PhysicalType::INT64 | PhysicalType::DOUBLE, t) => fixed(8, t.clone()),
        (PhysicalType::BYTE_ARRAY, t) => {
            let mut offsets: Vec<i32> = Vec::with_capacity(n + 1);
            let mut values: Vec<u8> = Vec::new();
            offsets.push(0);
            let mut at = 0usize;
            for _ in 0..n {
                let len = buf
                    .get(at..at + 4)
                    .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
                    .ok_or_else(short)?;
                let s = buf.get(at + 4..at + 4 + len).ok_or_else(short)?;
                values.extend_from_slice(s);
                offsets.push(i32::try_from(values.len()).map_err(|_| "strings past 2 GiB")?);
                at += 4 + len;
            }
            let strings = StringArray::try_new(
                OffsetBuffer::new(ScalarBuffer::from(offsets)),
                Buffer::from_vec(values),
                None,
            )
            .map_err(|e| e.to_string())?;
            let strings: ArrayRef = Arc::new(strings);
            match t {
                DataType::Utf8 => Ok(strings),
                t => arrow::compute::cast(&strings, t).map_err(|e| e.to_string()),
            }
        }
        (p, _) => Err(format!("physical type {p}")),
    }
}

/// Buffers reused from page to page.
#[derive(Default)]
struct Scratch {
    runs: Vec<Run>,
    at: Vec<u32>,
    indices: Vec<u32>,
    /// A page's every index, where the rows read are many ([`indices_at`]).
    page: Vec<u32>,
    /// Per row read of a page with nulls: whether it is null ([`page_indices`]).
    null: Vec<bool>,
}

/// For `rows` (sorted) of `page`: into `s.indices`, the place in the page's source (its
/// chunk's dictionary of `dict_len` entries, or its plain values) of each non-null row's
/// value, in order; returns whether some row is null, and then `s.null` tells for each row.
fn page_indices(
    page: &DataPage,
    rows: &[u32],
    dict_len: Option<usize>,
    s: &mut Scratch,
) -> std::result::Result<bool, String> {
    let first = page.first as u32;
    s.at.clear();
    let whole = rows.len() == page.rows;
    let any_null = match &page.nulls {
        // Every row of the page: no places needed for its indices.
        None if whole && matches!(page.body, Body::Indices { .. }) => false,
        None => {
            s.at.extend(rows.iter().map(|&p| p - first));
            false
        }
        Some(places) => {
            s.null.clear();
            for &p in rows {
                let place = *places
                    .get((p - first) as usize)
                    .ok_or("a row past its page")?;
                s.null.push(place == NULL);
                if place != NULL {
                    s.at.push(place);
                }
            }
            true
        }
    };
    match &page.body {
        Body::Indices { data, bit_width } => {
            let whole = whole && !any_null;
            indices_at(data, *bit_width, page.values, whole, s)?;
            check_indices(&s.indices, dict_len.ok_or("no dictionary")?)?;
        }
        Body::Values(v) => {
            std::mem::swap(&mut s.indices, &mut s.at);
            check_indices(&s.indices, v.len())?;
        }
    }
    Ok(any_null)
}

/// Narrows `pos` (sorted rows of the row group) to the rows whose answers pass.
fn narrow(
    chunk: &Chunk,
    answers: &Answers,
    pos: &mut Vec<u32>,
    s: &mut Scratch,
) -> std::result::Result<(), String> {
    let mut kept = 0usize;
    let dict_len = chunk.dict.as_ref().map(|d| d.len());
    for (i, span) in spans(chunk, pos)? {
        let page = &chunk.pages[i];
        let table = match &page.body {
            Body::Indices { .. } => answers.dictionary.as_deref().ok_or("no dictionary")?,
            Body::Values(_) => answers.plain[i].as_deref().ok_or("no answers for a page")?,
        };
        let (from, read) = (span.start, span.end);
        let any_null = page_indices(page, &pos[from..read], dict_len, s)?;
        if !any_null {
            for (q, &ix) in s.indices.iter().enumerate() {
                pos[kept] = pos[from + q];
                kept += table[ix as usize] as usize;
            }
            continue;
        }
        let mut values = s.indices.iter();
        for q in 0..read - from {
            let pass = match s.null[q] {
                true => answers.null,
                false => table[*values.next().ok_or("fewer values than rows")? as usize],
            };
            pos[kept] = pos[from + q];
            kept += pass as usize;
        }
    }
    pos.truncate(kept);
    Ok(())
}

/// The pages of `chunk` that hold rows of sorted `pos`, each with its span of `pos`; an error
/// when a row is in no page read.
fn spans(chunk: &Chunk, pos: &[u32]) -> std::result::Result<Vec<(usize, Range<usize>)>, String> {
    let mut out = Vec::new();
    let mut read = 0usize;
    for (i, page) in chunk.pages.iter().enumerate() {
        let from = read;
        let end = (page.first + page.rows) as u32;
        read += pos[read..].partition_point(|&p| p < end);
        if from == read {
            continue;
        }
        if (pos[from] as usize) < page.first {
            return Err(format!("row {} is in no page read", pos[from]));
        }
        out.push((i, from..read));
    }
    if read < pos.len() {
        return Err(format!("row {} is in no page read", pos[read]));
    }
    Ok(out)
}

/// The values of `col` at rows `pos` (sorted) as its output type: fixed-width values read
/// straight from their dictionary or plain page ([`gather_primitive`]), others by `take`.
fn gather(
    chunk: &Chunk,
    col: &Col,
    pos: &[u32],
    s: &mut Scratch,
) -> std::result::Result<ArrayRef, String> {
    use arrow::datatypes as t;
    match (&col.output, &col.source) {
        (DataType::Dictionary(..), _) => gather_by_take(chunk, col, pos, s),
        (_, DataType::Int32) => gather_primitive::<t::Int32Type>(chunk, col, pos, s),
        (_, DataType::Date32) => gather_primitive::<t::Date32Type>(chunk, col, pos, s),
        (_, DataType::Int64) => gather_primitive::<t::Int64Type>(chunk, col, pos, s),
        (_, DataType::Decimal64(..)) => gather_primitive::<t::Decimal64Type>(chunk, col, pos, s),
        (_, DataType::Decimal128(..)) => gather_primitive::<t::Decimal128Type>(chunk, col, pos, s),
        (_, DataType::Float32) => gather_primitive::<t::Float32Type>(chunk, col, pos, s),
        (_, DataType::Float64) => gather_primitive::<t::Float64Type>(chunk, col, pos, s),
        _ => gather_by_take(chunk, col, pos, s),
    }
}

/// [`gather`] for a column of fixed-width values `T`: each row's value read from its
/// dictionary at its index (a page without nulls unpacked whole when it holds a quarter of
/// its rows or more) or from its plain page.
fn gather_primitive<T: arrow::datatypes::ArrowPrimitiveType>(
    chunk: &Chunk,
    col: &Col,
    pos: &[u32],
    s: &mut Scratch,
) -> std::result::Result<ArrayRef, String> {
    use arrow::array::{AsArray, PrimitiveArray};
    let typed = |a: &ArrayRef| -> std::result::Result<ScalarBuffer<T::Native>, String> {
        let a = a.as_primitive_opt::<T>().ok_or("values of another type")?;
        Ok(a.values().clone())
    };
    let dict = chunk.dict.as_ref().map(typed).transpose()?;
    let mut out: Vec<T::Native> = Vec::with_capacity(pos.len());
    // Validity, when some page read has nulls.
    let mut valid: Option<Vec<bool>> = chunk
        .pages
        .iter()
        .any(|p| p.nulls.is_some())
        .then(|| Vec::with_capacity(pos.len()));
    for (i, span) in spans(chunk, pos)? {
        let page = &chunk.pages[i];
        let rows = &pos[span];
        let first = page.first as u32;
        let plain = match &page.body {
            Body::Values(v) => Some(typed(v)?),
            Body::Indices { .. } => None,
        };
        let source: &[T::Native] = match (&plain, &dict) {
            (Some(v), _) | (None, Some(v)) => v,
            (None, None) => return Err("no dictionary".into()),
        };
        match (&page.body, &page.nulls) {
            (Body::Indices { data, bit_width }, None) if rows.len() * 4 >= page.rows => {
                unpack_at(data, *bit_width, page.rows, None, &mut s.runs, &mut s.page)?;
                check_indices(&s.page, source.len())?;
                let all = &s.page;
                out.extend(
                    rows.iter()
                        .map(|&p| source[all[(p - first) as usize] as usize]),
                );
                if let Some(v) = &mut valid {
                    v.extend(std::iter::repeat_n(true, rows.len()));
                }
            }
            _ => {
                let any_null = page_indices(page, rows, Some(source.len()), s)?;
                if !any_null {
                    out.extend(s.indices.iter().map(|&ix| source[ix as usize]));
                    if let Some(v) = &mut valid {
                        v.extend(std::iter::repeat_n(true, rows.len()));
                    }
                    continue;
                }
                let v = valid.as_mut().expect("a page with nulls");
                let mut values = s.indices.iter();
                for &null in &s.null {
                    v.push(!null);
                    out.push(match null {
                        true => T::Native::default(),
                        false => source[*values.next().ok_or("fewer values than rows")? as usize],
                    });
                }
            }
        }
    }
    let nulls = valid.map(arrow::buffer::NullBuffer::from);
    let array =
        PrimitiveArray::<T>::new(ScalarBuffer::from(out), nulls).with_data_type(col.output.clone());
    Ok(Arc::new(array))
}

/// [`gather`] by `take` from each page's source (its dictionary, or a plain page's values):
/// an Arrow dictionary column takes the indices as its keys.
fn gather_by_take(
    chunk: &Chunk,
    col: &Col,
    pos: &[u32],
    s: &mut Scratch,
) -> std::result::Result<ArrayRef, String> {
    let mut pieces: Vec<ArrayRef> = Vec::new();
    let mut source: Option<&ArrayRef> = None;
    let mut indices: Vec<u32> = Vec::with_capacity(pos.len());
    let mut valid: Vec<bool> = Vec::new();
    let dict_len = chunk.dict.as_ref().map(|d| d.len());
    for (i, span) in spans(chunk, pos)? {
        let page = &chunk.pages[i];
        let rows = &pos[span];
        let from_source = match &page.body {
            Body::Indices { .. } => chunk.dict.as_ref().ok_or("no dictionary")?,
            Body::Values(v) => v,
        };
        if let Some(cur) = source
            && !Arc::ptr_eq(cur, from_source)
        {
            let (ix, v) = (std::mem::take(&mut indices), std::mem::take(&mut valid));
            pieces.push(build(col, cur, ix, v)?);
        }
        source = Some(from_source);
        let any_null = page_indices(page, rows, dict_len, s)?;
        if !any_null {
            indices.extend_from_slice(&s.indices);
            if !valid.is_empty() {
                valid.extend(std::iter::repeat_n(true, rows.len()));
            }
            continue;
        }
        // The rows before this page's, all valid.
        if valid.is_empty() {
            valid.resize(indices.len(), true);
        }
        let mut values = s.indices.iter();
        for &null in &s.null {
            valid.push(!null);
            indices.push(match null {
                true => 0,
                false => *values.next().ok_or("fewer values than rows")?,
            });
        }
    }
    let Some(cur) = source else {
        return Ok(arrow::array::new_empty_array(&col.output));
    };
    pieces.push(build(col, cur, indices, valid)?);
    match pieces.as_slice() {
        [one] => Ok(one.clone()),
        many => {
            let refs: Vec<&dyn Array> = many.iter().map(|a| a.as_ref()).collect();
            arrow::compute::concat(&refs).map_err(|e| e.to_string())
        }
    }
}

/// `source` at `indices` as `col`'s output type (null where `valid`, when not empty, says
/// so): an Arrow dictionary column takes the indices as its keys.
fn build(
    col: &Col,
    source: &ArrayRef,
    indices: Vec<u32>,
    valid: Vec<bool>,
) -> std::result::Result<ArrayRef, String> {
    let nulls = (!valid.is_empty()).then(|| arrow::buffer::NullBuffer::from(valid));
    let len = indices.len();
    let bits = Buffer::from_vec(indices);
    match &col.output {
        DataType::Dictionary(..) => {
            // Indices checked against the dictionary's length fit an `i32`: the same bits.
            let keys = Int32Array::new(ScalarBuffer::new(bits, 0, len), nulls);
            let d = DictionaryArray::<Int32Type>::try_new(keys, source.clone())
                .map_err(|e| e.to_string())?;
            Ok(Arc::new(d))
        }
        _ => {
            let indices = UInt32Array::new(ScalarBuffer::new(bits, 0, len), nulls);
            arrow::compute::take(source.as_ref(), &indices, None).map_err(|e| e.to_string())
        }
    }
}

fn check_indices(indices: &[u32], len: usize) -> std::result::Result<(), String> {
    let max = indices.iter().copied().max().unwrap_or(0);
    if !indices.is_empty() && max as usize >= len {
        return Err(format!("dictionary index {max} past its {len} entries"));
    }
    Ok(())
}

/// A run of an RLE / bit-packed hybrid, by the rows it covers.
#[derive(Clone, Copy)]
enum Run {
    /// `value` repeated up to row `end`.
    Repeated { end: usize, value: u32 },
    /// Bit-packed values from row `start` up to `end`, the first at byte `at`.
    Packed { start: usize, end: usize, at: usize },
}

fn uleb(data: &[u8], at: &mut usize) -> std::result::Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *data.get(*at).ok_or("a run header past the page's end")?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("a run header too long".into())
}

/// The runs of a hybrid of `rows` values of `bit_width` bits.
fn runs(
    data: &[u8],
    bit_width: u8,
    rows: usize,
    out: &mut Vec<Run>,
) -> std::result::Result<(), String> {
    out.clear();
    let bw = bit_width as usize;
    let width = bw.div_ceil(8);
    let (mut at, mut row) = (0usize, 0usize);
    while row < rows {
        let header = uleb(data, &mut at)?;
        let count = usize::try_from(header >> 1).map_err(|_| "a run too long")?;
        if header & 1 == 1 {
            // Groups of 8 values; a writer may leave the last group's bytes out.
            let bytes = count.saturating_mul(bw).min(data.len().saturating_sub(at));
            // Width 0: every value is 0, and no bytes hold them.
            let values = (bytes * 8)
                .checked_div(bw)
                .unwrap_or(count.saturating_mul(8));
            let len = values.min(count.saturating_mul(8)).min(rows - row);
            if len == 0 {
                return Err("an empty bit-packed run".into());
            }
            out.push(Run::Packed {
                start: row,
                end: row + len,
                at,
            });
            at += bytes;
            row += len;
        } else {
            let bytes = data
                .get(at..at + width)
                .ok_or("a run past the page's end")?;
            let mut v = [0u8; 4];
            v[..width].copy_from_slice(bytes);
            at += width;
            let len = count.min(rows - row);
            if len == 0 {
                return Err("an empty run".into());
            }
            out.push(Run::Repeated {
                end: row + len,
                value: u32::from_le_bytes(v),
            });
            row += len;
        }
    }
    Ok(())
}

/// The value `i` of a bit-packed run starting at byte `at`.
#[inline(always)]
fn packed_at(data: &[u8], at: usize, bw: usize, i: usize) -> u32 {
    let bit = i * bw;
    let b = at + bit / 8;
    let word = match data.get(b..b + 8) {
        Some(w) => u64::from_le_bytes(w.try_into().expect("8 bytes")),
        None => {
            let mut w = [0u8; 8];
            let tail = data.get(b..).unwrap_or(&[]);
            w[..tail.len()].copy_from_slice(tail);
            u64::from_le_bytes(w)
        }
    };
    ((word >> (bit % 8)) & ((1u64 << bw) - 1)) as u32
}

/// Unpacks whole groups of 8 values of `BW` bits from `data` into `out` (`out.len()` a
/// multiple of 8, `data` at least `out.len() / 8 * BW` bytes): each value by an 8-byte load
/// where the data goes on 8 bytes past its group, else from a copy of the group.
#[inline(always)]
fn unpack<const BW: usize>(data: &[u8], out: &mut [u32]) {
    let mask = if BW == 0 { 0 } else { (1u64 << BW) - 1 };
    let direct = (data.len().saturating_sub(8) / BW.max(1)).min(out.len() / 8);
    let (fast, slow) = out.split_at_mut(direct * 8);
    for (g, o) in fast.chunks_exact_mut(8).enumerate() {
        let d = &data[g * BW..g * BW + BW + 8];
        for (j, v) in o.iter_mut().enumerate() {
            let bit = j * BW;
            let w = u64::from_le_bytes(d[bit / 8..bit / 8 + 8].try_into().expect("8 bytes"));
            *v = ((w >> (bit % 8)) & mask) as u32;
        }
    }
    for (g, o) in slow.chunks_exact_mut(8).enumerate() {
        let at = (direct + g) * BW;
        let mut buf = [0u8; 40];
        buf[..BW].copy_from_slice(&data[at..at + BW]);
        for (j, v) in o.iter_mut().enumerate() {
            let bit = j * BW;
            let w = u64::from_le_bytes(buf[bit / 8..bit / 8 + 8].try_into().expect("8 bytes"));
            *v = ((w >> (bit % 8)) & mask) as u32;
        }
    }
}

fn unpack_dyn(bw: usize, data: &[u8], out: &mut [u32]) {
    macro_rules! widths {
        ($($n:literal)*) => {
            match bw {
                $($n => unpack::<$n>(data, out),)*
                _ => unreachable!("bit widths are checked to be at most 32"),
            }
        };
    }
    widths!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32)
}

/// The hybrid's values into `s.indices`: every value, unpacked in groups, for the `whole`
/// page; else at page rows `s.at` (sorted), picked from the page unpacked whole when they are
/// a quarter of its rows or more, else each read where it lies.
fn indices_at(
    data: &[u8],
    bit_width: u8,
    rows: usize,
    whole: bool,
    s: &mut Scratch,
) -> std::result::Result<(), String> {
    if whole {
        return unpack_at(data, bit_width, rows, None, &mut s.runs, &mut s.indices);
    }
    if s.at.len() * 4 < rows {
        return unpack_at(
            data,
            bit_width,
            rows,
            Some(&s.at),
            &mut s.runs,
            &mut s.indices,
        );
    }
    unpack_at(data, bit_width, rows, None, &mut s.runs, &mut s.page)?;
    s.indices.clear();
    for &r in &s.at {
        let v = s
            .page
            .get(r as usize)
            .ok_or("a row past the page's values")?;
        s.indices.push(*v);
    }
    Ok(())
}

/// [`indices_at`] without the dense case: `at`'s values each read where they lie, or (`None`)
/// every value unpacked, into `out`.
fn unpack_at(
    data: &[u8],
    bit_width: u8,
    rows: usize,
    at: Option<&[u32]>,
    runs_buf: &mut Vec<Run>,
    out: &mut Vec<u32>,
) -> std::result::Result<(), String> {
    runs(data, bit_width, rows, runs_buf)?;
    let bw = bit_width as usize;
    out.clear();
    let Some(at) = at else {
        out.resize(rows, 0);
        let mut row = 0usize;
        for r in runs_buf.iter() {
            match *r {
                Run::Repeated { end, value } => {
                    out[row..end].fill(value);
                    row = end;
                }
                Run::Packed {
                    start,
                    end,
                    at: byte,
                } => {
                    let whole = (end - start) / 8 * 8;
                    if data.len() >= byte + whole / 8 * bw {
                        unpack_dyn(bw, &data[byte..], &mut out[start..start + whole]);
                    } else {
                        for i in 0..whole {
                            out[start + i] = packed_at(data, byte, bw, i);
                        }
                    }
                    for i in whole..end - start {
                        out[start + i] = packed_at(data, byte, bw, i);
                    }
                    row = end;
                }
            }
        }
        debug_assert_eq!(row, rows);
        return Ok(());
    };
    let mut r = 0usize;
    for &p in at {
        let p = p as usize;
        loop {
            let end = match runs_buf.get(r) {
                Some(Run::Repeated { end, .. } | Run::Packed { end, .. }) => *end,
                None => return Err(format!("row {p} past the page's values")),
            };
            if p < end {
                break;
            }
            r += 1;
        }
        out.push(match runs_buf[r] {
            Run::Repeated { value, .. } => value,
            Run::Packed {
                start, at: byte, ..
            } => packed_at(data, byte, bw, p - start),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hybrid written by hand: a repeated run, a bit-packed run, read whole and at rows.
    #[test]
    fn a_hybrid_reads_alike_whole_and_at_rows() {
        // bit width 3: 5 × value 6, then 16 values 0..16 mod 8 bit-packed.
        let mut data = vec![5 << 1, 6];
        data.push(((2u8) << 1) | 1);
        let values: Vec<u32> = (0..16).map(|i| i % 8).collect();
        let mut bits = vec![0u8; 6];
        for (i, v) in values.iter().enumerate() {
            for b in 0..3 {
                if v >> b & 1 == 1 {
                    let bit = i * 3 + b;
                    bits[bit / 8] |= 1 << (bit % 8);
                }
            }
        }
        data.extend(bits);
        let mut expect = vec![6u32; 5];
        expect.extend(&values);
        let mut s = Scratch::default();
        indices_at(&data, 3, 21, true, &mut s).unwrap();
        assert_eq!(s.indices, expect);
        // Few rows (each read where it lies) and many (picked from the page unpacked).
        let few = [0u32, 11, 20];
        let many = [0u32, 4, 5, 6, 7, 11, 20];
        for at in [&few[..], &many[..]] {
            s.at = at.to_vec();
            indices_at(&data, 3, 21, false, &mut s).unwrap();
            let want: Vec<u32> = at.iter().map(|&i| expect[i as usize]).collect();
            assert_eq!(s.indices, want);
        }
        // Fewer values than rows, a header past the end: errors, not panics.
        assert!(indices_at(&data, 3, 40, true, &mut s).is_err());
        for at in [&few[..], &many[..]] {
            s.at = at.to_vec();
            assert!(indices_at(&data[..1], 3, 21, false, &mut s).is_err());
        }
    }
}
