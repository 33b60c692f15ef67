//! The Nearstore device runtime: an emulated computational storage drive.
//!
//! Layers, bottom up:
//! - [`storage`]: the namespace (objects, catalog, atomic uploads) and the read path
//!   (io_uring with a pread fallback);
//! - [`scan`]: Parquet access with pruning before decoding;
//! - [`compute`]: backends that run operators next to the data;
//! - [`exec`]: plan binding and execution with per-query statistics;
//! - [`server`]: the Arrow Flight service.
//!
//! [`Device`] ties them together.

pub mod compute;
pub mod demo;
pub mod error;
pub mod exec;
pub mod plan;
pub mod scan;
pub mod server;
pub mod storage;

#[cfg(test)]
mod layers;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use nearstore_proto::{BackendKind, PutMode};

pub use error::{Error, Result};
use storage::reader::{Reader, ReaderConfig};
use storage::{Storage, WriteConfig};

/// Everything a device is configured with.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// Data directory (the namespace).
    pub data_dir: PathBuf,
    /// Read path.
    pub reader: ReaderConfig,
    /// Object layout.
    pub write: WriteConfig,
    /// Backend for plans that name none.
    pub backend: BackendKind,
    /// Limits of the Wasm kernel sandbox.
    pub sandbox: compute::wasm::SandboxConfig,
    /// Emulated device-to-host link rate in Gb/s; `None` sends at the transport's speed.
    pub link_gbps: Option<f64>,
    /// Round-trip time of the emulated link, microseconds (default 100; unshaped links have
    /// the transport's own).
    pub link_rtt_us: Option<u64>,
    /// Tenants and their token hashes; none means an open device (no authentication).
    pub tenants: Vec<server::auth::TenantConfig>,
    /// Admission limits per tenant (tenants may override them).
    pub qos: server::qos::QosConfig,
    /// TLS certificate chain and private key (PEM); none serves plain gRPC.
    pub tls: Option<TlsPem>,
    /// Compute workers one query may spread its row groups over (none: one per core).
    pub workers: Option<usize>,
    /// The namespace's size in MiB: uploads that would take the data directory past it are
    /// refused as on a full disk (none: the file system's free space is the limit).
    pub capacity_mb: Option<u64>,
    /// The hot-column tier's budget in MiB (0: off; none: a quarter of the machine's memory).
    pub cache_mb: Option<u64>,
    /// The file-backed tier's directory: the hot tier's chunks written through to files there
    /// and read back, verified, at start-up (none: the tier starts empty).
    pub pmem_dir: Option<PathBuf>,
}

/// A TLS identity in PEM.
#[derive(Debug, Clone)]
pub struct TlsPem {
    /// Certificate chain.
    pub cert: Vec<u8>,
    /// Private key.
    pub key: Vec<u8>,
}

impl DeviceConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        DeviceConfig {
            data_dir: data_dir.into(),
            reader: ReaderConfig::default(),
            write: WriteConfig::default(),
            backend: BackendKind::Wasm,
            sandbox: compute::wasm::SandboxConfig::default(),
            link_gbps: None,
            link_rtt_us: None,
            tenants: Vec::new(),
            qos: server::qos::QosConfig::default(),
            tls: None,
            workers: None,
            capacity_mb: None,
            cache_mb: None,
            pmem_dir: None,
        }
    }
}

/// The machine's memory in bytes (`MemTotal`), or 0 when unknown.
fn machine_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib << 10)
        })
        .unwrap_or(0)
}

/// A device served on a loopback port by [`Device::serve_local`].
#[derive(Debug)]
pub struct LocalServer {
    /// `grpc://127.0.0.1:PORT`.
    pub url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl LocalServer {
    /// Stops serving and waits for in-flight calls to finish.
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.task
            .await
            .map_err(|e| Error::Internal(format!("Flight server task failed: {e}")))?
    }
}

/// An opened device: namespace plus executor.
#[derive(Debug, Clone)]
pub struct Device {
    storage: Arc<Storage>,
    executor: Arc<exec::Executor>,
    link: Arc<server::Link>,
    auth: Arc<server::auth::Auth>,
    admission: Arc<server::qos::Admission>,
    metrics: Arc<server::metrics::Metrics>,
    tls: Option<TlsPem>,
}

