//! `kernel test`: a kernel run on a Parquet file, locally, in a sandbox configured as the
//! device's.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use nearstore_runtime::compute::wasm::{KernelCall, Sandbox, SandboxConfig};
use nearstore_runtime::plan::{KernelFn, KernelKind};

use super::TestArgs;
use crate::print_batches;

/// Counters of a local kernel run.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TestRun {
    /// Rows read from the file.
    pub rows: u64,
    /// Batches handed to the kernel.
    pub batches: u64,
    /// The kernel's kind (`filter`, `map`, `aggregate`).
    pub kind: String,
    /// Rows the kernel selected (a filter), non-NULL values it mapped (a map), or values in
    /// its result (an aggregate over the whole file, one group).
    pub selected: u64,
    /// Time in the kernel (marshalling included).
    pub kernel_time: Duration,
    /// The first selected rows.
    pub sample: Vec<RecordBatch>,
}

/// Runs `module` over `file` in a sandbox configured as the device's.
pub fn run_local(
    module: &[u8],
    file: &Path,
    args: &[String],
    params: &str,
    limit: usize,
) -> Result<(String, TestRun)> {
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::default())?);
    let program = sandbox
        .load(module)
        .map_err(|e| anyhow::anyhow!("the device would refuse this module: {e}"))?;
    let label = format!("{} (sha256 {})", program.name, &program.id[..16]);
    let name = program.name.clone();
    let kind = program.kind;
    let call = KernelCall::new(&name, program, sandbox, params, None);
    let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .with_context(|| format!("{} is not a readable Parquet file", file.display()))?
        .with_batch_size(8192)
        .build()?;
    let mut run = TestRun {
        kind: kind.as_str().to_string(),
        ..Default::default()
    };
    let mut shown = 0usize;
    for batch in reader {
        let batch = batch?;
        let cols = args
            .iter()
            .map(|a| {
                batch.column_by_name(a).cloned().with_context(|| {
                    let have: Vec<String> = batch
                        .schema()
                        .fields()
                        .iter()
                        .map(|f| f.name().clone())
                        .collect();
                    format!("the file has no column '{a}' (it has {})", have.join(", "))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let t = Instant::now();
        run.rows += batch.num_rows() as u64;
        run.batches += 1;
        match kind {
            KernelKind::Filter => {
                let mask = call.eval(batch.num_rows(), &cols)?;
                run.kernel_time += t.elapsed();
                let mask = mask.as_boolean();
                run.selected += mask.true_count() as u64;
                if shown < limit {
                    let kept = arrow::compute::filter_record_batch(&batch, mask)?;
                    let take = kept.num_rows().min(limit - shown);
                    shown += take;
                    run.sample.push(kept.slice(0, take));
                }
            }
            KernelKind::Map => {
                let values = call.eval(batch.num_rows(), &cols)?;
                run.kernel_time += t.elapsed();
                run.selected += (values.len() - values.null_count()) as u64;
                if shown < limit {
                    let mut fields: Vec<(String, ArrayRef)> =
                        args.iter().cloned().zip(cols.iter().cloned()).collect();
                    fields.push((name.clone(), values));
                    let out = RecordBatch::try_from_iter(fields)?;
                    let take = out.num_rows().min(limit - shown);
                    shown += take;
                    run.sample.push(out.slice(0, take));
                }
            }
            KernelKind::Aggregate => {
                call.update_groups(batch.num_rows(), None, 1, &cols)?;
                run.kernel_time += t.elapsed();
            }
        }
    }
    if kind == KernelKind::Aggregate {
        let t = Instant::now();
        let result = call.finish_groups(1)?;
        run.kernel_time += t.elapsed();
        run.selected = match result.as_list_opt::<i32>() {
            Some(l) => l.value(0).len() as u64,
            None => (result.len() - result.null_count()) as u64,
        };
        run.sample
            .push(RecordBatch::try_from_iter([(name.clone(), result)])?);
    }
    Ok((label, run))
}

pub(super) fn test(a: TestArgs) -> Result<()> {
    let module =
        std::fs::read(&a.module).with_context(|| format!("reading {}", a.module.display()))?;
    let (label, run) = run_local(&module, &a.file, &a.args, &a.params, a.limit)?;
    if let Some(first) = run.sample.first() {
        print_batches(&run.sample, &first.schema(), a.format)?;
    }
    let what = match run.kind.as_str() {
        "filter" => format!("{} of {} rows selected", run.selected, run.rows),
        "map" => format!("{} non-NULL values for {} rows", run.selected, run.rows),
        _ => format!(
            "{} rows aggregated into one group ({} values)",
            run.rows, run.selected
        ),
    };
    eprintln!(
        "kernel {label}: {what} in {} batches; {:.2} ms in the kernel (sandbox limits as on \
         the device)",
        run.batches,
        run.kernel_time.as_secs_f64() * 1e3
    );
    Ok(())
}
