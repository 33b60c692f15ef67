//! Nearstore on Apache DataFusion Ballista: device tables queried by a Ballista cluster, so
//! the host side of a query over many devices runs on a distributed engine instead of one
//! host.
//!
//! - [`LogicalCodec`] and [`PhysicalCodec`] carry device tables, pushed plans and device scans
//!   between the client, the scheduler and the executors (falling back to Ballista's own
//!   codecs for everything else, the shuffle nodes included).
//! - [`scheduler`] and [`executor`] run the two kinds of Ballista process with those codecs
//!   and, on the scheduler, the rules that push aggregates and top-k to the devices.
//! - [`connect`] makes a client session: the devices' tables registered on a context whose
//!   queries run on the cluster.
//!
//! - [`placement`]: executors declare the devices near them, and the scheduler runs a
//!   device's scan tasks on such an executor.
//!
//! Ballista packs several partitions into one task and trims each task's plan to its own
//! partitions, which it knows how to do only for its own leaves (shuffle readers, file and
//! in-memory sources); a custom leaf with N partitions would be left whole and every task
//! would scan every device. So every scan here is *driven*
//! ([`nearstore_sdk::sql::DeviceScanExec::driven`]): a non-leaf node over an in-memory source
//! with one partition per device whose rows name the device, which Ballista trims correctly.

