//! The device's Arrow Flight service.
//!
//! - `GetFlightInfo` / `GetSchema`: the descriptor command is a JSON plan (or the descriptor
//!   path names a table, meaning a full scan); the plan is bound and checked, and the answer's
//!   one endpoint carries the plan as its ticket.
//! - `DoGet`: the ticket is a JSON plan; the result streams as Arrow IPC; the last message has no
//!   data and carries the query statistics as JSON in `app_metadata`.
//! - `DoPut`: the descriptor command is a [`PutCommand`]; Arrow batches or raw Parquet bytes.
//! - `ListFlights`: one `FlightInfo` per table. `DoAction`: see [`nearstore_proto::actions`].
//!
//! Every error becomes a gRPC status with a specific message and the [`ErrorCode`] in the
//! `x-nearstore-error` metadata; a failed call never affects other calls.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use nearstore_proto::{
    DeviceInfo, ERROR_CODE_METADATA, ErrorCode, Plan, PutCommand, PutFormat, actions,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::{Error, Result};
use crate::exec::{Executor, QueryLimits};
use crate::storage::Storage;

pub mod auth;
pub mod link;
pub mod metrics;
pub mod qos;
pub use auth::{Auth, Principal};
pub use link::Link;

type BoxStream<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send + 'static>>;

/// Largest gRPC message either side accepts (tonic's default is 4 MiB).
pub const MESSAGE_BYTES_MAX: usize = 64 << 20;

/// Largest raw Parquet upload.
pub const UPLOAD_BYTES_MAX: u64 = 16 << 30;

/// Converts a runtime error into a gRPC status carrying its code.
pub fn status(e: &Error) -> Status {
    let code = e.code();
    let grpc = match code {
        ErrorCode::UnknownTable => tonic::Code::NotFound,
        ErrorCode::UnknownColumn
        | ErrorCode::TypeMismatch
        | ErrorCode::MalformedPlan
        | ErrorCode::InvalidUpload => tonic::Code::InvalidArgument,
        ErrorCode::TableExists => tonic::Code::AlreadyExists,
        ErrorCode::UnknownKernel => tonic::Code::NotFound,
        ErrorCode::InvalidKernel => tonic::Code::InvalidArgument,
        ErrorCode::ResourceExhausted => tonic::Code::ResourceExhausted,
        ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
        ErrorCode::PermissionDenied => tonic::Code::PermissionDenied,
        ErrorCode::CorruptObject => tonic::Code::DataLoss,
        ErrorCode::Unsupported => tonic::Code::Unimplemented,
        ErrorCode::KernelFailed => tonic::Code::Aborted,
        _ => tonic::Code::Internal,
    };
    let mut s = Status::new(grpc, e.to_string());
    if let Ok(v) = code.as_str().parse() {
        s.metadata_mut().insert(ERROR_CODE_METADATA, v);
    }
    if let Error::ResourceExhausted { retry_after_ms, .. } = e
        && *retry_after_ms > 0
        && let Ok(v) = retry_after_ms.to_string().parse()
    {
        s.metadata_mut().insert("retry-after-ms", v);
    }
    s
}

/// The Flight service of one device.
#[derive(Debug, Clone)]
pub struct DeviceService {
    executor: Arc<Executor>,
    link: Arc<Link>,
    auth: Arc<Auth>,
    admission: Arc<qos::Admission>,
    metrics: Arc<metrics::Metrics>,
    queries: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    active: Arc<AtomicU64>,
    /// Held while a registration checks the tenant's kernel count and stores the kernel, so
    /// registrations in flight together cannot pass the limit.
    registering: Arc<tokio::sync::Mutex<()>>,
}

/// Counts a query as running until dropped.
struct Active(Arc<AtomicU64>);

