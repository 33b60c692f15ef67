//! The wasmtime engine every kernel runs on, and the host side of a kernel's store.
//!
//! One `Engine`: Cranelift (optimised for speed), epoch interruption with a ticker thread
//! advancing the epoch every [`SandboxConfig::epoch_tick`] (1 ms by default: the granularity
//! of deadlines), a bounded Wasm stack (512 KiB by default), the pooling allocator with
//! copy-on-write memory images, SIMD on; relaxed SIMD, GC, memory64 and stack switching off
//! (threads, the component model and exceptions are not compiled in). Kernels may import only
//! `nearstore.log` (rate-limited, to the `nearstore::kernel` log target) and `nearstore.abort`.
//! For profiling, [`PERF_MAP_ENV`] makes the engine write a perf map of the compiled code.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nearstore_kernel_abi as abi;
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, Linker, PoolingAllocationConfig, ResourceLimiter,
};

use super::{KernelError, SandboxConfig, host_err};

/// What the host keeps in a kernel's store: its memory limit, and what the kernel did that a
/// trap alone does not tell (hit the limit, called abort, logged).
pub(super) struct HostState {
    pub(super) memory_bytes_max: usize,
    pub(super) memory_limit_hit: bool,
    pub(super) abort: Option<u32>,
    pub(super) log_lines: usize,
}

impl ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes_max {
            self.memory_limit_hit = true;
            wasmtime::bail!("memory limit of {} bytes", self.memory_bytes_max);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 10_000)
    }
}

/// The engine for `config`, and a linker holding the imports kernels may use.
/// Set (to anything but `0`) at a device's start, the compiled kernels' functions are named
/// in `/tmp/perf-PID.map`, so `perf report` attributes kernel time to them by name.
pub(crate) const PERF_MAP_ENV: &str = "NEARSTORE_WASM_PERF_MAP";

fn perf_map_asked(value: Option<&std::ffi::OsStr>) -> bool {
    value.is_some_and(|v| !v.is_empty() && v != "0")
}

pub(super) fn engine(config: &SandboxConfig) -> Result<(Engine, Linker<HostState>), KernelError> {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_core_instances(config.instances_max)
        .total_memories(config.instances_max)
        .total_tables(config.instances_max)
        .max_memory_size(config.memory_bytes_max);
    let mut c = Config::new();
    c.epoch_interruption(true)
        .max_wasm_stack(config.stack_bytes_max)
        .wasm_simd(true)
        .wasm_relaxed_simd(false)
        .wasm_gc(false)
        .wasm_memory64(false)
        .wasm_stack_switching(false)
        .memory_init_cow(true)
        .cranelift_opt_level(wasmtime::OptLevel::Speed)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    if perf_map_asked(std::env::var_os(PERF_MAP_ENV).as_deref()) {
        c.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    let engine = Engine::new(&c).map_err(host_err)?;
    let mut linker: Linker<HostState> = Linker::new(&engine);
    linker
        .func_wrap(
            abi::IMPORT_MODULE,
            abi::IMPORT_LOG,
            |mut caller: wasmtime::Caller<'_, HostState>, ptr: u32, len: u32| {
                if caller.data().log_lines >= 100 {
                    return;
                }
                caller.data_mut().log_lines += 1;
                let Some(mem) = caller.get_export(abi::EXPORT_MEMORY).and_then(|e| e.into_memory())
                else {
                    return;
                };
                let data = mem.data(&caller);
                let (s, n) = (ptr as usize, (len as usize).min(1024));
                if let Some(bytes) = data.get(s..s.saturating_add(n)) {
                    tracing::info!(target: "nearstore::kernel", "{}", String::from_utf8_lossy(bytes));
                }
            },
        )
        .map_err(host_err)?;
    linker
        .func_wrap(
            abi::IMPORT_MODULE,
            abi::IMPORT_ABORT,
            |mut caller: wasmtime::Caller<'_, HostState>, code: u32| -> wasmtime::Result<()> {
                caller.data_mut().abort = Some(code);
                wasmtime::bail!("kernel called abort({code:#x})")
            },
        )
        .map_err(host_err)?;
    Ok((engine, linker))
}

/// Starts the thread that advances `engine`'s epoch every `tick`, until the returned flag is
/// set or the engine is dropped.
pub(super) fn start_epoch_ticker(
    engine: &Engine,
    tick: std::time::Duration,
) -> Result<Arc<AtomicBool>, KernelError> {
    let stop = Arc::new(AtomicBool::new(false));
    let weak = engine.weak();
    let stop_flag = stop.clone();
    std::thread::Builder::new()
        .name("nearstore-epoch".into())
        .spawn(move || {
            while !stop_flag.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                match weak.upgrade() {
                    Some(e) => e.increment_epoch(),
                    None => break,
                }
            }
        })
        .map_err(host_err)?;
    Ok(stop)
}
