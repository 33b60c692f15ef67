//! One query's use of the FPGA ([`FpgaSession`]): each batch's filter or aggregate run on the
//! device (DMA in, run, wait, DMA out), the partial accumulators merged; on a device fault (or
//! more groups than the device has accumulators) the rest of the query falls back to a Wasm
//! session, whose accumulators are merged with the device's at the end.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, BooleanArray};
use arrow::buffer::BooleanBuffer;
use arrow::record_batch::RecordBatch;
use nearstore_kernel_abi::agg;

use super::{AggregateArgs, DeviceBuffer, EmulatedFpga, FilterArgs, FpgaDevice, FpgaError};
use crate::compute::native::NativeBackend;
use crate::compute::program::{
    ColumnBuffers, Stage, check_counts, finish_state, marshal_aggregate, marshal_filter,
    merge_state,
};
use crate::compute::wasm::{WasmBackend, WasmSession};
use crate::compute::{AggInput, ComputeSession, KernelLimits, SessionReport};
use crate::error::Result;
use crate::plan::{AggSpec, PhysExpr};

/// One query's use of the device.
pub(super) struct FpgaSession {
    device: Arc<EmulatedFpga>,
    fallback_backend: WasmBackend,
    /// The tenant's kernel limits, for the Wasm fallback.
    limits: Option<KernelLimits>,
    /// After a device fault, the rest of the query runs here.
    fallback: Option<WasmSession>,
    /// Aggregate accumulators merged from the device's per-batch results.
    state: Vec<u8>,
    /// Rows the device aggregated.
    rows_seen: u64,
    report: SessionReport,
}

impl FpgaSession {
    /// A session on `device` that falls back to `fallback_backend` under `limits`.
    pub(super) fn new(
        device: Arc<EmulatedFpga>,
        fallback_backend: WasmBackend,
        limits: Option<KernelLimits>,
    ) -> Self {
        FpgaSession {
            device,
            fallback_backend,
            limits,
            fallback: None,
            state: Vec::new(),
            rows_seen: 0,
            report: SessionReport::default(),
        }
    }

    /// Runs `attempt` against the device, freeing the buffers it allocated and adding its
    /// modelled time.
    fn on_device<T>(
        &mut self,
        attempt: impl FnOnce(
            &dyn FpgaDevice,
            &mut Vec<DeviceBuffer>,
            &mut Duration,
        ) -> Result<T, FpgaError>,
    ) -> Result<T, FpgaError> {
        let dev = &*self.device;
        let mut allocated = Vec::new();
        let mut modelled = Duration::ZERO;
        let result = attempt(dev, &mut allocated, &mut modelled);
        for b in allocated {
            dev.free(b);
        }
        self.report.modelled_us += modelled.as_secs_f64() * 1e6;
        result
    }

    /// Switches the rest of the query to Wasm after `e`.
    fn fall_back(&mut self, e: &FpgaError) -> Result<&mut WasmSession> {
        if self.fallback.is_none() {
            tracing::warn!(error = %e, "FPGA failed; falling back to Wasm for this query");
            self.report.fallbacks += 1;
            self.fallback = Some(self.fallback_backend.session(self.limits)?);
        }
        Ok(self.fallback.as_mut().expect("set above"))
    }
}

/// Allocates a device buffer holding `data` (listed in `allocated`) and DMAs `data` into it.
fn put(
    dev: &dyn FpgaDevice,
    data: &[u8],
    allocated: &mut Vec<DeviceBuffer>,
    modelled: &mut Duration,
) -> Result<DeviceBuffer, FpgaError> {
    let b = dev.alloc(data.len())?;
    allocated.push(b);
    *modelled += dev.write(b, data)?;
    Ok(b)
}

