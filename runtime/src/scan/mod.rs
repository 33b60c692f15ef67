//! Parquet access with pruning before decoding.
//!
//! Per object: the footer and page index are loaded once through the storage read path and
//! cached; row groups are skipped by min/max statistics, pages by the page index; the predicate
//! runs inside the decoder (`RowFilter`), so its columns are decoded first and the other
//! projected columns only for the rows that survive. All byte ranges the decoder asks for in
//! one step go to the read path as one batch. With the hot-column tier on, row groups it
//! holds skip all of that (`hot`).

mod dict;
mod hot;
pub mod prune;

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::BooleanArray;
use arrow::datatypes::{DataType, FieldRef, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowPredicateFn, ArrowReaderMetadata, ArrowReaderOptions, RowFilter, RowSelection,
};
use parquet::arrow::async_reader::{
    AsyncFileReader, ParquetRecordBatchStream, ParquetRecordBatchStreamBuilder,
};
use parquet::errors::ParquetError;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};

use crate::error::{Error, Result};
use crate::plan::PhysExpr;
use crate::storage::Object;

/// Counters one query accumulates while scanning.
#[derive(Debug, Default)]
pub struct ScanCounters {
    /// Bytes read from the media.
    pub bytes_read: AtomicU64,
    /// Rows given to the predicate (decoded after pruning).
    pub rows_scanned: AtomicU64,
    /// Rows that passed the predicate.
    pub rows_selected: AtomicU64,
    /// Microseconds in the predicate.
    pub filter_us: AtomicU64,
    /// Row groups the dictionary decoder read (`scan/dict/`).
    pub row_groups_by_dictionary: AtomicU64,
    /// Rows the predicate rejected in batches handed over unfiltered ([`Scanned::keep`]).
    pub rows_left_out: AtomicU64,
    /// Media bytes of column chunks served from the hot-column tier.
    pub cache_hit_bytes: AtomicU64,
    /// Media bytes of column chunks the tier did not hold (with the tier on).
    pub cache_miss_bytes: AtomicU64,
    /// The tenant's media bandwidth limit, if any: reads wait for it.
    pub media_limit: Option<Arc<crate::storage::media::MediaBucket>>,
}

/// The first specific error of a query, kept where the Parquet decoder would flatten it into a
/// string.
#[derive(Debug, Default, Clone)]
pub struct ErrorSlot(Arc<Mutex<Option<Error>>>);

impl ErrorSlot {
    /// Records `e` if nothing was recorded before; returns a Parquet error that names it.
    pub fn record(&self, e: Error) -> ParquetError {
        let msg = e.to_string();
        let mut slot = self.0.lock().expect("error slot");
        if slot.is_none() {
            *slot = Some(e);
        }
        ParquetError::General(msg)
    }

    /// The recorded error, or `fallback`.
    pub fn take_or(&self, fallback: Error) -> Error {
        self.0
            .lock()
            .expect("error slot")
            .take()
            .unwrap_or(fallback)
    }
}

/// `AsyncFileReader` over a stored object: every request goes through the storage read path
/// as one batch, with block checksums verified.
pub struct ObjectReader {
    object: Arc<Object>,
    counters: Arc<ScanCounters>,
    errors: ErrorSlot,
}

impl ObjectReader {
    /// A reader for `object`.
    pub fn new(object: Arc<Object>, counters: Arc<ScanCounters>, errors: ErrorSlot) -> Self {
        ObjectReader {
            object,
            counters,
            errors,
        }
    }
}

impl AsyncFileReader for ObjectReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            let mut v = self.get_byte_ranges(vec![range]).await?;
            Ok(v.pop().expect("one range in, one out"))
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            if let Some(b) = &self.counters.media_limit {
                b.take(ranges.iter().map(|r| r.end - r.start).sum()).await;
            }
            match self.object.read_ranges(&ranges).await {
                Ok((bytes, n)) => {
                    self.counters.bytes_read.fetch_add(n, Ordering::Relaxed);
                    Ok(bytes)
                }
                Err(e) => Err(self.errors.record(e)),
            }
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            match self.object.cached_metadata() {
                Some(md) => Ok(md),
                None => Err(ParquetError::General("metadata not loaded".into())),
            }
        }
        .boxed()
    }
}

