//! Prometheus metrics, served as text on a port of their own (`--metrics-listen`): per tenant,
//! queries, failures by code, admission rejections, bytes read and sent, and a latency
//! histogram; per device, the read path's operations, bytes and operations in flight, and the
//! rates the device has learnt from its own work ([`Telemetry`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Link;
use super::telemetry::Telemetry;
use crate::storage::hot::HotTier;
use crate::storage::reader::Reader;

/// Upper bounds of the latency histogram's buckets, seconds.
const BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

#[derive(Debug, Default, Clone)]
struct Tenant {
    queries: u64,
    range_reads: u64,
    bytes_read: u64,
    bytes_sent: u64,
    rejected: u64,
    failures: BTreeMap<String, u64>,
    latency: [u64; BUCKETS.len()],
    latency_count: u64,
    latency_sum: f64,
}

/// A per-tenant counter of the exposition: name, help, value.
type Counter = (&'static str, &'static str, fn(&Tenant) -> u64);

/// The device's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    tenants: Mutex<BTreeMap<String, Tenant>>,
    /// The device's learnt rates.
    pub telemetry: Telemetry,
}

fn label(tenant: &str) -> String {
    if tenant.is_empty() {
        "(open)".into()
    } else {
        tenant.replace('\\', "\\\\").replace('"', "\\\"")
    }
}

impl Metrics {
    fn with(&self, tenant: &str, f: impl FnOnce(&mut Tenant)) {
        f(self
            .tenants
            .lock()
            .expect("metrics")
            .entry(label(tenant))
            .or_default());
    }

    /// A query finished: its bytes and its latency.
    pub fn query_done(&self, tenant: &str, bytes_read: u64, bytes_sent: u64, seconds: f64) {
        self.with(tenant, |t| {
            t.queries += 1;
            t.bytes_read += bytes_read;
            t.bytes_sent += bytes_sent;
            for (i, b) in BUCKETS.iter().enumerate() {
                if seconds <= *b {
                    t.latency[i] += 1;
                }
            }
            t.latency_count += 1;
            t.latency_sum += seconds;
        });
    }

    /// A `read_ranges` call was served: the bytes it read from the media and sent.
    pub fn range_read(&self, tenant: &str, bytes_read: u64, bytes_sent: u64) {
        self.with(tenant, |t| {
            t.range_reads += 1;
            t.bytes_read += bytes_read;
            t.bytes_sent += bytes_sent;
        });
    }

    /// A call failed with `code` (kernel traps and deadlines are `kernel_failed`).
    pub fn failed(&self, tenant: &str, code: &str) {
        self.with(tenant, |t| {
            *t.failures.entry(code.to_string()).or_default() += 1
        });
    }

    /// A query was refused by admission control.
    pub fn rejected(&self, tenant: &str) {
        self.with(tenant, |t| t.rejected += 1);
    }

