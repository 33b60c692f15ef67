//! The FPGA backend and an emulated FPGA.
//!
//! [`FpgaDevice`] is shaped like a real FPGA runtime (XRT / OpenCL style): load a bitstream,
//! allocate device buffers, DMA to and from them, start a kernel, wait for it. The
//! [`EmulatedFpga`] implements it in host memory and supports one bitstream,
//! [`BITSTREAM_FILTER`]: the compare-filter engine that executes the device's filter program
//! (comparisons of fixed-width columns with literals, IN lists, null tests, AND/OR/NOT) and
//! writes a selection bitmap. It reports a *modelled* time from a timing model (clock, lanes,
//! DMA bandwidth) alongside the host time it really took.
//!
//! Placement: the backend runs a filter when the program compiles for it (the same set the Wasm
//! kernel runs); on a device fault it falls back to the Wasm backend for the rest of the query,
//! and the answer is unchanged. Expressions and aggregates are not offered yet and run natively.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{ArrayRef, BooleanArray};
use arrow::buffer::BooleanBuffer;
use arrow::record_batch::RecordBatch;
use nearstore_kernel_abi::{program, types};
use nearstore_proto::BackendKind;

use super::native::NativeBackend;
use super::wasm::{ColumnBuffers, WasmBackend, filter_support, marshal_filter};
use super::{ComputeBackend, ComputeSession, SessionReport, Support};
use crate::error::{Error, Result};
use crate::exec::expr::PhysExpr;

/// The compare-filter bitstream of the emulated device.
pub const BITSTREAM_FILTER: &str = "nearstore-filter-v1";

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

/// An FPGA emulated in host memory.
#[derive(Debug)]
pub struct EmulatedFpga {
    timing: TimingModel,
    bitstream: Mutex<Option<String>>,
    buffers: Mutex<HashMap<u64, Vec<u8>>>,
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
            bitstream: Mutex::new(None),
            buffers: Mutex::new(HashMap::new()),
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

    fn buffer<T>(
        &self,
        b: DeviceBuffer,
        f: impl FnOnce(&mut Vec<u8>) -> T,
    ) -> Result<T, FpgaError> {
        let mut bufs = self.buffers.lock().expect("fpga buffers");
        let v = bufs
            .get_mut(&b.0)
            .ok_or_else(|| FpgaError::BadBuffer(format!("no buffer {}", b.0)))?;
        Ok(f(v))
    }
}

impl FpgaDevice for EmulatedFpga {
    fn load_bitstream(&self, id: &str) -> Result<(), FpgaError> {
        if id != BITSTREAM_FILTER {
            return Err(FpgaError::Unsupported(format!("unknown bitstream '{id}'")));
        }
        *self.bitstream.lock().expect("bitstream") = Some(id.to_string());
        Ok(())
    }

    fn alloc(&self, bytes: usize) -> Result<DeviceBuffer, FpgaError> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.buffers
            .lock()
            .expect("fpga buffers")
            .insert(id, vec![0; bytes]);
        Ok(DeviceBuffer(id))
    }

    fn free(&self, buf: DeviceBuffer) {
        self.buffers.lock().expect("fpga buffers").remove(&buf.0);
    }

    fn write(&self, buf: DeviceBuffer, data: &[u8]) -> Result<Duration, FpgaError> {
        self.buffer(buf, |v| {
            if v.len() < data.len() {
                return Err(FpgaError::BadBuffer("write larger than the buffer".into()));
            }
            v[..data.len()].copy_from_slice(data);
            Ok(self.timing.dma(data.len()))
        })?
    }

    fn read(&self, buf: DeviceBuffer, out: &mut [u8]) -> Result<Duration, FpgaError> {
        self.buffer(buf, |v| {
            if v.len() < out.len() {
                return Err(FpgaError::BadBuffer("read larger than the buffer".into()));
            }
            out.copy_from_slice(&v[..out.len()]);
            Ok(self.timing.dma(out.len()))
        })?
    }

    fn run_filter(&self, args: &FilterArgs) -> Result<RunHandle, FpgaError> {
        if self.bitstream.lock().expect("bitstream").as_deref() != Some(BITSTREAM_FILTER) {
            return Err(FpgaError::Unsupported("no filter bitstream loaded".into()));
        }
        let run = self.runs.fetch_add(1, Ordering::Relaxed);
        if run >= self.fault_from_run.load(Ordering::Relaxed) {
            return Err(FpgaError::Fault(format!("injected fault at run {run}")));
        }
        let bufs = self.buffers.lock().expect("fpga buffers");
        let get = |b: &DeviceBuffer| {
            bufs.get(&b.0)
                .ok_or_else(|| FpgaError::BadBuffer(format!("no buffer {}", b.0)))
        };
        let prog = get(&args.program)?.clone();
        let cols = args
            .columns
            .iter()
            .map(|(t, v, n)| Ok((*t, get(v)?.as_slice(), n.map(|n| get(&n)).transpose()?)))
            .collect::<Result<Vec<_>, FpgaError>>()?;
        let (bits, ops) = engine::evaluate(&prog, &cols, args.rows)?;
        drop(bufs);
        self.buffer(args.out, |v| {
            let n = bits.len().min(v.len());
            v[..n].copy_from_slice(&bits[..n]);
        })?;
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

    type Col<'a> = (u32, &'a [u8], Option<&'a Vec<u8>>);

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
            .load_bitstream(BITSTREAM_FILTER)
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
        filter_support(predicate)
    }

    fn supports_expr(&self, _expr: &PhysExpr) -> Support {
        Support::Unsupported
    }

    fn open(&self) -> Result<Box<dyn ComputeSession>> {
        Ok(Box::new(FpgaSession {
            device: self.device.clone(),
            fallback_backend: self.fallback.clone(),
            fallback: None,
            report: SessionReport::default(),
        }))
    }
}

