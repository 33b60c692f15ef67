//! Victim throughput under a hostile tenant: queries per second of an ordinary tenant alone,
//! then while another tenant runs, on two connections, kernels that spin to their deadline,
//! exhaust memory, overflow the stack, trap and return garbage, and then while it runs a kernel
//! that computes for most of its deadline and succeeds. Rounds alternate (alone, failing,
//! busy) and the report gives the medians and their ratios (target: the victim keeps at least
//! 80 %). Last, on a device at the default limits (30 s query deadline, 1 s per-call budget),
//! how long a kernel spinning inside its call holds its query: query to error, median and max
//! of `STOPS` runs.
//!
//! `cargo bench -p nearstore-benches --bench hostile` (release; not part of CI).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nearstore_proto::{Expr, PutMode};
use nearstore_runtime::server::auth::{TenantConfig, token_hash};
use nearstore_runtime::{Device, DeviceConfig};
use nearstore_sdk::{Client, ClientOptions, Query};
use nearstore_test_support::hostile;

const ROUNDS: usize = 5;
const ROUND: Duration = Duration::from_secs(3);
const STOPS: usize = 5;

fn opts(token: &str) -> ClientOptions {
    ClientOptions {
        token: Some(token.into()),
        ..Default::default()
    }
}

/// CPU time of this process (device and clients), seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: rusage is plain integers and timevals, for which all-zero bytes are valid.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct it is given, which lives through the call.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// The victim's queries per second over `secs`, and the cores the whole process used then.
async fn victim_qps(url: &str, secs: Duration) -> (f64, f64) {
    let mut c = Client::connect_with(url, opts("victim")).await.unwrap();
    let plan = Query::table("v").filter("id < 25000").unwrap().build();
    let (t, cpu) = (Instant::now(), cpu_seconds());
    let mut n = 0u64;
    while t.elapsed() < secs {
        let r = c.query(&plan).await.unwrap();
        assert_eq!(r.num_rows(), 25_000);
        n += 1;
    }
    let wall = t.elapsed().as_secs_f64();
    (n as f64 / wall, (cpu_seconds() - cpu) / wall)
}

