//! Load: 32 concurrent clients issue mixed queries (filters, aggregates, full scans) and
//! uploads (create, append, drop) against one device process for a bounded time. No call may
//! fail, nothing may hang (every call is bounded by the client's timeout and the whole run by
//! the test's), every answer is checked, and the device's peak memory stays within budget.

use std::time::{Duration, Instant};

use nearstore_proto::{AggFunc, Plan, PutMode};
use nearstore_sdk::{Client, ClientOptions, Query};

use crate::support::{DeviceProcess, connect_retry, make_batch, sum_ids, table_batches};

const CLIENTS: usize = 32;
const RUN: Duration = Duration::from_secs(6);
/// Peak resident memory the device may reach under this load.
const MEMORY_BUDGET_BYTES: u64 = 1 << 30;

fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmHWM in /proc/PID/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_clients_mix_queries_and_uploads_without_errors() {
    let dir = tempfile::tempdir().unwrap();
    let dev = DeviceProcess::start(dir.path(), &[]);
    let mut c = connect_retry(&dev.url, Duration::from_secs(30)).await;
    c.put_batches("base", PutMode::Create, table_batches(100_000, 10_000, 1))
        .await
        .unwrap();

    let start = Instant::now();
    let mut clients = Vec::new();
    for k in 0..CLIENTS {
        let url = dev.url.clone();
        clients.push(tokio::spawn(async move {
            let opts = ClientOptions {
                request_timeout: Duration::from_secs(60),
                ..Default::default()
            };
            let mut c = Client::connect_with(&url, opts).await.unwrap();
            let mine = format!("c{k}");
            let mut rows_mine = 0u64;
            let mut ops = 0u32;
            let mut i = 0u64;
            while start.elapsed() < RUN {
                i += 1;
                match (k as u64 + i) % 6 {
                    0 => {
                        let lo = ((k as i64) * 997 + i as i64 * 131) % 90_000;
                        let p = Query::table("base")
                            .filter(&format!("id >= {lo} AND id < {}", lo + 1000))
                            .unwrap()
                            .build();
                        let r = c.query(&p).await.unwrap();
                        assert_eq!(r.num_rows(), 1000);
                        assert_eq!(sum_ids(&r.batches), (lo..lo + 1000).sum::<i64>());
                    }
                    1 => {
                        let p = Query::table("base")
                            .group_by(["cat"])
                            .aggregate(AggFunc::CountStar, None, "n")
                            .unwrap()
                            .build();
                        let r = c.query(&p).await.unwrap();
                        assert_eq!(r.num_rows(), 5);
                    }
                    2 => {
                        let b = make_batch(k as i64 * 1_000_000 + i as i64 * 1000, 1000, k as u64);
                        let mode = if rows_mine == 0 {
                            PutMode::Create
                        } else {
                            PutMode::Append
                        };
                        c.put_batches(&mine, mode, vec![b]).await.unwrap();
                        rows_mine += 1000;
                    }
                    3 if rows_mine > 0 => {
                        let r = c.query(&Plan::scan(&mine)).await.unwrap();
                        assert_eq!(r.num_rows() as u64, rows_mine);
                    }
                    4 if rows_mine >= 5000 => {
                        c.drop_table(&mine).await.unwrap();
                        rows_mine = 0;
                    }
                    _ => {
                        let r = c.query(&Plan::scan("base")).await.unwrap();
                        assert_eq!(r.num_rows(), 100_000);
                    }
                }
                ops += 1;
            }
            ops
        }));
    }
    let mut total = 0;
    for h in clients {
        total += tokio::time::timeout(RUN + Duration::from_secs(120), h)
            .await
            .expect("a client hung")
            .unwrap();
    }
    let peak = peak_rss(dev.id());
    eprintln!(
        "load: {CLIENTS} clients, {total} operations in {:.1} s, device peak RSS {} MiB",
        start.elapsed().as_secs_f64(),
        peak >> 20
    );
    assert!(total >= CLIENTS as u32, "every client got work done");
    assert!(
        peak < MEMORY_BUDGET_BYTES,
        "device peak RSS {peak} B over the budget"
    );
    // Still consistent afterwards.
    let scrub = c.scrub().await.unwrap();
    assert!(scrub.corrupt.is_empty());
    assert!(dev.terminate().success());
}
