//! The FPGA backend and an emulated FPGA.
//!
//! [`FpgaDevice`] is shaped like a real FPGA runtime (XRT / OpenCL style): load a bitstream,
//! allocate device buffers, DMA to and from them, start a kernel, wait for it. The
//! [`EmulatedFpga`] implements it on a [`ComputeNamespace`]: its one bitstream,
//! [`BITSTREAM_SCAN`], holds two kernels, loaded as programs into slots and activated — the
//! compare-filter engine (comparisons of fixed-width columns with literals, IN lists, null
//! tests, AND/OR/NOT; writes a selection bitmap) and the aggregate engine (count, sum, min, max
//! of fixed-width columns into per-group accumulators, at most [`FPGA_GROUPS_MAX`] groups);
//! device buffers are ranges of the namespace's local memory, DMA is a memory copy, and a
//! kernel run is one `execute` on a memory range set made for it. It reports a *modelled* time
//! from a timing model (clock, lanes, DMA bandwidth) alongside the host time it really took.
//!
//! Placement: the backend runs a filter when the program compiles for it and aggregates of the
//! types the Wasm kernel takes (the same sets); each batch's aggregates come back as partial
//! accumulators that the session merges. On a device fault (or a batch with more groups than
//! the device has accumulators) it falls back to the Wasm backend for the rest of the query and
//! merges what the device accumulated with what Wasm does; the answer is unchanged (float sums
//! up to rounding: partial sums add in another order). Expressions run natively.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{ArrayRef, BooleanArray};
use arrow::buffer::BooleanBuffer;
use arrow::record_batch::RecordBatch;
use nearstore_kernel_abi::{agg, program, types};
use nearstore_proto::BackendKind;

use super::namespace::{ComputeNamespace, ComputeProgram, MemRange, NamespaceError};
use super::native::NativeBackend;
use super::wasm::{
    ColumnBuffers, Stage, WasmBackend, WasmSession, check_counts, finish_state,
    fixed_width_filter_support, marshal_aggregate, marshal_filter, merge_state,
};
use super::{ComputeBackend, ComputeSession, KernelLimits, SessionReport, Support};
use crate::error::{Error, Result};
use crate::plan::AggSpec;
use crate::plan::PhysExpr;

/// The bitstream of the emulated device: the compare-filter and aggregate kernels.
pub const BITSTREAM_SCAN: &str = "nearstore-scan-v1";

/// Groups the aggregate engine has accumulators for.
pub const FPGA_GROUPS_MAX: usize = 4096;

/// Local memory of the emulated device.
const DEVICE_MEMORY_BYTES: u64 = 256 << 20;

/// Errors of an FPGA device.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FpgaError {
    /// The device stopped responding or reported a hardware error.
    #[error("device fault: {0}")]
    Fault(String),
    /// The request does not fit the loaded bitstream.
    #[error("unsupported by the bitstream: {0}")]
    Unsupported(String),
    /// A buffer handle or size is wrong.
    #[error("bad buffer: {0}")]
    BadBuffer(String),
}

impl From<NamespaceError> for FpgaError {
    fn from(e: NamespaceError) -> Self {
        match e {
            NamespaceError::Program { message, .. } => FpgaError::Unsupported(message),
            NamespaceError::OutOfMemory(_) | NamespaceError::BadRange(_) => {
                FpgaError::BadBuffer(e.to_string())
            }
            other => FpgaError::Unsupported(other.to_string()),
        }
    }
}

/// A device buffer handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceBuffer(u64);

/// A started kernel run.
#[derive(Debug)]
pub struct RunHandle {
    modelled: Duration,
}

/// The arguments of the compare-filter kernel.
#[derive(Debug, Clone)]
pub struct FilterArgs {
    /// The filter program (see `nearstore_kernel_abi::program`).
    pub program: DeviceBuffer,
    /// Per column: type code, values buffer, optional validity buffer.
    pub columns: Vec<(u32, DeviceBuffer, Option<DeviceBuffer>)>,
    /// Rows.
    pub rows: usize,
    /// Output: selection bitmap, `rows.div_ceil(8)` bytes.
    pub out: DeviceBuffer,
}

