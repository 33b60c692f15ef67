//! Queries: `GetFlightInfo` and `ListFlights` answers (schema and a ticket carrying the
//! plan), and `DoGet`: admission, execution, and the result streamed as Flight data through
//! the link, ending with the query statistics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::{FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, Ticket};
use futures::StreamExt;
use nearstore_proto::{ErrorCode, Plan};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::service::Active;
use super::{BoxStream, DeviceService, Link, Principal, link, qos, status};
use crate::error::{Error, Result};
use crate::exec::QueryLimits;

impl DeviceService {
    pub(super) async fn flight_info(
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
    pub(super) async fn table_info(&self, who: &Principal, name: &str) -> Result<FlightInfo> {
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

    /// Runs `plan` for `who`; `received` is when the call arrived (for `call_us`).
    pub(super) async fn run_query(
        &self,
        who: &Principal,
        plan: Plan,
        received: std::time::Instant,
    ) -> Result<BoxStream<FlightData>> {
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
        // The call's round trip on an emulated link, before its first byte.
        self.link.round_trip().await;
        let schema = q.schema();
        let (rx, stats_rx) = self.executor.execute(q);
        let (out_tx, out_rx) = mpsc::channel::<std::result::Result<FlightData, Status>>(4);
        let errors = self.errors.clone();
        let link = self.link.clone();
        let metrics = self.metrics.clone();
        let admission = self.admission.clone();
        let cells_per_row = plan.group_by.len() + plan.aggregates.len();
        tokio::spawn(async move {
            let streamed =
                stream_result(plan, schema, rx, stats_rx, out_tx, errors, link, received);
            match streamed.await {
                Ok(stats) => {
                    admission.query_ended(&tenant, qos::Outcome::Succeeded);
                    metrics.telemetry.query(&stats, cells_per_row);
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
    received: std::time::Instant,
) -> std::result::Result<nearstore_proto::QueryStats, &'static str> {
    // Every message leaves through the (possibly emulated) link.
    let link_gbps = link.gbps();
    let out = link::paced(link.clone(), out);
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
    let compression = plan.compression.map(|c| match c {
        nearstore_proto::IpcCompression::Lz4 => arrow::ipc::CompressionType::LZ4_FRAME,
        nearstore_proto::IpcCompression::Zstd => arrow::ipc::CompressionType::ZSTD,
    });
    let options = arrow::ipc::writer::IpcWriteOptions::default()
        .try_with_compression(compression)
        .expect("the device is built with IPC compression");
    let mut encoded = FlightDataEncoderBuilder::new()
        .with_options(options)
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
    stats.link_gbps = link_gbps;
    // Every data message is handed to the link; on a shaped link the last one leaves when
    // the link's booking ends.
    let on_link = link.busy_for();
    stats.call_us = (received.elapsed() + on_link).as_micros() as u64;
    // The trailer is sent too: `bytes_sent` counts it, and it is paced like every message.
    let meta = trailer(&mut stats, bytes_sent);
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
    let n = meta.len();
    let _ = out
        .send((
            Ok(FlightData {
                app_metadata: meta.into(),
                ..Default::default()
            }),
            n,
        ))
        .await;
    Ok(stats)
}

/// The statistics trailer, with `bytes_sent` = the data messages' bytes + the trailer's own
/// length (found by iterating: the count's digits change the length at most a few times).
fn trailer(stats: &mut nearstore_proto::QueryStats, data_bytes: u64) -> Vec<u8> {
    stats.bytes_sent = data_bytes;
    let mut meta = serde_json::to_vec(&*stats).expect("stats serialise");
    for _ in 0..4 {
        let total = data_bytes + meta.len() as u64;
        if stats.bytes_sent == total {
            break;
        }
        stats.bytes_sent = total;
        meta = serde_json::to_vec(&*stats).expect("stats serialise");
    }
    meta
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trailer_counts_itself() {
        for data in [0u64, 9, 99_990, 123_456_789] {
            let mut s = nearstore_proto::QueryStats::default();
            let meta = trailer(&mut s, data);
            assert_eq!(s.bytes_sent, data + meta.len() as u64, "{data}");
            let back: nearstore_proto::QueryStats = serde_json::from_slice(&meta).unwrap();
            assert_eq!(back.bytes_sent, s.bytes_sent);
        }
    }
}
