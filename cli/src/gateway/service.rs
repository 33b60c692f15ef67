//! The Flight SQL protocol over the SDK's SQL session: statements and prepared statements
//! (parameters bound through `DoPut`), and the metadata commands clients ask on connecting.
//! Transactions, updates and Substrait are not offered (SqlInfo says so).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandGetXdbcTypeInfo,
    CommandPreparedStatementQuery, CommandStatementQuery, DoPutPreparedStatementResult,
    ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse,
    Ticket,
};
use datafusion::scalar::ScalarValue;
use futures::{Stream, TryStreamExt};
use nearstore_sdk::{ClientOptions, Mode, SqlSession};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use super::catalog::{CATALOG, SCHEMA, SQL_INFO, TABLE_TYPE, TYPE_INFO};
use super::encode::{built, command_info, ipc_schema, statistics, status, stream_of};
use super::text::{base64_decode, number_placeholders};

/// How long a statement's result waits for the client's `DoGet`.
pub const RESULT_TTL: Duration = Duration::from_secs(300);

pub(super) type DoGetStream = <Gateway as FlightService>::DoGetStream;

/// A prepared statement: its query and the parameters bound to it.
struct Prepared {
    query: String,
    params: Option<Vec<ScalarValue>>,
}

/// A statement's result, waiting for its `DoGet`.
struct Stored {
    at: Instant,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    /// The statement's statistics (JSON), the stream's first `app_metadata`.
    stats: bytes::Bytes,
}

/// The Flight SQL service.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    devices: Vec<String>,
    mode: Mode,
    /// How the gateway reaches the devices (their CA); the caller's token is added per call.
    options: ClientOptions,
    /// Basic-auth users for `Handshake`: name → (SHA-256 of the password, the tenant token
    /// it stands for).
    users: HashMap<String, (String, String)>,
    next: AtomicU64,
    prepared: Mutex<HashMap<String, Prepared>>,
    results: Mutex<HashMap<String, Stored>>,
    metrics: Metrics,
}

/// The gateway's counters, for `GET /metrics`.
#[derive(Default)]
struct Metrics {
    /// Statements answered, per mode they ran in.
    statements: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Statements that failed, per gRPC code.
    failed: Mutex<std::collections::BTreeMap<String, u64>>,
    bytes_moved: AtomicU64,
    rows: AtomicU64,
    micros: AtomicU64,
}

impl Gateway {
    /// A gateway over `devices`, running statements in `mode`, reaching the devices with
    /// `options` (its token is replaced by each caller's), with basic-auth `users` (name →
    /// SHA-256 of the password, token).
    pub fn new(
        devices: Vec<String>,
        mode: Mode,
        options: ClientOptions,
        users: HashMap<String, (String, String)>,
    ) -> Self {
        Gateway {
            inner: Arc::new(Inner {
                devices,
                mode,
                options,
                users,
                next: AtomicU64::new(1),
                prepared: Mutex::default(),
                results: Mutex::default(),
                metrics: Metrics::default(),
            }),
        }
    }

