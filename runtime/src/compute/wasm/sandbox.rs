//! The wasmtime sandbox for untrusted kernels.
//!
//! - Engine: Cranelift, epoch interruption (a ticker thread advances the epoch every
//!   [`SandboxConfig::epoch_tick`]), bounded Wasm stack, pooling allocator with copy-on-write
//!   memory images; threads, GC, component model, memory64, exceptions, stack switching and
//!   relaxed SIMD are off; SIMD is on.
//! - Loading ([`Sandbox::load`]): the bytes must be a valid core Wasm binary whose imports are
//!   only `nearstore.log` and `nearstore.abort`, whose exports match the ABI for its kind, and
//!   whose manifest section agrees with those exports; the module runs once, under the same
//!   limits as a query, to report its ABI version. Modules are compiled once per SHA-256.
//! - Running ([`Sandbox::session`]): a fresh store and instance per query (never shared across
//!   queries), a memory limit per store, and a deadline per query.
//! - Every output is checked before the host uses it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::compute::KernelLimits;
use crate::plan::{KernelKind, KernelOutput};
use nearstore_kernel_abi as abi;
use sha2::{Digest, Sha256};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Memory, Module,
    PoolingAllocationConfig, ResourceLimiter, Store, Trap, TypedFunc,
};

/// Limits for kernels.
#[derive(Debug, Clone, Copy)]
pub struct SandboxConfig {
    /// Linear memory one kernel instance may grow to.
    pub memory_bytes_max: usize,
    /// Wasm stack of one call.
    pub stack_bytes_max: usize,
    /// Wall-clock budget of all kernel calls of one query.
    pub deadline: Duration,
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

/// A loaded, validated, compiled kernel.
pub struct Program {
    /// SHA-256 of the module bytes (hex).
    pub id: String,
    /// Name from the manifest.
    pub name: String,
    /// Kind.
    pub kind: KernelKind,
    /// Output type (map and aggregate kernels).
    pub output: Option<KernelOutput>,
    /// Bytes of state per group (aggregate kernels).
    pub state_size: usize,
    pre: InstancePre<HostState>,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish()
    }
}

struct HostState {
    memory_bytes_max: usize,
    memory_limit_hit: bool,
    abort: Option<u32>,
    log_lines: usize,
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

/// Compiled modules by SHA-256, at most `programs_max` of them, each with the owner (tenant)
/// that compiled it. A full cache drops the least recently used module of the owner holding
/// the most, which a later query compiles again: an owner cycling through many modules pushes
/// out its own, not everyone else's.
#[derive(Default)]
struct ProgramCache {
    /// SHA-256 → the program, when it was last used (a counter, not a clock) and its owner.
    entries: HashMap<String, (Arc<Program>, u64, String)>,
    uses: u64,
}

impl ProgramCache {
    fn get(&mut self, id: &str) -> Option<Arc<Program>> {
        self.uses += 1;
        let uses = self.uses;
        self.entries.get_mut(id).map(|(p, last, _)| {
            *last = uses;
            p.clone()
        })
    }

