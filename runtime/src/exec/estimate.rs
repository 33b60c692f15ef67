//! A plan's footprint by the Parquet statistics and a small sample: the rows its filter may
//! keep (row groups and pages pruned exactly as a scan would), the rows it likely keeps (the
//! filter run on the first rows of a few of those row groups), the compressed bytes of the
//! columns it reads in what it would read and in the whole table, and the Arrow width of an
//! output row. The host's Auto mode prices the three ways of running a query with it.
//!
//! The sample is what statistics cannot give: a filter on an unsorted column (Q6's
//! `l_discount between …`) may match every row group by min/max while keeping 2 % of the rows.

use std::sync::Arc;

use arrow::datatypes::{DataType, Schema};
use futures::StreamExt;
use nearstore_proto::{Estimate, Plan};
use parquet::arrow::arrow_reader::ArrowReaderMetadata;
use parquet::file::metadata::ParquetMetaData;

use super::Executor;
use crate::error::Result;
use crate::plan::PhysExpr;
use crate::scan::prune::Pruned;
use crate::scan::{self, ErrorSlot, ObjectScan, ScanCounters};
use crate::storage::Object;

/// Bytes assumed per string value when the statistics say nothing of its length.
const STRING_BYTES_UNKNOWN: f64 = 16.0;
/// Row groups of a table sampled for the filter's share (spread over the ones it may match).
const SAMPLE_ROW_GROUPS: usize = 4;
/// Rows decoded from the start of each sampled row group.
const SAMPLE_ROWS: usize = 2048;

impl Executor {
    /// What `plan` may read and return by the statistics and a sample; the sample's reads
    /// draw on `media`, the caller's media bandwidth bucket, like a query's.
    pub async fn estimate(
        &self,
        plan: &Plan,
        media: Option<Arc<crate::storage::media::MediaBucket>>,
    ) -> Result<Estimate> {
        let q = self.prepare(plan).await?;
        let counters = Arc::new(ScanCounters {
            media_limit: media,
            ..Default::default()
        });
        let errors = ErrorSlot::default();
        // The columns the scan decodes: the filter's, then the output's.
        let mut columns = q
            .predicate
            .as_ref()
            .map(|p| p.columns())
            .unwrap_or_default();
        for c in q.output.columns() {
            if !columns.contains(&c) {
                columns.push(c);
            }
        }
        let mut e = Estimate {
            cores: self.workers() as u64,
            ..Default::default()
        };
        let mut first_md = None;
        let mut kept = Vec::new();
        for object in &q.table.objects {
            let p =
                scan::prune_object(object, q.predicate.as_ref(), &[], &counters, &errors).await?;
            kept.extend(
                p.pruned
                    .row_groups
                    .iter()
                    .map(|&rg| (object.clone(), p.arrow.clone(), rg)),
            );
            let md = &p.metadata;
            let row_groups = md.row_groups();
            e.row_groups_total += row_groups.len() as u64;
            e.row_groups_may_match += p.pruned.row_groups.len() as u64;
            e.rows_total += row_groups.iter().map(|r| r.num_rows() as u64).sum::<u64>();
            e.rows_may_match += p.pruned.rows_selected;
            let bytes = |rg: usize| compressed_bytes(md, rg, &columns);
            e.bytes_all += (0..row_groups.len()).map(bytes).sum::<u64>();
            // Pages count by the share of the kept row groups' rows they hold.
            let kept: u64 = p.pruned.row_groups.iter().map(|&rg| bytes(rg)).sum();
            let share = p.pruned.rows_selected as f64 / p.pruned.rows_total.max(1) as f64;
            e.bytes_may_read += (kept as f64 * share).round() as u64;
            let data_end = row_groups
                .iter()
                .flat_map(|rg| rg.columns())
                .map(|c| {
                    let (start, len) = c.byte_range();
                    start + len
                })
                .max()
                .unwrap_or(0);
            e.bytes_metadata += object.size.saturating_sub(data_end);
            first_md.get_or_insert_with(|| p.metadata.clone());
        }
        e.out_bytes_per_row = first_md.map_or(0, |md| row_bytes(&q.schema(), &md));
        e.rows_likely = e.rows_may_match;
        // A bound of a few thousand rows is what the sample would look at anyway (and it reads
        // from row groups' starts, not the pages the bound kept): the bound stands, and the
        // estimate of a query that small costs no decoding.
        let worth_sampling = e.rows_may_match > (SAMPLE_ROW_GROUPS * SAMPLE_ROWS) as u64;
        if let Some(pred) = q
            .predicate
            .as_ref()
            .filter(|p| worth_sampling && !calls_kernel(p))
        {
            let (sampled, kept_rows) = sample(&kept, pred, &counters, &errors).await?;
            if sampled > 0 {
                e.rows_sampled = sampled;
                let share = kept_rows as f64 / sampled as f64;
                e.rows_likely = (e.rows_may_match as f64 * share).round() as u64;
            }
        }
        Ok(e)
    }
}

