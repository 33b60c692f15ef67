//! A scan through the hot-column tier ([`crate::storage::hot`]): each row group whose needed
//! columns the tier holds is served from memory (the page index's selection and the predicate
//! applied to the kept arrays, as the decoder would); a row group touched for the second time
//! is decoded whole, kept, and served the same way (a top k's bound, `ObjectScan::narrowing`,
//! applied before the predicate, as the decoder applies it); the rest go to the Parquet decoder in runs
//! of consecutive row groups, as without the tier. Batches served from the tier to the link
//! are copied where they would otherwise be slices of a kept row group (see [`owned`]); an
//! aggregate folds the slices where they are, and one whose session skips rows takes a batch
//! at least [`MARK_SHARE`] of whose rows pass unfiltered, the rejected rows marked
//! (`Scanned::keep`; the aggregate gives them the group id `compute::SKIP_ROW`).
//!
//! Known limit: a working set larger than the budget thrashes — each second touch decodes a
//! row group whole and evicts another before its reuse, which costs more than the filtered
//! decode it replaces (a scan over every column of SF 1 lineitem with a 1 GiB tier).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use arrow::array::{Array, ArrayRef, MutableArrayData, make_array};
use arrow::compute::{concat, filter_record_batch};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use futures::stream::{self, StreamExt};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;

use super::{
    Batches, Consumer, ErrorSlot, ObjectReader, ObjectScan, ScanCounters, Scanned, count_narrowed,
    run_predicate,
};
use crate::error::{Error, Result};

/// What a scan does with a run of its row groups.
enum Part {
    /// Decode from the media (consecutive row groups, their part of the selection).
    Decode(Vec<usize>, Option<RowSelection>),
    /// Serve from the tier; missing arrays are decoded whole and admitted first.
    Hot {
        row_group: usize,
        arrays: Vec<Option<ArrayRef>>,
        selection: Option<RowSelection>,
    },
}