/// Loads (once per object) the footer and page index.
pub async fn metadata(
    object: &Arc<Object>,
    counters: &Arc<ScanCounters>,
    errors: &ErrorSlot,
) -> Result<Arc<ParquetMetaData>> {
    if let Some(md) = object.cached_metadata() {
        return Ok(md);
    }
    let mut reader = ObjectReader::new(object.clone(), counters.clone(), errors.clone());
    let md = ParquetMetaDataReader::new()
        .with_page_index_policy(PageIndexPolicy::Optional)
        .with_prefetch_hint(Some(64 * 1024))
        .load_and_finish(&mut reader, object.size)
        .await
        .map_err(|e| {
            errors.take_or(Error::CorruptObject {
                object: object.id.clone(),
                detail: format!("Parquet footer is unreadable: {e}"),
            })
        })?;
    let md = Arc::new(md);
    object.cache_metadata(md.clone());
    Ok(md)
}

/// Arrow view of an object's metadata: the table's types.
pub fn arrow_metadata(md: Arc<ParquetMetaData>, object: &Object) -> Result<ArrowReaderMetadata> {
    let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
    ArrowReaderMetadata::try_new(md, options).map_err(|e| unreadable(object, e))
}

fn unreadable(object: &Object, e: ParquetError) -> Error {
    Error::CorruptObject {
        object: object.id.clone(),
        detail: format!("Parquet schema is unreadable: {e}"),
    }
}

/// Arrow view of an object's metadata as a scan decodes it: the string columns named in
/// `dictionary` as Arrow dictionaries (`Int32` keys: dictionary-encoded pages then decode to
/// keys, never to strings), and decimals stored as INT64 as `Decimal64` (the stored values
/// as they are, where `Decimal128` widens each; the columns are widened where they are
/// evaluated natively, and staged into kernels as they are).
/// `plain` is [`arrow_metadata`]'s view of the same metadata, returned as it is when no
/// column is decoded otherwise.
pub fn arrow_metadata_with(
    md: Arc<ParquetMetaData>,
    plain: &ArrowReaderMetadata,
    object: &Object,
    dictionary: &[String],
) -> Result<ArrowReaderMetadata> {
    let descr = md.file_metadata().schema_descr();
    // Top-level columns stored as INT64 (a leaf of its own).
    let int64: Vec<usize> = (0..descr.num_columns())
        .filter(|&i| {
            let c = descr.column(i);
            c.path().parts().len() == 1 && c.physical_type() == parquet::basic::Type::INT64
        })
        .map(|i| descr.get_column_root_idx(i))
        .collect();
    let mut hinted = false;
    let fields: Vec<FieldRef> = plain
        .schema()
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if let DataType::Decimal128(p, s) = f.data_type()
                && *p <= 18
                && int64.contains(&i)
            {
                hinted = true;
                let t = DataType::Decimal64(*p, *s);
                return Arc::new(f.as_ref().clone().with_data_type(t));
            }
            // The reader makes dictionaries of Utf8 and LargeUtf8 (not of views).
            let values = match f.data_type() {
                DataType::Utf8 | DataType::Utf8View => DataType::Utf8,
                DataType::LargeUtf8 => DataType::LargeUtf8,
                _ => return f.clone(),
            };
            if !dictionary.contains(f.name()) {
                return f.clone();
            }
            hinted = true;
            let t = DataType::Dictionary(Box::new(DataType::Int32), Box::new(values));
            Arc::new(f.as_ref().clone().with_data_type(t))
        })
        .collect();
    if !hinted {
        return Ok(plain.clone());
    }
    let hint = Arc::new(Schema::new_with_metadata(
        fields,
        plain.schema().metadata().clone(),
    ));
    let options = ArrowReaderOptions::new()
        .with_page_index_policy(PageIndexPolicy::Optional)
        .with_schema(hint);
    ArrowReaderMetadata::try_new(md, options).map_err(|e| unreadable(object, e))
}

/// One object's metadata and what pruning by `predicate` left of it (no data read).
pub struct PrunedObject {
    /// The footer and page index.
    pub metadata: Arc<ParquetMetaData>,
    /// Their Arrow view.
    pub arrow: ArrowReaderMetadata,
    /// The object's columns as the table types them, which its statistics are read as
    /// ([`prune`]).
    pub schema: SchemaRef,
    /// Row groups and pages that may match.
    pub pruned: prune::Pruned,
}

/// Loads an object's metadata and prunes its row groups and pages by `predicate`: the one
/// place both a query's scan and an estimate decide what to read. The string columns in
/// `dictionary` are to be decoded as Arrow dictionaries.
pub async fn prune_object(
    object: &Arc<Object>,
    predicate: Option<&PhysExpr>,
    dictionary: &[String],
    counters: &Arc<ScanCounters>,
    errors: &ErrorSlot,
) -> Result<PrunedObject> {
    let metadata = metadata(object, counters, errors).await?;
    let plain = arrow_metadata(metadata.clone(), object)?;
    let arrow = arrow_metadata_with(metadata.clone(), &plain, object, dictionary)?;
    // Statistics are read as the table's types (a dictionary column's as its strings, a
    // decimal as Decimal128), which the predicate's literals have.
    let pruned = prune::prune(&metadata, plain.schema(), predicate);
    Ok(PrunedObject {
        metadata,
        arrow,
        schema: plain.schema().clone(),
        pruned,
    })
}

