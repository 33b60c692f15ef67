//! [`Client`]: a Flight client of one device — connecting, running plans, the catalog and
//! kernel actions, and uploads — with its options and query result.

use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{Action, FlightClient, FlightData, FlightDescriptor, Ticket};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use nearstore_proto::{
    DeviceInfo, ERROR_CODE_METADATA, ErrorCode, Plan, PutCommand, PutFormat, PutMode, PutSummary,
    QueryStats, ScrubReport, TableInfo, actions,
};
use tonic::transport::{Channel, Endpoint};

use crate::{Error, Result};

/// Largest gRPC message accepted (tonic's default is 4 MiB).
pub const MESSAGE_BYTES_MAX: usize = 64 << 20;

/// Bytes of Parquet sent per Flight message in a raw upload.
pub const UPLOAD_CHUNK_BYTES: usize = 1 << 20;

/// Connection options.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Bearer token sent with every call.
    pub token: Option<String>,
    /// Time allowed to connect.
    pub connect_timeout: Duration,
    /// Time allowed for one call, including streaming the whole result.
    pub request_timeout: Duration,
    /// PEM certificate(s) of the authority that signed the device's TLS certificate, for
    /// `grpc+tls://` URLs.
    pub tls_ca_pem: Option<Vec<u8>>,
    /// Compression the device applies to query results' Arrow IPC buffers (plans that name
    /// none get this one); none: uncompressed.
    pub compression: Option<nearstore_proto::IpcCompression>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            token: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(600),
            tls_ca_pem: None,
            compression: None,
        }
    }
}

/// The result of a query: batches plus statistics.
#[derive(Debug, Clone)]
pub struct QueryResult {
    /// Result schema.
    pub schema: SchemaRef,
    /// Result batches.
    pub batches: Vec<RecordBatch>,
    /// Statistics from the device.
    pub stats: QueryStats,
}

impl QueryResult {
    /// Total rows.
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }

    /// All batches as one.
    pub fn concat(&self) -> Result<RecordBatch> {
        arrow::compute::concat_batches(&self.schema, &self.batches)
            .map_err(|e| Error::Protocol(e.to_string()))
    }
}

/// A client of one device.
#[derive(Debug)]
pub struct Client {
    url: String,
    flight: FlightClient,
    options: ClientOptions,
}

impl Clone for Client {
    /// Another handle on the same connection (calls multiplex over one HTTP/2 channel), with
    /// the same headers.
    fn clone(&self) -> Self {
        let mut flight = FlightClient::new_from_inner(self.flight.inner().clone());
        *flight.metadata_mut() = self.flight.metadata().clone();
        Client {
            url: self.url.clone(),
            flight,
            options: self.options.clone(),
        }
    }
}