/// The arguments of the aggregate kernel.
#[derive(Debug, Clone)]
pub struct AggregateArgs {
    /// The aggregate program (see `nearstore_kernel_abi::agg`); column indices count from 1.
    pub program: DeviceBuffer,
    /// Each row's group (`u32`), or none: every row in group 0.
    pub groups: Option<DeviceBuffer>,
    /// Groups.
    pub n_groups: usize,
    /// Input columns (index 1, 2, …): type code, values, optional validity.
    pub columns: Vec<(u32, DeviceBuffer, Option<DeviceBuffer>)>,
    /// Rows.
    pub rows: usize,
    /// Output: `n_groups × aggregates` accumulators of `agg::SLOT_BYTES`, zeroed by the kernel.
    pub out: DeviceBuffer,
}

/// A device shaped like a real FPGA runtime.
pub trait FpgaDevice: Send + Sync + std::fmt::Debug {
    /// Loads a bitstream by id.
    fn load_bitstream(&self, id: &str) -> Result<(), FpgaError>;
    /// Allocates a device buffer.
    fn alloc(&self, bytes: usize) -> Result<DeviceBuffer, FpgaError>;
    /// Frees a device buffer.
    fn free(&self, buf: DeviceBuffer);
    /// DMA host → device; returns the modelled transfer time.
    fn write(&self, buf: DeviceBuffer, data: &[u8]) -> Result<Duration, FpgaError>;
    /// DMA device → host; returns the modelled transfer time.
    fn read(&self, buf: DeviceBuffer, out: &mut [u8]) -> Result<Duration, FpgaError>;
    /// Starts the compare-filter kernel.
    fn run_filter(&self, args: &FilterArgs) -> Result<RunHandle, FpgaError>;
    /// Starts the aggregate kernel.
    fn run_aggregate(&self, args: &AggregateArgs) -> Result<RunHandle, FpgaError>;
    /// Waits for a run; returns its modelled time.
    fn wait(&self, run: RunHandle) -> Result<Duration, FpgaError>;
}

/// The emulated device's timing model.
#[derive(Debug, Clone, Copy)]
pub struct TimingModel {
    /// Kernel clock.
    pub clock_mhz: f64,
    /// Values compared per cycle per operator.
    pub lanes: u32,
    /// DMA bandwidth each way.
    pub dma_gbps: f64,
    /// Fixed cost per DMA transfer or kernel launch.
    pub latency_us: f64,
}

impl Default for TimingModel {
    fn default() -> Self {
        TimingModel {
            clock_mhz: 250.0,
            lanes: 16,
            dma_gbps: 12.0,
            latency_us: 2.0,
        }
    }
}

impl TimingModel {
    fn dma(&self, bytes: usize) -> Duration {
        Duration::from_secs_f64(self.latency_us * 1e-6 + bytes as f64 / (self.dma_gbps * 1e9))
    }

    fn compute(&self, rows: usize, ops: usize) -> Duration {
        let cycles = (rows as f64 / self.lanes as f64).ceil() * ops.max(1) as f64;
        Duration::from_secs_f64(self.latency_us * 1e-6 + cycles / (self.clock_mhz * 1e6))
    }
}

/// The emulated device's state: its namespace, the slots of the loaded kernels, and the
/// device buffers' ranges.
#[derive(Debug)]
struct DeviceState {
    ns: ComputeNamespace,
    filter_slot: Option<u16>,
    aggregate_slot: Option<u16>,
    buffers: HashMap<u64, MemRange>,
}

/// An FPGA emulated in host memory, on a compute namespace.
#[derive(Debug)]
pub struct EmulatedFpga {
    timing: TimingModel,
    state: Mutex<DeviceState>,
    next: AtomicU64,
    runs: AtomicU64,
    /// Fail every run from this run number on (fault injection), `u64::MAX` for never.
    fault_from_run: AtomicU64,
}