impl Active {
    fn new(n: &Arc<AtomicU64>) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Active(n.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl DeviceService {
    /// A service over `executor` whose results leave through `link`, authenticating callers
    /// with `auth`.
    pub fn new(
        executor: Arc<Executor>,
        link: Arc<Link>,
        auth: Arc<Auth>,
        admission: Arc<qos::Admission>,
        metrics: Arc<metrics::Metrics>,
    ) -> Self {
        DeviceService {
            executor,
            link,
            auth,
            admission,
            metrics,
            queries: Arc::new(AtomicU64::new(0)),
            errors: Arc::new(AtomicU64::new(0)),
            active: Arc::new(AtomicU64::new(0)),
            registering: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    fn authenticate(
        &self,
        md: &tonic::metadata::MetadataMap,
    ) -> std::result::Result<Principal, Status> {
        self.auth.authenticate(md).map_err(|e| self.fail(e))
    }

    fn storage(&self) -> &Arc<Storage> {
        self.executor.storage()
    }

    /// Records a failed call of `who` in the metrics, then converts it.
    fn fail_for(&self, who: &Principal, e: Error) -> Status {
        self.metrics
            .failed(who.tenant.as_deref().unwrap_or(""), e.code().as_str());
        self.fail(who.visible(e))
    }

    fn fail(&self, e: Error) -> Status {
        self.errors.fetch_add(1, Ordering::Relaxed);
        tracing::info!(code = e.code().as_str(), error = %e, "request failed");
        status(&e)
    }

    fn plan_of(&self, descriptor: &FlightDescriptor) -> Result<Plan> {
        if !descriptor.cmd.is_empty() {
            return Ok(Plan::from_json(&descriptor.cmd)?);
        }
        match descriptor.path.as_slice() {
            [table] => Ok(Plan::scan(table)),
            _ => Err(Error::MalformedPlan(
                "descriptor carries neither a plan command nor a one-element table path".into(),
            )),
        }
    }

    /// The caller's plan with its table scoped to the caller's namespace.
    fn scoped(who: &Principal, plan: &Plan) -> Result<Plan> {
        let mut p = plan.clone();
        p.table = who.scope(&plan.table)?;
        // Kernels live in the caller's namespace too, wherever the plan calls them: in the
        // filter, a projection or an aggregate.
        let mut bad = None;
        for e in p.exprs_mut() {
            e.visit_kernels_mut(&mut |name| match who.scope(name) {
                Ok(s) => *name = s,
                Err(_) => bad = Some(name.clone()),
            });
        }
        if let Some(name) = bad {
            return Err(Error::UnknownKernel(name));
        }
        Ok(p)
    }

    async fn flight_info(
        &self,
        who: &Principal,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo> {
        // The ticket carries the caller's plan; DoGet scopes it again for whoever presents it.
        let plan = self.plan_of(&descriptor)?;
        let q = self.executor.prepare(&Self::scoped(who, &plan)?).await?;
        let info = FlightInfo::new()
            .try_with_schema(&q.schema())?
            .with_descriptor(descriptor)
            .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(plan.to_json())));
        Ok(info)
    }

    /// Flight info of the caller's table `name`.
    async fn table_info(&self, who: &Principal, name: &str) -> Result<FlightInfo> {
        let stored = who.scope(name)?;
        let info = self.storage().describe(&stored)?;
        let table = self.storage().table(&stored)?;
        let schema = self
            .executor
            .table_schema(&table, &Default::default())
            .await?;
        let plan = Plan::scan(name);
        Ok(FlightInfo::new()
            .try_with_schema(&schema)?
            .with_descriptor(FlightDescriptor::new_path(vec![name.to_string()]))
            .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(plan.to_json())))
            .with_total_records(info.rows as i64)
            .with_total_bytes(info.bytes as i64))
    }

    async fn run_query(&self, who: &Principal, plan: Plan) -> Result<BoxStream<FlightData>> {
        // Waits for one of the tenant's slots, or is refused when its queue is full.
        let tenant = who.tenant.clone().unwrap_or_default();
        let slot = match self.admission.admit(&tenant).await {
            Ok(s) => s,
            Err(e) => {
                self.metrics.rejected(&tenant);
                return Err(e);
            }
        };
        let started = std::time::Instant::now();
        self.queries.fetch_add(1, Ordering::Relaxed);
        let active = Active::new(&self.active);
        let limits = QueryLimits {
            media: slot.media.clone(),
            kernel: slot.kernel,
        };
        let q = self.executor.prepare_with(&plan, limits).await?;
        let schema = q.schema();
        let (rx, stats_rx) = self.executor.execute(q);
        let (out_tx, out_rx) = mpsc::channel::<std::result::Result<FlightData, Status>>(4);
        let errors = self.errors.clone();
        let link = self.link.clone();
        let metrics = self.metrics.clone();
        let admission = self.admission.clone();
        tokio::spawn(async move {
            match stream_result(plan, schema, rx, stats_rx, out_tx, errors, link).await {
                Ok(stats) => {
                    admission.query_ended(&tenant, qos::Outcome::Succeeded);
                    metrics.query_done(
                        &tenant,
                        stats.bytes_read_media,
                        stats.bytes_sent,
                        started.elapsed().as_secs_f64(),
                    )
                }
                Err(code) => {
                    let outcome = if code == ErrorCode::KernelFailed.as_str() {
                        qos::Outcome::KernelFailed
                    } else {
                        qos::Outcome::OtherFailure
                    };
                    admission.query_ended(&tenant, outcome);
                    metrics.failed(&tenant, code)
                }
            }
            drop(active);
            drop(slot);
        });
        Ok(Box::pin(ReceiverStream::new(out_rx)))
    }

    async fn put(
        &self,
        who: &Principal,
        mut input: Streaming<FlightData>,
    ) -> Result<nearstore_proto::PutSummary> {
        let first = input
            .message()
            .await
            .map_err(|s| Error::InvalidUpload(format!("upload stream failed: {}", s.message())))?
            .ok_or_else(|| Error::InvalidUpload("empty upload stream".into()))?;
        let descriptor = first.flight_descriptor.clone().ok_or_else(|| {
            Error::InvalidUpload("the first message carries no descriptor".into())
        })?;
        let cmd: PutCommand = serde_json::from_slice(&descriptor.cmd).map_err(|e| {
            Error::InvalidUpload(format!("descriptor command is not a put command: {e}"))
        })?;
        if cmd.table.contains('/') {
            return Err(Error::InvalidUpload(format!(
                "table name '{}' must be 1-128 characters of [A-Za-z0-9_.-]",
                cmd.table
            )));
        }
        let upload = self
            .storage()
            .begin_upload(&who.scope(&cmd.table)?, cmd.mode)?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<RecordBatch>(4);
        let writer = tokio::task::spawn_blocking(move || -> Result<_> {
            let mut upload = upload;
            for batch in rx {
                upload.write(&batch)?;
            }
            Ok(upload)
        });

        let fed = match cmd.format {
            PutFormat::Arrow => feed_arrow(first, input, &tx).await,
            PutFormat::Parquet => feed_parquet(first, input, &tx, self.storage()).await,
        };
        drop(tx);
        let upload = writer
            .await
            .map_err(|e| Error::Internal(format!("upload writer panicked: {e}")))?;
        // A writer error explains a failed feed better than the closed channel it caused.
        let upload = match (fed, upload) {
            (_, Err(e)) => return Err(e),
            (Err(e), _) => return Err(e),
            (Ok(()), Ok(u)) => u,
        };
        tokio::task::spawn_blocking(move || upload.commit())
            .await
            .map_err(|e| Error::Internal(format!("upload commit panicked: {e}")))?
    }

    async fn action(&self, who: &Principal, action: Action) -> Result<Vec<Bytes>> {
        let body = || {
            String::from_utf8(action.body.to_vec())
                .map_err(|_| Error::MalformedPlan("action body is not UTF-8".into()))
        };
        let json = |v: &dyn erased::Json| Bytes::from(v.to_json());
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
                let mut e = self.executor.estimate(&Self::scoped(who, &plan)?).await?;
                e.active_queries = self.active.load(Ordering::Relaxed);
                Ok(vec![json(&e)])
            }
            actions::REGISTER_KERNEL => {
                let req: nearstore_proto::RegisterKernel = serde_json::from_slice(&action.body)
                    .map_err(|e| {
                        Error::InvalidKernel(format!("register_kernel body is not valid: {e}"))
                    })?;
                let valid = !req.name.is_empty()
                    && req.name.len() <= 128
                    && req
                        .name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
                if !valid {
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
                let info = DeviceInfo {
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    reader: self.storage().reader().kind().as_str().to_string(),
                    backend: self.executor.default_backend().as_str().to_string(),
                    tables: self.storage().table_names().len() as u64,
                    queries: self.queries.load(Ordering::Relaxed),
                    errors: self.errors.load(Ordering::Relaxed),
                    active_queries: self.active.load(Ordering::Relaxed),
                };
                Ok(vec![json(&info)])
            }
            actions::SCRUB => Ok(vec![json(&self.storage().scrub().await?)]),
            other => Err(Error::Unsupported(format!(
                "unknown action '{other}' (see ListActions)"
            ))),
        }
    }
}

