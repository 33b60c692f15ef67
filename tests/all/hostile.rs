//! Hostile kernels under load: one tenant registers kernels that loop forever, grow memory,
//! recurse, trap, return garbage or oversized selections, or spin just under their deadline,
//! and runs them over and over while another tenant runs ordinary queries. Every hostile query
//! fails with its own specific error (or, for the spinner, succeeds late); every one of the
//! victim's queries succeeds with the right answer.

use std::time::{Duration, Instant};

use nearstore_proto::{ErrorCode, Expr, Plan, PutMode};
use nearstore_runtime::server::auth::{TenantConfig, token_hash};
use nearstore_sdk::{Client, ClientOptions, Error, Query};
use nearstore_test_support::{hostile, kernel};

use crate::support::{TestDevice, sum_ids, table_batches};

/// The hostile kernels: name, module, and what its query must fail with (`None`: succeeds).
pub fn hostile_kernels() -> Vec<(&'static str, Vec<u8>, Option<&'static str>)> {
    vec![
        ("spin_forever", hostile::spin_forever(), Some("deadline")),
        ("grow_memory", hostile::grow_memory(), Some("memory limit")),
        ("recurse", hostile::recurse(), Some("overflowed its stack")),
        ("trap", hostile::trap(), Some("trapped")),
        (
            // One selected row, index far past the batch.
            "garbage_indices",
            kernel::selects_row(999_999_999),
            Some("out of range"),
        ),
        (
            // Claims more rows than the batch holds.
            "oversized_output",
            hostile::claims_rows(2_000_000),
            Some("selected"),
        ),
        (
            // A bounded busy loop (~10^7 iterations), well inside the deadline: slow, correct.
            "spin_under_deadline",
            hostile::busy(10_000_000),
            None,
        ),
    ]
}

const MALLORY: &str = "mallory-token";
const VICTIM: &str = "victim-token";

pub fn tenants() -> Vec<TenantConfig> {
    [("mallory", MALLORY), ("victim", VICTIM)]
        .into_iter()
        .map(|(n, t)| TenantConfig {
            name: n.into(),
            token_sha256: token_hash(t),
            admin: false,
            max_queries: None,
            max_queued: None,
            media_mb_per_s: None,
            kernel_deadline_ms: None,
            kernel_call_ms: None,
            kernel_memory_mb: None,
            max_kernels: None,
        })
        .collect()
}

