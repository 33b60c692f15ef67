//! The command line as a newcomer uses it: `serve` generating the demo table, then `tables`,
//! `query` and `put` against it, each a real process.

use std::process::Command;
use std::time::Duration;

use nearstore::serve_process::ServeProcess;
use nearstore_sdk::Query;

use crate::support::{cli_bin, connect_retry, table_batches};

fn nearstore(url: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(cli_bin())
        .args(args)
        .env("NEARSTORE_DEVICE", url)
        .output()
        .expect("CLI runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_generates_demo_table_and_cli_queries_it() {
    let dir = tempfile::tempdir().unwrap();
    // `--no-demo` is not passed here: an empty namespace gets the demo table.
    let child = ServeProcess::start(
        &cli_bin(),
        dir.path(),
        ["--demo-scale", "0.01"],
        Duration::from_secs(120),
    )
    .expect("the device generates the demo table and serves within 120 s");
    let url = child.url.clone();
    let mut c = connect_retry(&url, Duration::from_secs(120)).await;

    let info = c.describe("lineitem").await.unwrap();
    assert!(info.rows > 50_000, "{info:?}");

    let (ok, out, err) = nearstore(&url, &["tables"]);
    assert!(ok, "{err}");
    assert!(out.contains("lineitem"), "{out}");

    let (ok, out, err) = nearstore(
        &url,
        &[
            "query",
            "--table",
            "lineitem",
            "--filter",
            "l_quantity < 24 AND l_orderkey < 100",
            "--select",
            "l_orderkey,l_quantity",
            "--order-by",
            "l_orderkey",
            "--format",
            "csv",
        ],
    );
    assert!(ok, "{err}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("l_orderkey,l_quantity"));
    let rows: Vec<&str> = lines.collect();
    let want = c
        .query(
            &Query::table("lineitem")
                .filter("l_quantity < 24 AND l_orderkey < 100")
                .unwrap()
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), want.num_rows());
    assert!(!rows.is_empty());
    assert!(
        err.contains("read") && err.contains("from media"),
        "statistics on stderr: {err}"
    );

    let (ok, out, err) = nearstore(
        &url,
        &[
            "query",
            "--table",
            "lineitem",
            "--agg",
            "count(*) as n",
            "--agg",
            "sum(l_quantity)",
            "--format",
            "json",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains(&format!("\"n\":{}", info.rows)), "{out}");

    // Bad input through the CLI: a clear message and a failing exit code.
    let (ok, _, err) = nearstore(
        &url,
        &["query", "--table", "lineitem", "--filter", "l_nope > 1"],
    );
    assert!(!ok);
    assert!(err.contains("unknown column 'l_nope'"), "{err}");

    // put: a Parquet file from disk becomes a table.
    let file = dir.path().join("upload.parquet");
    {
        let batches = table_batches(12_345, 4_000, 11);
        let f = std::fs::File::create(&file).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(f, batches[0].schema(), None).unwrap();
        for b in &batches {
            w.write(b).unwrap();
        }
        w.close().unwrap();
    }
    let (ok, out, err) = nearstore(
        &url,
        &["put", file.to_str().unwrap(), "--table", "uploaded"],
    );
    assert!(ok, "{err}");
    assert!(out.contains("12345 rows"), "{out}");
    assert_eq!(c.describe("uploaded").await.unwrap().rows, 12_345);

    // SIGTERM: graceful stop.
    let status = child.terminate(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "{status:?}");
}