    fn insert(&mut self, id: String, program: Arc<Program>, owner: &str, max: usize) {
        while self.entries.len() >= max.max(1) && !self.entries.contains_key(&id) {
            let mut held: HashMap<&str, usize> = HashMap::new();
            for (_, _, o) in self.entries.values() {
                *held.entry(o).or_default() += 1;
            }
            // The newcomer counts for its owner: one at its limit evicts its own. Some entry's
            // owner holds the most (an owner with no entry counts one at most, as every
            // entry's owner does at least).
            *held.entry(owner).or_default() += 1;
            let most = held.values().copied().max().unwrap_or(0);
            let oldest = self
                .entries
                .iter()
                .filter(|(_, (_, _, o))| held.get(o.as_str()) == Some(&most))
                .min_by_key(|(_, (_, last, _))| *last)
                .map(|(k, _)| k.clone())
                .expect("an entry's owner holds the most");
            self.entries.remove(&oldest);
        }
        self.uses += 1;
        self.entries
            .insert(id, (program, self.uses, owner.to_string()));
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

        let stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let stop_flag = stop.clone();
        let tick = config.epoch_tick;
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

    /// Validates and compiles a kernel (cached by SHA-256) for the device itself.
    pub fn load(&self, bytes: &[u8]) -> Result<Arc<Program>, KernelError> {
        self.load_for(bytes, "")
    }

    /// Validates and compiles a kernel (cached by SHA-256) for `owner` (a tenant, or "" for
    /// the device): when the cache is full, the owner holding the most modules loses one.
    pub fn load_for(&self, bytes: &[u8], owner: &str) -> Result<Arc<Program>, KernelError> {
        if bytes.len() > self.config.module_bytes_max {
            return Err(KernelError::Invalid(format!(
                "the module is {} bytes; this device takes modules of at most {} bytes",
                bytes.len(),
                self.config.module_bytes_max
            )));
        }
        let id = hex::encode(Sha256::digest(bytes));
        if let Some(p) = self.cache.lock().expect("cache lock").get(&id) {
            return Ok(p);
        }
        if !bytes.starts_with(b"\0asm") {
            return Err(KernelError::Invalid(
                "missing the \\0asm magic number".into(),
            ));
        }
        let manifest = read_manifest(bytes)?;
        let module = Module::from_binary(&self.engine, bytes)
            .map_err(|e| KernelError::Invalid(format!("{e:#}")))?;
        for imp in module.imports() {
            let allowed = imp.module() == abi::IMPORT_MODULE
                && matches!(imp.name(), abi::IMPORT_LOG | abi::IMPORT_ABORT);
            if !allowed {
                return Err(KernelError::ForbiddenImport(format!(
                    "{}.{}",
                    imp.module(),
                    imp.name()
                )));
            }
        }
        let kind = match manifest.get("kind").map(String::as_str) {
            Some("filter") => KernelKind::Filter,
            Some("map") => KernelKind::Map,
            Some("aggregate") => KernelKind::Aggregate,
            Some(other) => {
                return Err(KernelError::AbiMismatch(format!(
                    "manifest kind '{other}' is not supported (filter, map or aggregate)"
                )));
            }
            None => return Err(KernelError::AbiMismatch("manifest has no kind".into())),
        };
        match manifest.get("abi").map(String::as_str) {
            Some(v) if v == abi::ABI_VERSION.to_string() => {}
            other => {
                return Err(KernelError::AbiMismatch(format!(
                    "manifest declares ABI {}; this device speaks {}",
                    other.unwrap_or("(none)"),
                    abi::ABI_VERSION
                )));
            }
        }
        let name = manifest
            .get("name")
            .cloned()
            .unwrap_or_else(|| id[..12].to_string());
        let output = match (kind, manifest.get("output").map(String::as_str)) {
            (KernelKind::Filter, None) => None,
            (KernelKind::Filter, Some(o)) => {
                return Err(KernelError::AbiMismatch(format!(
                    "the manifest gives a filter kernel output={o}; filters select rows and have no output type"
                )));
            }
            (_, Some(abi::output::INT64)) => Some(KernelOutput::Int64),
            (_, Some(abi::output::FLOAT64)) => Some(KernelOutput::Float64),
            (KernelKind::Aggregate, Some(abi::output::LIST_INT64)) => Some(KernelOutput::ListInt64),
            (k, o) => {
                let allowed = match k {
                    KernelKind::Aggregate => "int64, float64 or list_int64",
                    _ => "int64 or float64",
                };
                return Err(KernelError::AbiMismatch(format!(
                    "a {} kernel's manifest needs output={allowed}, not {}",
                    k.as_str(),
                    o.map_or("nothing".to_string(), |o| format!("output={o}"))
                )));
            }
        };
        let state_size = match (kind, manifest.get("state_size")) {
            (KernelKind::Aggregate, Some(n)) => match n.parse::<usize>() {
                Ok(n) if (1..=abi::STATE_SIZE_MAX).contains(&n) => n,
                _ => {
                    return Err(KernelError::AbiMismatch(format!(
                        "manifest state_size={n} must be a number of bytes from 1 to {}",
                        abi::STATE_SIZE_MAX
                    )));
                }
            },
            (KernelKind::Aggregate, None) => {
                return Err(KernelError::AbiMismatch(
                    "an aggregate kernel's manifest needs state_size=BYTES (per group)".into(),
                ));
            }
            _ => 0,
        };
        let mut need = vec![
            (abi::EXPORT_ABI_VERSION, "func () -> i32"),
            (abi::EXPORT_ALLOC, "func (i32, i32) -> i32"),
            (abi::EXPORT_MEMORY, "memory"),
        ];
        match kind {
            KernelKind::Filter => need.push((abi::EXPORT_FILTER, "func (i32, i32, i32) -> i32")),
            KernelKind::Map => need.push((abi::EXPORT_MAP, "func (i32, i32, i32) -> i32")),
            KernelKind::Aggregate => {
                need.push((abi::EXPORT_AGG_UPDATE, "func (i32, i32, i32) -> i32"));
                need.push((abi::EXPORT_AGG_FINISH, "func (i32, i32, i32) -> i32"));
            }
        }
        for (export, what) in need {
            if module.get_export(export).is_none() {
                return Err(KernelError::AbiMismatch(format!(
                    "the manifest says kind={} but the module does not export `{export}` ({what})",
                    kind.as_str()
                )));
            }
        }
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| KernelError::AbiMismatch(format!("{e:#}")))?;
        let program = Arc::new(Program {
            id: id.clone(),
            name,
            kind,
            output,
            state_size,
            pre,
        });
        // Run it once, under query limits, to check the exports' types and the ABI version.
        self.session(&program)?;
        self.cache.lock().expect("cache lock").insert(
            id,
            program.clone(),
            owner,
            self.config.programs_max,
        );
        Ok(program)
    }