mod erased {
    /// Object-safe JSON encoding for action results.
    pub trait Json {
        fn to_json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Vec<u8> {
            serde_json::to_vec(self).expect("action results serialise")
        }
    }
}

async fn feed_arrow(
    first: FlightData,
    rest: Streaming<FlightData>,
    tx: &std::sync::mpsc::SyncSender<RecordBatch>,
) -> Result<()> {
    let all = futures::stream::once(async { Ok(first) })
        .chain(rest.map_err(|s| FlightError::Tonic(Box::new(s))));
    let mut batches = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(all);
    while let Some(b) = batches.next().await {
        let b = b.map_err(|e| Error::InvalidUpload(format!("bad Arrow data in upload: {e}")))?;
        let tx = tx.clone();
        // The writer thread applies back-pressure; wait for it off the async runtime.
        let sent = tokio::task::spawn_blocking(move || tx.send(b).is_ok())
            .await
            .unwrap_or(false);
        if !sent {
            return Err(Error::InvalidUpload("upload writer stopped".into()));
        }
    }
    Ok(())
}

/// Receives raw Parquet bytes into a temporary file, then validates them by decoding every
/// batch (a truncated or corrupt file fails here) and feeds the batches to the writer.
async fn feed_parquet(
    first: FlightData,
    mut rest: Streaming<FlightData>,
    tx: &std::sync::mpsc::SyncSender<RecordBatch>,
    storage: &Arc<Storage>,
) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    static N: AtomicU64 = AtomicU64::new(0);
    let path = storage.root().join("tmp").join(format!(
        "raw-{}-{}.parquet",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let guard = TempFile(path.clone());
    let mut f = tokio::fs::File::create(&path)
        .await
        .map_err(|e| Error::io("creating upload spool file", e))?;
    let mut total = 0u64;
    let mut msg = Some(first);
    loop {
        let Some(m) = msg.take() else { break };
        total += m.data_body.len() as u64;
        if total > UPLOAD_BYTES_MAX {
            return Err(Error::InvalidUpload(format!(
                "upload exceeds {UPLOAD_BYTES_MAX} bytes"
            )));
        }
        f.write_all(&m.data_body)
            .await
            .map_err(|e| Error::io("spooling upload", e))?;
        msg = rest
            .message()
            .await
            .map_err(|s| Error::InvalidUpload(format!("upload stream failed: {}", s.message())))?;
    }
    f.flush()
        .await
        .map_err(|e| Error::io("spooling upload", e))?;
    drop(f);
    let tx = tx.clone();
    tokio::task::spawn_blocking(move || -> Result<()> {
        let _guard = guard;
        let file = std::fs::File::open(&path).map_err(|e| Error::io("reopening upload", e))?;
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.with_batch_size(crate::exec::BATCH_ROWS).build())
            .map_err(|e| Error::InvalidUpload(format!("not a valid Parquet file: {e}")))?;
        for batch in reader {
            let batch = batch
                .map_err(|e| Error::InvalidUpload(format!("Parquet data does not decode: {e}")))?;
            if tx.send(batch).is_err() {
                return Err(Error::InvalidUpload("upload writer stopped".into()));
            }
        }
        Ok(())
    })
    .await
    // The decoder panics on some damaged footers (an unknown logical type, say): for bytes a
    // client sent, that is an invalid upload, not a device fault.
    .map_err(|e| Error::InvalidUpload(format!("the Parquet decoder failed on this file: {e}")))?
}

struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Encodes a query's batches as Flight data, then sends the statistics (or the error).
async fn stream_result(
    plan: Plan,
    schema: SchemaRef,
    mut rx: mpsc::Receiver<Result<RecordBatch>>,
    stats_rx: tokio::sync::oneshot::Receiver<nearstore_proto::QueryStats>,
    out: mpsc::Sender<std::result::Result<FlightData, Status>>,
    errors: Arc<AtomicU64>,
    link: Arc<Link>,
) -> std::result::Result<nearstore_proto::QueryStats, &'static str> {
    // Every message leaves through the (possibly emulated) link.
    let link_gbps = link.gbps();
    let out = link::paced(link, out);
    let failure: Arc<std::sync::Mutex<Option<Error>>> = Default::default();
    let slot = failure.clone();
    let batches = futures::stream::poll_fn(move |cx| match rx.poll_recv(cx) {
        std::task::Poll::Ready(Some(Ok(b))) => std::task::Poll::Ready(Some(Ok(b))),
        std::task::Poll::Ready(Some(Err(e))) => {
            *slot.lock().expect("failure slot") = Some(e);
            std::task::Poll::Ready(None)
        }
        std::task::Poll::Ready(None) => std::task::Poll::Ready(None),
        std::task::Poll::Pending => std::task::Poll::Pending,
    });
    let mut encoded = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(batches);
    let mut bytes_sent = 0u64;
    while let Some(fd) = encoded.next().await {
        match fd {
            Ok(fd) => {
                let n = fd.data_header.len() + fd.data_body.len();
                bytes_sent += n as u64;
                if out.send((Ok(fd), n)).await.is_err() {
                    return Err("client_gone");
                }
            }
            Err(e) => {
                errors.fetch_add(1, Ordering::Relaxed);
                let _ = out
                    .send((Err(Status::internal(format!("encoding failed: {e}"))), 0))
                    .await;
                return Err("internal");
            }
        }
    }
    let failed = failure.lock().expect("failure slot").take();
    if let Some(e) = failed {
        errors.fetch_add(1, Ordering::Relaxed);
        let _ = out.send((Err(status(&e)), 0)).await;
        return Err(e.code().as_str());
    }
    let Ok(mut stats) = stats_rx.await else {
        let _ = out
            .send((Err(Status::internal("query ended without statistics")), 0))
            .await;
        return Err("internal");
    };
    stats.bytes_sent = bytes_sent;
    stats.link_gbps = link_gbps;
    tracing::info!(
        table = %plan.table,
        backend = %stats.backend,
        bytes_read = stats.bytes_read_media,
        bytes_sent = stats.bytes_sent,
        row_groups = stats.row_groups_total,
        row_groups_pruned = stats.row_groups_pruned,
        pages_pruned = stats.pages_pruned,
        rows_scanned = stats.rows_scanned,
        rows_returned = stats.rows_returned,
        total_us = stats.total_us,
        "query done"
    );
    let meta = serde_json::to_vec(&stats).expect("stats serialise");
    let _ = out
        .send((
            Ok(FlightData {
                app_metadata: meta.into(),
                ..Default::default()
            }),
            0,
        ))
        .await;
    Ok(stats)
}

