//! Device tables and scans for engines that ship plans between processes (Ballista): the
//! tables of a set of devices registered on a context the engine made, the offload rules, and
//! the providers and the scan as bytes, for the engine's plan codecs. Decoded tables and scans
//! are *driven* ([`DeviceScanExec::driven`]), so a task given some of a scan's partitions
//! scans exactly their devices.

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::{DFSchema, DataFusionError};
use datafusion::optimizer::OptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use nearstore_proto::{IpcCompression, Plan, SortKey};
use serde::{Deserialize, Serialize};

use super::layout::OutCol;
use super::pushed::DeviceAggregate;
use super::{DeviceScanExec, DeviceTable, Mode, PushAggregates, PushTopK, ScanLog};
use crate::{ClientOptions, Result};

/// What encoded device tables and scans start with.
pub const MAGIC: &[u8] = b"nearstore-device:1:";

/// The client options, as bytes can carry them.
#[derive(Serialize, Deserialize)]
struct WireOptions {
    token: Option<String>,
    connect_timeout_ms: u64,
    request_timeout_ms: u64,
    tls_ca_pem: Option<Vec<u8>>,
    compression: Option<IpcCompression>,
}

impl From<&ClientOptions> for WireOptions {
    fn from(o: &ClientOptions) -> Self {
        WireOptions {
            token: o.token.clone(),
            connect_timeout_ms: o.connect_timeout.as_millis() as u64,
            request_timeout_ms: o.request_timeout.as_millis() as u64,
            tls_ca_pem: o.tls_ca_pem.clone(),
            compression: o.compression,
        }
    }
}

impl From<WireOptions> for ClientOptions {
    fn from(o: WireOptions) -> Self {
        ClientOptions {
            token: o.token,
            connect_timeout: Duration::from_millis(o.connect_timeout_ms),
            request_timeout: Duration::from_millis(o.request_timeout_ms),
            tls_ca_pem: o.tls_ca_pem,
            compression: o.compression,
        }
    }
}

/// An encoded table provider.
#[derive(Serialize, Deserialize)]
enum WireTable {
    /// A [`DeviceTable`] (always offload mode).
    Table {
        urls: Vec<String>,
        options: WireOptions,
        table: String,
        top: Option<(Vec<SortKey>, u64)>,
    },
    /// A pushed plan's stand-in table.
    Pushed {
        urls: Vec<String>,
        options: WireOptions,
        layout: Vec<OutCol>,
        plan: serde_json::Value,
    },
}

/// An encoded scan (its driver travels as its child).
#[derive(Serialize, Deserialize)]
struct WireScan {
    urls: Vec<String>,
    options: WireOptions,
    plan: serde_json::Value,
    /// The output schema as an Arrow IPC stream with no batch.
    schema: Vec<u8>,
    pick: Option<Vec<usize>>,
    layout: Option<Vec<OutCol>>,
}

fn codec_err(what: &str, e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Internal(format!("device {what}: {e}"))
}

fn encode<T: Serialize>(v: &T) -> datafusion::common::Result<Vec<u8>> {
    let mut out = MAGIC.to_vec();
    out.extend(serde_json::to_vec(v).map_err(|e| codec_err("encoding", e))?);
    Ok(out)
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> datafusion::common::Result<T> {
    let body = bytes
        .strip_prefix(MAGIC)
        .ok_or_else(|| codec_err("decoding", "not an encoded device table or scan"))?;
    serde_json::from_slice(body).map_err(|e| codec_err("decoding", e))
}

fn plan_json(p: &Plan) -> datafusion::common::Result<serde_json::Value> {
    serde_json::from_slice(&p.to_json()).map_err(|e| codec_err("plan", e))
}

fn plan_from(v: &serde_json::Value) -> datafusion::common::Result<Plan> {
    let bytes = serde_json::to_vec(v).map_err(|e| codec_err("plan", e))?;
    Plan::from_json(&bytes).map_err(|e| codec_err("plan", e))
}

fn schema_bytes(schema: &SchemaRef) -> datafusion::common::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, schema)?;
    w.finish()?;
    drop(w);
    Ok(buf)
}

fn schema_from(bytes: &[u8]) -> datafusion::common::Result<SchemaRef> {
    let r = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    Ok(r.schema())
}