async fn client(url: &str, token: &str) -> Client {
    Client::connect_with(
        url,
        ClientOptions {
            token: Some(token.into()),
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

fn call(name: &str) -> Plan {
    Query::table("m")
        .filter_expr(Expr::Kernel {
            name: name.into(),
            args: vec!["id".into()],
            params: String::new(),
        })
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_kernels_fail_alone_while_the_victim_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let dev = TestDevice::start_with(dir.path(), |c| {
        c.tenants = tenants();
        c.sandbox.deadline = Duration::from_millis(300);
        c.sandbox.memory_bytes_max = 16 << 20;
        c.sandbox.stack_bytes_max = 256 << 10;
    })
    .await;
    let mut m = client(&dev.url, MALLORY).await;
    m.put_batches("m", PutMode::Create, table_batches(5_000, 5_000, 1))
        .await
        .unwrap();
    let kernels = hostile_kernels();
    for (name, module, _) in &kernels {
        m.register_kernel(name, module).await.unwrap();
    }
    let mut v = client(&dev.url, VICTIM).await;
    v.put_batches("v", PutMode::Create, table_batches(50_000, 10_000, 2))
        .await
        .unwrap();
    let victim_plan = Query::table("v").filter("id < 25000").unwrap().build();
    let want = (25_000usize, (0..25_000i64).sum::<i64>());

    // Mallory runs every hostile kernel, round after round, on two connections.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut attackers = Vec::new();
    for a in 0..2 {
        let (url, stop) = (dev.url.clone(), stop.clone());
        let kernels = hostile_kernels();
        attackers.push(tokio::spawn(async move {
            let mut c = client(&url, MALLORY).await;
            let mut seen = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (name, _, expect) in kernels.iter().skip(a) {
                    let t = Instant::now();
                    let r = c.query(&call(name)).await;
                    if std::env::var_os("HOSTILE_DEBUG").is_some() {
                        eprintln!("{name}: {:?} {:?}", t.elapsed(), r.as_ref().err());
                    }
                    match (expect, r) {
                        (None, Ok(r)) => assert_eq!(r.num_rows(), 0, "{name}"),
                        (Some(what), Err(Error::Device { code, message, .. })) => {
                            assert_eq!(code, ErrorCode::KernelFailed, "{name}: {message}");
                            assert!(message.contains(what), "{name}: {message}");
                            assert!(message.contains(&format!("'{name}'")), "{name}: {message}");
                            assert!(!message.contains("mallory/"), "{message}");
                        }
                        (e, r) => panic!("{name}: expected {e:?}, got {r:?}"),
                    }
                    seen += 1;
                }
            }
            seen
        }));
    }
    // The victim's queries, meanwhile: all succeed, all right.
    let t = Instant::now();
    let mut served = 0;
    while t.elapsed() < Duration::from_secs(4) {
        let r = v.query(&victim_plan).await.unwrap();
        assert_eq!((r.num_rows(), sum_ids(&r.batches)), want);
        served += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut hostile = 0;
    for a in attackers {
        hostile += a.await.unwrap();
    }
    eprintln!(
        "hostile kernels: {hostile} hostile queries failed as expected while the victim ran {served} queries"
    );
    assert!(hostile >= kernels.len(), "every hostile kernel ran");
    assert!(served >= 5);
    // And the device is none the worse for it.
    let r = v.query(&victim_plan).await.unwrap();
    assert_eq!(r.num_rows(), want.0);
    // Mallory's kernels are Mallory's: the victim cannot see, call or remove them.
    assert!(v.kernels().await.unwrap().is_empty());
    let call_trap = Query::table("v")
        .filter_expr(Expr::Kernel {
            name: "trap".into(),
            args: vec!["id".into()],
            params: String::new(),
        })
        .build();
    for e in [
        v.query(&call_trap).await.unwrap_err(),
        v.remove_kernel("trap").await.unwrap_err(),
    ] {
        match e {
            Error::Device { code, message, .. } => {
                assert_eq!(code, ErrorCode::UnknownKernel, "{message}");
                assert!(!message.contains("mallory"), "{message}");
            }
            other => panic!("{other}"),
        }
    }
    assert_eq!(m.kernels().await.unwrap().len(), kernels.len());
    dev.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_kernel_limits_are_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let dev = TestDevice::start_with(dir.path(), |c| {
        c.tenants = tenants();
        // The device's sandbox allows 30 s and 256 MiB; Mallory gets 200 ms and 4 MiB.
        c.tenants[0].kernel_deadline_ms = Some(200);
        c.tenants[0].kernel_memory_mb = Some(4);
    })
    .await;
    let mut m = client(&dev.url, MALLORY).await;
    m.put_batches("m", PutMode::Create, table_batches(1_000, 1_000, 1))
        .await
        .unwrap();
    for (name, module, _) in hostile_kernels() {
        m.register_kernel(name, &module).await.unwrap();
    }
    let t = Instant::now();
    let e = m.query(&call("spin_forever")).await.unwrap_err();
    assert!(e.to_string().contains("deadline of 200 ms"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let e = m.query(&call("grow_memory")).await.unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("memory limit of {} bytes", 4 << 20)),
        "{e}"
    );
    // A per-call budget below the query's deadline stops the spinning call first.
    dev.stop().await;
    let dev = TestDevice::start_with(dir.path(), |c| {
        c.tenants = tenants();
        c.tenants[0].kernel_deadline_ms = Some(20_000);
        c.tenants[0].kernel_call_ms = Some(150);
    })
    .await;
    let mut m = client(&dev.url, MALLORY).await;
    let took = spin_stopped_by_budget(&mut m, 150).await;
    println!("a spinning kernel was stopped {took:?} after the query was sent (budget 150 ms)");
    // The built-in filter runs under the same limits and still works.
    let r = m
        .query(&Query::table("m").filter("id < 10").unwrap().build())
        .await
        .unwrap();
    assert_eq!(r.num_rows(), 10);
    assert!(
        r.stats.placement.contains("filter=wasm"),
        "{}",
        r.stats.placement
    );
    dev.stop().await;
}

/// At the device's defaults (a 30 s query deadline, a 1 s per-call budget), a kernel that
/// spins inside its call is stopped by the call budget, not the deadline; the time from query
/// to error is printed on stdout (the CI log shows it with `--nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_defaults_a_spinning_kernel_is_stopped_by_the_call_budget() {
    let dir = tempfile::tempdir().unwrap();
    let dev = TestDevice::start_with(dir.path(), |c| c.tenants = tenants()).await;
    let mut m = client(&dev.url, MALLORY).await;
    m.put_batches("m", PutMode::Create, table_batches(1_000, 1_000, 1))
        .await
        .unwrap();
    m.register_kernel("spin_forever", &hostile::spin_forever())
        .await
        .unwrap();
    let took = spin_stopped_by_budget(&mut m, 1000).await;
    println!("at the defaults a spinning kernel was stopped {took:?} after the query was sent");
    // The tenant's next query is served.
    let r = m
        .query(&Query::table("m").filter("id < 10").unwrap().build())
        .await
        .unwrap();
    assert_eq!(r.num_rows(), 10);
    dev.stop().await;
}

/// Runs Mallory's `spin_forever`, which must fail on the per-call budget of `budget_ms`; the
/// time from query to error. Bounded at 10 s — not a speed target: far from the query
/// deadlines (20 s, 30 s) that stop the kernel when the budget does not.
async fn spin_stopped_by_budget(m: &mut Client, budget_ms: u64) -> Duration {
    let t = Instant::now();
    let e = m.query(&call("spin_forever")).await.unwrap_err();
    let took = t.elapsed();
    assert!(
        e.to_string()
            .contains(&format!("per-call budget of {budget_ms} ms")),
        "{e}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    took
}
