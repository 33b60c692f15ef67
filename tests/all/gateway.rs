//! Flight SQL clients reach the devices through `nearstore gateway`: ADBC's Python driver
//! (`examples/flight_sql_adbc.py`, pinned packages) against a gateway process over two device
//! processes' tables (lineitem dealt over both, orders on one), with a tenant's token: TPC-H
//! Q1, Q6 and a join equal to the SDK's SQL session; a prepared statement with a bound
//! parameter; the catalog listing; polars; 16 concurrent clients; clear errors for a syntax
//! error, an unknown table and a wrong token.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use arrow::array::RecordBatch;
use nearstore_proto::PutMode;
use nearstore_runtime::demo::tpch_part_batches;
use nearstore_sdk::{ClientOptions, Mode, SqlSession};

use crate::python::{PYARROW, python_or_skip, run_example};
use crate::support::{DeviceProcess, cli_bin, rows_with_digits};
use crate::tenants::{ALICE, client, tenants};

/// The ADBC client packages, pinned.
const ADBC: [&str; 4] = [
    PYARROW,
    "adbc-driver-manager==1.13.0",
    "adbc-driver-flightsql==1.13.0",
    "polars==2.1.0",
];

struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `nearstore gateway` over `devices` with `extra` arguments: its URL, and its
/// metrics address when it serves metrics (both from its start-up lines).
fn start_gateway(devices: &[String], extra: &[&str]) -> (Gateway, String, Option<String>) {
    let mut cmd = Command::new(cli_bin());
    cmd.arg("gateway")
        .args(["--listen", "127.0.0.1:0"])
        .args(extra);
    for d in devices {
        cmd.args(["--device", d]);
    }
    // In its guard at once: a failed start kills and reaps it.
    let mut gateway = Gateway(cmd.stdout(Stdio::piped()).spawn().expect("gateway starts"));
    let mut out = BufReader::new(gateway.0.stdout.take().unwrap());
    let mut metrics = None;
    loop {
        let mut line = String::new();
        let n = out.read_line(&mut line).unwrap();
        assert!(n > 0, "the gateway exited before serving");
        let word = |prefix: &str| {
            line.split_whitespace()
                .find(|w| w.starts_with(prefix))
                .map(str::to_string)
        };
        if line.starts_with("gateway metrics on ") {
            metrics = word("http://").map(|u| {
                u.trim_start_matches("http://")
                    .trim_end_matches("/metrics")
                    .to_string()
            });
        } else if let Some(url) = word("grpc://") {
            return (gateway, url, metrics);
        }
    }
}