    /// The gateway's metrics in Prometheus' text format.
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write;
        let m = &self.inner.metrics;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP nearstore_gateway_statements_total Statements answered, by the mode they ran in.\n# TYPE nearstore_gateway_statements_total counter"
        );
        for (mode, n) in m.statements.lock().expect("metrics").iter() {
            let _ = writeln!(
                s,
                "nearstore_gateway_statements_total{{mode=\"{mode}\"}} {n}"
            );
        }
        let _ = writeln!(
            s,
            "# HELP nearstore_gateway_failed_total Statements that failed, by gRPC code.\n# TYPE nearstore_gateway_failed_total counter"
        );
        for (code, n) in m.failed.lock().expect("metrics").iter() {
            let _ = writeln!(s, "nearstore_gateway_failed_total{{code=\"{code}\"}} {n}");
        }
        for (name, help, v) in [
            (
                "nearstore_gateway_bytes_moved_total",
                "Bytes the devices sent for the gateway's statements.",
                m.bytes_moved.load(Ordering::Relaxed) as f64,
            ),
            (
                "nearstore_gateway_rows_total",
                "Rows the gateway's statements returned.",
                m.rows.load(Ordering::Relaxed) as f64,
            ),
            (
                "nearstore_gateway_statement_seconds_total",
                "Time running statements (planning, device scans, host operators).",
                m.micros.load(Ordering::Relaxed) as f64 / 1e6,
            ),
        ] {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        s
    }

    /// Whether every device answers (a device that wants a token answers too).
    pub async fn check_devices(&self) -> nearstore_sdk::Result<()> {
        for url in &self.inner.devices {
            let mut c =
                nearstore_sdk::Client::connect_with(url, self.inner.options.clone()).await?;
            match c.tables().await {
                Err(nearstore_sdk::Error::Device {
                    status: tonic::Code::Unauthenticated,
                    ..
                }) => {}
                r => {
                    r?;
                }
            }
        }
        Ok(())
    }

    /// A SQL session over the devices as the caller (its bearer token, if any).
    async fn session<T>(&self, req: &Request<T>) -> Result<SqlSession, Status> {
        let token = match req.metadata().get("authorization") {
            None => None,
            Some(v) => {
                let v = v
                    .to_str()
                    .map_err(|_| Status::unauthenticated("the authorization header is not text"))?;
                match v
                    .strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
                {
                    Some(t) => Some(t.trim().to_string()),
                    None => {
                        return Err(Status::unauthenticated(
                            "the gateway takes a bearer token (authorization: Bearer TOKEN)",
                        ));
                    }
                }
            }
        };
        let options = ClientOptions {
            token,
            ..self.inner.options.clone()
        };
        SqlSession::connect_many(&self.inner.devices, options, self.inner.mode)
            .await
            .map_err(status)
    }

    /// Counts a statement that failed (preparing or running it).
    fn failed(&self, e: Status) -> Status {
        let code = format!("{:?}", e.code());
        *self
            .inner
            .metrics
            .failed
            .lock()
            .expect("metrics")
            .entry(code)
            .or_default() += 1;
        e
    }

    /// The token a basic-auth `user:password` (base64) stands for.
    fn basic_auth(&self, encoded: &str) -> Result<String, Status> {
        let wrong = || Status::unauthenticated("wrong user name or password");
        let decoded = base64_decode(encoded.trim()).ok_or_else(wrong)?;
        let text = String::from_utf8(decoded).map_err(|_| wrong())?;
        let (user, password) = text.split_once(':').ok_or_else(wrong)?;
        let (hash, token) = self.inner.users.get(user).ok_or_else(wrong)?;
        if nearstore_runtime::server::auth::token_hash(password) != *hash {
            return Err(wrong());
        }
        Ok(token.clone())
    }

    fn handle(&self) -> String {
        let n = self.inner.next.fetch_add(1, Ordering::Relaxed);
        format!("{n:x}-{:x}", std::process::id())
    }

    /// Runs `query` as the caller and keeps the result for a `DoGet`: its `FlightInfo`.
    async fn execute<T>(
        &self,
        req: &Request<T>,
        query: &str,
        params: Option<Vec<ScalarValue>>,
    ) -> Result<FlightInfo, Status> {
        let started = Instant::now();
        let run = async {
            let session = self.session(req).await?;
            session.sql_with_params(query, params).await.map_err(status)
        };
        let m = &self.inner.metrics;
        let r = run.await.map_err(|e| self.failed(e))?;
        *m.statements
            .lock()
            .expect("metrics")
            .entry(r.mode.as_str())
            .or_default() += 1;
        m.bytes_moved.fetch_add(r.bytes_moved(), Ordering::Relaxed);
        m.rows.fetch_add(r.num_rows() as u64, Ordering::Relaxed);
        m.micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        let stats = statistics(&r, self.inner.devices.len());
        // The stream's schema is the batches' own, and the info says the same.
        let schema = r
            .batches
            .first()
            .map(|b| b.schema())
            .unwrap_or_else(|| r.schema.clone());
        let rows: usize = r.num_rows();
        let bytes: usize = r.batches.iter().map(|b| b.get_array_memory_size()).sum();
        let handle = self.handle();
        {
            let mut results = self.inner.results.lock().expect("results");
            results.retain(|_, s| s.at.elapsed() < RESULT_TTL);
            results.insert(
                handle.clone(),
                Stored {
                    at: Instant::now(),
                    schema: schema.clone(),
                    batches: r.batches,
                    stats: stats.clone(),
                },
            );
        }
        let ticket = TicketStatementQuery {
            statement_handle: handle.into_bytes().into(),
        };
        let endpoint =
            FlightEndpoint::new().with_ticket(Ticket::new(ticket.as_any().encode_to_vec()));
        Ok(FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(|e| Status::internal(format!("encoding the result schema: {e}")))?
            .with_endpoint(endpoint)
            .with_total_records(rows as i64)
            .with_total_bytes(bytes as i64)
            .with_app_metadata(stats))
    }
}