/// The batches of `scan`, each row group from the tier or from the media.
pub(super) fn open(scan: ObjectScan, counters: Arc<ScanCounters>, errors: ErrorSlot) -> Batches {
    let schema = scan.metadata.schema().clone();
    let roots = |names: &[String]| -> Vec<usize> {
        let mut v: Vec<usize> = names
            .iter()
            .filter_map(|n| schema.index_of(n).ok())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let output = roots(&scan.columns);
    let predicate = scan.predicate.as_ref().map(|(cols, _)| roots(cols));
    // Every column the scan touches, in the schema's order.
    let mut cols = output.clone();
    cols.extend(predicate.iter().flatten());
    cols.sort_unstable();
    cols.dedup();

    let key = |c: usize| tier_key(&schema, c);
    let md = scan.metadata.metadata().clone();
    let descr = md.file_metadata().schema_descr_ptr();
    let mut selection = scan.pruned.selection.clone();
    let mut parts: Vec<Part> = Vec::new();
    for &rg in &scan.pruned.row_groups {
        let group = md.row_group(rg);
        let part = selection
            .as_mut()
            .map(|s| s.split_off(group.num_rows() as usize));
        let mut media = vec![0u64; schema.fields().len()];
        for (leaf, chunk) in group.columns().iter().enumerate() {
            media[descr.get_column_root_idx(leaf)] += chunk.compressed_size().max(0) as u64;
        }
        let wanted: Vec<(usize, u64)> = cols.iter().map(|&c| (key(c), media[c])).collect();
        let found = scan.object.hot().lookup(&scan.object.id, rg, &wanted);
        let served = found.is_hit() || found.admit;
        // A row group read from the media misses every column, the kept ones too.
        let (hit, miss) = match served {
            true => (found.hit_bytes, found.miss_bytes),
            false => (0, found.hit_bytes + found.miss_bytes),
        };
        scan.object.hot().record(hit, miss);
        counters.cache_hit_bytes.fetch_add(hit, Ordering::Relaxed);
        counters.cache_miss_bytes.fetch_add(miss, Ordering::Relaxed);
        if served {
            parts.push(Part::Hot {
                row_group: rg,
                arrays: found.arrays,
                selection: part,
            });
            continue;
        }
        match parts.last_mut() {
            // The last part reads the row groups just before this one: they decode together.
            Some(Part::Decode(groups, sel)) => {
                groups.push(rg);
                super::append_selection(sel, part);
            }
            _ => parts.push(Part::Decode(vec![rg], part)),
        }
    }

    let shared = Arc::new(Shared {
        scan,
        cols,
        output,
        predicate,
        counters,
        errors,
    });
    stream::iter(parts)
        .then(move |part| {
            let sh = shared.clone();
            async move { sh.part(part).await }
        })
        .flatten()
        .boxed()
}

/// What every part of one scan uses.
struct Shared {
    scan: ObjectScan,
    /// Root columns the scan touches, sorted.
    cols: Vec<usize>,
    /// Root columns it outputs, sorted.
    output: Vec<usize>,
    /// Root columns of the predicate, sorted.
    predicate: Option<Vec<usize>>,
    counters: Arc<ScanCounters>,
    errors: ErrorSlot,
}

impl Shared {
    fn key(&self, c: usize) -> usize {
        tier_key(self.scan.metadata.schema(), c)
    }

    async fn part(&self, part: Part) -> Batches {
        match part {
            Part::Decode(row_groups, selection) => {
                let mut scan = self.scan.clone();
                scan.pruned.row_groups = row_groups;
                scan.pruned.selection = selection;
                match super::decoded(scan, self.counters.clone(), self.errors.clone()) {
                    Ok(s) => s.map(|b| b.map(Scanned::all)).boxed(),
                    Err(e) => stream::once(async { Err(e) }).boxed(),
                }
            }
            Part::Hot {
                row_group,
                arrays,
                selection,
            } => match self.fill(row_group, arrays).await {
                Ok(arrays) => {
                    let md = self.scan.metadata.metadata();
                    let rows = md.row_group(row_group).num_rows() as usize;
                    stream::iter(self.batches(arrays, rows, selection)).boxed()
                }
                Err(e) => stream::once(async { Err(e) }).boxed(),
            },
        }
    }

    /// The arrays of `self.cols` for one row group: the tier's, and the missing ones decoded
    /// whole (every row, no filter) and admitted.
    async fn fill(&self, rg: usize, arrays: Vec<Option<ArrayRef>>) -> Result<Vec<ArrayRef>> {
        let missing: Vec<usize> = self
            .cols
            .iter()
            .zip(&arrays)
            .filter(|(_, a)| a.is_none())
            .map(|(&c, _)| c)
            .collect();
        if missing.is_empty() {
            return Ok(arrays.into_iter().flatten().collect());
        }
        let object = &self.scan.object;
        let md = &self.scan.metadata;
        let rows = md.metadata().row_group(rg).num_rows() as usize;
        let reader = ObjectReader::new(object.clone(), self.counters.clone(), self.errors.clone());
        let descr = md.metadata().file_metadata().schema_descr_ptr();
        let mut stream = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, md.clone())
            .with_batch_size(rows.max(1))
            .with_row_groups(vec![rg])
            .with_projection(ProjectionMask::roots(&descr, missing.iter().copied()))
            .build()
            .map_err(|e| self.errors.take_or(Error::Parquet(e)))?;
        let mut batches = Vec::new();
        while let Some(b) = stream.next().await {
            batches.push(b.map_err(|e| self.errors.take_or(Error::Parquet(e)))?);
        }
        let mut decoded = missing.iter().enumerate().map(|(i, &c)| {
            let parts: Vec<&dyn arrow::array::Array> =
                batches.iter().map(|b| b.column(i).as_ref()).collect();
            let array = match parts.as_slice() {
                [_] => Ok(Arc::clone(batches[0].column(i))),
                _ => concat(&parts),
            }?;
            object
                .hot()
                .admit(&object.id, rg, self.key(c), array.clone());
            Ok::<_, Error>(array)
        });
        arrays
            .into_iter()
            .map(|a| match a {
                Some(a) => Ok(a),
                None => decoded.next().expect("one decoded per missing"),
            })
            .collect()
    }

    /// One row group's batches from its arrays (`self.cols`, `rows` long): slices of the runs
    /// the selection keeps (no copy), the predicate run per batch, the output columns filtered
    /// by it — or, for an aggregate that skips rows, marked when at least [`MARK_SHARE`] of
    /// them pass — and, for the link, what is still a slice copied ([`owned`]).
    fn batches(
        &self,
        arrays: Vec<ArrayRef>,
        rows: usize,
        selection: Option<RowSelection>,
    ) -> impl Iterator<Item = Result<Scanned>> + Send + 'static {
        let schema = self.scan.metadata.schema().clone();
        let step = self.scan.batch_size.max(1);
        let windows = windows(selection.as_ref(), rows, step);
        let pick = |want: &[usize], arrays: &[ArrayRef]| -> (SchemaRef, Vec<ArrayRef>) {
            let at = |c: &usize| self.cols.binary_search(c).expect("a scanned column");
            let schema = Arc::new(schema.project(want).expect("roots of the schema"));
            (schema, want.iter().map(|c| arrays[at(c)].clone()).collect())
        };
        let out = pick(&self.output, &arrays);
        let pred = self.predicate.as_ref().map(|p| pick(p, &arrays));
        let filter_fn = self.scan.predicate.as_ref().map(|(_, f)| f.clone());
        // The bound's column is an output column (a top k's first key, a group key).
        let narrow = self.scan.narrowing.as_ref().map(|(_, f)| f.clone());
        let counters = self.counters.clone();
        let errors = self.errors.clone();
        let consumer = self.scan.consumer;
        windows.into_iter().map(move |(start, len)| {
            let (schema, cols) = &out;
            // A batch keeps its row count without columns (`count(*)`).
            let slice = |schema: &SchemaRef, cols: &[ArrayRef]| {
                RecordBatch::try_new_with_options(
                    schema.clone(),
                    cols.iter().map(|a| a.slice(start, len)).collect(),
                    &RecordBatchOptions::new().with_row_count(Some(len)),
                )
            };
            let mut batch = slice(schema, cols)?;
            let mut input = match &pred {
                Some((pschema, pcols)) => Some(slice(pschema, pcols)?),
                None => None,
            };
            // The bound first, then the predicate on the rows it kept, counted as the decoder
            // counts them (`open_stream`).
            if let Some(f) = &narrow {
                let keep = f(&batch)?;
                let dropped = batch.num_rows() - keep.true_count();
                if dropped > 0 {
                    count_narrowed(&counters, dropped, filter_fn.is_some());
                    batch = filter_record_batch(&batch, &keep)?;
                    input = input.map(|i| filter_record_batch(&i, &keep)).transpose()?;
                }
            }
            let mut marked = None;
            if let (Some(input), Some(f)) = (input, &filter_fn) {
                let keep = run_predicate(f, &input, &counters, &errors)
                    .map_err(|e| errors.take_or(Error::Arrow(e)))?;
                let kept = keep.true_count();
                let mark = consumer == Consumer::Aggregate { skips_rows: true }
                    && kept as f64 >= MARK_SHARE * keep.len() as f64;
                if kept == keep.len() {
                    // Every row passes: the batch as it is.
                } else if mark {
                    let out = (keep.len() - kept) as u64;
                    counters.rows_left_out.fetch_add(out, Ordering::Relaxed);
                    marked = Some(keep);
                } else {
                    batch = filter_record_batch(&batch, &keep)?;
                }
            }
            match consumer {
                Consumer::Link => owned(batch).map(Scanned::all),
                Consumer::Aggregate { .. } => Ok(Scanned {
                    batch,
                    keep: marked,
                }),
            }
        })
    }
}