/// A predicate evaluated inside the Parquet decoder.
pub type Predicate =
    Arc<dyn Fn(&arrow::record_batch::RecordBatch) -> Result<BooleanArray> + Send + Sync>;

/// What to read from one object.
#[derive(Clone)]
pub struct ObjectScan {
    /// Object.
    pub object: Arc<Object>,
    /// Its Arrow metadata.
    pub metadata: ArrowReaderMetadata,
    /// Pruning decisions.
    pub pruned: prune::Pruned,
    /// Columns to output (in the table's order).
    pub columns: Vec<String>,
    /// Predicate columns and the predicate.
    pub predicate: Option<(Vec<String>, Predicate)>,
    /// A filter run inside the decoder before the predicate (its columns and its test) that
    /// only narrows what is decoded: a top k's running bound. The rows it drops count as
    /// scanned, and without a predicate as selected too (as the rows it keeps do where they
    /// arrive); with one, the predicate counts only the rows it was given. The hot tier's row
    /// groups apply it the same way.
    pub narrowing: Option<(Vec<String>, Predicate)>,
    /// The predicate as groups of conjuncts that each read one column, each group's test
    /// taking a batch of that column alone (`None` when the predicate does not split so):
    /// what the dictionary decoder answers once per dictionary entry (`scan/dict/`).
    pub by_column: Option<Vec<(String, Predicate)>>,
    /// Rows per batch.
    pub batch_size: usize,
    /// Stop after this many output rows.
    pub limit: Option<usize>,
    /// What takes the batches.
    pub consumer: Consumer,
}

/// What takes a scan's batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consumer {
    /// Rows that leave for the link: a batch holds buffers of its own, not slices of larger
    /// arrays (`hot.rs`'s `owned`).
    Link,
    /// An aggregate, which folds batches where they are. `skips_rows`: its session takes a
    /// batch with the rows the predicate keeps marked ([`Scanned::keep`]), which the tier's
    /// row groups hand over unfiltered when most of their rows pass.
    Aggregate {
        /// Whether the batches may come unfiltered.
        skips_rows: bool,
    },
}

/// Opens the decode stream of one object.
pub fn open_stream(
    scan: ObjectScan,
    counters: Arc<ScanCounters>,
    errors: ErrorSlot,
) -> Result<ParquetRecordBatchStream<ObjectReader>> {
    let schema: SchemaRef = scan.metadata.schema().clone();
    let parquet_schema = scan.metadata.metadata().file_metadata().schema_descr_ptr();
    let roots = |names: &[String]| -> Vec<usize> {
        names
            .iter()
            .filter_map(|n| schema.index_of(n).ok())
            .collect()
    };
    let reader = ObjectReader::new(scan.object.clone(), counters.clone(), errors.clone());
    let mut builder =
        ParquetRecordBatchStreamBuilder::new_with_metadata(reader, scan.metadata.clone())
            .with_batch_size(scan.batch_size)
            .with_row_groups(scan.pruned.row_groups.clone())
            .with_projection(ProjectionMask::roots(&parquet_schema, roots(&scan.columns)));
    if let Some(sel) = scan.pruned.selection.clone() {
        builder = builder.with_row_selection(sel);
    }
    let mut filters: Vec<Box<dyn parquet::arrow::arrow_reader::ArrowPredicate>> = Vec::new();
    // The narrowing filter first: once a top k's bound is tight it keeps few rows, so the
    // predicate's columns are decoded for those alone, and the selections the decoder
    // carries between filters stay short.
    let with_predicate = scan.predicate.is_some();
    if let Some((cols, narrow)) = scan.narrowing {
        let mask = ProjectionMask::roots(&parquet_schema, roots(&cols));
        let slot = errors.clone();
        let c = counters.clone();
        let f = ArrowPredicateFn::new(mask, move |batch| {
            let keep = narrow(&batch).map_err(|e| decoder_error(&slot, e))?;
            count_narrowed(&c, batch.num_rows() - keep.true_count(), with_predicate);
            Ok(keep)
        });
        filters.push(Box::new(f));
    }
    if let Some((cols, pred)) = scan.predicate {
        let mask = ProjectionMask::roots(&parquet_schema, roots(&cols));
        let c = counters.clone();
        let slot = errors.clone();
        let f = ArrowPredicateFn::new(mask, move |batch| run_predicate(&pred, &batch, &c, &slot));
        filters.push(Box::new(f));
    }
    if !filters.is_empty() {
        builder = builder.with_row_filter(RowFilter::new(filters));
    }
    if let Some(limit) = scan.limit {
        builder = builder.with_limit(limit);
    }
    builder
        .build()
        .map_err(|e| errors.take_or(Error::Parquet(e)))
}