#[tonic::async_trait]
impl FlightService for DeviceService {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;
    type DoExchangeStream = BoxStream<FlightData>;

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> std::result::Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented(
            "handshake is not used: send requests directly",
        ))
    }

    async fn list_flights(
        &self,
        request: Request<Criteria>,
    ) -> std::result::Result<Response<Self::ListFlightsStream>, Status> {
        let who = self.authenticate(request.metadata())?;
        let mut infos = Vec::new();
        for stored in self.storage().table_names() {
            if let Some(name) = who.unscope(&stored) {
                infos.push(
                    self.table_info(&who, name)
                        .await
                        .map_err(|e| self.fail_for(&who, e)),
                );
            }
        }
        Ok(Response::new(Box::pin(futures::stream::iter(infos))))
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let who = self.authenticate(request.metadata())?;
        self.flight_info(&who, request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| self.fail_for(&who, e))
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented(
            "queries are not long-running: use GetFlightInfo",
        ))
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<SchemaResult>, Status> {
        let who = self.authenticate(request.metadata())?;
        let r: Result<SchemaResult> = async {
            let plan = self.plan_of(&request.into_inner())?;
            let q = self.executor.prepare(&Self::scoped(&who, &plan)?).await?;
            let opts = arrow::ipc::writer::IpcWriteOptions::default();
            Ok(SchemaAsIpc::new(&q.schema(), &opts).try_into()?)
        }
        .await;
        r.map(Response::new).map_err(|e| self.fail_for(&who, e))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<Self::DoGetStream>, Status> {
        let who = self.authenticate(request.metadata())?;
        let r = async {
            let plan = Plan::from_json(&request.into_inner().ticket)?;
            self.run_query(&who, Self::scoped(&who, &plan)?).await
        }
        .await;
        r.map(Response::new).map_err(|e| self.fail_for(&who, e))
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> std::result::Result<Response<Self::DoPutStream>, Status> {
        let who = self.authenticate(request.metadata())?;
        let summary = self
            .put(&who, request.into_inner())
            .await
            .map_err(|e| self.fail_for(&who, e))?;
        let meta = serde_json::to_vec(&summary).expect("summary serialises");
        let result = PutResult {
            app_metadata: meta.into(),
        };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(result)]))))
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> std::result::Result<Response<Self::DoActionStream>, Status> {
        let who = self.authenticate(request.metadata())?;
        let bodies = self
            .action(&who, request.into_inner())
            .await
            .map_err(|e| self.fail_for(&who, e))?;
        let results = bodies
            .into_iter()
            .map(|body| Ok(arrow_flight::Result { body }))
            .collect::<Vec<_>>();
        Ok(Response::new(Box::pin(futures::stream::iter(results))))
    }

    async fn list_actions(
        &self,
        request: Request<Empty>,
    ) -> std::result::Result<Response<Self::ListActionsStream>, Status> {
        self.authenticate(request.metadata())?;
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
                actions::ESTIMATE,
                "What a plan's filter may match by the Parquet statistics, and the device's load. Body: plan JSON. Result: JSON.",
            ),
        ];
        let items = list
            .into_iter()
            .map(|(t, d)| {
                Ok(ActionType {
                    r#type: t.to_string(),
                    description: d.to_string(),
                })
            })
            .collect::<Vec<_>>();
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> std::result::Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented(
            "DoExchange is not offered: use DoGet with a plan",
        ))
    }
}