/// Whether a predicate calls a registered kernel (not run for a mere estimate).
fn calls_kernel(p: &PhysExpr) -> bool {
    let mut found = false;
    p.visit(&mut |e| found |= matches!(e, PhysExpr::Kernel { .. }));
    found
}

/// The filter run natively on the first [`SAMPLE_ROWS`] rows of up to [`SAMPLE_ROW_GROUPS`]
/// of the row groups it may match: rows sampled, rows kept.
async fn sample(
    kept: &[(Arc<Object>, ArrowReaderMetadata, usize)],
    pred: &PhysExpr,
    counters: &Arc<ScanCounters>,
    errors: &ErrorSlot,
) -> Result<(u64, u64)> {
    let n = kept.len().min(SAMPLE_ROW_GROUPS);
    let (mut sampled, mut matched) = (0u64, 0u64);
    for i in 0..n {
        // The metadata the estimate already loaded; the row group read whole.
        let (object, arrow, rg) = &kept[i * kept.len() / n];
        let scan = ObjectScan {
            object: object.clone(),
            metadata: arrow.clone(),
            pruned: Pruned {
                row_groups: vec![*rg],
                ..Default::default()
            },
            columns: pred.columns(),
            predicate: None,
            narrowing: None,
            by_column: None,
            batch_size: SAMPLE_ROWS,
            limit: Some(SAMPLE_ROWS),
            consumer: scan::Consumer::Link,
        };
        let mut stream = scan::open_stream(scan, counters.clone(), errors.clone())?;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| errors.take_or(crate::error::Error::Parquet(e)))?;
            sampled += batch.num_rows() as u64;
            matched += pred.eval_predicate(&batch)?.true_count() as u64;
        }
    }
    Ok((sampled, matched))
}

/// Compressed bytes of `columns` (by top-level name) in row group `rg`.
fn compressed_bytes(md: &ParquetMetaData, rg: usize, columns: &[String]) -> u64 {
    md.row_group(rg)
        .columns()
        .iter()
        .filter(|c| {
            c.column_path()
                .parts()
                .first()
                .is_some_and(|root| columns.contains(root))
        })
        .map(|c| c.compressed_size().max(0) as u64)
        .sum()
}

/// Arrow bytes of one row of `schema`: fixed widths as they are, strings and binaries their
/// offset plus the mean of the first row group's min and max lengths (where the column is
/// stored under that name), validity bits ignored.
fn row_bytes(schema: &Schema, md: &ParquetMetaData) -> u64 {
    let width: f64 = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8 | DataType::Binary | DataType::LargeUtf8 | DataType::LargeBinary => {
                let offset = if matches!(f.data_type(), DataType::Utf8 | DataType::Binary) {
                    4.0
                } else {
                    8.0
                };
                offset + string_len(md, f.name()).unwrap_or(STRING_BYTES_UNKNOWN)
            }
            DataType::Boolean => 0.125,
            t => t.primitive_width().unwrap_or(16) as f64,
        })
        .sum();
    width.ceil() as u64
}

/// The mean of a stored string column's min and max lengths in the first row group.
fn string_len(md: &ParquetMetaData, name: &str) -> Option<f64> {
    let rg = md.row_groups().first()?;
    let c = rg.columns().iter().find(|c| {
        let parts = c.column_path().parts();
        parts.len() == 1 && parts[0] == name
    })?;
    let s = c.statistics()?;
    let (min, max) = (s.min_bytes_opt()?, s.max_bytes_opt()?);
    Some((min.len() + max.len()) as f64 / 2.0)
}
