//! Actions (`DoAction`, `ListActions`): tables (drop, describe), plan estimates, kernels
//! (register, list, remove) and the admin-only device info and scrub. Results are JSON.

use std::sync::atomic::Ordering;

use arrow_flight::{Action, ActionType};
use bytes::Bytes;
use nearstore_proto::{DeviceInfo, Plan, actions};

use super::{DeviceService, Principal};
use crate::error::{Error, Result};
use crate::storage::is_valid_name;

impl DeviceService {
    /// Runs `action` for `who`; its results, one message each.
    pub(super) async fn action(&self, who: &Principal, action: Action) -> Result<Vec<Bytes>> {
        let body = || {
            String::from_utf8(action.body.to_vec())
                .map_err(|_| Error::MalformedPlan("action body is not UTF-8".into()))
        };
        match action.r#type.as_str() {
            actions::DROP_TABLE => {
                let name = body()?;
                self.storage().drop_table(&who.scope(&name)?).await?;
                Ok(vec![Bytes::from(format!("dropped {name}"))])
            }
            actions::DESCRIBE_TABLE => {
                let name = body()?;
                let mut info = self.storage().describe(&who.scope(&name)?)?;
                info.name = name;
                Ok(vec![json(&info)])
            }
            actions::ESTIMATE => {
                let plan = Plan::from_json(&action.body)?;
                let tenant = who.tenant.as_deref().unwrap_or_default();
                let media = self.admission.media(tenant);
                let scoped = Self::scoped(who, &plan)?;
                let mut e = self.executor.estimate(&scoped, media).await?;
                e.active_queries = self.active.load(Ordering::Relaxed);
                e.rates = self.metrics.telemetry.rates(&self.link);
                Ok(vec![json(&e)])
            }
            actions::REGISTER_KERNEL => self.register_kernel(who, &action.body).await,
            actions::LIST_KERNELS => {
                let mine: Vec<nearstore_proto::KernelInfo> = self
                    .storage()
                    .kernels()
                    .list()
                    .into_iter()
                    .filter_map(|mut k| {
                        let name = who.unscope(&k.name)?.to_string();
                        k.name = name;
                        Some(k)
                    })
                    .collect();
                Ok(vec![json(&mine)])
            }
            actions::REMOVE_KERNEL => {
                let name = body()?;
                self.storage().kernels().remove(&who.scope(&name)?)?;
                Ok(vec![Bytes::from(format!("removed kernel {name}"))])
            }
            actions::DEVICE_INFO | actions::SCRUB if !who.admin => {
                Err(Error::PermissionDenied(format!(
                    "{} is a device-wide action and needs the admin role",
                    action.r#type
                )))
            }
            actions::DEVICE_INFO => {
                let space = self.storage().space();
                let info = DeviceInfo {
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    reader: self.storage().reader().kind().as_str().to_string(),
                    backend: self.executor.default_backend().as_str().to_string(),
                    tables: self.storage().table_names().len() as u64,
                    queries: self.queries.load(Ordering::Relaxed),
                    errors: self.errors.load(Ordering::Relaxed),
                    active_queries: self.active.load(Ordering::Relaxed),
                    rates: self.metrics.telemetry.rates(&self.link),
                    capacity_bytes: space.map(|(_, c)| c),
                    used_bytes: space.map(|(u, _)| u),
                    cache: self.storage().hot().info(),
                };
                Ok(vec![json(&info)])
            }
            actions::SCRUB => Ok(vec![json(&self.storage().scrub().await?)]),
            other => Err(Error::Unsupported(format!(
                "unknown action '{other}' (see ListActions)"
            ))),
        }
    }

    /// Registers a kernel under the caller's name for it: the name and the tenant's kernel
    /// count are checked, the module is compiled (which validates it), then stored.
    async fn register_kernel(&self, who: &Principal, body: &[u8]) -> Result<Vec<Bytes>> {
        let req: nearstore_proto::RegisterKernel = serde_json::from_slice(body)
            .map_err(|e| Error::InvalidKernel(format!("register_kernel body is not valid: {e}")))?;
        if !is_valid_name(&req.name) {
            return Err(Error::InvalidKernel(format!(
                "kernel name '{}' must be 1-128 characters of [A-Za-z0-9_.-]",
                req.name
            )));
        }
        let module = hex::decode(&req.module_hex)
            .map_err(|_| Error::InvalidKernel("module_hex is not hexadecimal".into()))?;
        let stored = who.scope(&req.name)?;
        let storage = self.storage().clone();
        // A name already registered is replaced; a new one counts against the limit:
        // checked before compiling (a quick refusal) and again, under the lock, before
        // storing.
        let max = self
            .admission
            .limits(who.tenant.as_deref().unwrap_or_default())
            .max_kernels;
        let within_limit = || {
            let kernels = storage.kernels().list();
            let mine = kernels.iter().filter(|k| who.unscope(&k.name).is_some());
            if kernels.iter().any(|k| k.name == stored) || mine.count() < max {
                return Ok(());
            }
            Err(Error::ResourceExhausted {
                message: format!(
                    "{max} kernels are registered, the most this tenant may have \
                     (remove one with `nearstore kernel remove`)"
                ),
                retry_after_ms: 0,
            })
        };
        within_limit()?;
        // Compiling takes a while for a large module: off the async workers.
        let (executor, tenant) = (self.executor.clone(), who.tenant.clone());
        let program = tokio::task::spawn_blocking(move || {
            let tenant = tenant.as_deref().unwrap_or_default();
            executor.check_kernel(&module, tenant).map(|p| (p, module))
        })
        .await
        .map_err(|e| Error::Internal(format!("kernel compilation panicked: {e}")))?;
        let (program, module) = program?;
        let kind = program.kind().as_str();
        let output = program.output().map(|o| o.as_str());
        let _registering = self.registering.lock().await;
        within_limit()?;
        let mut info = tokio::task::spawn_blocking(move || {
            storage.kernels().register(&stored, &module, kind, output)
        })
        .await
        .map_err(|e| Error::Internal(format!("kernel registration panicked: {e}")))??;
        info.name = req.name;
        tracing::info!(kernel = %info.name, sha256 = %info.sha256, "kernel registered");
        Ok(vec![json(&info)])
    }
}