impl EmulatedFpga {
    /// A device with `timing`.
    pub fn new(timing: TimingModel) -> Self {
        EmulatedFpga {
            timing,
            state: Mutex::new(DeviceState {
                ns: ComputeNamespace::new(4, DEVICE_MEMORY_BYTES),
                filter_slot: None,
                aggregate_slot: None,
                buffers: HashMap::new(),
            }),
            next: AtomicU64::new(1),
            runs: AtomicU64::new(0),
            fault_from_run: AtomicU64::new(u64::MAX),
        }
    }

    /// Fault injection: every kernel run from now on, after `after` more successful runs,
    /// fails with a device fault.
    pub fn inject_fault(&self, after: u64) {
        let now = self.runs.load(Ordering::Relaxed);
        self.fault_from_run.store(now + after, Ordering::Relaxed);
    }

    /// Clears an injected fault.
    pub fn clear_fault(&self) {
        self.fault_from_run.store(u64::MAX, Ordering::Relaxed);
    }

    /// Runs started so far.
    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    fn range(st: &DeviceState, b: DeviceBuffer) -> Result<MemRange, FpgaError> {
        st.buffers
            .get(&b.0)
            .copied()
            .ok_or_else(|| FpgaError::BadBuffer(format!("no buffer {}", b.0)))
    }

    /// Counts a run and fails it when a fault is injected.
    fn start_run(&self) -> Result<(), FpgaError> {
        let run = self.runs.fetch_add(1, Ordering::Relaxed);
        if run >= self.fault_from_run.load(Ordering::Relaxed) {
            return Err(FpgaError::Fault(format!("injected fault at run {run}")));
        }
        Ok(())
    }

    /// Runs the kernel in `slot` on a range set of `descriptor` (written to device memory for
    /// the run) followed by `buffers`; returns the kernel's operator count.
    fn execute(
        &self,
        slot: Option<u16>,
        descriptor: &[u8],
        buffers: &[DeviceBuffer],
        cparams: (u64, u64),
    ) -> Result<usize, FpgaError> {
        let mut st = self.state.lock().expect("fpga state");
        let slot = slot.ok_or_else(|| FpgaError::Unsupported("no bitstream loaded".into()))?;
        let desc = st.ns.alloc(descriptor.len() as u64)?;
        let result = (|| {
            st.ns.write(desc, descriptor)?;
            let mut ranges = vec![desc];
            for b in buffers {
                ranges.push(Self::range(&st, *b)?);
            }
            let set = st.ns.create_range_set(&ranges)?;
            let ops = st.ns.execute(slot, set, cparams.0, cparams.1);
            st.ns.delete_range_set(set)?;
            Ok(ops? as usize)
        })();
        st.ns.free(desc)?;
        result
    }
}

/// Column descriptor words of a kernel run: per column its type code and whether a validity
/// buffer follows its values in the range set.
fn column_words(columns: &[(u32, DeviceBuffer, Option<DeviceBuffer>)]) -> Vec<u8> {
    columns
        .iter()
        .flat_map(|(t, _, v)| [*t, u32::from(v.is_some())])
        .flat_map(u32::to_le_bytes)
        .collect()
}

fn column_buffers(columns: &[(u32, DeviceBuffer, Option<DeviceBuffer>)]) -> Vec<DeviceBuffer> {
    columns
        .iter()
        .flat_map(|(_, v, n)| std::iter::once(*v).chain(*n))
        .collect()
}