#[tonic::async_trait]
impl FlightSqlService for Gateway {
    type FlightService = Gateway;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let token = match header.strip_prefix("Basic ") {
            Some(basic) => self.basic_auth(basic)?,
            None => {
                return Err(Status::unauthenticated(
                    "the gateway's handshake takes basic authentication (a user of --users); \
                     or skip it and send the tenant's bearer token on each call",
                ));
            }
        };
        let bearer = format!("Bearer {token}");
        let reply = HandshakeResponse {
            protocol_version: 0,
            payload: token.into_bytes().into(),
        };
        let mut response: Response<
            Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>,
        > = Response::new(Box::pin(futures::stream::iter([Ok(reply)])));
        response.metadata_mut().insert(
            "authorization",
            bearer
                .parse()
                .map_err(|_| Status::internal("a token that is not a header value"))?,
        );
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let sql = number_placeholders(&query.query);
        let info = self.execute(&request, &sql, None).await?;
        Ok(Response::new(info.with_descriptor(request.into_inner())))
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let handle = String::from_utf8_lossy(&cmd.prepared_statement_handle).to_string();
        let (query, params) = {
            let prepared = self.inner.prepared.lock().expect("prepared");
            let p = prepared.get(&handle).ok_or_else(|| {
                Status::not_found(format!("no prepared statement {handle} (closed?)"))
            })?;
            (p.query.clone(), p.params.clone())
        };
        let info = self.execute(&request, &query, params).await?;
        Ok(Response::new(info.with_descriptor(request.into_inner())))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let handle = String::from_utf8_lossy(&ticket.statement_handle).to_string();
        let stored = self
            .inner
            .results
            .lock()
            .expect("results")
            .remove(&handle)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no result {handle}: each is fetched once, within {} s",
                    RESULT_TTL.as_secs()
                ))
            })?;
        Ok(stream_of(stored.schema, stored.batches, Some(stored.stats)))
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let sql = number_placeholders(&query.query);
        let describe = async {
            let session = self.session(&request).await?;
            session.describe(&sql).await.map_err(status)
        };
        let (dataset, parameters) = describe.await.map_err(|e| self.failed(e))?;
        let handle = self.handle();
        self.inner.prepared.lock().expect("prepared").insert(
            handle.clone(),
            Prepared {
                query: sql,
                params: None,
            },
        );
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.into_bytes().into(),
            dataset_schema: ipc_schema(&dataset)?,
            parameter_schema: if parameters.fields().is_empty() {
                Default::default()
            } else {
                ipc_schema(&parameters)?
            },
        })
    }

    async fn do_put_prepared_statement_query(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let handle = String::from_utf8_lossy(&cmd.prepared_statement_handle).to_string();
        // The stream itself, not its inner one: the first message (the schema) was peeked.
        let data = request.into_inner().map_err(FlightError::from);
        let batches: Vec<RecordBatch> = FlightRecordBatchStream::new_from_flight_data(data)
            .try_collect()
            .await
            .map_err(|e| Status::invalid_argument(format!("reading the parameters: {e}")))?;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let params = match batches.iter().find(|b| b.num_rows() > 0) {
            Some(b) if rows == 1 => b
                .columns()
                .iter()
                .map(|c| ScalarValue::try_from_array(c, 0))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Status::invalid_argument(format!("a parameter: {e}")))?,
            None => Vec::new(),
            Some(_) => {
                return Err(Status::invalid_argument(format!(
                    "{rows} rows of parameters: the gateway binds one row per execution"
                )));
            }
        };
        let mut prepared = self.inner.prepared.lock().expect("prepared");
        let p = prepared
            .get_mut(&handle)
            .ok_or_else(|| Status::not_found(format!("no prepared statement {handle}")))?;
        p.params = (!params.is_empty()).then_some(params);
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handle.into_bytes().into()),
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        let handle = String::from_utf8_lossy(&query.prepared_statement_handle).to_string();
        self.inner
            .prepared
            .lock()
            .expect("prepared")
            .remove(&handle);
        Ok(())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        command_info(&schema, query, request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut b = query.into_builder();
        b.append(CATALOG);
        let schema = b.schema();
        Ok(stream_of(schema, vec![built(b.build())?], None))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        command_info(&schema, query, request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut b = query.into_builder();
        b.append(CATALOG, SCHEMA);
        let schema = b.schema();
        Ok(stream_of(schema, vec![built(b.build())?], None))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        command_info(&schema, query, request.into_inner())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let session = self.session(&request).await?;
        let mut b = query.into_builder();
        for (name, schema) in session.tables() {
            b.append(CATALOG, SCHEMA, name, TABLE_TYPE, schema)
                .map_err(|e| Status::internal(format!("listing table {name}: {e}")))?;
        }
        let schema = b.schema();
        Ok(stream_of(schema, vec![built(b.build())?], None))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        command_info(&schema, query, request.into_inner())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut b = query.into_builder();
        b.append(TABLE_TYPE);
        let schema = b.schema();
        Ok(stream_of(schema, vec![built(b.build())?], None))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&SQL_INFO).schema();
        command_info(&schema, query, request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let b = query.into_builder(&SQL_INFO);
        let schema = b.schema();
        Ok(stream_of(schema, vec![built(b.build())?], None))
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder(&TYPE_INFO).schema();
        command_info(&schema, query, request.into_inner())
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let b = query.into_builder(&TYPE_INFO);
        let schema = b.schema();
        Ok(stream_of(schema, vec![built(b.build())?], None))
    }

    async fn do_get_fallback(
        &self,
        _request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<DoGetStream>, Status> {
        Err(Status::unimplemented(format!(
            "the gateway does not answer {}",
            message.type_url
        )))
    }

    async fn do_action_fallback(
        &self,
        request: Request<Action>,
    ) -> Result<Response<<Self as FlightService>::DoActionStream>, Status> {
        let action = request.into_inner();
        if action.r#type != "CancelFlightInfo" {
            return Err(Status::unimplemented(format!(
                "the gateway does not take the action {:?}",
                action.r#type
            )));
        }
        // A statement runs inside its GetFlightInfo call (a client that drops that call stops
        // its device scans); what is left to cancel is its result waiting for a DoGet.
        let req = arrow_flight::CancelFlightInfoRequest::decode(action.body)
            .map_err(|e| Status::invalid_argument(format!("a CancelFlightInfoRequest: {e}")))?;
        let mut dropped = 0;
        for endpoint in req.info.map(|i| i.endpoint).unwrap_or_default() {
            let Some(ticket) = endpoint.ticket else {
                continue;
            };
            let handle = Any::decode(ticket.ticket)
                .ok()
                .and_then(|any| any.unpack::<TicketStatementQuery>().ok().flatten())
                .map(|t| String::from_utf8_lossy(&t.statement_handle).to_string());
            if let Some(h) = handle
                && self
                    .inner
                    .results
                    .lock()
                    .expect("results")
                    .remove(&h)
                    .is_some()
            {
                dropped += 1;
            }
        }
        if dropped == 0 {
            return Err(Status::not_found(
                "no result of that FlightInfo waits here (fetched, expired or never made)",
            ));
        }
        let result = arrow_flight::CancelFlightInfoResult {
            status: arrow_flight::CancelStatus::Cancelled as i32,
        };
        let out = arrow_flight::Result {
            body: result.encode_to_vec().into(),
        };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(out)]))))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("devices", &self.inner.devices)
            .field("mode", &self.inner.mode)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_maps_a_user_to_its_token() {
        let hash = nearstore_runtime::server::auth::token_hash("s3cret");
        let users = HashMap::from([("ann".to_string(), (hash, "ann-token".to_string()))]);
        let g = Gateway::new(vec![], Mode::Offload, ClientOptions::default(), users);
        // "ann:s3cret" and "ann:wrong", base64.
        assert_eq!(g.basic_auth("YW5uOnMzY3JldA==").unwrap(), "ann-token");
        assert_eq!(
            g.basic_auth("YW5uOndyb25n").unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }
}