    /// How many compiled modules the cache holds.
    pub fn cached_programs(&self) -> usize {
        self.cache.lock().expect("cache lock").entries.len()
    }

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
        s.filter = batch_export(
            &instance,
            &mut s.store,
            abi::EXPORT_FILTER,
            kind == KernelKind::Filter,
        )?;
        s.map = batch_export(
            &instance,
            &mut s.store,
            abi::EXPORT_MAP,
            kind == KernelKind::Map,
        )?;
        s.project = batch_export(&instance, &mut s.store, abi::EXPORT_PROJECT, false)?;
        s.topk = batch_export(&instance, &mut s.store, abi::EXPORT_TOPK, false)?;
        s.agg_finish = batch_export(
            &instance,
            &mut s.store,
            abi::EXPORT_AGG_FINISH,
            kind == KernelKind::Aggregate,
        )?;
        s.filter_bitmap = batch_export(&instance, &mut s.store, abi::EXPORT_FILTER_BITMAP, false)?;
        s.agg_update = batch_export(&instance, &mut s.store, abi::EXPORT_AGG_UPDATE, false)?;
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
type BatchFunc = TypedFunc<(u32, u32, u32), i32>;

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

/// Reads the manifest custom section (`key=value` lines).
fn read_manifest(bytes: &[u8]) -> Result<HashMap<String, String>, KernelError> {
    use wasmtime::wasmparser::{Parser, Payload};
    let mut found = None;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| KernelError::Invalid(e.to_string()))?;
        if let Payload::CustomSection(c) = payload
            && c.name() == abi::MANIFEST_SECTION
        {
            found = Some(c.data().to_vec());
        }
    }
    let Some(data) = found else {
        return Err(KernelError::AbiMismatch(format!(
            "no `{}` custom section (use nearstore_kernel::manifest!)",
            abi::MANIFEST_SECTION
        )));
    };
    let text = String::from_utf8(data)
        .map_err(|_| KernelError::AbiMismatch("manifest is not UTF-8".into()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect())
}

/// One query's instance of a kernel.
pub struct KernelSession {
    program: Arc<Program>,
    config: SandboxConfig,
    deadline: Instant,
    store: Store<HostState>,
    memory: Option<Memory>,
    alloc: Option<TypedFunc<(u32, u32), u32>>,
    filter: Option<Arc<BatchFunc>>,
    filter_bitmap: Option<Arc<BatchFunc>>,
    agg_update: Option<Arc<BatchFunc>>,
    map: Option<Arc<BatchFunc>>,
    agg_finish: Option<Arc<BatchFunc>>,
    project: Option<Arc<BatchFunc>>,
    topk: Option<Arc<BatchFunc>>,
    /// Top-k state: address and k.
    topk_state: (u32, usize),
    /// Aggregate state: address, groups it has room for, bytes per group.
    state: (u32, usize, usize),
    arena: u32,
    arena_cap: u32,
    /// Where the host's latest allocation in the kernel's memory ends: an aggregate state that
    /// ends there may grow in place (see `update_groups`).
    last_alloc_end: usize,
    /// Per column of the last batch staged, the fewest bytes per value that hold its values
    /// (where staging found out; else the bytes per value it was staged in).
    value_widths: Vec<u8>,
}

impl std::fmt::Debug for KernelSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelSession")
            .field("program", &self.program)
            .field("arena_cap", &self.arena_cap)
            .finish()
    }
}

/// A column handed to a kernel: type, scale and Arrow buffers.
#[derive(Debug, Clone, Copy)]
pub struct ColumnBuffers<'a> {
    /// [`abi::types`] code.
    pub type_code: u32,
    /// Decimal scale.
    pub scale: i32,
    /// Values (Arrow layout).
    pub values: &'a [u8],
    /// Validity bitmap, starting at bit 0 for row 0.
    pub validity: Option<&'a [u8]>,
    /// Offsets (UTF8).
    pub offsets: Option<&'a [u8]>,
    /// How the values are written into the kernel's memory.
    pub stage: Stage,
}

/// How a column's values are written into the kernel's memory: copied, or narrowed on the way
/// (no pass of its own) to a smaller signed width that every value fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stage {
    /// As they are.
    #[default]
    Copy,
    /// `values` holds signed integers of `from` bytes (4, 8 or 16) that all fit signed
    /// integers of `to` bytes (1, 2, 4 or 8, less than `from`); the kernel gets the latter.
    /// Decimals of precision ≤ 18 (type INT64) travel so as `i64`s.
    Narrow {
        /// Bytes per value in `values`.
        from: u8,
        /// Bytes per value in the kernel's memory.
        to: u8,
    },
    /// `values` holds signed integers of `from` bytes (4, 8 or 16) of an INT32, DATE32 or
    /// INT64 column, narrowed for the built-in filter kernel to the fewest bytes that hold
    /// them all: tried at `to` bytes in the one pass that finds their range, and only when
    /// they do not fit once more at the width they need. [`KernelSession::value_widths`]
    /// tells the width they needed.
    Guess {
        /// Bytes per value in `values`.
        from: u8,
        /// Bytes per value tried first.
        to: u8,
    },
}