pub mod placement;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::catalog::TableProvider;
use datafusion::common::TableReference;
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::execution::TaskContext;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{Extension, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use nearstore_sdk::ClientOptions;
use nearstore_sdk::sql::wire;

/// The logical codec: device tables and pushed plans' tables, else Ballista's.
#[derive(Debug, Default)]
pub struct LogicalCodec {
    inner: BallistaLogicalExtensionCodec,
}

impl LogicalExtensionCodec for LogicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> datafusion::common::Result<Extension> {
        self.inner.try_decode(buf, inputs, ctx)
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> datafusion::common::Result<()> {
        self.inner.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: arrow::datatypes::SchemaRef,
        ctx: &TaskContext,
    ) -> datafusion::common::Result<Arc<dyn TableProvider>> {
        if buf.starts_with(wire::MAGIC) {
            wire::decode_table(buf, schema)
        } else {
            self.inner
                .try_decode_table_provider(buf, table_ref, schema, ctx)
        }
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> datafusion::common::Result<()> {
        match wire::encode_table(node.as_ref()) {
            Some(bytes) => {
                buf.extend(bytes?);
                Ok(())
            }
            None => self.inner.try_encode_table_provider(table_ref, node, buf),
        }
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> datafusion::common::Result<Arc<dyn FileFormatFactory>> {
        self.inner.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn FileFormatFactory>,
    ) -> datafusion::common::Result<()> {
        self.inner.try_encode_file_format(buf, node)
    }
}

/// The physical codec: device scans, else Ballista's (shuffle readers and writers, …).
#[derive(Debug, Default)]
pub struct PhysicalCodec {
    inner: BallistaPhysicalExtensionCodec,
}

impl PhysicalExtensionCodec for PhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        if buf.starts_with(wire::MAGIC) {
            wire::decode_scan(buf, inputs)
        } else {
            self.inner.try_decode(buf, inputs, ctx, proto_converter)
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> datafusion::common::Result<()> {
        match wire::encode_scan(node.as_ref()) {
            Some(bytes) => {
                buf.extend(bytes?);
                Ok(())
            }
            None => self.inner.try_encode(node, buf, proto_converter),
        }
    }
}

/// The session config of every party: Ballista's, with the device codecs.
fn config() -> SessionConfig {
    use ballista::prelude::SessionConfigExt;
    SessionConfig::new_with_ballista()
        .with_ballista_logical_extension_codec(Arc::new(LogicalCodec::default()))
        .with_ballista_physical_extension_codec(Arc::new(PhysicalCodec::default()))
}

/// Ballista's session state for `config` with the device offload rules appended (they run on
/// the client and again on the scheduler; both are idempotent).
fn state(config: SessionConfig) -> datafusion::common::Result<datafusion::execution::SessionState> {
    let base = ballista_core::utils::default_session_builder(config)?;
    let mut b = SessionStateBuilder::new_from_existing(base);
    for rule in wire::offload_rules() {
        b = b.with_optimizer_rule(rule);
    }
    Ok(b.build())
}

/// Runs a scheduler on `listen` until the process ends. A device's scan task waits up to
/// `locality_wait` for a busy executor near the device (see [`placement`]).
pub async fn scheduler(listen: SocketAddr, locality_wait: Duration) -> Result<()> {
    use ballista_scheduler::cluster::BallistaCluster;
    use ballista_scheduler::config::{SchedulerConfig, TaskDistributionPolicy};
    let policy = Arc::new(placement::NearDevices::new(locality_wait));
    let mut c = SchedulerConfig {
        bind_host: listen.ip().to_string(),
        bind_port: listen.port(),
        external_host: listen.ip().to_string(),
        task_distribution: TaskDistributionPolicy::Custom(policy.clone()),
        ..Default::default()
    };
    c.override_logical_codec = Some(Arc::new(LogicalCodec::default()));
    c.override_physical_codec = Some(Arc::new(PhysicalCodec::default()));
    c.override_config_producer = Some(Arc::new(config));
    c.override_session_builder = Some(Arc::new(state));
    let cluster = BallistaCluster::new_from_config(&c)
        .await
        .context("setting up the scheduler's cluster state")?;
    policy.set_cluster(cluster.cluster_state());
    ballista_scheduler::scheduler_process::start_server(cluster, listen, Arc::new(c))
        .await
        .context("running the scheduler")?;
    Ok(())
}

/// Where an executor runs and which scheduler it serves.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler's host and port.
    pub scheduler: SocketAddr,
    /// The host it binds and advertises.
    pub host: String,
    /// The Arrow Flight port (shuffle data).
    pub flight_port: u16,
    /// The gRPC port (the scheduler's task launches).
    pub grpc_port: u16,
    /// Tasks it runs at once (0: one per core).
    pub tasks: usize,
    /// Its name (also in the scheduler's logs); a unique one is made when empty.
    pub id: String,
    /// The devices near it, as clients name them: their scans prefer it.
    pub near_devices: Vec<String>,
    /// Where its shuffle files go.
    pub work_dir: std::path::PathBuf,
}

/// Runs an executor until the process ends.
pub async fn executor(o: ExecutorOptions) -> Result<()> {
    use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
    std::fs::create_dir_all(&o.work_dir)
        .with_context(|| format!("creating {}", o.work_dir.display()))?;
    let mut c = ExecutorProcessConfig {
        bind_host: o.host.clone(),
        external_host: Some(o.host.clone()),
        port: o.flight_port,
        grpc_port: o.grpc_port,
        scheduler_host: o.scheduler.ip().to_string(),
        scheduler_port: o.scheduler.port(),
        scheduler_connect_timeout_seconds: 60,
        vcores: o.tasks,
        work_dir: Some(o.work_dir.to_string_lossy().into_owned()),
        ..Default::default()
    };
    if !o.id.is_empty() {
        c.executor_id = o.id.clone();
    }
    c.executor_id = placement::executor_id(&c.executor_id, &o.near_devices);
    c.override_logical_codec = Some(Arc::new(LogicalCodec::default()));
    c.override_physical_codec = Some(Arc::new(PhysicalCodec::default()));
    c.override_config_producer = Some(Arc::new(config));
    start_executor_process(Arc::new(c))
        .await
        .context("running the executor")?;
    Ok(())
}

/// A session whose queries run on the Ballista cluster at `url` (`df://HOST:PORT`), with the
/// tables of the devices at `devices` registered (offload mode; a table on several devices is
/// one table spread over them).
pub async fn connect(
    url: &str,
    devices: &[String],
    options: &ClientOptions,
) -> Result<SessionContext> {
    use ballista::prelude::SessionContextExt;
    let ctx = SessionContext::remote_with_state(url, state(config())?)
        .await
        .with_context(|| format!("connecting to the Ballista scheduler at {url}"))?;
    wire::register_device_tables(&ctx, devices, options).await?;
    Ok(ctx)
}