/// An action result as JSON.
fn json(v: &impl serde::Serialize) -> Bytes {
    Bytes::from(serde_json::to_vec(v).expect("action results serialise"))
}

/// The actions `ListActions` describes.
pub(super) fn action_types() -> Vec<ActionType> {
    let list = [
        (actions::DROP_TABLE, "Drop a table. Body: table name."),
        (
            actions::DESCRIBE_TABLE,
            "Describe a table. Body: table name. Result: JSON.",
        ),
        (
            actions::DEVICE_INFO,
            "Device information and counters. Result: JSON.",
        ),
        (
            actions::SCRUB,
            "Verify every object's SHA-256. Result: JSON report.",
        ),
        (
            actions::REGISTER_KERNEL,
            "Register a Wasm kernel. Body: {\"name\", \"module_hex\"} JSON. Result: JSON.",
        ),
        (actions::LIST_KERNELS, "The caller's kernels. Result: JSON."),
        (
            actions::REMOVE_KERNEL,
            "Remove a kernel name. Body: the name.",
        ),
        (
            actions::READ_RANGES,
            "Byte ranges of a table's stored Parquet object (CRC-checked, paced by the link). Body: {\"table\", \"object\", \"ranges\": [[start, end], ...]} JSON. Results: the bytes, range by range.",
        ),
        (
            actions::ESTIMATE,
            "What a plan's filter may match by the Parquet statistics, and the device's load. Body: plan JSON. Result: JSON.",
        ),
    ];
    list.into_iter()
        .map(|(t, d)| ActionType {
            r#type: t.to_string(),
            description: d.to_string(),
        })
        .collect()
}
