//! The wasmtime sandbox for untrusted kernels: [`Sandbox`] compiles, caches and runs them.
//!
//! - Engine ([`engine`]): one wasmtime engine, epoch interruption, pooled instances.
//! - Loading ([`Sandbox::load`], [`load`]): validated modules, compiled once per SHA-256
//!   ([`cache`]).
//! - Running ([`Sandbox::session`], [`session`]): a fresh store and instance per query, a memory
//!   limit per store, a deadline per query; batches staged in the kernel's memory ([`staging`]);
//!   every output checked before the host uses it ([`calls`], [`aggregate`]).

mod aggregate;
mod cache;
mod calls;
mod engine;
mod load;
mod session;
mod staging;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::{Engine, Linker};

use crate::compute::program::BeyondPrecision;
pub use crate::compute::program::{ColumnBuffers, Stage};
use cache::ProgramCache;
use engine::HostState;
pub use load::Program;
pub use session::KernelSession;

/// Limits for kernels.
#[derive(Debug, Clone, Copy)]
pub struct SandboxConfig {
    /// Linear memory one kernel instance may grow to.
    pub memory_bytes_max: usize,
    /// Wasm stack of one call.
    pub stack_bytes_max: usize,
    /// Wall-clock budget of all kernel calls of one query.
    pub deadline: Duration,
    /// Wall-clock budget of any one call into a kernel (a batch), within the query's: a
    /// kernel that spins inside one call is stopped after this, not at the query's deadline.
    pub call_budget: Duration,
    /// Epoch ticker period (the granularity of deadlines).
    pub epoch_tick: Duration,
    /// Kernel instances alive at once (pool size).
    pub instances_max: u32,
    /// Compiled modules kept in the cache; past that the least recently used of the tenant
    /// holding the most is dropped (a query that still holds it keeps it until it ends).
    pub programs_max: usize,
    /// Bytes of a module the sandbox accepts (checked before anything is parsed).
    pub module_bytes_max: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            memory_bytes_max: 256 << 20,
            stack_bytes_max: 512 << 10,
            deadline: Duration::from_secs(30),
            call_budget: Duration::from_secs(1),
            epoch_tick: Duration::from_millis(1),
            instances_max: 64,
            programs_max: 64,
            module_bytes_max: 16 << 20,
        }
    }
}

/// What went wrong in or around a kernel. Each is specific to one query.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KernelError {
    /// The bytes are not a valid core Wasm module.
    #[error("kernel refused: not a valid WebAssembly module: {0}")]
    Invalid(String),
    /// The module imports something outside the allow-list.
    #[error(
        "kernel refused: it imports {0}, but kernels may import only nearstore.log and nearstore.abort"
    )]
    ForbiddenImport(String),
    /// Missing or mistyped export, wrong ABI version, or manifest disagreeing with the exports.
    #[error("kernel refused: ABI mismatch: {0}")]
    AbiMismatch(String),
    /// The query's kernel time ran out.
    #[error("kernel {kernel} stopped at its deadline of {deadline_ms} ms")]
    Deadline {
        /// Kernel name.
        kernel: String,
        /// Deadline.
        deadline_ms: u64,
    },
    /// One call into the kernel ran past the per-call budget.
    #[error(
        "kernel {kernel} stopped: one call ran past the per-call budget of {budget_ms} ms (a \
         kernel gets one batch per call; a call that long is a loop that does not end)"
    )]
    CallBudget {
        /// Kernel name.
        kernel: String,
        /// The budget.
        budget_ms: u64,
    },
    /// The kernel tried to grow its memory past the limit.
    #[error("kernel {kernel} hit its memory limit of {limit_bytes} bytes")]
    MemoryLimit {
        /// Kernel name.
        kernel: String,
        /// Limit.
        limit_bytes: usize,
    },
    /// The kernel overflowed its stack.
    #[error("kernel {0} overflowed its stack")]
    StackOverflow(String),
    /// Any other trap.
    #[error("kernel {kernel} trapped: {message}")]
    Trap {
        /// Kernel name.
        kernel: String,
        /// Trap description.
        message: String,
    },
    /// The kernel called `nearstore.abort`.
    #[error("kernel {kernel} aborted with code {code:#x}")]
    Abort {
        /// Kernel name.
        kernel: String,
        /// Code.
        code: u32,
    },
    /// The kernel returned an error status.
    #[error("kernel {kernel} returned error status {status}")]
    Status {
        /// Kernel name.
        kernel: String,
        /// Status.
        status: i32,
    },
    /// The kernel's output failed validation.
    #[error("kernel {kernel} returned invalid output: {detail}")]
    BadOutput {
        /// Kernel name.
        kernel: String,
        /// What was wrong.
        detail: String,
    },
    /// The host could not set up the sandbox.
    #[error("sandbox error: {0}")]
    Host(String),
}

impl From<BeyondPrecision> for KernelError {
    fn from(e: BeyondPrecision) -> Self {
        KernelError::Host(e.to_string())
    }
}

/// Compiles, caches and runs kernels.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<HostState>,
    config: SandboxConfig,
    cache: Mutex<ProgramCache>,
    stop_ticker: Arc<AtomicBool>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("config", &self.config)
            .finish()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

fn host_err(e: impl std::fmt::Display) -> KernelError {
    KernelError::Host(e.to_string())
}

impl Sandbox {
    /// Sets up the engine, the import allow-list and the epoch ticker.
    pub fn new(config: SandboxConfig) -> Result<Self, KernelError> {
        let (engine, linker) = engine::engine(&config)?;
        let stop = engine::start_epoch_ticker(&engine, config.epoch_tick)?;
        Ok(Sandbox {
            engine,
            linker,
            config,
            cache: Mutex::new(ProgramCache::default()),
            stop_ticker: stop,
        })
    }

    /// The limits.
    pub fn config(&self) -> SandboxConfig {
        self.config
    }
}