/// The columns' buffers on the device.
fn put_columns(
    dev: &dyn FpgaDevice,
    views: &[ColumnBuffers<'_>],
    allocated: &mut Vec<DeviceBuffer>,
    modelled: &mut Duration,
) -> Result<Vec<(u32, DeviceBuffer, Option<DeviceBuffer>)>, FpgaError> {
    views
        .iter()
        .map(|v| {
            let values = if matches!(v.stage, Stage::Narrow { .. }) {
                let mut narrowed = vec![0u8; v.staged_len()];
                v.stage_values(&mut narrowed)
                    .map_err(|e| FpgaError::BadBuffer(e.to_string()))?;
                put(dev, &narrowed, allocated, modelled)?
            } else {
                put(dev, v.values, allocated, modelled)?
            };
            let validity = v
                .validity
                .map(|n| put(dev, n, allocated, modelled))
                .transpose()?;
            Ok((v.type_code, values, validity))
        })
        .collect()
}

/// One filter run on the device: DMA in, run, wait, DMA out.
fn device_filter(
    dev: &dyn FpgaDevice,
    params: &[u8],
    views: &[ColumnBuffers<'_>],
    rows: usize,
    allocated: &mut Vec<DeviceBuffer>,
    modelled: &mut Duration,
) -> Result<BooleanArray, FpgaError> {
    let program = put(dev, params, allocated, modelled)?;
    let columns = put_columns(dev, views, allocated, modelled)?;
    let out = dev.alloc(rows.div_ceil(8))?;
    allocated.push(out);
    let run = dev.run_filter(&FilterArgs {
        program,
        columns,
        rows,
        out,
    })?;
    *modelled += dev.wait(run)?;
    let mut bits = vec![0u8; rows.div_ceil(8)];
    *modelled += dev.read(out, &mut bits)?;
    Ok(BooleanArray::new(
        BooleanBuffer::new(bits.into(), 0, rows),
        None,
    ))
}

/// One aggregate run on the device; returns the batch's accumulators.
#[allow(clippy::too_many_arguments)]
fn device_aggregate(
    dev: &dyn FpgaDevice,
    params: &[u8],
    groups: Option<&[u32]>,
    n_groups: usize,
    views: &[ColumnBuffers<'_>],
    rows: usize,
    allocated: &mut Vec<DeviceBuffer>,
    modelled: &mut Duration,
) -> Result<Vec<u8>, FpgaError> {
    let program = put(dev, params, allocated, modelled)?;
    let groups = groups
        .map(|g| {
            let bytes: Vec<u8> = g.iter().flat_map(|v| v.to_le_bytes()).collect();
            put(dev, &bytes, allocated, modelled)
        })
        .transpose()?;
    let columns = put_columns(dev, views, allocated, modelled)?;
    let naggs = agg::count(params)
        .ok_or_else(|| FpgaError::Unsupported("malformed aggregate program".into()))?;
    let bytes = n_groups * naggs * agg::SLOT_BYTES;
    let out = dev.alloc(bytes)?;
    allocated.push(out);
    let run = dev.run_aggregate(&AggregateArgs {
        program,
        groups,
        n_groups,
        columns,
        rows,
        out,
    })?;
    *modelled += dev.wait(run)?;
    let mut slots = vec![0u8; bytes];
    *modelled += dev.read(out, &mut slots)?;
    Ok(slots)
}

impl ComputeSession for FpgaSession {
    fn filter(&mut self, predicate: &PhysExpr, batch: &RecordBatch) -> Result<BooleanArray> {
        if self.fallback.is_none() {
            let (params, owned) = marshal_filter(predicate, batch)?;
            let views: Vec<ColumnBuffers<'_>> = owned.iter().map(|c| c.view()).collect();
            let rows = batch.num_rows();
            match self.on_device(|dev, allocated, modelled| {
                device_filter(dev, &params, &views, rows, allocated, modelled)
            }) {
                Ok(sel) => return Ok(sel),
                Err(e) => {
                    self.fall_back(&e)?;
                }
            }
        }
        self.fallback
            .as_mut()
            .expect("fallback opened above")
            .filter(predicate, batch)
    }

    fn aggregate(
        &mut self,
        aggs: &[AggSpec],
        groups: Option<&[u32]>,
        n_groups: usize,
        inputs: &[Option<AggInput<'_>>],
        batch: &RecordBatch,
    ) -> Result<()> {
        let rows = batch.num_rows();
        if self.fallback.is_none() {
            let (params, owned) = marshal_aggregate(aggs, inputs, batch)?;
            let views: Vec<ColumnBuffers<'_>> = owned.iter().map(|c| c.view()).collect();
            match self.on_device(|dev, allocated, modelled| {
                device_aggregate(
                    dev, &params, groups, n_groups, &views, rows, allocated, modelled,
                )
            }) {
                Ok(partial) => {
                    // Groups only ever grow: earlier accumulators keep their places.
                    self.state.resize(partial.len(), 0);
                    merge_state(aggs, &mut self.state, &partial)?;
                    self.rows_seen += rows as u64;
                    return Ok(());
                }
                Err(e) => {
                    self.fall_back(&e)?;
                }
            }
        }
        self.fallback
            .as_mut()
            .expect("fallback opened above")
            .aggregate(aggs, groups, n_groups, inputs, batch)
    }

    fn aggregate_finish(&mut self, aggs: &[AggSpec], n_groups: usize) -> Result<Vec<ArrayRef>> {
        let (state, rows) = self.aggregate_state(aggs, n_groups)?;
        finish_state(aggs, &state, n_groups, rows, "fpga")
    }

    fn aggregate_state(&mut self, aggs: &[AggSpec], n_groups: usize) -> Result<(Vec<u8>, u64)> {
        let mut state = std::mem::take(&mut self.state);
        state.resize(n_groups * aggs.len() * agg::SLOT_BYTES, 0);
        let mut rows = self.rows_seen;
        if let Some(wasm) = &self.fallback {
            // What the device accumulated before the fault, plus what Wasm did after.
            let (rest, wasm_rows) = wasm.raw_state(aggs, n_groups)?;
            check_counts(&rest, wasm_rows, wasm.kernel_name())?;
            merge_state(aggs, &mut state, &rest)?;
            rows += wasm_rows;
        }
        Ok((state, rows))
    }

    fn evaluate(&mut self, expr: &PhysExpr, batch: &RecordBatch) -> Result<ArrayRef> {
        NativeBackend.evaluate(expr, batch)
    }

    fn report(&self) -> SessionReport {
        SessionReport {
            native_reruns: self
                .fallback
                .as_ref()
                .map_or(0, |w| w.report().native_reruns),
            ..self.report
        }
    }
}