/// Appends the next row group's part of a page-index selection to a run's (a run of
/// consecutive row groups decoded together keeps a selection only while each has one).
pub(super) fn append_selection(sel: &mut Option<RowSelection>, part: Option<RowSelection>) {
    if let (Some(sel), Some(part)) = (sel.as_mut(), part) {
        *sel = sel.iter().chain(part.iter()).copied().collect();
    }
}

/// Counts the rows a narrowing filter dropped before the predicate saw them: decoded (their
/// key was), and without a predicate selected too — the consumer counts the rows it gets so.
pub(super) fn count_narrowed(counters: &ScanCounters, dropped: usize, with_predicate: bool) {
    let dropped = dropped as u64;
    counters.rows_scanned.fetch_add(dropped, Ordering::Relaxed);
    if !with_predicate {
        counters.rows_selected.fetch_add(dropped, Ordering::Relaxed);
    }
}

/// Runs a scan's predicate on one batch of its columns, counting rows and time; its error is
/// recorded in `errors` (the decoder would flatten it into a string).
fn run_predicate(
    pred: &Predicate,
    batch: &RecordBatch,
    counters: &ScanCounters,
    errors: &ErrorSlot,
) -> std::result::Result<BooleanArray, arrow::error::ArrowError> {
    let t = std::time::Instant::now();
    let out = pred(batch).map_err(|e| decoder_error(errors, e))?;
    counters
        .rows_scanned
        .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
    counters
        .rows_selected
        .fetch_add(out.true_count() as u64, Ordering::Relaxed);
    counters
        .filter_us
        .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
    Ok(out)
}

/// A filter's error as the decoder takes it (a string), the error itself recorded in
/// `errors` for the scan to report.
fn decoder_error(errors: &ErrorSlot, e: Error) -> arrow::error::ArrowError {
    let msg = e.to_string();
    errors.record(e);
    arrow::error::ArrowError::ComputeError(msg)
}

/// A batch of a scan's rows.
#[derive(Debug)]
pub struct Scanned {
    /// The rows.
    pub batch: RecordBatch,
    /// The rows of `batch` the predicate keeps, when the scan handed the batch over
    /// unfiltered (only to an aggregate that skips rows: [`Consumer::Aggregate`]); `None`:
    /// every row.
    pub keep: Option<BooleanArray>,
}

impl Scanned {
    /// A batch every row of which is kept.
    pub fn all(batch: RecordBatch) -> Self {
        Scanned { batch, keep: None }
    }
}

/// A scan's batches, errors specific.
pub type Batches = BoxStream<'static, Result<Scanned>>;

/// Decoded batches, errors specific.
type Decoded = BoxStream<'static, Result<RecordBatch>>;

/// The batches of one object's scan: through the hot-column tier when the namespace has one,
/// else straight from the decoder. A scan with a row limit (which may stop in its first row
/// group) bypasses the tier: it neither counts nor touches row groups it may never read.
pub fn open_batches(
    scan: ObjectScan,
    counters: Arc<ScanCounters>,
    errors: ErrorSlot,
) -> Result<Batches> {
    if scan.object.hot().enabled() && scan.limit.is_none() {
        return Ok(hot::open(scan, counters, errors));
    }
    Ok(decoded(scan, counters, errors)?
        .map(|b| b.map(Scanned::all))
        .boxed())
}

/// The batches of `scan` decoded from the media: by our dictionary decoder where it reads the
/// scan ([`dict`]), else by the Parquet decoder.
fn decoded(scan: ObjectScan, counters: Arc<ScanCounters>, errors: ErrorSlot) -> Result<Decoded> {
    match dict::plan(&scan) {
        Some(plan) => Ok(dict::open(scan, plan, counters, errors)),
        None => decoded_by_parquet(scan, counters, errors),
    }
}

