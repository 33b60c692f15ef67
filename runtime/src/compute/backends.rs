//! The device's backends, built once from its configuration. The executor picks one per query
//! by [`BackendKind`] and sees it only through [`ComputeBackend`]; registered kernels are
//! compiled here into [`Kernel`]s whose calls the bound plan makes through `KernelFn`.

use std::sync::Arc;

use nearstore_proto::BackendKind;

use super::fpga::{FpgaBackend, TimingModel};
use super::native::NativeBackend;
use super::wasm::{KernelCall, KernelError, Program, Sandbox, SandboxConfig, WasmBackend};
use super::{ComputeBackend, KernelLimits};
use crate::error::Result;
use crate::plan::{KernelFn, KernelKind, KernelOutput};

/// Every backend of the device.
#[derive(Debug)]
pub struct Backends {
    native: Arc<NativeBackend>,
    wasm: Arc<WasmBackend>,
    fpga: Arc<FpgaBackend>,
}

impl Backends {
    /// Sets up the sandbox (with the built-in kernels) and the emulated FPGA.
    pub fn new(sandbox: SandboxConfig) -> Result<Self> {
        let wasm = WasmBackend::new(sandbox)?;
        Ok(Backends {
            native: Arc::new(NativeBackend),
            fpga: Arc::new(FpgaBackend::new(TimingModel::default(), wasm.clone())?),
            wasm: Arc::new(wasm),
        })
    }

    /// The backend of `kind`.
    pub fn get(&self, kind: BackendKind) -> Arc<dyn ComputeBackend> {
        match kind {
            BackendKind::Native => self.native.clone(),
            BackendKind::Wasm => self.wasm.clone(),
            BackendKind::Fpga => self.fpga.clone(),
        }
    }

    /// The Wasm backend (its sandbox loads and runs kernels).
    pub fn wasm(&self) -> &Arc<WasmBackend> {
        &self.wasm
    }

    /// The FPGA backend (its emulated device takes fault injection).
    pub fn fpga(&self) -> &Arc<FpgaBackend> {
        &self.fpga
    }

    /// Validates and compiles a kernel module for `owner` (its tenant, "" on a device without
    /// tenants: the module's owner in the compile cache), or finds it compiled.
    pub fn compile_kernel(
        &self,
        module: &[u8],
        owner: &str,
    ) -> std::result::Result<Kernel, KernelError> {
        let sandbox = self.wasm.sandbox().clone();
        let program = sandbox.load_for(module, owner)?;
        Ok(Kernel { program, sandbox })
    }
}

/// A registered kernel, compiled and ready to be called from queries.
#[derive(Debug, Clone)]
pub struct Kernel {
    program: Arc<Program>,
    sandbox: Arc<Sandbox>,
}

impl Kernel {
    /// Its kind, from the manifest.
    pub fn kind(&self) -> KernelKind {
        self.program.kind
    }

    /// Its output type (map and aggregate kernels).
    pub fn output(&self) -> Option<KernelOutput> {
        self.program.output
    }

    /// A call of it from one query, named `name` there, with `params`, under `limits`.
    pub fn call(
        &self,
        name: &str,
        params: &str,
        limits: Option<KernelLimits>,
    ) -> Arc<dyn KernelFn> {
        Arc::new(KernelCall::new(
            name,
            self.program.clone(),
            self.sandbox.clone(),
            params,
            limits,
        ))
    }
}