struct FpgaSession {
    device: Arc<EmulatedFpga>,
    fallback_backend: WasmBackend,
    fallback: Option<Box<dyn ComputeSession>>,
    report: SessionReport,
}

impl FpgaSession {
    fn run(
        &mut self,
        predicate: &PhysExpr,
        batch: &RecordBatch,
    ) -> Result<Result<BooleanArray, FpgaError>> {
        let (params, owned) = marshal_filter(predicate, batch)?;
        let views: Vec<ColumnBuffers<'_>> = owned.iter().map(|c| c.view()).collect();
        let rows = batch.num_rows();
        let dev = &*self.device;
        let mut allocated = Vec::new();
        let mut modelled = Duration::ZERO;
        let attempt = device_filter(dev, &params, &views, rows, &mut allocated, &mut modelled);
        for b in allocated {
            dev.free(b);
        }
        self.report.modelled_us += modelled.as_secs_f64() * 1e6;
        Ok(attempt)
    }
}

/// One filter run on the device: DMA in, run, wait, DMA out. Buffers it allocated are listed
/// in `allocated` (freed by the caller, also on failure); modelled time accumulates.
fn device_filter(
    dev: &dyn FpgaDevice,
    params: &[u8],
    views: &[ColumnBuffers<'_>],
    rows: usize,
    allocated: &mut Vec<DeviceBuffer>,
    modelled: &mut Duration,
) -> Result<BooleanArray, FpgaError> {
    let mut put = |data: &[u8]| -> Result<DeviceBuffer, FpgaError> {
        let b = dev.alloc(data.len())?;
        allocated.push(b);
        *modelled += dev.write(b, data)?;
        Ok(b)
    };
    let program = put(params)?;
    let mut columns = Vec::new();
    for v in views {
        let values = put(v.values)?;
        let validity = v.validity.map(&mut put).transpose()?;
        columns.push((v.type_code, values, validity));
    }
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

impl ComputeSession for FpgaSession {
    fn filter(&mut self, predicate: &PhysExpr, batch: &RecordBatch) -> Result<BooleanArray> {
        if self.fallback.is_none() {
            match self.run(predicate, batch)? {
                Ok(sel) => return Ok(sel),
                Err(e) => {
                    tracing::warn!(error = %e, "FPGA failed; falling back to Wasm for this query");
                    self.report.fallbacks += 1;
                    self.fallback = Some(self.fallback_backend.open()?);
                }
            }
        }
        self.fallback
            .as_mut()
            .expect("fallback opened above")
            .filter(predicate, batch)
    }

    fn evaluate(&mut self, expr: &PhysExpr, batch: &RecordBatch) -> Result<ArrayRef> {
        NativeBackend.evaluate(expr, batch)
    }

    fn report(&self) -> SessionReport {
        self.report
    }
}