impl FpgaDevice for EmulatedFpga {
    fn load_bitstream(&self, id: &str) -> Result<(), FpgaError> {
        if id != BITSTREAM_SCAN {
            return Err(FpgaError::Unsupported(format!("unknown bitstream '{id}'")));
        }
        let mut st = self.state.lock().expect("fpga state");
        // Reconfiguration replaces the loaded kernels.
        for slot in [st.filter_slot.take(), st.aggregate_slot.take()]
            .into_iter()
            .flatten()
        {
            st.ns.deactivate(slot)?;
            st.ns.unload(slot)?;
        }
        let f = st.ns.load_program(Arc::new(engine::FilterKernel))?;
        st.ns.activate(f)?;
        let a = st.ns.load_program(Arc::new(engine::AggregateKernel))?;
        st.ns.activate(a)?;
        st.filter_slot = Some(f);
        st.aggregate_slot = Some(a);
        Ok(())
    }

    fn alloc(&self, bytes: usize) -> Result<DeviceBuffer, FpgaError> {
        let mut st = self.state.lock().expect("fpga state");
        let range = st.ns.alloc(bytes as u64)?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        st.buffers.insert(id, range);
        Ok(DeviceBuffer(id))
    }

    fn free(&self, buf: DeviceBuffer) {
        let mut st = self.state.lock().expect("fpga state");
        if let Some(r) = st.buffers.remove(&buf.0) {
            let _ = st.ns.free(r);
        }
    }

    fn write(&self, buf: DeviceBuffer, data: &[u8]) -> Result<Duration, FpgaError> {
        let mut st = self.state.lock().expect("fpga state");
        let r = Self::range(&st, buf)?;
        if (r.len as usize) < data.len() {
            return Err(FpgaError::BadBuffer("write larger than the buffer".into()));
        }
        st.ns.write(r, data)?;
        Ok(self.timing.dma(data.len()))
    }

    fn read(&self, buf: DeviceBuffer, out: &mut [u8]) -> Result<Duration, FpgaError> {
        let st = self.state.lock().expect("fpga state");
        let r = Self::range(&st, buf)?;
        if (r.len as usize) < out.len() {
            return Err(FpgaError::BadBuffer("read larger than the buffer".into()));
        }
        st.ns.read(r, out)?;
        Ok(self.timing.dma(out.len()))
    }

    fn run_filter(&self, args: &FilterArgs) -> Result<RunHandle, FpgaError> {
        let slot = self.state.lock().expect("fpga state").filter_slot;
        self.start_run()?;
        let mut buffers = vec![args.program, args.out];
        buffers.extend(column_buffers(&args.columns));
        let ops = self.execute(
            slot,
            &column_words(&args.columns),
            &buffers,
            (args.rows as u64, args.columns.len() as u64),
        )?;
        Ok(RunHandle {
            modelled: self.timing.compute(args.rows, ops),
        })
    }

    fn run_aggregate(&self, args: &AggregateArgs) -> Result<RunHandle, FpgaError> {
        let slot = self.state.lock().expect("fpga state").aggregate_slot;
        if args.n_groups > FPGA_GROUPS_MAX {
            return Err(FpgaError::Unsupported(format!(
                "{} groups; the aggregate engine has {FPGA_GROUPS_MAX} accumulators",
                args.n_groups
            )));
        }
        self.start_run()?;
        let mut desc = vec![u8::from(args.groups.is_some()), 0, 0, 0];
        desc.extend((args.columns.len() as u32).to_le_bytes());
        desc.extend(column_words(&args.columns));
        let mut buffers = vec![args.program, args.out];
        buffers.extend(args.groups);
        buffers.extend(column_buffers(&args.columns));
        let ops = self.execute(
            slot,
            &desc,
            &buffers,
            (args.rows as u64, args.n_groups as u64),
        )?;
        Ok(RunHandle {
            modelled: self.timing.compute(args.rows, ops),
        })
    }

    fn wait(&self, run: RunHandle) -> Result<Duration, FpgaError> {
        Ok(run.modelled)
    }
}

/// The emulated compare-filter engine: one pass per operator over the column, as the
/// hardware pipeline would stream it, producing (true, false) bitmaps for three-valued logic.
mod engine {
    use super::*;

