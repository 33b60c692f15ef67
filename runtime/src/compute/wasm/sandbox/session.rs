//! One query's instance of a kernel ([`KernelSession`]): a fresh store and instance per query
//! (never shared across queries) with a memory limit (`ResourceLimiter`) and a per-query
//! deadline (epoch interruption); traps become [`KernelError`]s (deadline, memory limit, stack
//! overflow, trap, abort, status, bad output).

use std::sync::Arc;
use std::time::Instant;

use nearstore_kernel_abi as abi;
use wasmtime::{Memory, Store, Trap, TypedFunc};

use super::engine::HostState;
use super::{KernelError, Program, Sandbox, SandboxConfig};
use crate::compute::KernelLimits;
use crate::plan::KernelKind;

impl Sandbox {
    /// A fresh instance of `program` for one query.
    pub fn session(&self, program: &Arc<Program>) -> Result<KernelSession, KernelError> {
        self.session_with(program, None)
    }

    /// A fresh instance of `program` for one query, under `limits` where given (a tenant's),
    /// never above the sandbox's own.
    pub fn session_with(
        &self,
        program: &Arc<Program>,
        limits: Option<KernelLimits>,
    ) -> Result<KernelSession, KernelError> {
        let mut config = self.config;
        if let Some(l) = limits {
            config.deadline = config.deadline.min(l.deadline);
            config.call_budget = config.call_budget.min(l.call_budget);
            config.memory_bytes_max = config.memory_bytes_max.min(l.memory_bytes_max);
        }
        let mut store = Store::new(
            &self.engine,
            HostState {
                memory_bytes_max: config.memory_bytes_max,
                memory_limit_hit: false,
                abort: None,
                log_lines: 0,
            },
        );
        store.limiter(|s| s);
        let deadline = Instant::now() + config.deadline;
        let mut s = KernelSession {
            program: program.clone(),
            config,
            deadline,
            call_armed: false,
            store,
            memory: None,
            alloc: None,
            filter: None,
            filter_bitmap: None,
            agg_update: None,
            map: None,
            agg_finish: None,
            project: None,
            topk: None,
            topk_state: (0, 0),
            state: (0, 0, 0),
            arena: 0,
            arena_cap: 0,
            last_alloc_end: 0,
            value_widths: Vec::new(),
        };
        s.arm()?;
        let instance = program
            .pre
            .instantiate(&mut s.store)
            .map_err(|e| s.classify(e))?;
        let version: TypedFunc<(), u32> = instance
            .get_typed_func(&mut s.store, abi::EXPORT_ABI_VERSION)
            .map_err(|_| {
                KernelError::AbiMismatch(format!(
                    "export `{}` must be () -> i32",
                    abi::EXPORT_ABI_VERSION
                ))
            })?;
        s.alloc = Some(
            instance
                .get_typed_func(&mut s.store, abi::EXPORT_ALLOC)
                .map_err(|_| {
                    KernelError::AbiMismatch(format!(
                        "export `{}` must be (i32, i32) -> i32",
                        abi::EXPORT_ALLOC
                    ))
                })?,
        );
        let kind = program.kind;
        let mut export =
            |name: &str, required: bool| batch_export(&instance, &mut s.store, name, required);
        s.filter = export(abi::EXPORT_FILTER, kind == KernelKind::Filter)?;
        s.map = export(abi::EXPORT_MAP, kind == KernelKind::Map)?;
        s.project = export(abi::EXPORT_PROJECT, false)?;
        s.topk = export(abi::EXPORT_TOPK, false)?;
        s.agg_finish = export(abi::EXPORT_AGG_FINISH, kind == KernelKind::Aggregate)?;
        s.filter_bitmap = export(abi::EXPORT_FILTER_BITMAP, false)?;
        s.agg_update = export(abi::EXPORT_AGG_UPDATE, false)?;
        s.memory = Some(
            instance
                .get_memory(&mut s.store, abi::EXPORT_MEMORY)
                .ok_or_else(|| {
                    KernelError::AbiMismatch("export `memory` must be a memory".into())
                })?,
        );
        s.arm()?;
        let v = version.call(&mut s.store, ()).map_err(|e| s.classify(e))?;
        if v != abi::ABI_VERSION {
            return Err(KernelError::AbiMismatch(format!(
                "the module reports ABI version {v}; this device speaks {}",
                abi::ABI_VERSION
            )));
        }
        Ok(s)
    }
}

/// The type of every export that takes a batch: `(desc, out or state, len) -> status or count`.
/// Held in an `Arc`: a call clones its export out of the session, and a `TypedFunc` clone
/// copies its registered type (measurable once per batch).
pub(super) type BatchFunc = TypedFunc<(u32, u32, u32), i32>;

/// Resolves a `(i32, i32, i32) -> i32` export (every batch-taking export has that type);
/// `None` when an optional export is absent.
fn batch_export(
    instance: &wasmtime::Instance,
    store: &mut Store<HostState>,
    name: &str,
    required: bool,
) -> Result<Option<Arc<BatchFunc>>, KernelError> {
    if !required && instance.get_export(&mut *store, name).is_none() {
        return Ok(None);
    }
    instance
        .get_typed_func(&mut *store, name)
        .map(|f| Some(Arc::new(f)))
        .map_err(|_| {
            KernelError::AbiMismatch(format!("export `{name}` must be (i32, i32, i32) -> i32"))
        })
}