    /// The text exposition.
    pub fn render(&self, reader: &Reader, link: &Link, hot: &HotTier) -> String {
        let tenants = self.tenants.lock().expect("metrics").clone();
        let mut out = String::new();
        let mut add = |name: &str, kind: &str, help: &str, lines: Vec<String>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for l in lines {
                out.push_str(&l);
                out.push('\n');
            }
        };
        // One counter per tenant each: name, help, value.
        let counters: [Counter; 5] = [
            ("nearstore_queries_total", "Queries completed.", |m| {
                m.queries
            }),
            (
                "nearstore_range_reads_total",
                "read_ranges calls served (a host reading the stored Parquet itself).",
                |m| m.range_reads,
            ),
            (
                "nearstore_media_bytes_read_total",
                "Bytes read from the media for queries and range reads.",
                |m| m.bytes_read,
            ),
            (
                "nearstore_bytes_sent_total",
                "Bytes sent to hosts: query results and range reads.",
                |m| m.bytes_sent,
            ),
            (
                "nearstore_admission_rejected_total",
                "Queries refused because the tenant's queue was full.",
                |m| m.rejected,
            ),
        ];
        for (name, help, value) in counters {
            add(
                name,
                "counter",
                help,
                tenants
                    .iter()
                    .map(|(t, m)| format!("{name}{{tenant=\"{t}\"}} {}", value(m)))
                    .collect(),
            );
        }
        add(
            "nearstore_failures_total",
            "counter",
            "Failed calls by error code (kernel traps, deadlines and limits are kernel_failed).",
            tenants
                .iter()
                .flat_map(|(t, m)| {
                    m.failures.iter().map(move |(code, n)| {
                        format!("nearstore_failures_total{{tenant=\"{t}\",code=\"{code}\"}} {n}")
                    })
                })
                .collect(),
        );
        let mut lat = Vec::new();
        for (t, m) in &tenants {
            for (i, b) in BUCKETS.iter().enumerate() {
                lat.push(format!(
                    "nearstore_query_seconds_bucket{{tenant=\"{t}\",le=\"{b}\"}} {}",
                    m.latency[i]
                ));
            }
            lat.push(format!(
                "nearstore_query_seconds_bucket{{tenant=\"{t}\",le=\"+Inf\"}} {}",
                m.latency_count
            ));
            lat.push(format!(
                "nearstore_query_seconds_sum{{tenant=\"{t}\"}} {}",
                m.latency_sum
            ));
            lat.push(format!(
                "nearstore_query_seconds_count{{tenant=\"{t}\"}} {}",
                m.latency_count
            ));
        }
        add(
            "nearstore_query_seconds",
            "histogram",
            "Query latency on the device.",
            lat,
        );
        let c = reader.counters();
        let ld = std::sync::atomic::Ordering::Relaxed;
        let kind = reader.kind().as_str();
        add(
            "nearstore_reader_ops_total",
            "counter",
            "Read operations completed by the read path (rate: IOPS).",
            vec![format!(
                "nearstore_reader_ops_total{{reader=\"{kind}\"}} {}",
                c.ops.load(ld)
            )],
        );
        add(
            "nearstore_reader_bytes_total",
            "counter",
            "Bytes read by the read path.",
            vec![format!(
                "nearstore_reader_bytes_total{{reader=\"{kind}\"}} {}",
                c.bytes.load(ld)
            )],
        );
        add(
            "nearstore_reader_in_flight",
            "gauge",
            "Read operations submitted and not completed (queue depth in use).",
            vec![format!(
                "nearstore_reader_in_flight{{reader=\"{kind}\"}} {}",
                c.in_flight.load(ld)
            )],
        );
        add(
            "nearstore_reader_queue_depth",
            "gauge",
            "Configured queue depth of the read path.",
            vec![format!(
                "nearstore_reader_queue_depth{{reader=\"{kind}\"}} {}",
                reader.config().queue_depth
            )],
        );
        for (name, kind, help, v) in tier_gauges(&hot.info()) {
            add(name, kind, help, vec![format!("{name} {v}")]);
        }
        let learnt = learnt_gauges(&self.telemetry.rates(link));
        for (name, help, value) in learnt {
            if let Some(v) = value {
                add(name, "gauge", help, vec![format!("{name} {v}")]);
            }
        }
        out
    }
}