impl Device {
    /// Opens the namespace and starts the read path.
    pub fn open(config: &DeviceConfig) -> Result<Self> {
        let auth = Arc::new(server::auth::Auth::new(&config.tenants)?);
        let overrides = config
            .tenants
            .iter()
            .map(|t| {
                let q = server::qos::QosConfig {
                    max_queries: t.max_queries.unwrap_or(config.qos.max_queries),
                    max_queued: t.max_queued.unwrap_or(config.qos.max_queued),
                    media_mb_per_s: t.media_mb_per_s.or(config.qos.media_mb_per_s),
                    kernel_deadline_ms: t.kernel_deadline_ms.or(config.qos.kernel_deadline_ms),
                    kernel_call_ms: t.kernel_call_ms.or(config.qos.kernel_call_ms),
                    kernel_memory_mb: t.kernel_memory_mb.or(config.qos.kernel_memory_mb),
                    max_kernels: t.max_kernels.unwrap_or(config.qos.max_kernels),
                };
                (t.name.clone(), q)
            })
            .collect();
        let admission = Arc::new(server::qos::Admission::new(config.qos, overrides)?);
        let reader = Reader::start(config.reader)
            .map_err(|e| Error::io("starting the storage read path", e))?;
        let fs: Arc<dyn storage::fs::Fs> = match config.capacity_mb {
            Some(mb) => Arc::new(
                storage::fs::Capped::new(&config.data_dir, mb << 20)
                    .map_err(|e| Error::io("measuring the data directory", e))?,
            ),
            None => Arc::new(storage::fs::OsFs),
        };
        let cache = config
            .cache_mb
            .map_or_else(|| machine_memory() / 4, |mb| mb << 20);
        let storage = Arc::new(
            Storage::open_on(fs, &config.data_dir, reader, config.write)?
                .with_hot_tier(cache, config.pmem_dir.as_deref())?,
        );
        let executor = Arc::new(exec::Executor::new(
            storage.clone(),
            config.backend,
            config.sandbox,
            config.workers.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            }),
        )?);
        Ok(Device {
            storage,
            executor,
            link: Arc::new(
                server::Link::new(config.link_gbps).with_rtt(
                    config
                        .link_rtt_us
                        .map_or(server::link::DEFAULT_RTT, std::time::Duration::from_micros),
                ),
            ),
            auth,
            admission,
            metrics: Arc::default(),
            tls: config.tls.clone(),
        })
    }

    /// The namespace.
    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// Whether the device authenticates callers (tenants are configured).
    pub fn requires_auth(&self) -> bool {
        !self.auth.is_open()
    }

    /// The executor.
    pub fn executor(&self) -> &Arc<exec::Executor> {
        &self.executor
    }

    /// Generates TPC-H `table` at `scale` into the namespace, calling `progress(rows, approx
    /// total)` as batches are written. Blocking.
    pub fn load_tpch(&self, table: &str, scale: f64, progress: &dyn Fn(u64, u64)) -> Result<u64> {
        self.load_tpch_part(table, scale, (1, 1), progress)
    }

    /// Like [`Device::load_tpch`], part `part.0` (1-based) of `part.1` of the table only.
    pub fn load_tpch_part(
        &self,
        table: &str,
        scale: f64,
        part: (usize, usize),
        progress: &dyn Fn(u64, u64),
    ) -> Result<u64> {
        let total = demo::approx_rows(table, scale) / part.1.max(1) as u64;
        let mut upload = self.storage.begin_upload(table, PutMode::Replace)?;
        let mut rows = 0u64;
        for batch in demo::tpch_part_batches(table, scale, part)? {
            let batch = batch?;
            rows += batch.num_rows() as u64;
            upload.write(&batch)?;
            progress(rows, total.max(rows));
        }
        upload.commit()?;
        Ok(rows)
    }

    /// Serves Prometheus metrics (`GET /metrics`) on `listener`, on a task of its own.
    pub fn serve_metrics(&self, listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
        tokio::spawn(server::metrics::serve(
            listener,
            self.metrics.clone(),
            self.storage.reader().clone(),
            self.link.clone(),
            self.storage.hot().clone(),
        ))
    }

    /// Serves Arrow Flight on a free loopback port on a task of its own, for embedded use
    /// (`nearstore demo`, `bench compare`, tests). Stop it with [`LocalServer::stop`].
    pub async fn serve_local(&self) -> Result<LocalServer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::io("binding a loopback port", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("reading the bound address", e))?;
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let device = self.clone();
        let task = tokio::spawn(async move {
            device
                .serve(listener, async {
                    let _ = rx.await;
                })
                .await
        });
        let scheme = if self.tls.is_some() {
            "grpc+tls"
        } else {
            "grpc"
        };
        Ok(LocalServer {
            url: format!("{scheme}://{addr}"),
            stop,
            task,
        })
    }

    /// Serves Arrow Flight on `listener` until `shutdown` resolves; in-flight calls finish.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let addr: Option<SocketAddr> = listener.local_addr().ok();
        let svc = FlightServiceServer::new(server::DeviceService::new(
            self.executor.clone(),
            self.link.clone(),
            self.auth.clone(),
            self.admission.clone(),
            self.metrics.clone(),
        ))
        .max_decoding_message_size(server::MESSAGE_BYTES_MAX)
        .max_encoding_message_size(server::MESSAGE_BYTES_MAX);
        tracing::info!(addr = ?addr, "serving Arrow Flight");
        let mut builder = tonic::transport::Server::builder();
        if let Some(t) = &self.tls {
            builder = builder
                .tls_config(
                    tonic::transport::ServerTlsConfig::new()
                        .identity(tonic::transport::Identity::from_pem(&t.cert, &t.key)),
                )
                .map_err(|e| Error::Config(format!("TLS certificate or key: {e}")))?;
        }
        builder
            .initial_stream_window_size(16 << 20)
            .initial_connection_window_size(32 << 20)
            .add_service(svc)
            .serve_with_incoming_shutdown(
                // With an incoming stream tonic does not apply its own TCP options: without
                // TCP_NODELAY a small result waits ~40 ms for the client's delayed ACK.
                tokio_stream::StreamExt::map(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    |conn| {
                        conn.inspect(|s| {
                            if let Err(e) = s.set_nodelay(true) {
                                tracing::warn!(error = %e, "cannot set TCP_NODELAY");
                            }
                        })
                    },
                ),
                shutdown,
            )
            .await
            .map_err(|e| Error::Internal(format!("Flight server failed: {e}")))
    }
}
