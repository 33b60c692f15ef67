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
//! Files: [`emulated`] (the emulated device and its timing model), [`engine`] (its filter and
//! aggregate engines), [`session`] (a query's use of the device, and the fallback).
//!
//! Placement: the backend runs a filter when the program compiles for it and aggregates of the
//! types the Wasm kernel takes (the same sets); each batch's aggregates come back as partial
//! accumulators that the session merges. On a device fault (or a batch with more groups than
//! the device has accumulators) it falls back to the Wasm backend for the rest of the query and
//! merges what the device accumulated with what Wasm does; the answer is unchanged (float sums
//! up to rounding: partial sums add in another order). Expressions run natively.

mod emulated;
mod engine;
mod session;

use std::sync::Arc;
use std::time::Duration;

use nearstore_proto::BackendKind;

use super::namespace::NamespaceError;
use super::program::fixed_width_filter_support;
use super::wasm::WasmBackend;
use super::{ComputeBackend, ComputeSession, KernelLimits, Support};
use crate::error::{Error, Result};
use crate::plan::{AggSpec, PhysExpr};
pub use emulated::{EmulatedFpga, TimingModel};
use session::FpgaSession;

/// The bitstream of the emulated device: the compare-filter and aggregate kernels.
pub const BITSTREAM_SCAN: &str = "nearstore-scan-v1";

/// Groups the aggregate engine has accumulators for.
pub const FPGA_GROUPS_MAX: usize = 4096;

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

    fn open_with(&self, limits: Option<KernelLimits>) -> Result<Box<dyn ComputeSession>> {
        Ok(Box::new(FpgaSession::new(
            self.device.clone(),
            self.fallback.clone(),
            limits,
        )))
    }
}
