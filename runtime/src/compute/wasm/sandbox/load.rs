//! Loading a kernel: module validation, the manifest, the ABI check. The bytes must be at most
//! `module_bytes_max` (16 MiB by default; checked before anything is parsed) and a valid core
//! Wasm binary whose imports are only `nearstore.log` and `nearstore.abort`, whose manifest
//! section (`abi`, `kind`, `name`, `output`, `state_size`) matches its exports, and which
//! reports the right ABI version when run once, under the same limits as a query.

use std::collections::HashMap;
use std::sync::Arc;

use nearstore_kernel_abi as abi;
use sha2::{Digest, Sha256};
use wasmtime::{InstancePre, Module};

use super::engine::HostState;
use super::{KernelError, Sandbox};
use crate::plan::{KernelKind, KernelOutput};

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
    pub(super) pre: InstancePre<HostState>,
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

impl Sandbox {
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