/// The bytes of a device table or a pushed plan's table; `None` for another provider.
pub fn encode_table(provider: &dyn TableProvider) -> Option<datafusion::common::Result<Vec<u8>>> {
    let any: &dyn std::any::Any = provider;
    if let Some(t) = any.downcast_ref::<DeviceTable>() {
        if t.mode != Mode::Offload {
            return Some(Err(codec_err(
                "encoding",
                format!(
                    "table {} is in {} mode; only offload ships",
                    t.table,
                    t.mode.as_str()
                ),
            )));
        }
        return Some(encode(&WireTable::Table {
            urls: t.urls.clone(),
            options: (&t.options).into(),
            table: t.table.clone(),
            top: t.top.clone(),
        }));
    }
    let t = any.downcast_ref::<DeviceAggregate>()?;
    Some(plan_json(&t.plan).and_then(|plan| {
        encode(&WireTable::Pushed {
            urls: t.urls.clone(),
            options: (&t.options).into(),
            layout: t.layout.as_ref().clone(),
            plan,
        })
    }))
}

/// A table from [`encode_table`]'s bytes, with the `schema` the engine kept; its scans are
/// driven.
pub fn decode_table(
    bytes: &[u8],
    schema: SchemaRef,
) -> datafusion::common::Result<Arc<dyn TableProvider>> {
    let log = ScanLog::default();
    Ok(match decode::<WireTable>(bytes)? {
        WireTable::Table {
            urls,
            options,
            table,
            top,
        } => Arc::new(DeviceTable {
            urls,
            options: options.into(),
            table,
            df_schema: Arc::new(DFSchema::try_from(schema.clone())?),
            schema,
            mode: Mode::Offload,
            log,
            top,
            driven: true,
        }),
        WireTable::Pushed {
            urls,
            options,
            layout,
            plan,
        } => Arc::new(DeviceAggregate {
            urls,
            options: options.into(),
            layout: Arc::new(layout),
            plan: plan_from(&plan)?,
            schema,
            log,
            driven: true,
        }),
    })
}

/// The bytes of a device scan; `None` for another operator. Its driver (if any) is its child,
/// which the engine encodes itself.
pub fn encode_scan(plan: &dyn ExecutionPlan) -> Option<datafusion::common::Result<Vec<u8>>> {
    let s = plan.downcast_ref::<DeviceScanExec>()?;
    Some((|| {
        encode(&WireScan {
            urls: s.urls.clone(),
            options: (&s.options).into(),
            plan: plan_json(&s.plan)?,
            schema: schema_bytes(&s.schema)?,
            pick: s.pick.clone(),
            layout: s.layout.as_ref().map(|l| l.as_ref().clone()),
        })
    })())
}

/// A scan from [`encode_scan`]'s bytes, driven by `inputs[0]` when it has a driver.
pub fn decode_scan(
    bytes: &[u8],
    inputs: &[Arc<dyn ExecutionPlan>],
) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
    let w: WireScan = decode(bytes)?;
    let scan = DeviceScanExec::new(
        w.urls,
        w.options.into(),
        plan_from(&w.plan)?,
        schema_from(&w.schema)?,
        w.pick,
        w.layout.map(Arc::new),
        ScanLog::default(),
    );
    Ok(Arc::new(match inputs.first() {
        Some(driver) => scan.with_driver(driver.clone())?,
        None => scan,
    }))
}

/// The logical rules that push aggregates and top-k to the devices (offload mode).
pub fn offload_rules() -> Vec<Arc<dyn OptimizerRule + Send + Sync>> {
    vec![Arc::new(PushAggregates), Arc::new(PushTopK)]
}

/// Lists the tables of the devices at `urls` and registers each on `ctx` as a device table
/// (offload mode) whose scans are driven; returns their names.
pub async fn register_device_tables(
    ctx: &SessionContext,
    urls: &[String],
    options: &ClientOptions,
) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for (name, schema, devices) in super::session::list_tables(urls, options).await? {
        let table = DeviceTable {
            urls: devices,
            options: options.clone(),
            table: name.clone(),
            df_schema: Arc::new(
                DFSchema::try_from(schema.clone())
                    .map_err(|e| crate::Error::InvalidArgument(e.to_string()))?,
            ),
            schema,
            mode: Mode::Offload,
            log: ScanLog::default(),
            top: None,
            driven: true,
        };
        ctx.register_table(name.as_str(), Arc::new(table))
            .map_err(|e| crate::Error::InvalidArgument(e.to_string()))?;
        names.push(name);
    }
    Ok(names)
}