impl Client {
    /// Connects with default options.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, ClientOptions::default()).await
    }

    /// Connects. `url` is `grpc://host:port` (or `http://`).
    pub async fn connect_with(url: &str, options: ClientOptions) -> Result<Self> {
        let (http, tls) = if let Some(rest) = url.strip_prefix("grpc://") {
            (format!("http://{rest}"), false)
        } else if url.starts_with("http://") {
            (url.to_string(), false)
        } else if let Some(rest) = url.strip_prefix("grpc+tls://") {
            (format!("https://{rest}"), true)
        } else if url.starts_with("https://") {
            (url.to_string(), true)
        } else {
            (format!("http://{url}"), false)
        };
        let transport = |message: String| Error::Transport {
            url: url.to_string(),
            message,
        };
        let endpoint = Endpoint::from_shared(http)
            .map_err(|e| Error::InvalidArgument(format!("bad device URL {url}: {e}")))?
            .connect_timeout(options.connect_timeout)
            .timeout(options.request_timeout)
            .initial_stream_window_size(16 << 20)
            .initial_connection_window_size(32 << 20)
            .tcp_nodelay(true);
        let endpoint = if tls {
            let ca = options.tls_ca_pem.as_ref().ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{url}: a TLS device needs the certificate authority (ClientOptions::tls_ca_pem, \
                     --tls-ca FILE)"
                ))
            })?;
            endpoint
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
                )
                .map_err(|e| Error::InvalidArgument(format!("TLS settings for {url}: {e}")))?
        } else {
            endpoint
        };
        let channel: Channel = endpoint
            .connect()
            .await
            .map_err(|e| transport(format!("cannot connect: {}", source_chain(&e))))?;
        let inner = FlightServiceClient::new(channel)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX);
        let mut flight = FlightClient::new_from_inner(inner);
        if let Some(t) = &options.token {
            flight
                .add_header("authorization", &format!("Bearer {t}"))
                .map_err(|e| Error::InvalidArgument(format!("bad token: {e}")))?;
        }
        Ok(Client {
            url: url.to_string(),
            flight,
            options,
        })
    }

    /// The device URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn err(&self, e: FlightError) -> Error {
        match e {
            FlightError::Tonic(s) => self.status_err(&s),
            other => Error::Protocol(other.to_string()),
        }
    }

    fn status_err(&self, s: &tonic::Status) -> Error {
        let code = s
            .metadata()
            .get(ERROR_CODE_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(ErrorCode::parse);
        match code {
            Some(code) => Error::Device {
                code,
                status: s.code(),
                message: s.message().to_string(),
            },
            None => match s.code() {
                tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Cancelled
                | tonic::Code::Unknown => Error::Transport {
                    url: self.url.clone(),
                    message: format!("{}: {}", code_name(s.code()), s.message()),
                },
                // The HTTP/2 layer failed (e.g. plaintext spoken to a TLS port): the device
                // never answered.
                tonic::Code::Internal if s.message().starts_with("h2 protocol error") => {
                    Error::Transport {
                        url: self.url.clone(),
                        message: s.message().to_string(),
                    }
                }
                other => Error::Device {
                    code: ErrorCode::Internal,
                    status: other,
                    message: s.message().to_string(),
                },
            },
        }
    }

    /// Runs a plan and collects the whole result.
    pub async fn query(&mut self, plan: &Plan) -> Result<QueryResult> {
        let json = match (plan.compression, self.options.compression) {
            (None, Some(c)) => Plan {
                compression: Some(c),
                ..plan.clone()
            }
            .to_json(),
            _ => plan.to_json(),
        };
        self.query_json(json).await
    }

    /// Runs a plan given as JSON bytes, exactly as any Flight client would send it.
    pub async fn query_json(&mut self, plan_json: impl Into<Bytes>) -> Result<QueryResult> {
        let deadline = self.options.request_timeout;
        let fut = self.query_ticket(plan_json.into());
        tokio::time::timeout(deadline, fut)
            .await
            .map_err(|_| Error::Transport {
                url: self.url.clone(),
                message: format!("query timed out after {deadline:?}"),
            })?
    }

    async fn query_ticket(&mut self, ticket: Bytes) -> Result<QueryResult> {
        let mut request = tonic::Request::new(Ticket::new(ticket));
        *request.metadata_mut() = self.flight.metadata().clone();
        let raw = self
            .flight
            .inner_mut()
            .do_get(request)
            .await
            .map_err(|s| self.status_err(&s))?
            .into_inner();
        // The device ends the stream with a metadata-only message (empty IPC header) carrying
        // the statistics; everything else is ordinary Arrow IPC for the decoder.
        let stats_slot: std::sync::Arc<std::sync::Mutex<Option<Bytes>>> = Default::default();
        let slot = stats_slot.clone();
        let data = raw
            .map_err(|s| FlightError::Tonic(Box::new(s)))
            .try_filter(move |fd| {
                let metadata_only = fd.data_header.is_empty() && !fd.app_metadata.is_empty();
                if metadata_only {
                    *slot.lock().expect("stats slot") = Some(fd.app_metadata.clone());
                }
                futures::future::ready(!metadata_only)
            });
        let mut decoder = FlightDataDecoder::new(data);
        let mut schema: Option<SchemaRef> = None;
        let mut batches = Vec::new();
        while let Some(msg) = decoder.next().await {
            let msg = msg.map_err(|e| self.err(e))?;
            match msg.payload {
                DecodedPayload::Schema(s) => schema = Some(s),
                DecodedPayload::RecordBatch(b) => batches.push(b),
                DecodedPayload::None => {}
            }
        }
        let stats_bytes = stats_slot.lock().expect("stats slot").take();
        let stats: Option<QueryStats> = stats_bytes
            .map(|b| {
                serde_json::from_slice(&b)
                    .map_err(|e| Error::Protocol(format!("unreadable query statistics: {e}")))
            })
            .transpose()?;
        let schema = schema.ok_or_else(|| Error::Protocol("result stream had no schema".into()))?;
        let stats = stats.ok_or_else(|| Error::Transport {
            url: self.url.clone(),
            message: "result stream ended before the device finished (connection dropped?)".into(),
        })?;
        Ok(QueryResult {
            schema,
            batches,
            stats,
        })
    }

    /// Checks a plan on the device and returns the result schema without running it.
    pub async fn schema(&mut self, plan: &Plan) -> Result<SchemaRef> {
        let info = self
            .flight
            .get_flight_info(FlightDescriptor::new_cmd(plan.to_json()))
            .await
            .map_err(|e| self.err(e))?;
        Ok(std::sync::Arc::new(
            info.try_decode_schema()
                .map_err(|e| Error::Protocol(e.to_string()))?,
        ))
    }

    /// Tables on the device. A table dropped between the listing and its description is left
    /// out: it is gone.
    pub async fn tables(&mut self) -> Result<Vec<TableInfo>> {
        let infos: Vec<_> = self
            .flight
            .list_flights(Bytes::new())
            .await
            .map_err(|e| self.err(e))?
            .try_collect()
            .await
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for info in infos {
            let Some(name) = info.flight_descriptor.as_ref().and_then(|d| d.path.first()) else {
                continue;
            };
            match self.describe(&name.clone()).await {
                Ok(t) => out.push(t),
                Err(Error::Device {
                    code: ErrorCode::UnknownTable,
                    ..
                }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn action(&mut self, kind: &str, body: impl Into<Bytes>) -> Result<Bytes> {
        let mut results: Vec<Bytes> = self
            .flight
            .do_action(Action::new(kind, body.into()))
            .await
            .map_err(|e| self.err(e))?
            .try_collect()
            .await
            .map_err(|e| self.err(e))?;
        results
            .pop()
            .ok_or_else(|| Error::Protocol(format!("action {kind} returned nothing")))
    }

    /// Reads byte ranges (`start..end`) of one of `table`'s stored objects (an id from
    /// [`Client::describe`]): the device checks each block it reads and sends the bytes as
    /// they are stored. Returns each range's bytes and the bytes received.
    pub async fn read_ranges(
        &mut self,
        table: &str,
        object: &str,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<(Vec<Bytes>, u64)> {
        let req = nearstore_proto::ReadRanges {
            table: table.to_string(),
            object: object.to_string(),
            ranges: ranges.iter().map(|r| [r.start, r.end]).collect(),
        };
        let body = serde_json::to_vec(&req).map_err(|e| Error::Protocol(e.to_string()))?;
        let mut stream = self
            .flight
            .do_action(Action::new(actions::READ_RANGES, body))
            .await
            .map_err(|e| self.err(e))?;
        let mut out = Vec::with_capacity(ranges.len());
        let mut received = 0u64;
        for r in ranges {
            let want = (r.end - r.start) as usize;
            let mut parts: Vec<Bytes> = Vec::new();
            let mut have = 0usize;
            while have < want {
                let part = stream.try_next().await.map_err(|e| self.err(e))?;
                let part = part.ok_or_else(|| {
                    Error::Protocol(format!(
                        "read_ranges of {object}: the answer ended {} bytes short of range {}..{}",
                        want - have,
                        r.start,
                        r.end
                    ))
                })?;
                have += part.len();
                received += part.len() as u64;
                parts.push(part);
            }
            if have != want {
                return Err(Error::Protocol(format!(
                    "read_ranges of {object}: {have} bytes for range {}..{} of {want}",
                    r.start, r.end
                )));
            }
            out.push(match parts.len() {
                1 => parts.pop().expect("one part"),
                _ => Bytes::from(parts.concat()),
            });
        }
        if stream.try_next().await.map_err(|e| self.err(e))?.is_some() {
            return Err(Error::Protocol(format!(
                "read_ranges of {object}: more bytes than the ranges asked for"
            )));
        }
        Ok((out, received))
    }

    /// Describes a table.
    pub async fn describe(&mut self, table: &str) -> Result<TableInfo> {
        let body = self
            .action(actions::DESCRIBE_TABLE, table.to_string())
            .await?;
        serde_json::from_slice(&body).map_err(|e| Error::Protocol(e.to_string()))
    }

    /// Drops a table.
    pub async fn drop_table(&mut self, table: &str) -> Result<()> {
        self.action(actions::DROP_TABLE, table.to_string()).await?;
        Ok(())
    }

    /// Device information and counters.
    pub async fn device_info(&mut self) -> Result<DeviceInfo> {
        let body = self.action(actions::DEVICE_INFO, Bytes::new()).await?;
        serde_json::from_slice(&body).map_err(|e| Error::Protocol(e.to_string()))
    }

    /// What `plan`'s filter may match by the table's Parquet statistics (no data is read), and
    /// how many queries the device is running.
    pub async fn estimate(&mut self, plan: &Plan) -> Result<nearstore_proto::Estimate> {
        let body = self.action(actions::ESTIMATE, plan.to_json()).await?;
        serde_json::from_slice(&body).map_err(|e| Error::Protocol(e.to_string()))
    }

    /// Registers a Wasm kernel module under `name` (the device validates it first: ABI
    /// version, manifest, exports, imports). Registering again under a name replaces it.
    pub async fn register_kernel(
        &mut self,
        name: &str,
        module: &[u8],
    ) -> Result<nearstore_proto::KernelInfo> {
        let req = nearstore_proto::RegisterKernel {
            name: name.to_string(),
            module_hex: hex::encode(module),
        };
        let body = self
            .action(
                actions::REGISTER_KERNEL,
                serde_json::to_vec(&req).expect("request serialises"),
            )
            .await?;
        serde_json::from_slice(&body).map_err(|e| Error::Protocol(e.to_string()))
    }

    /// The caller's registered kernels.
    pub async fn kernels(&mut self) -> Result<Vec<nearstore_proto::KernelInfo>> {
        let body = self.action(actions::LIST_KERNELS, Bytes::new()).await?;
        serde_json::from_slice(&body).map_err(|e| Error::Protocol(e.to_string()))
    }

    /// Removes a kernel name.
    pub async fn remove_kernel(&mut self, name: &str) -> Result<()> {
        self.action(actions::REMOVE_KERNEL, name.to_string())
            .await?;
        Ok(())
    }

    /// Verifies every object's checksum on the device.
    pub async fn scrub(&mut self) -> Result<ScrubReport> {
        let body = self.action(actions::SCRUB, Bytes::new()).await?;
        serde_json::from_slice(&body).map_err(|e| Error::Protocol(e.to_string()))
    }

    /// Uploads Arrow batches into `table`.
    pub async fn put_batches(
        &mut self,
        table: &str,
        mode: PutMode,
        batches: Vec<RecordBatch>,
    ) -> Result<PutSummary> {
        self.put_stream(table, mode, futures::stream::iter(batches))
            .await
    }

    /// Uploads a stream of Arrow batches into `table`. The device acknowledges only once the
    /// table is durable.
    pub async fn put_stream(
        &mut self,
        table: &str,
        mode: PutMode,
        batches: impl futures::Stream<Item = RecordBatch> + Send + 'static,
    ) -> Result<PutSummary> {
        let descriptor = put_descriptor(table, mode, PutFormat::Arrow);
        let data = arrow_flight::encode::FlightDataEncoderBuilder::new()
            .with_flight_descriptor(Some(descriptor))
            .build(batches.map(Ok));
        self.finish_put(data.boxed()).await
    }

    /// Uploads raw Parquet bytes into `table`; the device validates and re-encodes them.
    /// `progress(sent)` is called after each chunk.
    pub async fn put_parquet(
        &mut self,
        table: &str,
        mode: PutMode,
        bytes: Bytes,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<PutSummary> {
        let descriptor = put_descriptor(table, mode, PutFormat::Parquet);
        let total = bytes.len();
        let chunks: Vec<Bytes> = (0..total.max(1))
            .step_by(UPLOAD_CHUNK_BYTES)
            .map(|s| bytes.slice(s..(s + UPLOAD_CHUNK_BYTES).min(total)))
            .collect();
        let mut first = true;
        let mut sent = 0u64;
        let data = futures::stream::iter(chunks.into_iter().map(move |c| {
            sent += c.len() as u64;
            progress(sent);
            let fd = FlightData {
                flight_descriptor: first.then(|| descriptor.clone()),
                data_body: c,
                ..Default::default()
            };
            first = false;
            Ok(fd)
        }));
        self.finish_put(data.boxed()).await
    }

    async fn finish_put(
        &mut self,
        data: futures::stream::BoxStream<'static, Result<FlightData, FlightError>>,
    ) -> Result<PutSummary> {
        let results: Vec<_> = self
            .flight
            .do_put(data)
            .await
            .map_err(|e| self.err(e))?
            .try_collect()
            .await
            .map_err(|e| self.err(e))?;
        let last = results
            .last()
            .ok_or_else(|| Error::Protocol("upload returned no result".into()))?;
        serde_json::from_slice(&last.app_metadata).map_err(|e| Error::Protocol(e.to_string()))
    }
}

/// The `DoPut` descriptor naming the target table, mode and payload format.
fn put_descriptor(table: &str, mode: PutMode, format: PutFormat) -> FlightDescriptor {
    let cmd = PutCommand {
        table: table.to_string(),
        mode,
        format,
    };
    FlightDescriptor::new_cmd(serde_json::to_vec(&cmd).expect("command serialises"))
}

fn code_name(c: tonic::Code) -> &'static str {
    match c {
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::DeadlineExceeded => "deadline exceeded",
        tonic::Code::Cancelled => "cancelled",
        _ => "unknown",
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
