//! The emulated FPGA: [`EmulatedFpga`] implements [`FpgaDevice`] on a [`ComputeNamespace`]
//! (bitstream [`BITSTREAM_SCAN`] loads the two engines into program slots; device buffers are
//! local-memory ranges, DMA a memory copy, each run one `execute` on a range set made for it),
//! and its [`TimingModel`] (clock, lanes, DMA bandwidth, latency) yields the modelled time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::engine;
use super::{
    AggregateArgs, BITSTREAM_SCAN, DeviceBuffer, FPGA_GROUPS_MAX, FilterArgs, FpgaDevice,
    FpgaError, RunHandle,
};
use crate::compute::namespace::{ComputeNamespace, MemRange};

/// Local memory of the emulated device.
const DEVICE_MEMORY_BYTES: u64 = 256 << 20;

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