/// The share of a batch's rows that must pass the predicate for the batch to go to an
/// aggregate that skips rows unfiltered, the rest marked: filtering copies every kept row of
/// every column (TPC-H Q1 keeps 98.6 % of its rows; served from the tier on one worker, taking
/// its batches unfiltered cut it from 95 to 85 ms), while a skipped row costs the aggregate
/// about what it costs to fold one — so below about half, by that estimate (not measured),
/// filtering is cheaper.
const MARK_SHARE: f64 = 0.75;

/// The (start, length) windows of at most `step` rows that a selection keeps of `rows` rows
/// (all of them without one).
fn windows(selection: Option<&RowSelection>, rows: usize, step: usize) -> Vec<(usize, usize)> {
    let runs: Vec<(usize, usize)> = match selection {
        None => vec![(0, rows)],
        Some(sel) => {
            let mut at = 0;
            let mut runs = Vec::new();
            for RowSelector { row_count, skip } in sel.iter().copied() {
                if !skip && row_count > 0 {
                    runs.push((at, row_count));
                }
                at += row_count;
            }
            runs
        }
    };
    runs.into_iter()
        .flat_map(|(start, len)| {
            (start..start + len)
                .step_by(step)
                .map(move |s| (s, step.min(start + len - s)))
        })
        .collect()
}

/// A batch whose columns are slices of larger kept arrays (no filter, or one that kept every
/// row, returns slices), copied into buffers of its own: Flight's encoder splits a batch by
/// its columns' whole buffer sizes, and Arrow IPC sends a view column's every data buffer
/// with each piece — a slice of a row group's strings would cross the link many times.
fn owned(batch: RecordBatch) -> Result<RecordBatch> {
    let mut changed = false;
    let cols = batch
        .columns()
        .iter()
        .map(|a| {
            if matches!(a.data_type(), DataType::Utf8View | DataType::BinaryView) {
                // A slice keeps every data buffer of the row group.
                let compacted = super::compact_view(a);
                changed |= compacted.is_some();
                return Ok(compacted.unwrap_or_else(|| a.clone()));
            }
            let data = a.to_data();
            if a.get_buffer_memory_size() <= 2 * data.get_slice_memory_size()? + 4096 {
                return Ok(a.clone());
            }
            changed = true;
            let mut copy = MutableArrayData::new(vec![&data], false, data.len());
            copy.try_extend(0, 0, data.len())?;
            Ok(make_array(copy.freeze()))
        })
        .collect::<Result<Vec<_>>>()?;
    if !changed {
        return Ok(batch);
    }
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    Ok(RecordBatch::try_new_with_options(
        batch.schema(),
        cols,
        &options,
    )?)
}

/// Column `c`'s id in the tier: a column read as an Arrow dictionary is another chunk than
/// the same column read plain.
fn tier_key(schema: &SchemaRef, c: usize) -> usize {
    2 * c + matches!(schema.field(c).data_type(), DataType::Dictionary(..)) as usize
}