impl ColumnBuffers<'_> {
    /// Bytes of the values as the kernel sees them (at most, for [`Stage::Guess`]).
    pub fn staged_len(&self) -> usize {
        match self.stage {
            Stage::Copy | Stage::Guess { .. } => self.values.len(),
            Stage::Narrow { from, to } => self.values.len() / from as usize * to as usize,
        }
    }

    /// Writes the values as the kernel sees them into `out` (`staged_len` bytes); returns the
    /// bytes per value written and the fewest that would hold them (as written, unless
    /// staging found their range), or an error when a 16-byte value does not fit 8.
    pub fn stage_values(&self, out: &mut [u8]) -> Result<(u8, u8), KernelError> {
        use crate::compute::lanes;
        match self.stage {
            Stage::Copy => {
                out.copy_from_slice(self.values);
                let w = abi::types::width(self.type_code) as u8;
                Ok((w, w))
            }
            Stage::Narrow { from: 16, to: 8 } => {
                // Decimals of precision <= 18: the range check rides along with the narrowing,
                // so data beyond its declared precision is an error, not a truncated value.
                let n = self.values.len() / 16;
                if n > 0 && lanes::narrow_range(self.values, 16, out, 8).is_none() {
                    return Err(beyond_precision());
                }
                Ok((8, 8))
            }
            Stage::Narrow { from, to } => {
                lanes::narrow(self.values, from, out, to);
                Ok((to, to))
            }
            Stage::Guess { from, to } => {
                let n = self.values.len() / from as usize;
                let need = lanes::narrow_range(self.values, from, &mut out[..n * to as usize], to)
                    .map(|(lo, hi)| lanes::width_for(lo, hi));
                match need {
                    Some(w) if w <= to => Ok((to, w)),
                    Some(w) if w < from => {
                        lanes::narrow(self.values, from, &mut out[..n * w as usize], w);
                        Ok((w, w))
                    }
                    Some(_) => {
                        out.copy_from_slice(self.values);
                        Ok((from, from))
                    }
                    None if n == 0 => Ok((to, to)),
                    None => Err(beyond_precision()),
                }
            }
        }
    }
}

/// A decimal of precision <= 18 whose value does not fit an `i64`.
fn beyond_precision() -> KernelError {
    KernelError::Host(
        "a decimal of precision 18 or less holds a value beyond 18 digits (the data does not \
         match its declared type)"
            .into(),
    )
}

const ALIGN: usize = 16;