    type Col<'a> = (u32, &'a [u8], Option<&'a [u8]>);

    fn bit(bits: &[u8], i: usize) -> bool {
        bits.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
    }

    fn value(c: &Col, i: usize) -> Result<i128, FpgaError> {
        let w = types::width(c.0);
        let b =
            c.1.get(i * w..i * w + w)
                .ok_or_else(|| FpgaError::BadBuffer("column buffer too short".into()))?;
        Ok(match c.0 {
            types::INT32 | types::DATE32 => i32::from_le_bytes(b.try_into().expect("4")) as i128,
            types::INT64 => i64::from_le_bytes(b.try_into().expect("8")) as i128,
            types::FLOAT64 => {
                let x = i64::from_le_bytes(b.try_into().expect("8"));
                (x ^ ((((x >> 63) as u64) >> 1) as i64)) as i128
            }
            types::DECIMAL128 => i128::from_le_bytes(b.try_into().expect("16")),
            t => return Err(FpgaError::Unsupported(format!("column type {t}"))),
        })
    }

    fn literal(code: u32, p: &[u8], pos: &mut usize) -> Result<i128, FpgaError> {
        let w = types::width(code);
        let b = p
            .get(*pos..*pos + w)
            .ok_or_else(|| FpgaError::Unsupported("truncated program".into()))?;
        *pos += w;
        value(&(code, b, None), 0)
    }

    fn u16_at(p: &[u8], pos: &mut usize) -> Result<usize, FpgaError> {
        let b = p
            .get(*pos..*pos + 2)
            .ok_or_else(|| FpgaError::Unsupported("truncated program".into()))?;
        *pos += 2;
        Ok(u16::from_le_bytes([b[0], b[1]]) as usize)
    }

    /// Evaluates the program; returns the selection bitmap and the operator count.
    pub(super) fn evaluate(
        p: &[u8],
        cols: &[Col],
        rows: usize,
    ) -> Result<(Vec<u8>, usize), FpgaError> {
        let col = |i: usize| {
            cols.get(i)
                .ok_or_else(|| FpgaError::Unsupported(format!("column {i} not bound")))
        };
        let valid = |c: &Col, i: usize| c.2.is_none_or(|v| bit(v, i));
        let mut stack: Vec<(Vec<bool>, Vec<bool>)> = Vec::new();
        let mut pos = 0;
        let mut ops = 0;
        while pos < p.len() {
            let code = p[pos];
            pos += 1;
            ops += 1;
            let entry = match code {
                program::CMP | program::IN => {
                    let c = col(u16_at(p, &mut pos)?)?;
                    let (op, lits) = if code == program::CMP {
                        let op = *p
                            .get(pos)
                            .ok_or_else(|| FpgaError::Unsupported("truncated program".into()))?;
                        pos += 1;
                        (op, vec![literal(c.0, p, &mut pos)?])
                    } else {
                        let n = u16_at(p, &mut pos)?;
                        let lits = (0..n)
                            .map(|_| literal(c.0, p, &mut pos))
                            .collect::<Result<_, _>>()?;
                        (program::op::EQ, lits)
                    };
                    let mut t = vec![false; rows];
                    let mut f = vec![false; rows];
                    for i in 0..rows {
                        if !valid(c, i) {
                            continue;
                        }
                        let v = value(c, i)?;
                        let hit = lits.iter().any(|&l| match op {
                            program::op::EQ => v == l,
                            program::op::NE => v != l,
                            program::op::LT => v < l,
                            program::op::LE => v <= l,
                            program::op::GT => v > l,
                            _ => v >= l,
                        });
                        t[i] = hit;
                        f[i] = !hit;
                    }
                    (t, f)
                }
                program::IS_NULL | program::IS_NOT_NULL => {
                    let c = col(u16_at(p, &mut pos)?)?;
                    let v: Vec<bool> = (0..rows).map(|i| valid(c, i)).collect();
                    let n: Vec<bool> = v.iter().map(|x| !x).collect();
                    if code == program::IS_NULL {
                        (n, v)
                    } else {
                        (v, n)
                    }
                }
                program::AND | program::OR => {
                    let (bt, bf) = stack
                        .pop()
                        .ok_or_else(|| FpgaError::Unsupported("stack underflow".into()))?;
                    let (at, af) = stack
                        .pop()
                        .ok_or_else(|| FpgaError::Unsupported("stack underflow".into()))?;
                    let and = code == program::AND;
                    let t = (0..rows)
                        .map(|i| if and { at[i] && bt[i] } else { at[i] || bt[i] })
                        .collect();
                    let f = (0..rows)
                        .map(|i| if and { af[i] || bf[i] } else { af[i] && bf[i] })
                        .collect();
                    (t, f)
                }
                program::NOT => {
                    let (t, f) = stack
                        .pop()
                        .ok_or_else(|| FpgaError::Unsupported("stack underflow".into()))?;
                    (f, t)
                }
                program::CONST => {
                    let v = *p
                        .get(pos)
                        .ok_or_else(|| FpgaError::Unsupported("truncated program".into()))?;
                    pos += 1;
                    (vec![v == 1; rows], vec![v == 0; rows])
                }
                other => return Err(FpgaError::Unsupported(format!("opcode {other}"))),
            };
            stack.push(entry);
        }
        let (t, _) = stack
            .pop()
            .ok_or_else(|| FpgaError::Unsupported("empty program".into()))?;
        if !stack.is_empty() {
            return Err(FpgaError::Unsupported("program leaves extra values".into()));
        }
        let mut bits = vec![0u8; rows.div_ceil(8)];
        for (i, _) in t.iter().enumerate().filter(|(_, x)| **x) {
            bits[i / 8] |= 1 << (i % 8);
        }
        Ok((bits, ops))
    }