/// [`open_stream`]'s batches, a decoder error replaced by the specific one it flattened.
fn decoded_by_parquet(
    scan: ObjectScan,
    counters: Arc<ScanCounters>,
    errors: ErrorSlot,
) -> Result<Decoded> {
    let stream = open_stream(scan, counters, errors.clone())?;
    Ok(stream
        .map(move |b| b.map_err(|e| errors.take_or(Error::Parquet(e))))
        .boxed())
}

/// A view column (Utf8View, BinaryView) that holds more than it uses, copied into buffers of
/// its own; `None` for other columns and compact ones. Two kinds of slack: data buffers more
/// than 4 KiB beyond the strings it uses (those longer than 12 bytes; shorter ones live in the
/// views), which Arrow IPC sends whole with every message; and a views buffer that is a slice
/// of a larger allocation (a kept row group's, 16 bytes a row), which Flight's encoder counts
/// whole when it splits a batch into messages of at most 2 MiB — each piece then carries the
/// data buffers again. Both the decoder's batches (views into whole pages) and the hot tier's
/// (slices of a row group) go through this before the link.
pub fn compact_view(a: &arrow::array::ArrayRef) -> Option<arrow::array::ArrayRef> {
    use arrow::array::{Array, AsArray, GenericByteViewArray};
    use arrow::buffer::ScalarBuffer;
    use arrow::datatypes::ByteViewType;
    fn compact<T: ByteViewType>(v: &GenericByteViewArray<T>) -> Option<arrow::array::ArrayRef> {
        let held: usize = v.data_buffers().iter().map(|b| b.len()).sum();
        let used: usize = v
            .views()
            .iter()
            .enumerate()
            .filter(|(i, _)| v.is_valid(*i))
            .map(|(_, view)| *view as u32 as usize)
            .filter(|len| *len > 12)
            .sum();
        let spare_views = |v: &GenericByteViewArray<T>| {
            v.views().inner().capacity() > 2 * v.len() * std::mem::size_of::<u128>() + 4096
        };
        let spare_data = held > used + 4096;
        if !spare_data && !spare_views(v) {
            return None;
        }
        let v = if spare_data { v.gc() } else { v.clone() };
        if !spare_views(&v) {
            return Some(Arc::new(v));
        }
        // `gc` keeps the views of a column whose strings are all inline as they are.
        let (views, buffers, nulls) = v.into_parts();
        let views = ScalarBuffer::from(views.to_vec());
        // SAFETY: the parts of a valid array, the views copied unchanged.
        Some(Arc::new(unsafe {
            GenericByteViewArray::<T>::new_unchecked(views, buffers, nulls)
        }))
    }
    match a.data_type() {
        DataType::Utf8View => compact(a.as_string_view()),
        DataType::BinaryView => compact(a.as_binary_view()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, ArrayRef, AsArray, StringViewArray};

    fn views_held(a: &ArrayRef) -> usize {
        a.as_string_view().views().inner().capacity()
    }

    #[test]
    fn a_view_slice_keeps_neither_the_strings_nor_the_views_of_its_row_group() {
        let rows = 131_072;
        // Inline strings only (no data buffer): a slice still holds the row group's views.
        let flags: ArrayRef = Arc::new(StringViewArray::from_iter_values(
            (0..rows).map(|i| ["A", "N", "R"][i % 3]),
        ));
        let slice = flags.slice(8192, 8192);
        assert!(views_held(&slice) >= rows * 16);
        let owned = compact_view(&slice).expect("a slice of a row group's views is compacted");
        assert_eq!(owned.len(), 8192);
        assert!(
            views_held(&owned) <= 8192 * 16 + 64,
            "{}",
            views_held(&owned)
        );
        assert_eq!(
            owned.as_string_view().value(0),
            slice.as_string_view().value(0)
        );
        // Long strings: both the data buffers and the views are the slice's own after it.
        let text: ArrayRef = Arc::new(StringViewArray::from_iter_values(
            (0..rows).map(|i| format!("row {i:>12} of the table, padded")),
        ));
        let slice = text.slice(100, 8192);
        let owned = compact_view(&slice).expect("compacted");
        assert!(views_held(&owned) <= 8192 * 16 + 64);
        let held: usize = owned
            .as_string_view()
            .data_buffers()
            .iter()
            .map(|b| b.capacity())
            .sum();
        assert!(held <= 8192 * 40, "{held}");
        assert_eq!(
            owned.as_string_view().value(5),
            slice.as_string_view().value(5)
        );
        // What is already its own is left alone.
        assert!(compact_view(&owned).is_none());
        assert!(
            compact_view(&(Arc::new(StringViewArray::from_iter_values(["x"; 10])) as ArrayRef))
                .is_none()
        );
    }
}
