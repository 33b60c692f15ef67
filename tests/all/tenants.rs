//! Tenants and authentication: every Flight call needs a valid bearer token, each tenant sees
//! only its own tables (another tenant's table is not found, never forbidden), and device-wide
//! actions need the admin role.

use arrow_flight::FlightDescriptor;
use nearstore_proto::{ErrorCode, Plan, PutMode};
use nearstore_runtime::server::auth::{TenantConfig, token_hash};
use nearstore_sdk::{Client, ClientOptions, Error, Mode, Query, SqlSession};

use crate::support::{TestDevice, sum_ids, table_batches};
use nearstore_test_support::kernel::selects_row;

pub(crate) const ALICE: &str = "alice-token-1";
pub(crate) const BOB: &str = "bob-token-2";
const OPS: &str = "ops-token-3";

/// Alice and Bob (tenants), and ops (admin).
pub(crate) fn tenants() -> Vec<TenantConfig> {
    [
        ("alice", ALICE, false),
        ("bob", BOB, false),
        ("ops", OPS, true),
    ]
    .into_iter()
    .map(|(name, token, admin)| TenantConfig {
        name: name.into(),
        token_sha256: token_hash(token),
        admin,
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

fn opts(token: Option<&str>) -> ClientOptions {
    ClientOptions {
        token: token.map(str::to_string),
        ..Default::default()
    }
}

pub(crate) async fn client(url: &str, token: Option<&str>) -> Client {
    Client::connect_with(url, opts(token)).await.unwrap()
}

pub(crate) fn code(e: &Error) -> ErrorCode {
    match e {
        Error::Device { code, .. } => *code,
        other => panic!("expected a device error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_authenticate_and_see_only_their_own_tables() {
    let dir = tempfile::tempdir().unwrap();
    let dev = TestDevice::start_with(dir.path(), |c| c.tenants = tenants()).await;
    assert!(dev.device.requires_auth());

    // No token, a wrong token: UNAUTHENTICATED on every kind of call.
    for token in [None, Some("not-a-token")] {
        let mut c = client(&dev.url, token).await;
        let errors = [
            c.tables().await.unwrap_err(),
            c.query(&Plan::scan("t")).await.unwrap_err(),
            c.describe("t").await.unwrap_err(),
            c.put_batches("t", PutMode::Create, table_batches(10, 10, 1))
                .await
                .unwrap_err(),
            c.device_info().await.unwrap_err(),
        ];
        for e in errors {
            assert_eq!(code(&e), ErrorCode::Unauthenticated, "{e}");
            let Error::Device { status, .. } = e else {
                unreachable!()
            };
            assert_eq!(status, tonic::Code::Unauthenticated);
        }
    }
    // The SQL session reports the same, as a device error (not a transport failure).
    let Err(e) = SqlSession::connect(&dev.url, opts(Some("nope")), Mode::Offload).await else {
        panic!("a wrong token must fail");
    };
    assert_eq!(code(&e), ErrorCode::Unauthenticated, "{e}");

    // Alice and Bob each own a table called `t`, with different contents.
    let mut alice = client(&dev.url, Some(ALICE)).await;
    let mut bob = client(&dev.url, Some(BOB)).await;
    alice
        .put_batches("t", PutMode::Create, table_batches(1000, 250, 1))
        .await
        .unwrap();
    alice
        .put_batches("only_alice", PutMode::Create, table_batches(10, 10, 1))
        .await
        .unwrap();
    bob.put_batches("t", PutMode::Create, table_batches(300, 300, 2))
        .await
        .unwrap();
    let names = |v: Vec<nearstore_proto::TableInfo>| {
        let mut n: Vec<String> = v.into_iter().map(|t| t.name).collect();
        n.sort();
        n
    };
    assert_eq!(names(alice.tables().await.unwrap()), ["only_alice", "t"]);
    assert_eq!(names(bob.tables().await.unwrap()), ["t"]);
    let a = alice.query(&Plan::scan("t")).await.unwrap();
    let b = bob.query(&Plan::scan("t")).await.unwrap();
    assert_eq!((a.num_rows(), b.num_rows()), (1000, 300));
    assert_eq!(sum_ids(&a.batches), (0..1000).sum::<i64>());
    assert_eq!(alice.describe("t").await.unwrap().name, "t");
    assert_eq!(alice.describe("t").await.unwrap().rows, 1000);

    // Bob cannot reach Alice's table through any call: it does not exist for him.
    let not_found = [
        bob.query(&Plan::scan("only_alice")).await.unwrap_err(),
        bob.query(&Query::table("only_alice").filter("id < 5").unwrap().build())
            .await
            .unwrap_err(),
        bob.schema(&Plan::scan("only_alice")).await.unwrap_err(),
        bob.describe("only_alice").await.unwrap_err(),
        bob.drop_table("only_alice").await.unwrap_err(),
    ];
    for e in &not_found {
        assert_eq!(code(e), ErrorCode::UnknownTable, "{e}");
        assert!(e.to_string().contains("'only_alice'"), "{e}");
        assert!(!e.to_string().contains('/'), "shows a storage name: {e}");
    }
    // Naming the internal form does not get around the scoping.
    let e = bob
        .query(&Plan::scan("alice/only_alice"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::UnknownTable, "{e}");
    // A path descriptor names a table too.
    let raw = arrow_flight::FlightClient::new(
        tonic::transport::Channel::from_shared(dev.url.replace("grpc://", "http://"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let mut raw = raw;
    raw.add_header("authorization", &format!("Bearer {BOB}"))
        .unwrap();
    let e = raw
        .get_flight_info(FlightDescriptor::new_path(vec!["only_alice".into()]))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("unknown table"), "{e}");
    // Alice's data is untouched by Bob's attempts; Bob's SQL session sees only Bob's table.
    assert_eq!(alice.describe("only_alice").await.unwrap().rows, 10);
    let s = SqlSession::connect(&dev.url, opts(Some(BOB)), Mode::Offload)
        .await
        .unwrap();
    assert_eq!(s.sql("select count(*) from t").await.unwrap().num_rows(), 1);
    assert!(s.sql("select * from only_alice").await.is_err());

    // Device-wide actions need the admin role.
    let e = alice.scrub().await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::PermissionDenied, "{e}");
    let e = alice.device_info().await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::PermissionDenied, "{e}");
    let mut ops = client(&dev.url, Some(OPS)).await;
    assert_eq!(ops.scrub().await.unwrap().corrupt.len(), 0);
    assert_eq!(ops.device_info().await.unwrap().tables, 3);
    // The admin has a namespace of its own too: it does not see tenants' tables.
    assert!(ops.tables().await.unwrap().is_empty());

    // Bob drops his own `t`; Alice's `t` stays.
    bob.drop_table("t").await.unwrap();
    assert_eq!(
        alice.query(&Plan::scan("t")).await.unwrap().num_rows(),
        1000
    );
    dev.stop().await;
}

#[tokio::test]
async fn an_open_device_needs_no_token_and_bad_tenant_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dev = TestDevice::start_with(dir.path(), |_| {}).await;
    assert!(!dev.device.requires_auth());
    let mut c = client(&dev.url, Some("anything")).await;
    c.put_batches("t", PutMode::Create, table_batches(5, 5, 1))
        .await
        .unwrap();
    assert_eq!(c.query(&Plan::scan("t")).await.unwrap().num_rows(), 5);
    // A bare name with a tenant separator is refused, not resolved.
    let e = c
        .put_batches("x/t", PutMode::Create, table_batches(5, 5, 1))
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::InvalidUpload, "{e}");
    dev.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = nearstore_runtime::DeviceConfig::new(dir.path());
    cfg.tenants = vec![TenantConfig {
        name: "a".into(),
        token_sha256: "not-hex".into(),
        admin: false,
        max_queries: None,
        max_queued: None,
        media_mb_per_s: None,
        kernel_deadline_ms: None,
        kernel_call_ms: None,
        kernel_memory_mb: None,
        max_kernels: None,
    }];
    let e = nearstore_runtime::Device::open(&cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("64 hex digits"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_tenant_is_refused_past_its_queue_and_others_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let dev = TestDevice::start_with(dir.path(), |c| {
        c.tenants = tenants();
        c.tenants[0].max_queries = Some(2);
        c.tenants[0].max_queued = Some(2);
        // A slow link keeps Alice's queries in flight.
        c.link_gbps = Some(0.02);
    })
    .await;
    let mut alice = client(&dev.url, Some(ALICE)).await;
    alice
        .put_batches("big", PutMode::Create, table_batches(200_000, 20_000, 4))
        .await
        .unwrap();
    let mut bob = client(&dev.url, Some(BOB)).await;
    bob.put_batches("small", PutMode::Create, table_batches(100, 100, 5))
        .await
        .unwrap();

    let mut flood = Vec::new();
    for _ in 0..8 {
        let url = dev.url.clone();
        flood.push(tokio::spawn(async move {
            let mut c = client(&url, Some(ALICE)).await;
            c.query(&Plan::scan("big")).await.map(|r| r.num_rows())
        }));
    }
    // The four past the two running and the two waiting are refused at once.
    let mut refused = 0;
    let start = std::time::Instant::now();
    while refused < 4 && start.elapsed() < std::time::Duration::from_secs(20) {
        for f in flood.iter_mut().filter(|f| f.is_finished()) {
            match f.await.unwrap() {
                Err(Error::Device { code, message, .. }) => {
                    assert_eq!(code, ErrorCode::ResourceExhausted, "{message}");
                    assert!(message.contains("retry after"), "{message}");
                    refused += 1;
                }
                other => panic!("a flood query finished first: {other:?}"),
            }
        }
        flood.retain(|f| !f.is_finished());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(refused, 4);
    assert_eq!(flood.len(), 4, "two running and two waiting");
    // Bob is admitted at once while Alice's queue is full.
    let r = bob
        .query(&Query::table("small").filter("id < 10").unwrap().build())
        .await
        .unwrap();
    assert_eq!(r.num_rows(), 10);
    for f in flood {
        f.abort();
    }
    dev.stop().await;
}

/// A tenant may keep `max_kernels` kernels registered: one more is refused with
/// `resource_exhausted` (no retry hint: waiting does not help), replacing one of its names is
/// not one more, removing one makes room, and other tenants register as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_registers_at_most_max_kernels() {
    let dir = tempfile::tempdir().unwrap();
    let dev = TestDevice::start_with(dir.path(), |c| {
        c.tenants = tenants();
        c.tenants[0].max_kernels = Some(2);
    })
    .await;
    let mut alice = client(&dev.url, Some(ALICE)).await;
    alice.register_kernel("k1", &selects_row(1)).await.unwrap();
    alice.register_kernel("k2", &selects_row(2)).await.unwrap();
    let e = alice
        .register_kernel("k3", &selects_row(3))
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::ResourceExhausted, "{e}");
    assert!(e.to_string().contains("2 kernels are registered"), "{e}");
    assert!(!e.to_string().contains("retry after"), "{e}");
    alice.register_kernel("k1", &selects_row(4)).await.unwrap();
    let mut bob = client(&dev.url, Some(BOB)).await;
    for name in ["b1", "b2", "b3"] {
        bob.register_kernel(name, &selects_row(5)).await.unwrap();
    }
    alice.remove_kernel("k2").await.unwrap();
    alice.register_kernel("k3", &selects_row(3)).await.unwrap();
    let mut names: Vec<String> = alice
        .kernels()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.name)
        .collect();
    names.sort();
    assert_eq!(names, ["k1", "k3"]);
    // Room for one more, asked for four times at once: one registration gets it.
    alice.remove_kernel("k3").await.unwrap();
    let racing: Vec<_> = (0..4)
        .map(|i| {
            let (url, module) = (dev.url.clone(), selects_row(10 + i));
            tokio::spawn(async move {
                let mut c = client(&url, Some(ALICE)).await;
                c.register_kernel(&format!("race{i}"), &module).await
            })
        })
        .collect();
    let mut won = 0;
    for r in racing {
        match r.await.unwrap() {
            Ok(_) => won += 1,
            Err(e) => assert_eq!(code(&e), ErrorCode::ResourceExhausted, "{e}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(alice.kernels().await.unwrap().len(), 2);
    dev.stop().await;
}

/// A kernel called from a projection or an aggregate is looked up in the caller's namespace,
/// as one called from a filter is: a tenant's own kernel is found there, another tenant's is
/// not found, whatever name the plan gives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernels_in_projections_and_aggregates_are_the_callers_own() {
    let dir = tempfile::tempdir().unwrap();
    let dev = TestDevice::start_with(dir.path(), |c| c.tenants = tenants()).await;
    let selects_row_1 = selects_row(1);
    let mut alice = client(&dev.url, Some(ALICE)).await;
    alice
        .put_batches("t", PutMode::Create, table_batches(100, 100, 5))
        .await
        .unwrap();
    alice.register_kernel("k", &selects_row_1).await.unwrap();
    let mut bob = client(&dev.url, Some(BOB)).await;
    bob.register_kernel("b", &selects_row_1).await.unwrap();
    let call = |name: &str| {
        format!(
            r#"{{"version": 1, "table": "t", "projection": ["id", {{"name": "v", "expr": {{"kernel": {{"name": "{name}", "args": ["id"]}}}}}}], "limit": 3}}"#
        )
    };
    let r = alice.query_json(call("k")).await.unwrap();
    let b = r.concat().unwrap();
    let v = b
        .column_by_name("v")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow::array::BooleanArray>()
        .unwrap()
        .clone();
    assert_eq!(
        v.iter().collect::<Vec<_>>(),
        [Some(false), Some(true), Some(false)]
    );
    for name in ["b", "bob/b"] {
        let e = alice.query_json(call(name)).await.unwrap_err();
        assert_eq!(code(&e), ErrorCode::UnknownKernel, "{name}: {e}");
    }
    let agg = r#"{"version": 1, "table": "t", "aggregates": [{"func": "kernel", "expr": {"kernel": {"name": "bob/b", "args": ["id"]}}}]}"#;
    let e = alice.query_json(agg).await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::UnknownKernel, "{e}");
    dev.stop().await;
}

/// `GET path` on the metrics port.
pub(crate) async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

pub(crate) fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics_count_per_tenant_and_the_read_path() {
    let dir = tempfile::tempdir().unwrap();
    let dev = TestDevice::start_with(dir.path(), |c| c.tenants = tenants()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _metrics = dev.device.serve_metrics(listener);

    let mut alice = client(&dev.url, Some(ALICE)).await;
    let mut bob = client(&dev.url, Some(BOB)).await;
    alice
        .put_batches("t", PutMode::Create, table_batches(20_000, 5_000, 1))
        .await
        .unwrap();
    bob.put_batches("t", PutMode::Create, table_batches(100, 100, 2))
        .await
        .unwrap();
    for f in ["id < 100", "id >= 19000"] {
        let p = Query::table("t").filter(f).unwrap().build();
        alice.query(&p).await.unwrap();
    }
    let bad = Query::table("t").filter("nope < 1").unwrap().build();
    assert!(alice.query(&bad).await.is_err());
    bob.query(&Plan::scan("t")).await.unwrap();

    // A query is counted when its stream has ended on the device, which may be just after
    // the client read its last message: the scrape waits for the three queries and the
    // failure to be counted (up to 10 s), and then checks every series.
    let series = [
        ("nearstore_queries_total{tenant=\"alice\"}", 2.0),
        ("nearstore_queries_total{tenant=\"bob\"}", 1.0),
        (
            "nearstore_failures_total{tenant=\"alice\",code=\"unknown_column\"}",
            1.0,
        ),
    ];
    let counted = |text: &str| {
        series.iter().all(|(s, n)| {
            text.lines()
                .find_map(|l| l.strip_prefix(s).and_then(|v| v.trim().parse::<f64>().ok()))
                == Some(*n)
        })
    };
    let mut text = http_get(addr, "/metrics").await;
    for _ in 0..200 {
        if counted(&text) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        text = http_get(addr, "/metrics").await;
    }
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert_eq!(
        metric(&text, "nearstore_queries_total{tenant=\"alice\"}"),
        2.0
    );
    assert_eq!(
        metric(&text, "nearstore_queries_total{tenant=\"bob\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "nearstore_failures_total{tenant=\"alice\",code=\"unknown_column\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&text, "nearstore_query_seconds_count{tenant=\"alice\"}"),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            "nearstore_query_seconds_bucket{tenant=\"alice\",le=\"+Inf\"}"
        ),
        2.0
    );
    assert!(metric(&text, "nearstore_bytes_sent_total{tenant=\"bob\"}") > 1000.0);
    assert!(metric(&text, "nearstore_media_bytes_read_total{tenant=\"alice\"}") > 0.0);
    assert!(text.contains("# TYPE nearstore_query_seconds histogram"));
    let reader = text
        .lines()
        .find(|l| l.starts_with("nearstore_reader_ops_total{"))
        .unwrap();
    assert!(
        reader.rsplit(' ').next().unwrap().parse::<u64>().unwrap() > 0,
        "{reader}"
    );
    assert!(http_get(addr, "/other").await.starts_with("HTTP/1.1 404"));
    dev.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_media_bandwidth_is_limited_and_others_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let dev = TestDevice::start_with(dir.path(), |c| {
        c.tenants = tenants();
        c.tenants[0].media_mb_per_s = Some(5.0);
    })
    .await;
    let mut alice = client(&dev.url, Some(ALICE)).await;
    let mut bob = client(&dev.url, Some(BOB)).await;
    for c in [&mut alice, &mut bob] {
        c.put_batches("t", PutMode::Create, table_batches(200_000, 20_000, 6))
            .await
            .unwrap();
    }
    let t = std::time::Instant::now();
    let b = bob.query(&Plan::scan("t")).await.unwrap();
    let bob_took = t.elapsed();
    let t = std::time::Instant::now();
    let a = alice.query(&Plan::scan("t")).await.unwrap();
    let alice_took = t.elapsed();
    assert_eq!(a.num_rows(), b.num_rows());
    let read = a.stats.bytes_read_media as f64;
    assert!(read > 2e6, "{read}");
    // At 5 MB/s with a 1 MiB burst, Alice's reads cannot finish sooner than this (the bucket
    // counts the bytes asked for; the media bytes include block alignment, hence the 0.8);
    // Bob's are not held back at all.
    let floor = std::time::Duration::from_secs_f64((0.8 * read - (1 << 20) as f64) / 5e6);
    assert!(
        alice_took >= floor,
        "{alice_took:?} < {floor:?} for {read} B"
    );
    eprintln!("media limit: alice {alice_took:?} (floor {floor:?}), bob {bob_took:?}");
    dev.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_encrypted_flight_and_plaintext_or_wrong_authorities_fail() {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let pem = cert.cert.pem().into_bytes();
    let dir = tempfile::tempdir().unwrap();
    let dev = TestDevice::start_with(dir.path(), |c| {
        c.tenants = tenants();
        c.tls = Some(nearstore_runtime::TlsPem {
            cert: pem.clone(),
            key: cert.signing_key.serialize_pem().into_bytes(),
        });
    })
    .await;
    assert!(dev.url.starts_with("grpc+tls://"), "{}", dev.url);
    let tls = |ca: Option<Vec<u8>>| ClientOptions {
        token: Some(ALICE.into()),
        tls_ca_pem: ca,
        connect_timeout: std::time::Duration::from_secs(5),
        ..Default::default()
    };
    let mut c = Client::connect_with(&dev.url, tls(Some(pem.clone())))
        .await
        .unwrap();
    c.put_batches("t", PutMode::Create, table_batches(1000, 500, 1))
        .await
        .unwrap();
    assert_eq!(c.query(&Plan::scan("t")).await.unwrap().num_rows(), 1000);

    // Without the authority: told what to pass.
    let e = Client::connect_with(&dev.url, tls(None)).await.unwrap_err();
    assert!(e.to_string().contains("certificate authority"), "{e}");
    // Another authority: the handshake fails.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let r = match Client::connect_with(&dev.url, tls(Some(other.cert.pem().into_bytes()))).await {
        Ok(mut c) => c.tables().await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(matches!(r, Err(Error::Transport { .. })), "{r:?}");
    // Plain gRPC to a TLS port: a transport error, not an answer.
    let plain = dev.url.replace("grpc+tls://", "grpc://");
    let r = match Client::connect_with(&plain, tls(None)).await {
        Ok(mut c) => c.tables().await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(matches!(r, Err(Error::Transport { .. })), "{r:?}");
    dev.stop().await;
}