/// One query's instance of a kernel.
pub struct KernelSession {
    pub(super) program: Arc<Program>,
    pub(super) config: SandboxConfig,
    pub(super) deadline: Instant,
    /// Whether the call in progress was armed with the per-call budget (shorter than what is
    /// left of the query's deadline), so an interrupt is the call's, not the query's.
    pub(super) call_armed: bool,
    pub(super) store: Store<HostState>,
    pub(super) memory: Option<Memory>,
    pub(super) alloc: Option<TypedFunc<(u32, u32), u32>>,
    pub(super) filter: Option<Arc<BatchFunc>>,
    pub(super) filter_bitmap: Option<Arc<BatchFunc>>,
    pub(super) agg_update: Option<Arc<BatchFunc>>,
    pub(super) map: Option<Arc<BatchFunc>>,
    pub(super) agg_finish: Option<Arc<BatchFunc>>,
    pub(super) project: Option<Arc<BatchFunc>>,
    pub(super) topk: Option<Arc<BatchFunc>>,
    /// Top-k state: address and k.
    pub(super) topk_state: (u32, usize),
    /// Aggregate state: address, groups it has room for, bytes per group.
    pub(super) state: (u32, usize, usize),
    pub(super) arena: u32,
    pub(super) arena_cap: u32,
    /// Where the host's latest allocation in the kernel's memory ends: an aggregate state that
    /// ends there may grow in place (see `update_groups`).
    pub(super) last_alloc_end: usize,
    /// Per column of the last batch staged, the fewest bytes per value that hold its values
    /// (where staging found out; else the bytes per value it was staged in).
    pub(super) value_widths: Vec<u8>,
}

impl std::fmt::Debug for KernelSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelSession")
            .field("program", &self.program)
            .field("arena_cap", &self.arena_cap)
            .finish()
    }
}

impl KernelSession {
    /// The kernel's name.
    pub fn name(&self) -> &str {
        &self.program.name
    }

    /// Per column of the last batch staged, the fewest bytes per value that hold its values
    /// (found while staging a [`Stage::Guess`] column; else the bytes it was staged in).
    pub fn value_widths(&self) -> &[u8] {
        &self.value_widths
    }

    /// Sets the epoch deadline for one call: the per-call budget, or what is left of the
    /// query's budget when that is shorter.
    pub(super) fn arm(&mut self) -> Result<(), KernelError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.deadline_error());
        }
        self.call_armed = self.config.call_budget < left;
        let budget = left.min(self.config.call_budget);
        let ticks = (budget.as_nanos() / self.config.epoch_tick.as_nanos().max(1)).max(1) as u64;
        self.store.set_epoch_deadline(ticks);
        Ok(())
    }

    /// The kernel hit its memory limit.
    pub(super) fn memory_limit_error(&self) -> KernelError {
        KernelError::MemoryLimit {
            kernel: self.program.name.clone(),
            limit_bytes: self.config.memory_bytes_max,
        }
    }

    /// The error of a missing export the call needs.
    pub(super) fn no_export(name: &str) -> KernelError {
        KernelError::AbiMismatch(format!("no `{name}` export"))
    }

    pub(super) fn deadline_error(&self) -> KernelError {
        KernelError::Deadline {
            kernel: self.program.name.clone(),
            deadline_ms: self.config.deadline.as_millis() as u64,
        }
    }

    pub(super) fn classify(&self, e: wasmtime::Error) -> KernelError {
        let kernel = self.program.name.clone();
        if self.store.data().memory_limit_hit {
            return self.memory_limit_error();
        }
        if let Some(code) = self.store.data().abort {
            return KernelError::Abort { kernel, code };
        }
        // The Wasm frames of a trap (function names from the module's name section), so an
        // author sees where the kernel failed.
        let frames = e
            .downcast_ref::<wasmtime::WasmBacktrace>()
            .map(|bt| format!("\n{bt}"))
            .unwrap_or_default();
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) if self.call_armed => KernelError::CallBudget {
                kernel,
                budget_ms: self.config.call_budget.as_millis() as u64,
            },
            Some(Trap::Interrupt) => self.deadline_error(),
            Some(Trap::StackOverflow) => KernelError::StackOverflow(kernel),
            Some(t) => KernelError::Trap {
                kernel,
                message: format!("{t}{frames}"),
            },
            None => KernelError::Trap {
                kernel,
                message: format!("{e:#}"),
            },
        }
    }

    /// Calls a batch-taking export under the query's deadline; a negative return is the
    /// kernel's own error status.
    pub(super) fn call_batch(
        &mut self,
        f: &BatchFunc,
        args: (u32, u32, u32),
    ) -> Result<u32, KernelError> {
        self.arm()?;
        let n = f
            .call(&mut self.store, args)
            .map_err(|e| self.classify(e))?;
        u32::try_from(n).map_err(|_| KernelError::Status {
            kernel: self.program.name.clone(),
            status: n,
        })
    }

    pub(super) fn not_a(&self, what: &str) -> KernelError {
        KernelError::AbiMismatch(format!(
            "kernel {} is a {} kernel, not {what} kernel",
            self.program.name,
            self.program.kind.as_str()
        ))
    }

    /// `len` bytes of the kernel's memory at `at`: an output it wrote.
    pub(super) fn output(&self, at: u32, len: usize) -> Result<&[u8], KernelError> {
        let at = at as usize;
        self.memory
            .expect("memory resolved")
            .data(&self.store)
            .get(at..at.saturating_add(len))
            .ok_or_else(|| KernelError::Host("output outside kernel memory".into()))
    }

    pub(super) fn bad_output(&self, detail: String) -> KernelError {
        KernelError::BadOutput {
            kernel: self.program.name.clone(),
            detail,
        }
    }
}