/// The hot-column tier's gauges and counters: name, kind, help, value.
fn tier_gauges(
    h: &nearstore_proto::CacheInfo,
) -> [(&'static str, &'static str, &'static str, u64); 9] {
    [
        (
            "nearstore_cache_budget_bytes",
            "gauge",
            "Hot-column tier budget (0: off).",
            h.budget_bytes,
        ),
        (
            "nearstore_cache_used_bytes",
            "gauge",
            "Decoded column chunks kept in the hot-column tier.",
            h.used_bytes,
        ),
        (
            "nearstore_cache_chunks",
            "gauge",
            "Column chunks kept in the hot-column tier.",
            h.chunks,
        ),
        (
            "nearstore_cache_hit_bytes_total",
            "counter",
            "Media bytes of column chunks served from the hot-column tier.",
            h.hit_bytes,
        ),
        (
            "nearstore_cache_miss_bytes_total",
            "counter",
            "Media bytes of column chunks queries needed that the tier did not hold.",
            h.miss_bytes,
        ),
        (
            "nearstore_cache_admitted_bytes_total",
            "counter",
            "Decoded bytes admitted to the hot-column tier.",
            h.admitted_bytes,
        ),
        (
            "nearstore_cache_evicted_bytes_total",
            "counter",
            "Decoded bytes evicted from the hot-column tier for room.",
            h.evicted_bytes,
        ),
        (
            "nearstore_cache_pmem_restored_chunks",
            "gauge",
            "Column chunks the file-backed tier gave back, verified, at start-up.",
            h.pmem_restored_chunks,
        ),
        (
            "nearstore_cache_pmem_rejected_chunks",
            "gauge",
            "Chunk files the file-backed tier deleted at start-up: torn, corrupt or of objects gone.",
            h.pmem_rejected_chunks,
        ),
    ]
}

/// The learnt rates as gauges: name, help, value (absent until learnt).
fn learnt_gauges(
    r: &nearstore_proto::DeviceRates,
) -> [(&'static str, &'static str, Option<f64>); 6] {
    [
        (
            "nearstore_learnt_scan_bytes_per_second",
            "Compressed Parquet bytes a query reads and decodes per second (moving estimate).",
            r.scan_bytes_per_s,
        ),
        (
            "nearstore_learnt_aggregate_cells_per_second",
            "Aggregate cells (rows x group keys and aggregates) a query computes per second (moving estimate).",
            r.aggregate_cells_per_s,
        ),
        (
            "nearstore_learnt_project_rows_per_second",
            "Rows a query projects per second after its filter (moving estimate).",
            r.project_rows_per_s,
        ),
        (
            "nearstore_learnt_link_bytes_per_second",
            "Bytes per second the link carried while messages waited on it (moving estimate).",
            r.link_bytes_per_s,
        ),
        (
            "nearstore_learnt_rtt_seconds",
            "Round-trip time a call paid before its first byte (moving average).",
            r.rtt_us.map(|us| us / 1e6),
        ),
        (
            "nearstore_learnt_range_bytes_per_second",
            "Bytes per second range reads take from the media, CRC checks included (moving estimate).",
            r.range_bytes_per_s,
        ),
    ]
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    reader: Reader,
    link: Arc<Link>,
    hot: Arc<HotTier>,
) {
    serve_text(
        listener,
        Arc::new(move || metrics.render(&reader, &link, &hot)),
    )
    .await
}

/// Serves `GET /metrics` on `listener` with the Prometheus text `render` makes at each
/// request, until the task is dropped (the device's metrics, and the gateway's).
pub async fn serve_text(
    listener: tokio::net::TcpListener,
    render: Arc<dyn Fn() -> String + Send + Sync>,
) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            // The request line, however the client's writes split it (read until its end, a
            // full buffer, end of stream or 5 s).
            let mut req = vec![0u8; 4096];
            let mut n = 0;
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            while n < req.len() && !req[..n].windows(2).any(|w| w == b"\r\n") {
                match tokio::time::timeout_at(deadline, sock.read(&mut req[n..])).await {
                    Ok(Ok(0)) => break,
                    Ok(Ok(k)) => n += k,
                    _ => return,
                }
            }
            let line = String::from_utf8_lossy(&req[..n]);
            let (status, body) = if line.starts_with("GET /metrics ") || line.starts_with("GET / ")
            {
                ("200 OK", render())
            } else {
                (
                    "404 Not Found",
                    "only GET /metrics is served here\n".to_string(),
                )
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A request line that arrives in pieces (a client that writes it in several calls) is
    /// read whole: answered 200, not taken for another path.
    #[tokio::test]
    async fn a_request_line_split_across_writes_is_served() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve_text(listener, Arc::new(|| "up 1\n".to_string())));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        s.write_all(b"GET ").await.unwrap();
        s.flush().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        s.write_all(b"/metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        assert!(out.ends_with("up 1\n"), "{out}");
        server.abort();
    }
}