    /// The compare-filter kernel as a namespace program. Ranges: column descriptor words,
    /// filter program, output bitmap, then each column's values (and validity when its
    /// descriptor says so). `cparam1` rows, `cparam2` columns; returns the operator count.
    #[derive(Debug)]
    pub(super) struct FilterKernel;

    /// The column views that follow the fixed ranges of a run, per the descriptor words.
    fn columns<'a>(
        words: &[u8],
        ncols: usize,
        ranges: &'a [&mut [u8]],
    ) -> Result<Vec<Col<'a>>, String> {
        let word = |k: usize| -> Result<u32, String> {
            words
                .get(4 * k..4 * k + 4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
                .ok_or_else(|| "column descriptor too short".to_string())
        };
        let mut out = Vec::with_capacity(ncols);
        let mut next = 0;
        for c in 0..ncols {
            let (t, has_validity) = (word(2 * c)?, word(2 * c + 1)? != 0);
            let values = ranges.get(next).ok_or("missing column buffer")?;
            next += 1;
            let validity = if has_validity {
                next += 1;
                Some(&ranges.get(next - 1).ok_or("missing validity buffer")?[..])
            } else {
                None
            };
            out.push((t, &values[..], validity));
        }
        if next != ranges.len() {
            return Err(format!("{} buffers left over", ranges.len() - next));
        }
        Ok(out)
    }

    impl ComputeProgram for FilterKernel {
        fn name(&self) -> &str {
            "compare-filter"
        }

        fn execute(&self, r: &mut [&mut [u8]], rows: u64, ncols: u64) -> Result<u64, String> {
            if r.len() < 3 {
                return Err("needs descriptor, program and output ranges".into());
            }
            let (head, rest) = r.split_at_mut(3);
            let cols = columns(&head[0][..], ncols as usize, rest)?;
            let (bits, ops) =
                evaluate(&head[1][..], &cols, rows as usize).map_err(|e| e.to_string())?;
            let out = &mut head[2];
            if out.len() < bits.len() {
                return Err("output buffer too small".into());
            }
            out[..bits.len()].copy_from_slice(&bits);
            Ok(ops as u64)
        }
    }

    /// The aggregate kernel as a namespace program. Ranges: descriptor (has-groups byte, 3
    /// reserved, column count `u32`, column words), aggregate program, output accumulators,
    /// the groups (`u32` per row) when present, then the columns. `cparam1` rows, `cparam2`
    /// groups; returns the operator count.
    #[derive(Debug)]
    pub(super) struct AggregateKernel;

    impl ComputeProgram for AggregateKernel {
        fn name(&self) -> &str {
            "aggregate"
        }

        fn execute(&self, r: &mut [&mut [u8]], rows: u64, groups: u64) -> Result<u64, String> {
            if r.len() < 3 || r[0].len() < 8 {
                return Err("needs descriptor, program and output ranges".into());
            }
            let has_groups = r[0][0] != 0;
            let ncols = u32::from_le_bytes(r[0][4..8].try_into().expect("4 bytes")) as usize;
            let fixed = 3 + usize::from(has_groups);
            if r.len() < fixed {
                return Err("missing the groups buffer".into());
            }
            let (head, rest) = r.split_at_mut(fixed);
            let (desc, head) = head.split_at_mut(1);
            let (prog, head) = head.split_at_mut(1);
            let (out, grp) = head.split_at_mut(1);
            let cols = columns(&desc[0][8..], ncols, rest)?;
            let ids = grp.first().map(|g| &g[..]);
            aggregate(
                &prog[0][..],
                ids,
                &cols,
                rows as usize,
                groups as usize,
                out[0],
            )
            .map(|ops| ops as u64)
            .map_err(|e| e.to_string())
        }
    }

    /// Accumulates `rows` rows into `n_groups × aggregates` slots of `agg::SLOT_BYTES` in
    /// `out` (zeroed first; the layout of the Wasm kernel's state): counts, sums (integers and
    /// decimals exact in `i128`, floats in `f64`), minima and maxima (float total-order keys).
    pub(super) fn aggregate(
        prog: &[u8],
        groups: Option<&[u8]>,
        cols: &[Col],
        rows: usize,
        n_groups: usize,
        out: &mut [u8],
    ) -> Result<usize, FpgaError> {
        if prog.is_empty() || !prog.len().is_multiple_of(4) {
            return Err(FpgaError::Unsupported("malformed aggregate program".into()));
        }
        let naggs = prog.len() / 4;
        let need = n_groups * naggs * agg::SLOT_BYTES;
        if out.len() < need {
            return Err(FpgaError::BadBuffer("accumulator buffer too small".into()));
        }
        out[..need].fill(0);
        let group = |i: usize| -> Result<usize, FpgaError> {
            let g = match groups {
                None => 0,
                Some(ids) => ids
                    .get(4 * i..4 * i + 4)
                    .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
                    .ok_or_else(|| FpgaError::BadBuffer("groups buffer too short".into()))?,
            };
            if g >= n_groups.max(1) {
                return Err(FpgaError::BadBuffer(format!("group {g} of {n_groups}")));
            }
            Ok(g)
        };
        for (j, spec) in prog.chunks_exact(4).enumerate() {
            let func = spec[0];
            let c = match u16::from_le_bytes([spec[1], spec[2]]) {
                agg::NO_COLUMN => None,
                k => Some(
                    cols.get((k as usize).wrapping_sub(1))
                        .ok_or_else(|| FpgaError::Unsupported(format!("column {k} not bound")))?,
                ),
            };
            for i in 0..rows {
                let at = (group(i)? * naggs + j) * agg::SLOT_BYTES;
                let slot = &mut out[at..at + agg::SLOT_BYTES];
                let acc = i128::from_le_bytes(slot[..16].try_into().expect("16 bytes"));
                let count = i64::from_le_bytes(slot[16..24].try_into().expect("8 bytes"));
                let valid = c.is_none_or(|c| c.2.is_none_or(|v| bit(v, i)));
                let new_acc = match (func, c) {
                    (agg::COUNT_STAR, _) => acc,
                    (_, _) if !valid => continue,
                    (agg::COUNT, _) => acc,
                    (agg::SUM, Some(c)) if c.0 == types::FLOAT64 => {
                        let x = f64::from_le_bytes(
                            c.1.get(8 * i..8 * i + 8)
                                .ok_or_else(|| FpgaError::BadBuffer("column too short".into()))?
                                .try_into()
                                .expect("8 bytes"),
                        );
                        (f64::from_bits(acc as u64) + x).to_bits() as i128
                    }
                    (agg::SUM, Some(c)) => acc
                        .checked_add(value(c, i)?)
                        .ok_or_else(|| FpgaError::Unsupported("sum overflowed".into()))?,
                    (agg::MIN, Some(c)) => {
                        let v = value(c, i)?;
                        if count == 0 || v < acc { v } else { acc }
                    }
                    (agg::MAX, Some(c)) => {
                        let v = value(c, i)?;
                        if count == 0 || v > acc { v } else { acc }
                    }
                    (f, _) => {
                        return Err(FpgaError::Unsupported(format!(
                            "aggregate function {f} without a column"
                        )));
                    }
                };
                slot[..16].copy_from_slice(&new_acc.to_le_bytes());
                slot[16..24].copy_from_slice(&(count + 1).to_le_bytes());
            }
        }
        Ok(naggs)
    }
}