fn align_up(x: usize) -> usize {
    x.div_ceil(ALIGN) * ALIGN
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

    /// Sets the epoch deadline to what is left of the query's budget.
    fn arm(&mut self) -> Result<(), KernelError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.deadline_error());
        }
        let ticks = (left.as_nanos() / self.config.epoch_tick.as_nanos().max(1)).max(1) as u64;
        self.store.set_epoch_deadline(ticks);
        Ok(())
    }

    fn deadline_error(&self) -> KernelError {
        KernelError::Deadline {
            kernel: self.program.name.clone(),
            deadline_ms: self.config.deadline.as_millis() as u64,
        }
    }

    fn classify(&self, e: wasmtime::Error) -> KernelError {
        let kernel = self.program.name.clone();
        if self.store.data().memory_limit_hit {
            return KernelError::MemoryLimit {
                kernel,
                limit_bytes: self.config.memory_bytes_max,
            };
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

    /// Makes sure the arena holds `bytes`, asking the kernel for a larger one if not.
    fn reserve(&mut self, bytes: usize) -> Result<(), KernelError> {
        if bytes <= self.arena_cap as usize {
            return Ok(());
        }
        let want = u32::try_from(bytes + bytes / 2).map_err(|_| {
            KernelError::Host(format!(
                "a batch of {bytes} bytes does not fit a 32-bit kernel"
            ))
        })?;
        self.arm()?;
        let alloc = self.alloc.clone().expect("alloc resolved at instantiation");
        let p = alloc
            .call(&mut self.store, (want, ALIGN as u32))
            .map_err(|e| self.classify(e))?;
        let mem_len = self.memory.expect("memory resolved").data_size(&self.store);
        if p == 0
            || !(p as usize).is_multiple_of(ALIGN)
            || (p as usize).saturating_add(want as usize) > mem_len
        {
            if self.store.data().memory_limit_hit {
                return Err(KernelError::MemoryLimit {
                    kernel: self.program.name.clone(),
                    limit_bytes: self.config.memory_bytes_max,
                });
            }
            return Err(KernelError::BadOutput {
                kernel: self.program.name.clone(),
                detail: format!(
                    "allocation of {want} bytes returned address {p:#x} (memory is {mem_len} bytes)"
                ),
            });
        }
        self.arena = p;
        self.arena_cap = want;
        self.last_alloc_end = p as usize + want as usize;
        Ok(())
    }

    /// Writes a batch into the arena: params | column descriptors | buffers | batch descriptor |
    /// `out_bytes` of output (8-byte aligned). Returns the descriptor and output addresses.
    fn stage(
        &mut self,
        rows: usize,
        columns: &[ColumnBuffers<'_>],
        params: &[u8],
        out_bytes: usize,
    ) -> Result<(u32, u32), KernelError> {
        let mut off = align_up(params.len());
        let cols_off = off;
        off = align_up(off + columns.len() * abi::COLUMN_DESC_BYTES);
        let mut placed = Vec::with_capacity(columns.len());
        for c in columns {
            let v = off;
            off = align_up(off + c.staged_len());
            let val = c.validity.map(|b| {
                let at = off;
                off = align_up(off + b.len());
                at
            });
            let ofs = c.offsets.map(|b| {
                let at = off;
                off = align_up(off + b.len());
                at
            });
            placed.push((v, val, ofs));
        }
        let desc_off = off;
        off = align_up(off + abi::BATCH_DESC_BYTES);
        let out_off = off;
        off += out_bytes;
        self.reserve(off)?;

        let base = self.arena as usize;
        let memory = self.memory.expect("memory resolved");
        let data = memory.data_mut(&mut self.store);
        let region = data
            .get_mut(base..base + off)
            .ok_or_else(|| KernelError::Host("arena outside kernel memory".into()))?;
        region[..params.len()].copy_from_slice(params);
        self.value_widths.clear();
        for (i, (c, (v, val, ofs))) in columns.iter().zip(&placed).enumerate() {
            let (width, need) = c.stage_values(&mut region[*v..*v + c.staged_len()])?;
            self.value_widths.push(need);
            let values_len = match c.stage {
                Stage::Guess { from, .. } => c.values.len() / from as usize * width as usize,
                _ => c.staged_len(),
            };
            if let (Some(b), Some(at)) = (c.validity, val) {
                region[*at..*at + b.len()].copy_from_slice(b);
            }
            if let (Some(b), Some(at)) = (c.offsets, ofs) {
                region[*at..*at + b.len()].copy_from_slice(b);
            }
            let d = abi::ColumnDesc {
                type_code: c.type_code,
                scale: c.scale as u32,
                values_ptr: (base + v) as u32,
                values_len: values_len as u32,
                validity_ptr: val.map(|a| (base + a) as u32).unwrap_or(0),
                offsets_ptr: ofs.map(|a| (base + a) as u32).unwrap_or(0),
                offsets_len: c.offsets.map(|b| b.len() as u32).unwrap_or(0),
                // Narrower than the type's own width: the kernel reads them so.
                stored_width: if width as usize == abi::types::width(c.type_code) {
                    0
                } else {
                    u32::from(width)
                },
            };
            let at = cols_off + i * abi::COLUMN_DESC_BYTES;
            d.write(&mut region[at..at + abi::COLUMN_DESC_BYTES]);
        }
        abi::BatchDesc {
            abi: abi::ABI_VERSION,
            rows: rows as u32,
            ncols: columns.len() as u32,
            cols_ptr: (base + cols_off) as u32,
            params_ptr: base as u32,
            params_len: params.len() as u32,
        }
        .write(&mut region[desc_off..desc_off + abi::BATCH_DESC_BYTES]);
        Ok(((base + desc_off) as u32, (base + out_off) as u32))
    }

    /// Calls a batch-taking export under the query's deadline; a negative return is the
    /// kernel's own error status.
    fn call_batch(&mut self, f: &BatchFunc, args: (u32, u32, u32)) -> Result<u32, KernelError> {
        self.arm()?;
        let n = f
            .call(&mut self.store, args)
            .map_err(|e| self.classify(e))?;
        u32::try_from(n).map_err(|_| KernelError::Status {
            kernel: self.program.name.clone(),
            status: n,
        })
    }

    /// Whether the kernel offers aggregation.
    pub fn has_aggregate(&self) -> bool {
        self.agg_update.is_some()
    }

    /// Asks the kernel for `bytes` of persistent memory (outside any call, so it survives the
    /// per-call scratch release) and zeroes it.
    fn alloc_zeroed(&mut self, bytes: usize) -> Result<u32, KernelError> {
        let want = u32::try_from(bytes.max(1))
            .map_err(|_| KernelError::Host(format!("{bytes} bytes do not fit a 32-bit kernel")))?;
        self.arm()?;
        let alloc = self.alloc.clone().expect("alloc resolved at instantiation");
        let p = alloc
            .call(&mut self.store, (want, ALIGN as u32))
            .map_err(|e| self.classify(e))?;
        let limit_hit = self.store.data().memory_limit_hit;
        let memory = self.memory.expect("memory resolved");
        let region = memory
            .data_mut(&mut self.store)
            .get_mut(p as usize..p as usize + want as usize)
            .filter(|_| p != 0 && (p as usize).is_multiple_of(ALIGN));
        match region {
            Some(r) => {
                r.fill(0);
                self.last_alloc_end = p as usize + want as usize;
                Ok(p)
            }
            None if limit_hit => Err(KernelError::MemoryLimit {
                kernel: self.program.name.clone(),
                limit_bytes: self.config.memory_bytes_max,
            }),
            None => Err(KernelError::BadOutput {
                kernel: self.program.name.clone(),
                detail: format!("allocation of {want} bytes returned address {p:#x}"),
            }),
        }
    }

    /// Accumulates one batch into the aggregate state (see `nearstore_kernel_abi::agg`).
    /// `columns[0]` holds the group of each row (type code 0: all rows in group 0).
    pub fn aggregate_update(
        &mut self,
        rows: usize,
        columns: &[ColumnBuffers<'_>],
        params: &[u8],
        groups: usize,
    ) -> Result<(), KernelError> {
        let per_group = params.len() / 4 * abi::agg::SLOT_BYTES;
        self.update_groups(rows, columns, params, groups, per_group)
    }

    /// Accumulates one batch into a custom aggregate kernel's states (`state_size` bytes per
    /// group, the manifest's). `columns[0]` holds the groups as for
    /// [`KernelSession::aggregate_update`]; the others are the kernel's arguments.
    pub fn group_update(
        &mut self,
        rows: usize,
        columns: &[ColumnBuffers<'_>],
        params: &[u8],
        groups: usize,
    ) -> Result<(), KernelError> {
        let per_group = self.program.state_size;
        if self.program.kind != KernelKind::Aggregate || per_group == 0 {
            return Err(self.not_a("an aggregate"));
        }
        self.update_groups(rows, columns, params, groups, per_group)
    }

    fn not_a(&self, what: &str) -> KernelError {
        KernelError::AbiMismatch(format!(
            "kernel {} is a {} kernel, not {what} kernel",
            self.program.name,
            self.program.kind.as_str()
        ))
    }

    fn update_groups(
        &mut self,
        rows: usize,
        columns: &[ColumnBuffers<'_>],
        params: &[u8],
        groups: usize,
        per_group: usize,
    ) -> Result<(), KernelError> {
        let f = self.agg_update.clone().ok_or_else(|| {
            KernelError::AbiMismatch(format!("no `{}` export", abi::EXPORT_AGG_UPDATE))
        })?;
        let (ptr, cap, bytes) = self.state;
        if bytes != 0 && bytes != per_group {
            return Err(KernelError::Host(
                "aggregate program changed within a query".into(),
            ));
        }
        // A state the host allocated last grows in place when the kernel's allocator hands out
        // the memory right after it (a bump allocator does): no copy, and only a little more
        // than the groups need is zeroed (fresh memory costs a page fault per page touched).
        let end = ptr as usize + cap * per_group;
        if groups > cap && ptr != 0 && self.last_alloc_end == end && end.is_multiple_of(ALIGN) {
            let new_cap = groups + groups / 8;
            let more = self.alloc_zeroed((new_cap - cap) * per_group)?;
            if more as usize == end {
                self.state = (ptr, new_cap, per_group);
            }
        }
        let (ptr, cap, _) = self.state;
        if groups > cap || ptr == 0 {
            let new_cap = groups.max(cap * 2).max(16);
            let new_ptr = self.alloc_zeroed(new_cap * per_group)?;
            if ptr != 0 {
                let memory = self.memory.expect("memory resolved");
                let data = memory.data_mut(&mut self.store);
                let len = cap * per_group;
                data.copy_within(ptr as usize..ptr as usize + len, new_ptr as usize);
            }
            self.state = (new_ptr, new_cap, per_group);
        }
        let (desc, _) = self.stage(rows, columns, params, 0)?;
        let state = self.state.0;
        match self.call_batch(&f, (desc, state, groups as u32))? {
            0 => Ok(()),
            rc => Err(KernelError::BadOutput {
                kernel: self.program.name.clone(),
                detail: format!("aggregate update returned {rc}; the ABI allows 0 or a status"),
            }),
        }
    }

    /// The aggregate state of `groups` groups, as the kernel left it (untrusted: the caller
    /// checks it).
    pub fn aggregate_state(&self, groups: usize) -> Result<Vec<u8>, KernelError> {
        let (ptr, cap, per_group) = self.state;
        if groups > cap {
            return Err(KernelError::Host(
                "aggregate state has fewer groups than asked".into(),
            ));
        }
        let memory = self.memory.expect("memory resolved");
        memory
            .data(&self.store)
            .get(ptr as usize..ptr as usize + groups * per_group)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| KernelError::Host("aggregate state outside kernel memory".into()))
    }

    /// Finishes `groups` groups of a custom aggregate kernel: each group's 8-byte values as the
    /// kernel wrote them (one or none for a scalar output, any number for a list), checked
    /// against the output type. A group no row reached has an all-zero state.
    pub fn group_finish(&mut self, groups: usize) -> Result<Vec<Vec<u64>>, KernelError> {
        let f = self
            .agg_finish
            .clone()
            .ok_or_else(|| self.not_a("an aggregate"))?;
        let per_group = self.program.state_size;
        let list = self.program.output == Some(KernelOutput::ListInt64);
        if groups > 0 && (self.state.0 == 0 || self.state.1 < groups) {
            // No batch reached the kernel (an empty table): every group's state is zero.
            let p = self.alloc_zeroed(groups * per_group)?;
            self.state = (p, groups, per_group);
        }
        let first_cap: usize = if list { 64 } else { 1 };
        let mut cap = first_cap;
        // The values of all groups together stay within what the kernel's memory could hold:
        // a kernel cannot make the host hold more than its own limit.
        let budget = self.config.memory_bytes_max / 8;
        let mut total = 0usize;
        let mut out = Vec::with_capacity(groups);
        let mut g = 0;
        while g < groups {
            self.reserve(cap * 8 + ALIGN)?;
            let at = align_up(self.arena as usize) as u32;
            let state = self.state.0 + (g * per_group) as u32;
            let n = self.arm().and_then(|()| {
                f.call(&mut self.store, (state, at, cap as u32))
                    .map_err(|e| self.classify(e))
            })?;
            if n == abi::status::OUTPUT_TOO_SMALL && list && cap < (1 << 24) {
                cap *= 4;
                continue;
            }
            let n = usize::try_from(n).map_err(|_| KernelError::Status {
                kernel: self.program.name.clone(),
                status: n,
            })?;
            if n > cap || (!list && n > 1) {
                return Err(self.bad_output(format!(
                    "finishing group {g} returned {n} values where {} fit",
                    if list { cap } else { 1 }
                )));
            }
            total += n;
            if total > budget {
                return Err(self.bad_output(format!(
                    "its results pass {budget} values, more than its memory limit could hold"
                )));
            }
            out.push(
                self.output(at, n * 8)?
                    .chunks_exact(8)
                    .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
                    .collect(),
            );
            g += 1;
            cap = first_cap;
        }
        Ok(out)
    }

    /// Runs a map kernel over `rows` rows: one 8-byte value per row and a validity bitmap
    /// (`u64` words), checked: the count, and no validity bit past the last row.
    pub fn map(
        &mut self,
        rows: usize,
        columns: &[ColumnBuffers<'_>],
        params: &[u8],
    ) -> Result<(Vec<u64>, Vec<u64>), KernelError> {
        let f = self.map.clone().ok_or_else(|| self.not_a("a map"))?;
        let (bytes, validity) = self.values_out(&f, rows, columns, params, 8)?;
        let values = bytes
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
            .collect();
        Ok((values, validity))
    }

    /// Runs the built-in kernel's expression program (`nearstore_project`; `params` starts
    /// with the output width, 8 or 16): the validity words and `rows` values of that width,
    /// checked: the count, and no validity bit past the last row.
    pub fn project(
        &mut self,
        rows: usize,
        columns: &[ColumnBuffers<'_>],
        params: &[u8],
    ) -> Result<(arrow::buffer::Buffer, Vec<u64>), KernelError> {
        let f = self.project.clone().ok_or_else(|| {
            KernelError::AbiMismatch(format!("no `{}` export", abi::EXPORT_PROJECT))
        })?;
        let width = match params.first() {
            Some(&w @ (8 | 16)) => w as usize,
            _ => {
                return Err(KernelError::Host(
                    "expression program without its width".into(),
                ));
            }
        };
        let words = rows.div_ceil(64);
        let (desc, out) = self.stage(rows, columns, params, words * 8 + rows * width)?;
        let n = self.call_batch(&f, (desc, out, rows as u32))? as usize;
        if n != rows {
            return Err(self.bad_output(format!("computed {n} values for a {rows}-row batch")));
        }
        let bytes = self.output(out, words * 8 + rows * width)?;
        let (head, values) = bytes.split_at(words * 8);
        let validity = self.validity(head, rows)?;
        // One copy, into an aligned buffer the result array can own.
        Ok((arrow::buffer::Buffer::from_slice_ref(values), validity))
    }

    /// Whether the kernel offers the top-k pre-selection.
    pub fn has_topk(&self) -> bool {
        self.topk.is_some()
    }

    /// The top-k pre-selection over one batch (`columns[0]` the first sort key, `params` its
    /// direction and null placement): a bitmap of the rows that may be in the query's top `k`,
    /// checked (tail bits, count). The kernel keeps the best keys across calls.
    pub fn topk(
        &mut self,
        rows: usize,
        columns: &[ColumnBuffers<'_>],
        params: &[u8],
        k: usize,
    ) -> Result<Vec<u8>, KernelError> {
        let f = self
            .topk
            .clone()
            .ok_or_else(|| KernelError::AbiMismatch(format!("no `{}` export", abi::EXPORT_TOPK)))?;
        if self.topk_state.0 == 0 {
            let k32 = u32::try_from(k)
                .map_err(|_| KernelError::Host(format!("top {k} is too many for a kernel")))?;
            let p = self.alloc_zeroed(16 + 16 * k)?;
            let memory = self.memory.expect("memory resolved");
            memory.data_mut(&mut self.store)[p as usize..p as usize + 4]
                .copy_from_slice(&k32.to_le_bytes());
            self.topk_state = (p, k);
        } else if self.topk_state.1 != k {
            return Err(KernelError::Host("top-k changed within a query".into()));
        }
        let words = rows.div_ceil(64);
        let (desc, out) = self.stage(rows, columns, params, words * 8)?;
        let n = self.call_batch(&f, (desc, out, self.topk_state.0))?;
        self.selection(out, rows, n, "top-k")
    }

    /// Calls a `(batch, out, rows)` export that writes `rows` values of `width` bytes and then
    /// validity words; returns the value bytes and the words after checking the count and the
    /// tail bits.
    fn values_out(
        &mut self,
        f: &BatchFunc,
        rows: usize,
        columns: &[ColumnBuffers<'_>],
        params: &[u8],
        width: usize,
    ) -> Result<(Vec<u8>, Vec<u64>), KernelError> {
        let words = rows.div_ceil(64);
        let (desc, out) = self.stage(rows, columns, params, rows * width + words * 8)?;
        let n = self.call_batch(f, (desc, out, rows as u32))? as usize;
        if n != rows {
            return Err(self.bad_output(format!("mapped {n} values for a {rows}-row batch")));
        }
        let bytes = self.output(out, rows * width + words * 8)?;
        let (values, tail_words) = bytes.split_at(rows * width);
        Ok((values.to_vec(), self.validity(tail_words, rows)?))
    }

    /// `len` bytes of the kernel's memory at `at`: an output it wrote.
    fn output(&self, at: u32, len: usize) -> Result<&[u8], KernelError> {
        let at = at as usize;
        self.memory
            .expect("memory resolved")
            .data(&self.store)
            .get(at..at.saturating_add(len))
            .ok_or_else(|| KernelError::Host("output outside kernel memory".into()))
    }

    fn bad_output(&self, detail: String) -> KernelError {
        KernelError::BadOutput {
            kernel: self.program.name.clone(),
            detail,
        }
    }

    /// The selection bitmap (`rows` bits) the kernel wrote at `out`, checked: no bit past the
    /// last row, and `n` (what the kernel returned) bits set. `what` names it in errors.
    fn selection(&self, out: u32, rows: usize, n: u32, what: &str) -> Result<Vec<u8>, KernelError> {
        let bytes = self.output(out, rows.div_ceil(8))?.to_vec();
        let tail = rows % 8;
        if tail != 0 && bytes.last().is_some_and(|b| b >> tail != 0) {
            return Err(self.bad_output(format!(
                "{what} selects rows past the end of a {rows}-row batch"
            )));
        }
        let set = crate::compute::lanes::count_ones(&bytes);
        if set != n as usize {
            return Err(self.bad_output(format!(
                "returned count {n} but the {what} selects {set} rows"
            )));
        }
        Ok(bytes)
    }

    /// Validity words the kernel wrote (`bytes`, little-endian `u64`s), checked: no bit past
    /// the last of `rows` rows.
    fn validity(&self, bytes: &[u8], rows: usize) -> Result<Vec<u64>, KernelError> {
        let words: Vec<u64> = bytes
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
            .collect();
        let tail = rows % 64;
        if tail != 0 && words.last().is_some_and(|w| w >> tail != 0) {
            return Err(self.bad_output(format!(
                "validity marks rows past the end of a {rows}-row batch"
            )));
        }
        Ok(words)
    }

    /// Whether the kernel offers the bitmap form of the filter.
    pub fn has_bitmap_filter(&self) -> bool {
        self.filter_bitmap.is_some()
    }

    /// Runs the bitmap filter export; returns the selection bitmap (`rows` bits, LSB first)
    /// after checking it: no bit past the last row, and the returned count equal to the bits
    /// set.
    pub fn filter_bitmap(
        &mut self,
        rows: usize,
        columns: &[ColumnBuffers<'_>],
        params: &[u8],
    ) -> Result<Vec<u8>, KernelError> {
        let words = rows.div_ceil(64);
        let (desc, out) = self.stage(rows, columns, params, words * 8)?;
        let f = self.filter_bitmap.clone().ok_or_else(|| {
            KernelError::AbiMismatch(format!("no `{}` export", abi::EXPORT_FILTER_BITMAP))
        })?;
        let n = self.call_batch(&f, (desc, out, words as u32))?;
        self.selection(out, rows, n, "bitmap")
    }

    /// Runs the filter export over `rows` rows of `columns` with `params`; returns the selected
    /// row indices after checking them (count, range, strict order).
    pub fn filter(
        &mut self,
        rows: usize,
        columns: &[ColumnBuffers<'_>],
        params: &[u8],
    ) -> Result<Vec<u32>, KernelError> {
        let (desc, out) = self.stage(rows, columns, params, rows * 4)?;
        let f = self.filter.clone().ok_or_else(|| {
            KernelError::AbiMismatch(format!(
                "kernel {} is a {} kernel, not a filter",
                self.program.name,
                self.program.kind.as_str()
            ))
        })?;
        let n = self.call_batch(&f, (desc, out, rows as u32))? as usize;
        let kernel = || self.program.name.clone();
        if n > rows {
            return Err(KernelError::BadOutput {
                kernel: kernel(),
                detail: format!("selected {n} rows of a {rows}-row batch"),
            });
        }
        let out = self.output(out, n * 4)?;
        let mut idx = Vec::with_capacity(n);
        let mut prev: Option<u32> = None;
        for w in out.chunks_exact(4) {
            let i = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            if i as usize >= rows {
                return Err(KernelError::BadOutput {
                    kernel: kernel(),
                    detail: format!("row index {i} is out of range for {rows} rows"),
                });
            }
            if prev.is_some_and(|p| p >= i) {
                return Err(KernelError::BadOutput {
                    kernel: kernel(),
                    detail: format!(
                        "row indices are not strictly increasing ({} then {i})",
                        prev.unwrap_or(0)
                    ),
                });
            }
            prev = Some(i);
            idx.push(i);
        }
        Ok(idx)
    }
}