/// Rows as the script prints them: sorted strings, floats to 6 significant digits.
fn rows(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = rows_with_digits(batches, 6);
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adbc_runs_sql_through_the_gateway() {
    let Some(python) = python_or_skip(&ADBC, "import adbc_driver_flightsql.dbapi, polars") else {
        return;
    };
    // Two device processes, each with the tenants of `tenants()` in its configuration file.
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let config = dirs[0].path().join("device.toml");
    let entries: String = tenants()
        .iter()
        .map(|t| {
            format!(
                "[[tenants]]\nname = \"{}\"\ntoken_sha256 = \"{}\"\nadmin = {}\n",
                t.name, t.token_sha256, t.admin
            )
        })
        .collect();
    std::fs::write(&config, entries).unwrap();
    let devices: Vec<DeviceProcess> = dirs
        .iter()
        .map(|d| {
            let data = d.path().join("data");
            DeviceProcess::start(&data, &["--config", config.to_str().unwrap()])
        })
        .collect();
    for (i, dev) in devices.iter().enumerate() {
        let mut c = client(&dev.url, Some(ALICE)).await;
        let part = |t: &str| -> Vec<RecordBatch> {
            tpch_part_batches(t, 0.01, (i + 1, 2))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        c.put_batches("lineitem", PutMode::Create, part("lineitem"))
            .await
            .unwrap();
        if i == 0 {
            let orders = tpch_part_batches("orders", 0.01, (1, 1))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            c.put_batches("orders", PutMode::Create, orders)
                .await
                .unwrap();
        }
    }
    let urls: Vec<String> = devices.iter().map(|d| d.url.clone()).collect();
    // A user who logs in with a password stands for Alice's token.
    let users = dirs[0].path().join("users.toml");
    std::fs::write(
        &users,
        format!(
            "[[users]]\nname = \"ann\"\npassword_sha256 = \"{}\"\ntoken = \"{ALICE}\"\n",
            nearstore_runtime::server::auth::token_hash("s3cret")
        ),
    )
    .unwrap();
    let (_gateway, gateway_url, metrics_at) = start_gateway(
        &urls,
        &[
            "--users",
            users.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let stdout = run_example(
        python,
        "flight_sql_adbc.py",
        &[&gateway_url, ALICE, "ann:s3cret"],
    )
    .await;
    let got: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();

    // The same queries through the SDK's SQL session, as the tenant.
    let options = ClientOptions {
        token: Some(ALICE.into()),
        ..Default::default()
    };
    let session = SqlSession::connect_many(&urls, options, Mode::Offload)
        .await
        .unwrap();
    let queries = [
        (
            "q1",
            "select l_returnflag, l_linestatus, sum(l_quantity) as sum_qty, sum(l_extendedprice) as sum_base_price, avg(l_discount) as avg_disc, count(*) as count_order from lineitem where l_shipdate <= date '1998-09-02' group by l_returnflag, l_linestatus order by l_returnflag, l_linestatus",
        ),
        (
            "q6",
            "select sum(l_extendedprice * l_discount) as revenue from lineitem where l_shipdate >= date '1994-01-01' and l_shipdate < date '1995-01-01' and l_discount between 0.05 and 0.07 and l_quantity < 24",
        ),
        (
            "join",
            "select o.o_orderpriority, count(*) as n from orders o join lineitem l on l.l_orderkey = o.o_orderkey where l.l_commitdate < l.l_receiptdate group by o.o_orderpriority order by o.o_orderpriority",
        ),
        (
            "param",
            "select count(*) as n from lineitem where l_quantity < 24",
        ),
    ];
    for (name, sql) in queries {
        let want = rows(&session.sql(sql).await.unwrap().batches);
        assert!(!want.is_empty(), "{name}");
        assert_eq!(got["queries"][name], serde_json::json!(want), "{name}");
    }
    assert_eq!(
        got["queries"]["param_qmark"], got["queries"]["param"],
        "? placeholders"
    );
    assert_eq!(
        got["queries"]["q6_basic_auth"], got["queries"]["q6"],
        "basic auth"
    );
    let n = &got["queries"]["param"][0];
    assert_eq!(
        got["polars"][0]["n"].to_string(),
        n.as_str().unwrap(),
        "polars"
    );
    assert_eq!(
        got["concurrent"],
        serde_json::json!(16),
        "16 concurrent clients"
    );

    // The catalog lists both tables with their columns.
    let tables = &got["tables"];
    assert!(
        tables["lineitem"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "l_shipdate"),
        "{tables}"
    );
    assert!(tables["orders"].as_array().is_some(), "{tables}");

    // Errors are specific, never internal.
    let errors = &got["errors"];
    for (case, says) in [
        ("syntax", "selec"),
        ("unknown_table", "nope"),
        ("wrong_token", "nauthenticated"),
    ] {
        let e = errors[case]
            .as_array()
            .unwrap_or_else(|| panic!("{case} did not fail: {errors}"));
        let (class, message) = (e[0].as_str().unwrap(), e[1].as_str().unwrap());
        assert_ne!(class, "InternalError", "{case}: {message}");
        assert!(
            message.to_lowercase().contains(says),
            "{case}: {class}: {message}"
        );
    }
    // A statement's result waiting for its DoGet can be cancelled (CancelFlightInfo).
    cancel_drops_a_waiting_result(&gateway_url).await;

    // The gateway counted what it ran.
    let metrics_at = metrics_at.expect("the gateway names its metrics address");
    let metrics = http_get(&metrics_at, "/metrics");
    let count = |line: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(line))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {line} in {metrics}"))
    };
    assert!(count("nearstore_gateway_statements_total{mode=\"offload\"}") >= 20.0);
    assert!(count("nearstore_gateway_failed_total{code=\"InvalidArgument\"}") >= 1.0);
    assert!(count("nearstore_gateway_bytes_moved_total") > 0.0);
    for d in devices {
        d.terminate();
    }
}

/// Runs Q6 as Alice through the gateway, cancels its `FlightInfo`, and checks the result is
/// gone.
async fn cancel_drops_a_waiting_result(gateway_url: &str) {
    use arrow_flight::sql::client::FlightSqlServiceClient;
    let channel =
        tonic::transport::Endpoint::from_shared(gateway_url.replace("grpc://", "http://"))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut sql = FlightSqlServiceClient::new(channel.clone());
    sql.set_token(ALICE.to_string());
    let info = sql
        .execute("select count(*) as n from lineitem".into(), None)
        .await
        .unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut flight = arrow_flight::FlightClient::new(channel);
    flight
        .add_header("authorization", &format!("Bearer {ALICE}"))
        .unwrap();
    let status = flight
        .cancel_flight_info(arrow_flight::CancelFlightInfoRequest::new(info))
        .await
        .unwrap();
    assert_eq!(status.status, arrow_flight::CancelStatus::Cancelled as i32);
    let gone = match sql.do_get(ticket).await {
        Err(e) => e.to_string(),
        Ok(stream) => match futures::TryStreamExt::try_collect::<Vec<_>>(stream).await {
            Err(e) => e.to_string(),
            Ok(b) => panic!("a cancelled result was served: {b:?}"),
        },
    };
    assert!(gone.contains("no result"), "{gone}");
}

/// The body of an HTTP GET of `path` on `addr` (three tries: a connection may be reset).
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut last = None;
    for _ in 0..3 {
        let got = (|| -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect(addr)?;
            write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })();
        match got {
            Ok(out) => return out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string(),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("GET {path} on {addr}: {last:?}")
}