/// A client of the hostile tenant calling the kernels `names` in turn until `stop`, each of
/// which must fail (or succeed); the number of queries it ran.
fn attack(
    url: &str,
    names: Vec<&'static str>,
    must_fail: bool,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    let url = url.to_string();
    tokio::spawn(async move {
        let mut c = Client::connect_with(&url, opts("mallory")).await.unwrap();
        let mut ran = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for name in &names {
                let plan = Query::table("m")
                    .filter_expr(Expr::Kernel {
                        name: name.to_string(),
                        args: vec!["id".into()],
                        params: String::new(),
                    })
                    .build();
                let r = c.query(&plan).await;
                assert_eq!(r.is_err(), must_fail, "{name}: {:?}", r.err());
                ran += 1;
            }
        }
        ran
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = DeviceConfig::new(dir.path());
        cfg.tenants = ["mallory", "victim"]
            .into_iter()
            .map(|n| TenantConfig {
                name: n.into(),
                token_sha256: token_hash(n),
                admin: false,
                max_queries: None,
                max_queued: None,
            media_mb_per_s: None,
            kernel_deadline_ms: None,
            kernel_call_ms: None,
            kernel_memory_mb: None,
            max_kernels: None,
            })
            .collect();
        cfg.sandbox.deadline = Duration::from_millis(300);
        cfg.sandbox.memory_bytes_max = 16 << 20;
        let device = Device::open(&cfg).unwrap();
        let server = device.serve_local().await.unwrap();
        let url = server.url.clone();

        let mut m = Client::connect_with(&url, opts("mallory")).await.unwrap();
        let rows = |n: i64| {
            let ids = arrow::array::Int64Array::from_iter_values(0..n);
            arrow::array::RecordBatch::try_from_iter(vec![(
                "id",
                Arc::new(ids) as arrow::array::ArrayRef,
            )])
            .unwrap()
        };
        m.put_batches("m", PutMode::Create, vec![rows(10_000)])
            .await
            .unwrap();
        let hostile = [
            ("spin", hostile::spin_forever()),
            ("grow", hostile::grow_memory()),
            ("recurse", hostile::recurse()),
            ("trap", hostile::trap()),
            ("garbage", hostile::claims_rows(1_000_000)),
            ("busy", hostile::busy(40_000_000)),
        ];
        for (name, module) in &hostile {
            m.register_kernel(name, module).await.unwrap();
        }
        let hostile = &hostile[..hostile.len() - 1];
        let mut v = Client::connect_with(&url, opts("victim")).await.unwrap();
        v.put_batches("v", PutMode::Create, vec![rows(100_000)])
            .await
            .unwrap();

        // Two kinds of attack: kernels that fail (the device backs their tenant off), and a
        // kernel that computes for most of its deadline and succeeds (only the fair share of
        // the cores holds it).
        let failing: Vec<&str> = hostile.iter().map(|(n, _)| *n).collect();
        let mut phases: [(&str, Vec<f64>, Vec<f64>, u64); 3] = [
            ("alone", Vec::new(), Vec::new(), 0),
            ("failing kernels", Vec::new(), Vec::new(), 0),
            ("busy kernel", Vec::new(), Vec::new(), 0),
        ];
        for round in 0..ROUNDS {
            for (i, phase) in phases.iter_mut().enumerate() {
                let stop = Arc::new(AtomicBool::new(false));
                let attackers: Vec<_> = match i {
                    0 => Vec::new(),
                    1 => (0..2)
                        .map(|a| attack(&url, failing[a..].to_vec(), true, stop.clone()))
                        .collect(),
                    _ => (0..2)
                        .map(|_| attack(&url, vec!["busy"], false, stop.clone()))
                        .collect(),
                };
                let (qps, cores) = victim_qps(&url, ROUND).await;
                stop.store(true, Ordering::Relaxed);
                for a in attackers {
                    phase.3 += a.await.unwrap();
                }
                phase.1.push(qps);
                phase.2.push(cores);
                eprintln!(
                    "round {round}, {}: victim {qps:.1} q/s ({cores:.2} cores busy)",
                    phase.0
                );
            }
        }
        let alone = median(phases[0].1.clone());
        println!(
            "victim alone: {alone:.1} q/s, {:.2} cores busy (medians of {ROUNDS} rounds of {}s)",
            median(phases[0].2.clone()),
            ROUND.as_secs()
        );
        for (name, qps, cores, attacks) in &phases[1..] {
            let q = median(qps.clone());
            println!(
                "victim under {name}: {q:.1} q/s, {:.2} cores busy: {:.0} % of alone; {attacks} attacking queries ran",
                median(cores.clone()),
                100.0 * q / alone
            );
        }
        server.stop().await.unwrap();
        time_to_stop(&cfg.tenants).await;
    });
}

/// Query-to-error times of a kernel spinning in its call, at the default sandbox limits.
async fn time_to_stop(tenants: &[TenantConfig]) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = DeviceConfig::new(dir.path());
    cfg.tenants = tenants.to_vec();
    let device = Device::open(&cfg).unwrap();
    let server = device.serve_local().await.unwrap();
    let mut m = Client::connect_with(&server.url, opts("mallory"))
        .await
        .unwrap();
    let ids = arrow::array::Int64Array::from_iter_values(0..1_000);
    let batch = arrow::array::RecordBatch::try_from_iter(vec![(
        "id",
        Arc::new(ids) as arrow::array::ArrayRef,
    )])
    .unwrap();
    m.put_batches("m", PutMode::Create, vec![batch])
        .await
        .unwrap();
    m.register_kernel("spin", &hostile::spin_forever())
        .await
        .unwrap();
    let plan = Query::table("m")
        .filter_expr(Expr::Kernel {
            name: "spin".into(),
            args: vec!["id".into()],
            params: String::new(),
        })
        .build();
    let mut took = Vec::new();
    for _ in 0..STOPS {
        let t = Instant::now();
        let e = m.query(&plan).await.unwrap_err();
        took.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(e.to_string().contains("per-call budget"), "{e}");
    }
    let max = took.iter().copied().fold(0.0, f64::max);
    println!(
        "a kernel spinning in its call, default limits (deadline {} s, call budget {} ms): \
         stopped {:.0} ms after the query was sent (median of {STOPS}; max {max:.0} ms)",
        cfg.sandbox.deadline.as_secs(),
        cfg.sandbox.call_budget.as_millis(),
        median(took.clone()),
    );
    server.stop().await.unwrap();
}