/// The FPGA backend over a device, with Wasm as its fallback.
#[derive(Debug, Clone)]
pub struct FpgaBackend {
    device: Arc<EmulatedFpga>,
    fallback: WasmBackend,
}

impl FpgaBackend {
    /// A backend over a fresh emulated device with `timing`; `fallback` runs what the device
    /// cannot or what fails on it.
    pub fn new(timing: TimingModel, fallback: WasmBackend) -> Result<Self> {
        let device = Arc::new(EmulatedFpga::new(timing));
        device
            .load_bitstream(BITSTREAM_SCAN)
            .map_err(|e| Error::Internal(format!("FPGA set-up: {e}")))?;
        Ok(FpgaBackend { device, fallback })
    }

    /// The device (for fault injection in tests).
    pub fn device(&self) -> &Arc<EmulatedFpga> {
        &self.device
    }
}

impl ComputeBackend for FpgaBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Fpga
    }

    fn supports_filter(&self, predicate: &PhysExpr) -> Support {
        fixed_width_filter_support(predicate)
    }

    fn supports_expr(&self, _expr: &PhysExpr) -> Support {
        Support::Unsupported
    }

    fn supports_aggregates(&self, aggs: &[AggSpec]) -> Support {
        // The aggregate engine takes the functions and column types the Wasm kernel does.
        self.fallback.supports_aggregates(aggs)
    }

    fn open(&self) -> Result<Box<dyn ComputeSession>> {
        self.open_with(None)
    }

    fn open_with(&self, limits: Option<KernelLimits>) -> Result<Box<dyn ComputeSession>> {
        Ok(Box::new(FpgaSession {
            device: self.device.clone(),
            fallback_backend: self.fallback.clone(),
            limits,
            fallback: None,
            state: Vec::new(),
            rows_seen: 0,
            report: SessionReport::default(),
        }))
    }
}

struct FpgaSession {
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
    let bytes = n_groups * (params.len() / 4) * agg::SLOT_BYTES;
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
        inputs: &[Option<ArrayRef>],
        rows: usize,
    ) -> Result<()> {
        if self.fallback.is_none() {
            let (params, owned) = marshal_aggregate(aggs, inputs)?;
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
            .aggregate(aggs, groups, n_groups, inputs, rows)
    }

    fn aggregate_finish(&mut self, aggs: &[AggSpec], n_groups: usize) -> Result<Vec<ArrayRef>> {
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
        finish_state(aggs, &state, n_groups, rows, "fpga")
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
