//! Victim throughput under a hostile tenant: queries per second of an ordinary tenant alone,
//! then while another tenant runs kernels that spin to their deadline, exhaust memory, overflow
//! the stack and trap, on two connections. Rounds alternate (alone, attacked) and the report
//! gives the medians and their ratio (target: the victim keeps at least 80 %).
//!
//! `cargo bench -p nearstore-benches --bench hostile` (release; not part of CI).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nearstore_proto::{Expr, PutMode};
use nearstore_runtime::server::auth::{TenantConfig, token_hash};
use nearstore_runtime::{Device, DeviceConfig};
use nearstore_sdk::{Client, ClientOptions, Query};

const ROUNDS: usize = 5;
const ROUND: Duration = Duration::from_secs(3);

/// A filter kernel whose `nearstore_filter` body is `body`.
fn kernel(body: &str, extra: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module {extra}
          (memory (export "memory") 2)
          (global $next (mut i32) (i32.const 1024))
          (func (export "nearstore_abi_version") (result i32) (i32.const 1))
          (func (export "nearstore_alloc") (param $size i32) (param $align i32) (result i32)
            (local $p i32)
            (local.set $p (global.get $next))
            (global.set $next (i32.add (global.get $next) (i32.and (i32.add (local.get $size) (i32.const 15)) (i32.const -16))))
            (if (i32.gt_u (global.get $next) (i32.mul (memory.size) (i32.const 65536)))
              (then (drop (memory.grow (i32.add (i32.div_u (i32.sub (global.get $next) (i32.mul (memory.size) (i32.const 65536))) (i32.const 65536)) (i32.const 1))))))
            (local.get $p))
          (func (export "nearstore_filter") (param $desc i32) (param $out i32) (param $cap i32) (result i32) {body})
          (@custom "nearstore.manifest" "abi=1\nkind=filter\nname=hostile\n"))"#
    ))
    .expect("hostile kernel assembles")
}

fn opts(token: &str) -> ClientOptions {
    ClientOptions {
        token: Some(token.into()),
        ..Default::default()
    }
}

async fn victim_qps(url: &str, secs: Duration) -> f64 {
    let mut c = Client::connect_with(url, opts("victim")).await.unwrap();
    let plan = Query::table("v").filter("id < 25000").unwrap().build();
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < secs {
        let r = c.query(&plan).await.unwrap();
        assert_eq!(r.num_rows(), 25_000);
        n += 1;
    }
    n as f64 / t.elapsed().as_secs_f64()
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
            kernel_memory_mb: None,
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
            ("spin", kernel("(loop $l (br $l)) (i32.const 0)", "")),
            (
                "grow",
                kernel(
                    "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) (unreachable)",
                    "",
                ),
            ),
            (
                "recurse",
                kernel(
                    "(call $deep (i32.const 0)) (i32.const 0)",
                    "(func $deep (param i32) (call $deep (i32.add (local.get 0) (i32.const 1))))",
                ),
            ),
            ("trap", kernel("(unreachable)", "")),
        ];
        for (name, module) in &hostile {
            m.register_kernel(name, module).await.unwrap();
        }
        let mut v = Client::connect_with(&url, opts("victim")).await.unwrap();
        v.put_batches("v", PutMode::Create, vec![rows(100_000)])
            .await
            .unwrap();

        let (mut alone, mut attacked) = (Vec::new(), Vec::new());
        let mut hostile_failed = 0u64;
        for round in 0..ROUNDS {
            alone.push(victim_qps(&url, ROUND).await);
            let stop = Arc::new(AtomicBool::new(false));
            let mut attackers = Vec::new();
            for a in 0..2 {
                let (url, stop) = (url.clone(), stop.clone());
                let names: Vec<&str> = hostile.iter().map(|(n, _)| *n).collect();
                attackers.push(tokio::spawn(async move {
                    let mut c = Client::connect_with(&url, opts("mallory")).await.unwrap();
                    let mut failed = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        for name in names.iter().skip(a) {
                            let plan = Query::table("m")
                                .filter_expr(Expr::Kernel {
                                    name: name.to_string(),
                                    args: vec!["id".into()],
                                    params: String::new(),
                                })
                                .build();
                            assert!(c.query(&plan).await.is_err(), "{name} must fail");
                            failed += 1;
                        }
                    }
                    failed
                }));
            }
            attacked.push(victim_qps(&url, ROUND).await);
            stop.store(true, Ordering::Relaxed);
            for a in attackers {
                hostile_failed += a.await.unwrap();
            }
            eprintln!(
                "round {round}: victim alone {:.1} q/s, under attack {:.1} q/s",
                alone[round], attacked[round]
            );
        }
        let (a, b) = (median(alone), median(attacked));
        println!(
            "victim throughput: alone {a:.1} q/s, under attack {b:.1} q/s (medians of {ROUNDS} rounds of {}s): {:.0} %; {hostile_failed} hostile queries failed",
            ROUND.as_secs(),
            100.0 * b / a
        );
        server.stop().await.unwrap();
    });
}
